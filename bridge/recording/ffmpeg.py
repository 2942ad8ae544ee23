"""FFmpeg binaries, command lines (built with ffmpeg-python), progress parsing and probing.

Nothing here keeps state between calls except a small cache of located binaries.

Binary choice (``[recording] ffmpeg``, else ``BRIDGE_FFMPEG``, else ``"auto"``):

- ``"auto"``: ``ffmpeg`` on ``PATH`` when its version is in ``SUPPORTED``, otherwise the binary shipped
  by imageio-ffmpeg (it has no ffprobe); a PATH binary passed over is noted in ``skipped``.
- ``"bundled"``: the imageio-ffmpeg binary, whatever is on PATH.
- a path (or a name looked up on PATH): exactly that binary.

ffprobe is used only when it sits next to the chosen ffmpeg (or ``BRIDGE_FFPROBE`` / an explicit path
names it); otherwise probing parses ``ffmpeg -i FILE`` and, for a deep probe, a ``-c copy -f null`` pass.
Set ``BRIDGE_FFPROBE=none`` to force the ffmpeg-only path.

Every binary the recorder runs must be in ``SUPPORTED`` (``require_supported``); the recorder process
checks it at start-up and each session again before it spawns FFmpeg.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ffmpeg as ffmpeg_python

from bridge.recording.process import child_kwargs

# Protocol families and the input option that bounds a blocking read for each (see DESIGN.md,
# "A stalled input ignores the first SIGINT: always set an input timeout").
RTMP_SCHEMES = frozenset({"rtmp", "rtmps", "rtmpt", "rtmpe", "rtmpte", "rtmpts"})
HTTP_SCHEMES = frozenset({"http", "https"})
RTSP_SCHEMES = frozenset({"rtsp", "rtsps"})
LISTEN_PROTOCOLS = frozenset({"rtmp", "http", "tcp", "srt"})

PART_FORMATS: Mapping[str, str] = {"mpegts": "ts", "matroska": "mkv"}


class FFmpegError(RuntimeError):
    """FFmpeg could not be found or a helper run of it failed. ``stderr_tail`` holds its last lines."""

    def __init__(self, message: str, stderr_tail: Sequence[str] = ()):
        super().__init__(message)
        self.stderr_tail = list(stderr_tail)


# --------------------------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class FFmpegVersion:
    """What ``-version`` says: the release (``5.1.9-0+deb12u1`` → (5, 1)) and libavformat's version,
    which also dates builds whose version is a git description (``N-114000-g…``)."""

    text: str                                  # the first line, e.g. "ffmpeg version 5.1.9-0+deb12u1"
    release: tuple[int, int] | None = None     # (major, minor) when the version string is numeric
    libavformat: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        m = re.search(r"version (\S+)", self.text)
        return m.group(1) if m else (self.text or "unknown")


@dataclass(frozen=True)
class VersionRange:
    """Releases ``minimum <= v < below``. A git build with no release number is judged by libavformat
    against ``minimum``'s (``min_libavformat``); it has no upper bound (it is newer than any release)."""

    minimum: tuple[int, int]
    below: tuple[int, int]
    min_libavformat: tuple[int, int]

    def __str__(self) -> str:
        return f">= {self.minimum[0]}.{self.minimum[1]}, < {self.below[0]}"

    def contains(self, version: FFmpegVersion) -> bool:
        if version.release is not None:
            return self.minimum <= version.release < self.below
        return version.libavformat is not None and version.libavformat >= self.min_libavformat


# The FFmpeg releases the recorder supports: tested with Debian 12's 5.1 and the imageio-ffmpeg wheel's
# binary (9.0 at the time of writing). 5.1 ships libavformat 59.27. README "FFmpeg versions" says what
# differs between the ends and how the recorder copes.
SUPPORTED = VersionRange(minimum=(5, 1), below=(10, 0), min_libavformat=(59, 27))


@dataclass(frozen=True)
class FFmpegBinaries:
    ffmpeg: str
    ffprobe: str | None          # None: probe with ffmpeg itself
    origin: str                  # "config" | "env" | "path" | "imageio-ffmpeg"
    version: tuple[int, int] | None = None   # (major, minor) when the version string is numeric
    info: FFmpegVersion | None = None        # ffmpeg's -version
    ffprobe_info: FFmpegVersion | None = None
    skipped: tuple[str, ...] = ()            # "auto": binaries passed over, and why

    @property
    def supports_stats_period(self) -> bool:   # -stats_period appeared in FFmpeg 4.4
        return self.version is None or self.version >= (4, 4)

    def describe(self) -> str:
        text = f"ffmpeg {self.info.label if self.info else '?'} at {self.ffmpeg} ({self.origin})"
        if self.ffprobe:
            text += f", ffprobe {self.ffprobe_info.label if self.ffprobe_info else '?'} at {self.ffprobe}"
        return text


class FFmpegVersionError(FFmpegError):
    """A binary outside ``SUPPORTED``; the message names its path, its version and the range."""


def unsupported(binaries: FFmpegBinaries, supported: VersionRange = SUPPORTED) -> list[str]:
    """One line per binary in use that is outside ``supported`` (empty: all good)."""
    problems = []
    for kind, path, info in (("ffmpeg", binaries.ffmpeg, binaries.info),
                             ("ffprobe", binaries.ffprobe, binaries.ffprobe_info)):
        if path is None or (info is not None and supported.contains(info)):
            continue
        said = f"version {info.label} ({info.text!r})" if info and info.text else "of unknown version"
        problems.append(f"{kind} at {path} is {said}; the recorder supports FFmpeg {supported}")
    return problems


def require_supported(binaries: FFmpegBinaries, supported: VersionRange = SUPPORTED) -> FFmpegBinaries:
    """``binaries`` if every one in use is in ``supported``; else FFmpegVersionError naming each."""
    problems = unsupported(binaries, supported)
    if problems:
        hint = ('set [recording] ffmpeg = "bundled" (the imageio-ffmpeg binary) or the path of a '
                "supported FFmpeg")
        raise FFmpegVersionError("; ".join([*problems, *binaries.skipped]) + f". {hint}")
    return binaries


def _is_exe(path: str | os.PathLike[str] | None) -> bool:
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def _sibling_ffprobe(ffmpeg: str) -> str | None:
    suffix = ".exe" if ffmpeg.lower().endswith(".exe") else ""
    candidates = [Path(ffmpeg).with_name("ffprobe" + suffix)]
    with contextlib.suppress(OSError):
        candidates.append(Path(os.path.realpath(ffmpeg)).with_name("ffprobe" + suffix))
    for candidate in candidates:
        if _is_exe(candidate):
            return str(candidate)
    return None


def parse_version(text: str) -> FFmpegVersion:
    """Read ``ffmpeg -version`` / ``ffprobe -version`` output."""
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    release = lavf = None
    if m := re.search(r"\bversion n?(\d+)\.(\d+)", first):
        release = (int(m.group(1)), int(m.group(2)))
    if m := re.search(r"^\s*libavformat\s+(\d+)\.\s*(\d+)\.", text, re.MULTILINE):
        lavf = (int(m.group(1)), int(m.group(2)))
    return FFmpegVersion(text=first, release=release, libavformat=lavf)


@lru_cache(maxsize=32)
def _version_of(binary: str) -> FFmpegVersion | None:
    try:
        out = subprocess.run([binary, "-hide_banner", "-version"], capture_output=True, timeout=10,
                             check=False, stdin=subprocess.DEVNULL).stdout.decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_version(out)


def _bundled() -> str:
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception as exc:      # ImportError, or RuntimeError when it ships no binary
        raise FFmpegError("no ffmpeg found: install FFmpeg on PATH, set [recording] ffmpeg / "
                          "BRIDGE_FFMPEG, or install imageio-ffmpeg") from exc


def _in_range(binary: str) -> bool:
    info = _version_of(binary)
    return info is not None and SUPPORTED.contains(info)


@lru_cache(maxsize=16)
def _locate(ffmpeg: str | None, ffprobe: str | None, env_ffmpeg: str | None, env_ffprobe: str | None,
            path_env: str | None) -> FFmpegBinaries:
    origin = ""
    chosen: str | None = None
    skipped: list[str] = []
    for candidate, where in ((ffmpeg, "config"), (env_ffmpeg, "env")):
        if candidate and candidate.lower() == "auto":
            break
        if candidate and candidate.lower() == "bundled":
            chosen, origin = _bundled(), "imageio-ffmpeg"
            break
        if candidate:
            resolved = candidate if os.sep in candidate else shutil.which(candidate, path=path_env)
            if not _is_exe(resolved):
                raise FFmpegError(f"ffmpeg binary from {where} is not an executable file: {candidate}")
            chosen, origin = str(resolved), where
            break
    if chosen is None:                                     # auto: PATH if supported, else bundled
        found = shutil.which("ffmpeg", path=path_env)
        if found and _in_range(found):
            chosen, origin = found, "path"
        else:
            if found:
                info = _version_of(found)
                skipped.append(f"ffmpeg on PATH at {found} ({info.label if info else 'unknown version'}) "
                               f"is outside FFmpeg {SUPPORTED}")
            try:
                chosen, origin = _bundled(), "imageio-ffmpeg"
            except FFmpegError:
                if not found:
                    raise
                chosen, origin = found, "path"             # require_supported will name it
    probe_bin: str | None
    explicit_probe = ffprobe or env_ffprobe
    if explicit_probe and explicit_probe.lower() in {"none", "off", "0", "false"}:
        probe_bin = None
    elif explicit_probe:
        resolved = explicit_probe if os.sep in explicit_probe else shutil.which(explicit_probe, path=path_env)
        if not _is_exe(resolved):
            raise FFmpegError(f"ffprobe binary is not an executable file: {explicit_probe}")
        probe_bin = str(resolved)
    else:
        probe_bin = _sibling_ffprobe(chosen)
    info = _version_of(chosen)
    return FFmpegBinaries(ffmpeg=chosen, ffprobe=probe_bin, origin=origin,
                          version=info.release if info else None, info=info,
                          ffprobe_info=_version_of(probe_bin) if probe_bin else None, skipped=tuple(skipped))


def locate_ffmpeg(ffmpeg: str | None = None, ffprobe: str | None = None,
                  env: Mapping[str, str] | None = None) -> FFmpegBinaries:
    """Find ffmpeg (and ffprobe when it is next to it). ``ffmpeg``: ``"auto"`` (default), ``"bundled"``
    or a path. Cached; raises FFmpegError. Does not judge versions: see ``require_supported``."""
    env = os.environ if env is None else env
    return _locate(ffmpeg or None, ffprobe or None, env.get("BRIDGE_FFMPEG") or None,
                   env.get("BRIDGE_FFPROBE") or None, env.get("PATH"))


# ------------------------------------------------------------------------------------ command building


def url_scheme(url: str) -> str:
    """Lower-case scheme of an input URL; plain paths (and Windows drive letters) are ``file``."""
    scheme = urlsplit(url).scheme.lower()
    return "file" if len(scheme) <= 1 else scheme


def input_options(url: str, *, input_timeout_s: float, listen: bool = False,
                  listen_timeout_s: float | None = None, realtime: bool = False,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Input options (ffmpeg-python kwargs) that bound every blocking read for ``url``'s protocol.

    - RTMP pull: ``rw_timeout`` (µs). Never ``timeout``: for RTMP it means *listen* (seconds).
    - RTMP listen: ``listen 1`` + ``timeout`` (s, wait for a publisher) + ``rw_timeout``.
    - HTTP/HLS/TCP/SRT/UDP/file: ``rw_timeout`` (µs; HLS passes it on to playlist and segment requests).
    - HTTP/TCP listen: ``listen 1`` + ``listen_timeout`` (ms; without it HTTP listen waits forever).
    - SRT listen: ``mode listener`` + ``listen_timeout`` (µs).
    - RTSP: ``timeout`` (µs; ``rw_timeout`` is ignored by the RTSP demuxer) + ``rtsp_transport tcp``.
    ``extra`` (spec.input_options) is applied last and wins.
    """
    us = max(1, round(input_timeout_s * 1_000_000))
    scheme = url_scheme(url)
    opts: dict[str, Any] = {}
    if scheme in RTSP_SCHEMES:
        opts["timeout"] = us
        opts["rtsp_transport"] = "tcp"
    else:
        opts["rw_timeout"] = us
    if scheme == "srt":
        opts.setdefault("connect_timeout", max(1, round(input_timeout_s * 1000)))
    if listen:
        wait_s = listen_timeout_s if listen_timeout_s is not None else input_timeout_s
        if scheme in RTMP_SCHEMES:
            opts["listen"] = 1
            opts["timeout"] = max(1, round(wait_s))
        elif scheme in HTTP_SCHEMES or scheme == "tcp":
            opts["listen"] = 1
            opts["listen_timeout"] = max(1, round(wait_s * 1000))
        elif scheme == "srt":
            opts["mode"] = "listener"
            opts["listen_timeout"] = max(1, round(wait_s * 1_000_000))
            opts.pop("connect_timeout", None)
        else:
            raise ValueError(f"cannot listen on {scheme}:// (supported: {sorted(LISTEN_PROTOCOLS)})")
    if realtime:
        opts["re"] = None            # flag without a value: read at the native frame rate
    opts.update(extra or {})
    return opts


def global_options(binaries: FFmpegBinaries, *, loglevel: str = "warning",
                   progress_period_s: float | None = 0.5, overwrite: bool = False) -> list[str]:
    args = ["-hide_banner", "-nostats", "-loglevel", loglevel]
    if progress_period_s is not None:
        args += ["-progress", "pipe:1"]
        if binaries.supports_stats_period:
            args += ["-stats_period", f"{progress_period_s:g}"]
    args.append("-y" if overwrite else "-n")
    return args


def build_record_command(binaries: FFmpegBinaries, source_url: str, output: str | os.PathLike[str], *,
                         input_timeout_s: float, part_format: str = "mpegts",
                         max_duration_s: float | None = None, listen: bool = False,
                         listen_timeout_s: float | None = None, realtime: bool = False,
                         extra_input_options: Mapping[str, Any] | None = None,
                         progress_period_s: float = 0.5, loglevel: str = "warning",
                         flush_packets: bool = True) -> list[str]:
    """One recording part: stream copy (FFmpeg's default pick of one video + one audio stream) into a
    container that survives a kill (MPEG-TS by default), progress on stdout, stdin left open for ``q``.

    ``flush_packets``: write every packet through at once. Without it FFmpeg buffers up to 256 KiB of
    output, which a SIGKILL (or an aborted stop) loses: ~1 s of a 2.5 Mbps stream, ~30 s of audio-only.
    """
    if part_format not in PART_FORMATS:
        raise ValueError(f"part_format must be one of {sorted(PART_FORMATS)}")
    opts = input_options(source_url, input_timeout_s=input_timeout_s, listen=listen,
                         listen_timeout_s=listen_timeout_s, realtime=realtime, extra=extra_input_options)
    out_opts: dict[str, Any] = {"c": "copy", "format": part_format}
    if flush_packets:
        out_opts["flush_packets"] = 1
    if max_duration_s is not None:
        out_opts["t"] = f"{max(0.001, max_duration_s):.3f}"
    stream = ffmpeg_python.input(source_url, **opts).output(str(output), **out_opts)
    stream = stream.global_args(*global_options(binaries, loglevel=loglevel,
                                                progress_period_s=progress_period_s))
    return stream.compile(cmd=binaries.ffmpeg)


def build_concat_command(binaries: FFmpegBinaries, list_file: str | os.PathLike[str],
                         output: str | os.PathLike[str], *, audio_codec: str | None,
                         video_codec: str | None, loglevel: str = "error") -> list[str]:
    """Join the parts listed in a concat-demuxer file into one MP4: stream copy, ADTS→ASC for AAC
    (parts from MPEG-TS carry ADTS AAC), ``+faststart`` so players can start before the end loads."""
    inp = ffmpeg_python.input(str(list_file), format="concat", safe=0)
    streams = []
    if video_codec:
        streams.append(inp["v:0"])
    if audio_codec:
        streams.append(inp["a:0"])
    if not streams:
        raise ValueError("nothing to join: no audio or video stream")
    out_opts: dict[str, Any] = {"c": "copy", "format": "mp4", "movflags": "+faststart"}
    if audio_codec == "aac":
        out_opts["bsf:a"] = "aac_adtstoasc"
    if video_codec == "hevc":
        out_opts["tag:v"] = "hvc1"      # the tag Apple players need for HEVC in MP4
    stream = ffmpeg_python.output(*streams, str(output), **out_opts)
    stream = stream.global_args(*global_options(binaries, loglevel=loglevel, progress_period_s=None))
    return stream.compile(cmd=binaries.ffmpeg)


def concat_list_text(files: Sequence[str | os.PathLike[str]]) -> str:
    """A concat-demuxer list; paths are quoted the way the demuxer expects (' → '\\'')."""
    lines = ["ffconcat version 1.0"]
    for f in files:
        escaped = str(f).replace("'", "'\\''")
        lines.append(f"file '{escaped}'")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class Progress:
    """One ``-progress`` block. ``recorded_s`` adds the parts recorded before this one.

    A session fills in ``speed`` when FFmpeg left it ``N/A`` (5.1 does in its first block), and reports
    ``measured=True`` blocks of its own when FFmpeg is silent but the part grew (see session.py)."""

    out_time_s: float | None        # media time written to the current part
    total_size: int | None          # bytes written to the current part
    speed: float | None             # 1.0 = real time
    bitrate_kbps: float | None
    frame: int | None
    ended: bool                     # ``progress=end``: FFmpeg's last block
    part_index: int = 0
    recorded_s: float = 0.0         # whole recording so far: previous parts + out_time_s
    wall_s: float = 0.0             # seconds since this part's FFmpeg was started
    measured: bool = False          # from probing the part, not from FFmpeg's -progress


def _num(value: str | None, kind: type = float) -> Any:
    if value is None:
        return None
    value = value.strip().rstrip("x").replace("kbits/s", "").strip()
    if not value or value == "N/A":
        return None
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        return None


class ProgressParser:
    """Feed ``key=value`` lines from ``-progress pipe:1``; returns a Progress at each block end."""

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}

    def feed(self, line: str) -> Progress | None:
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        if key != "progress":
            self._fields[key] = value.strip()
            return None
        f, self._fields = self._fields, {}
        out_us = _num(f.get("out_time_us"), int)
        if out_us is None:      # older FFmpeg: out_time_ms is also in microseconds (a known misnomer)
            out_us = _num(f.get("out_time_ms"), int)
        out_time = out_us / 1_000_000 if out_us is not None and out_us >= 0 else None
        return Progress(out_time_s=out_time, total_size=_num(f.get("total_size"), int),
                        speed=_num(f.get("speed")), bitrate_kbps=_num(f.get("bitrate")),
                        frame=_num(f.get("frame"), int), ended=value.strip() == "end")


# -------------------------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class StreamInfo:
    index: int
    kind: str              # video | audio | subtitle | data | attachment
    codec: str             # FFmpeg codec name: h264, aac, ...
    detail: str = ""       # the rest of FFmpeg's description line (or ffprobe's profile/size)


@dataclass(frozen=True)
class ProbeResult:
    path: str
    format_name: str
    duration_s: float | None
    start_s: float | None
    bit_rate: int | None
    streams: tuple[StreamInfo, ...]
    method: str                   # "ffprobe" | "ffmpeg" (header) ; "+null" when a copy pass measured it
    errors: tuple[str, ...] = field(default=())   # demux errors seen during a deep probe

    def codec(self, kind: str) -> str | None:
        return next((s.codec for s in self.streams if s.kind == kind), None)

    @property
    def has_video(self) -> bool:
        return self.codec("video") is not None

    @property
    def has_audio(self) -> bool:
        return self.codec("audio") is not None


_DURATION_RE = re.compile(r"Duration:\s*(?:(\d+):(\d+):(\d+(?:\.\d+)?)|N/A)"
                          r"(?:,\s*start:\s*(-?\d+(?:\.\d+)?))?(?:,\s*bitrate:\s*(\d+)\s*kb/s)?")
_INPUT_RE = re.compile(r"^Input #0, (.+?), from ")
_STREAM_RE = re.compile(r"^\s*Stream #0:(\d+)(?:\[[^\]]*\])?(?:\([^)]*\))?: (\w+): ([\w-]+)(.*)$")


def parse_ffmpeg_info(path: str, stderr: str) -> ProbeResult:
    """Parse what ``ffmpeg -i FILE`` prints about input #0 (it exits 1: "no output file")."""
    format_name = ""
    duration = start = None
    bit_rate = None
    streams: list[StreamInfo] = []
    for line in stderr.splitlines():
        if not format_name and (m := _INPUT_RE.match(line)):
            format_name = m.group(1)
        elif (m := _DURATION_RE.search(line)) and duration is None and start is None:
            if m.group(1) is not None:
                duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
            start = float(m.group(4)) if m.group(4) else None
            bit_rate = int(m.group(5)) * 1000 if m.group(5) else None
        elif m := _STREAM_RE.match(line):
            streams.append(StreamInfo(index=int(m.group(1)), kind=m.group(2).lower(), codec=m.group(3),
                                      detail=m.group(4).strip(" ,")))
    if not format_name:
        tail = [ln for ln in stderr.splitlines() if ln.strip()][-5:]
        raise FFmpegError(f"ffmpeg could not read {path}", tail)
    return ProbeResult(path=path, format_name=format_name, duration_s=duration, start_s=start,
                       bit_rate=bit_rate, streams=tuple(streams), method="ffmpeg")


def parse_ffprobe_json(path: str, text: str) -> ProbeResult:
    data = json.loads(text or "{}")
    fmt = data.get("format") or {}
    if not fmt:
        raise FFmpegError(f"ffprobe could not read {path}")

    def _f(v: Any) -> float | None:
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    streams = tuple(
        StreamInfo(index=int(s.get("index", i)), kind=str(s.get("codec_type", "data")),
                   codec=str(s.get("codec_name", "unknown")),
                   detail=" ".join(str(s[k]) for k in ("profile", "width", "height", "sample_rate")
                                   if s.get(k) is not None))
        for i, s in enumerate(data.get("streams") or []))
    br = _f(fmt.get("bit_rate"))
    return ProbeResult(path=path, format_name=str(fmt.get("format_name", "")),
                       duration_s=_f(fmt.get("duration")), start_s=_f(fmt.get("start_time")),
                       bit_rate=int(br) if br is not None else None, streams=streams, method="ffprobe")


async def _run_capture(cmd: Sequence[str], timeout_s: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, **child_kwargs())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except BaseException:   # timeout or cancellation: never leave the helper running
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def probe(path: str | os.PathLike[str], binaries: FFmpegBinaries | None = None, *,
                deep: bool = False, timeout_s: float = 120.0) -> ProbeResult:
    """Streams and duration of a media file, with ffprobe if available, else with ffmpeg alone.

    ``deep=True`` also demuxes the whole file (``-c copy -f null``, no decoding): the duration becomes the
    last written timestamp (exact even for a part cut by a kill) and demux errors are reported in
    ``errors``. Raises FFmpegError when the file is unreadable.
    """
    binaries = binaries or locate_ffmpeg()
    path = str(path)
    if binaries.ffprobe:
        rc, out, err = await _run_capture(
            [binaries.ffprobe, "-v", "error", "-of", "json", "-show_format", "-show_streams", path], timeout_s)
        if rc != 0:
            raise FFmpegError(f"ffprobe could not read {path}", err.splitlines()[-5:])
        result = parse_ffprobe_json(path, out)
    else:
        _, _, err = await _run_capture([binaries.ffmpeg, "-hide_banner", "-nostdin", "-i", path], timeout_s)
        result = parse_ffmpeg_info(path, err)
    if not deep:
        return result
    cmd = [binaries.ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
           "-i", path, "-map", "0:v?", "-map", "0:a?", "-c", "copy", "-f", "null", "-",
           "-progress", "pipe:1"]
    rc, out, err = await _run_capture(cmd, timeout_s)
    parser = ProgressParser()
    last: Progress | None = None
    for line in out.splitlines():
        last = parser.feed(line) or last
    errors = tuple(ln for ln in err.splitlines() if ln.strip())
    if rc != 0:
        raise FFmpegError(f"ffmpeg could not demux {path}", errors[-5:])
    duration = last.out_time_s if last and last.out_time_s else result.duration_s
    return ProbeResult(path=path, format_name=result.format_name, duration_s=duration, start_s=result.start_s,
                       bit_rate=result.bit_rate, streams=result.streams, method=result.method + "+null",
                       errors=errors)
