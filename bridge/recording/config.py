"""What a recording needs: recorder settings (declared with the configuration, in bridge.schema.config),
one recording's spec, results, and errors."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from bridge.recording.ffmpeg import (
    LISTEN_PROTOCOLS,
    FFmpegBinaries,
    FFmpegError,
    FFmpegVersionError,
    locate_ffmpeg,
    require_supported,
)
from bridge.schema.config import RecorderConfig

log = logging.getLogger("bridge.recording")


class RecordingError(RuntimeError):
    """A recording cannot start. ``code`` is machine-readable: ``bad_spec``, ``ffmpeg_not_found``,
    ``ffmpeg_version`` (outside ``ffmpeg.SUPPORTED``), ``disk_space``, ``busy`` (another supervisor holds
    this recording), ``port``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class InsufficientDiskSpace(RecordingError):
    def __init__(self, message: str):
        super().__init__("disk_space", message)


class RecordingBusy(RecordingError):
    def __init__(self, message: str):
        super().__init__("busy", message)


def select_ffmpeg(config: RecorderConfig) -> FFmpegBinaries:
    """The FFmpeg (and ffprobe) this config selects, checked against ``ffmpeg.SUPPORTED``.

    Raises RecordingError ``ffmpeg_not_found`` or ``ffmpeg_version`` (the message names the binary's
    path, its version and the supported range)."""
    try:
        return require_supported(locate_ffmpeg(config.ffmpeg, config.ffprobe))
    except FFmpegVersionError as exc:
        raise RecordingError("ffmpeg_version", str(exc)) from exc
    except FFmpegError as exc:
        raise RecordingError("ffmpeg_not_found", str(exc)) from exc


def check_ffmpeg(config: RecorderConfig) -> FFmpegBinaries:
    """Start-up check of every process that runs FFmpeg: the configured binaries exist and are in
    ``ffmpeg.SUPPORTED``. Logs what was chosen (and any PATH binary passed over); raises RecordingError
    (``ffmpeg_not_found`` / ``ffmpeg_version``) with the path, the version and the range."""
    binaries = select_ffmpeg(config)
    for note in binaries.skipped:
        log.warning("%s; using %s instead", note, binaries.ffmpeg)
    log.info("recording with %s", binaries.describe())
    return binaries


@dataclass(frozen=True)
class ListenSpec:
    """Listen mode: FFmpeg waits for a publisher to push to ``protocol://host:port/path``."""

    protocol: str = "rtmp"             # rtmp | http (POST/PUT of MPEG-TS etc.) | tcp | srt
    port: int = 0                      # 0: first free port in config.listen_port_range
    host: str | None = None            # bind address (default config.listen_host)
    path: str | None = None            # default live/<recording id> (rtmp, http); ignored by tcp/srt


@dataclass(frozen=True)
class RecordingSpec:
    recording_id: str
    lesson_id: str
    source_url: str | None = None      # pull: rtmp://, rtsp://, srt://, http(s):// (HLS too), file path
    listen: ListenSpec | None = None   # used when source_url is None (default: RTMP on a free port)
    max_duration_s: float | None = None   # whole recording across parts, capped by config.max_duration_s
    input_timeout_s: float = 10.0      # FFmpeg's own bound on a blocking read (rw_timeout / timeout)
    stall_timeout_s: float = 30.0      # no media-time progress this long while recording → stalled
    start_timeout_s: float | None = None   # pull: first media within this (default input+stall timeout)
    listen_timeout_s: float = 600.0    # listen: a publisher must arrive within this
    reconnects: int = 2                # per run: new part after a stall / input error, with backoff
    realtime: bool = False             # -re: read a file at its native rate (tests, benchmarks)
    input_options: Mapping[str, Any] = field(default_factory=dict)   # extra FFmpeg input options

    def __post_init__(self) -> None:
        for name in ("recording_id", "lesson_id"):
            if not str(getattr(self, name) or "").strip():
                raise RecordingError("bad_spec", f"{name} is required")
        if self.source_url is not None and not self.source_url.strip():
            raise RecordingError("bad_spec", "source_url is empty (use None for listen mode)")
        if self.source_url is not None and self.listen is not None:
            raise RecordingError("bad_spec", "give source_url (pull) or listen (push), not both")
        if self.listen is not None and self.listen.protocol not in LISTEN_PROTOCOLS:
            raise RecordingError("bad_spec", f"listen.protocol must be one of {sorted(LISTEN_PROTOCOLS)}")
        for name in ("input_timeout_s", "stall_timeout_s", "listen_timeout_s"):
            if not getattr(self, name) > 0:
                raise RecordingError("bad_spec", f"{name} must be > 0")
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise RecordingError("bad_spec", "max_duration_s must be > 0")

    @property
    def is_listen(self) -> bool:
        return self.source_url is None

    @property
    def listen_spec(self) -> ListenSpec:
        return self.listen or ListenSpec()


class EndReason(StrEnum):
    """Why a run (one supervision of one recording, possibly several parts) ended."""

    STOPPED = "stopped"                # stop was requested
    SHUTDOWN = "shutdown"              # stopped by stop_all / finalize_all (process shutting down)
    MAX_DURATION = "max_duration"
    SOURCE_ENDED = "source_ended"      # input reached its end / the publisher disconnected
    STALLED = "stalled"                # no progress for stall_timeout_s (after reconnects ran out)
    INPUT_TIMEOUT = "input_timeout"    # FFmpeg's rw_timeout fired (after reconnects ran out)
    START_TIMEOUT = "start_timeout"    # no media (pull) / no publisher (listen) in time
    DISK_LOW = "disk_low"
    ERROR = "error"                    # FFmpeg failed (bad URL, refused, unsupported codec, ...)
    CANCELLED = "cancelled"            # the awaiting coroutine was cancelled

    @property
    def is_normal(self) -> bool:
        return self in {EndReason.STOPPED, EndReason.SHUTDOWN, EndReason.MAX_DURATION, EndReason.SOURCE_ENDED}


@dataclass(frozen=True)
class RunResult:
    """The outcome of one supervision run. Parts with media are kept even when ``ok`` is false."""

    recording_id: str
    lesson_id: str
    ok: bool                           # ended for a normal reason and recorded something
    reason: EndReason
    detail: str                        # human text
    parts: tuple[str, ...]             # absolute paths of the parts written by this run
    recorded_s: float                  # media time written by this run
    total_recorded_s: float            # including earlier runs' parts
    exit_codes: tuple[int, ...]
    stop_step: str | None              # how the last FFmpeg ended when we stopped it: q | SIGINT | ...
    stderr_tail: tuple[str, ...]
    push_url: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: (str(v) if isinstance(v, EndReason) else list(v) if isinstance(v, tuple) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}


@dataclass(frozen=True)
class FinalizeResult:
    """Shape of ``recording.completed`` data (file, bytes, duration_s, container) plus extras."""

    ok: bool
    recording_id: str
    lesson_id: str
    file: str | None = None            # absolute path of the joined MP4
    bytes: int = 0
    duration_s: float = 0.0            # probed from the final file
    container: str = "mp4"
    sha256: str | None = None
    parts: tuple[str, ...] = ()        # part file names that went in
    parts_duration_s: float = 0.0      # sum of the parts' probed durations
    skipped_parts: tuple[str, ...] = ()   # parts without readable media
    reason: str | None = None          # failure: no_media | join_failed | verify_failed | busy | disk_space
    stderr_tail: tuple[str, ...] = ()
    cached: bool = False               # an earlier finalize of the same parts was returned

    def as_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in fields(self) for v in [getattr(self, f.name)]}

