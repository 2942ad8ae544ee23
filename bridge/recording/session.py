"""Supervision of one recording: FFmpeg as an asyncio subprocess, progress, stall detection, stop.

A ``RecordingSession`` is one *run* of a recording in this process. Each FFmpeg it starts writes a new
part (``part-NNN.ts``) in the recording's directory; a run may start several (reconnect after a stall or
an input error), and a later run of the same recording id — the arq job re-run after a crash — simply
continues with the next part number. ``finalize()`` (parts.py) joins them all.

Typical use from a job::

    session = RecordingSession(spec, config, on_progress=heartbeat)
    await session.start()              # raises RecordingError (disk, busy, ffmpeg missing)
    ...                                # push_url is known now in listen mode; announce it
    result = await session.wait()      # ends on stop()/max duration/source end/stall/...
    final = await session.finalize()

``session.request_stop()`` may be called from anywhere (another task, a Redis watcher, another thread);
``finalize_all()`` stops every running session of the process and finalizes each (for SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from bridge.recording.config import (
    EndReason,
    FinalizeResult,
    RecorderConfig,
    RecordingBusy,
    RecordingError,
    RecordingSpec,
    RunResult,
    select_ffmpeg,
)
from bridge.recording.ffmpeg import (
    PART_FORMATS,
    FFmpegBinaries,
    FFmpegError,
    Progress,
    ProgressParser,
    build_record_command,
    probe,
)
from bridge.recording.parts import (
    DirLock,
    RecordingPaths,
    check_free_space,
    finalize,
    free_bytes,
    reap_orphan,
    recorded_duration,
    slug,
    write_pid_file,
)
from bridge.recording.process import is_listening, kill_now, spawn_ffmpeg, stop_process

log = logging.getLogger("bridge.recording")

OnProgress = Callable[[Progress], Any]


class SessionState(StrEnum):
    CREATED = "created"
    STARTING = "starting"            # FFmpeg spawned, opening the input
    LISTENING = "listening"          # listen mode: the port is open, waiting for a publisher
    RECORDING = "recording"          # media time is advancing
    RECONNECTING = "reconnecting"    # between parts after a stall / input error
    STOPPING = "stopping"
    ENDED = "ended"


OnState = Callable[[SessionState, "RecordingSession"], Any]

_ACTIVE: dict[tuple[str, str], RecordingSession] = {}


@dataclass
class _Attempt:
    reason: EndReason | None = None
    detail: str = ""
    stop_step: str | None = None
    exit_code: int | None = None
    media_started: bool = False
    out_time_s: float = 0.0


class RecordingSession:
    def __init__(self, spec: RecordingSpec, config: RecorderConfig | None = None, *,
                 on_progress: OnProgress | None = None, on_state: OnState | None = None,
                 binaries: FFmpegBinaries | None = None):
        self.spec = spec
        self.config = config or RecorderConfig()
        self.paths = RecordingPaths(self.config.dir, spec.lesson_id, spec.recording_id)
        self.on_progress = on_progress
        self.on_state = on_state
        self._binaries = binaries
        self.state = SessionState.CREATED
        self.requested_at: float | None = None        # monotonic: start() called
        self.first_media_at: float | None = None      # monotonic: first progress with media
        self.stop_requested_at: float | None = None
        self.ended_at: float | None = None
        self.part_index: int | None = None
        self._stop_event = asyncio.Event()
        self._stop_reason: EndReason | None = None
        self._started = asyncio.Event()
        self._listening = asyncio.Event()
        self._spawned = asyncio.Event()
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = DirLock(self.paths.lock_file)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stderr: deque[str] = deque(maxlen=self.config.stderr_tail_lines)
        self._recorded_before = 0.0
        self._run_recorded = 0.0
        self._parts_written: list[str] = []
        self._exit_codes: list[int] = []
        self._result: RunResult | None = None
        self._cb_tasks: set[asyncio.Task[Any]] = set()
        self._listen_url: str | None = None
        self._push_url: str | None = None
        self._listen_port: int | None = None
        self._attempt = _Attempt()
        self._last_advance = 0.0
        self._last_block_at = 0.0     # monotonic: FFmpeg's last -progress block
        self._part_checked = (0, 0.0)  # (part size, monotonic) at the last measurement of a silent part

    # ------------------------------------------------------------------------------------ properties

    @property
    def key(self) -> tuple[str, str]:
        return (self.spec.lesson_id, self.spec.recording_id)

    @property
    def pid(self) -> int | None:
        """Pid of the running FFmpeg, if any."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def push_url(self) -> str | None:
        """Listen mode: the URL a publisher pushes to (known after start())."""
        return self._push_url

    @property
    def listen_url(self) -> str | None:
        return self._listen_url

    @property
    def result(self) -> RunResult | None:
        return self._result

    @property
    def recorded_s(self) -> float:
        """Media time of the whole recording so far (earlier parts included)."""
        return self._recorded_before + self._run_recorded + self._attempt.out_time_s

    @property
    def idle_s(self) -> float | None:
        """Seconds since media time last advanced (None before media): > a few seconds = stalled input."""
        if not self._attempt.media_started:
            return None
        return time.monotonic() - self._last_advance

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # ----------------------------------------------------------------------------------------- control

    async def start(self) -> None:
        """Check, lock and spawn the first FFmpeg; returns once it runs (or the run already ended).

        Raises RecordingError: ``ffmpeg_not_found``, ``disk_space``, ``busy``, ``port``.
        """
        if self._task is not None:
            raise RuntimeError("session already started")
        self.requested_at = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self.key in _ACTIVE:
            raise RecordingBusy(f"recording {self.spec.recording_id} is already running in this process")
        binaries = self._binaries or select_ffmpeg(self.config)
        self._binaries = binaries
        self.paths.dir.mkdir(parents=True, exist_ok=True)
        check_free_space(self.paths.dir, self.config.min_free_bytes)
        if not await self._lock.acquire(2.0):
            raise RecordingBusy(f"recording {self.spec.recording_id} is being written by another process "
                                f"({self.paths.lock_file} is locked)")
        _ACTIVE[self.key] = self
        try:
            await reap_orphan(self.paths)
            self._recorded_before = await recorded_duration(self.paths, binaries)
            if self.spec.is_listen:
                self._setup_listen()
            self._task = asyncio.create_task(self._supervise(), name=f"recording:{self.spec.recording_id}")
        except BaseException:
            _ACTIVE.pop(self.key, None)
            self._lock.release()
            raise
        spawned = asyncio.ensure_future(self._spawned.wait())
        try:
            await asyncio.wait({spawned, self._task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        finally:
            spawned.cancel()

    def request_stop(self, reason: EndReason | str = EndReason.STOPPED) -> None:
        """Ask the run to end (thread-safe, idempotent). The FFmpeg gets q → SIGINT → SIGKILL."""
        if self._stop_reason is None:
            self._stop_reason = EndReason(reason)
            self.stop_requested_at = time.monotonic()
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._stop_event.set)
        else:
            self._stop_event.set()

    async def wait(self, timeout_s: float | None = None) -> RunResult:
        """The run's result once it ended. Raises TimeoutError after ``timeout_s``."""
        if self._task is None:
            raise RuntimeError("session not started")
        await asyncio.wait_for(self._done.wait(), timeout_s)
        assert self._result is not None
        return self._result

    async def stop(self, reason: EndReason | str = EndReason.STOPPED,
                   timeout_s: float | None = None) -> RunResult:
        self.request_stop(reason)
        return await self.wait(timeout_s if timeout_s is not None else self.config.stop_graces.total + 15)

    async def run(self) -> RunResult:
        """start() + wait(). If the awaiting task is cancelled, FFmpeg is stopped before re-raising."""
        await self.start()
        try:
            return await self.wait()
        except asyncio.CancelledError:
            self.request_stop(EndReason.CANCELLED)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._done.wait()), self.config.stop_graces.total + 5)
            raise

    async def wait_started(self, timeout_s: float) -> bool:
        """True once media flows (first progress with media time), False on timeout or end."""
        return await self._wait_flag(self._started, timeout_s)

    async def wait_listening(self, timeout_s: float) -> bool:
        """Listen mode: True once FFmpeg's port is open (a publisher may connect now)."""
        return await self._wait_flag(self._listening, timeout_s)

    async def finalize(self, **kwargs: Any) -> FinalizeResult:
        return await finalize(self.spec.lesson_id, self.spec.recording_id, self.config,
                              binaries=self._binaries, **kwargs)

    async def _wait_flag(self, flag: asyncio.Event, timeout_s: float) -> bool:
        if flag.is_set():
            return True
        waiters = {asyncio.ensure_future(flag.wait()), asyncio.ensure_future(self._done.wait())}
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return flag.is_set()

    # ------------------------------------------------------------------------------------- supervision

    def _setup_listen(self) -> None:
        ls = self.spec.listen_spec
        host = ls.host or self.config.listen_host
        port = ls.port or _pick_port(host, self.config.listen_port_range)
        self._listen_port = port
        path = (ls.path or f"live/{slug(self.spec.recording_id)}").lstrip("/")
        public = self.config.public_host or host

        def url(h: str) -> str:
            h = f"[{h}]" if ":" in h else h
            if ls.protocol in ("rtmp", "http"):
                return f"{ls.protocol}://{h}:{port}/{path}"
            return f"{ls.protocol}://{h}:{port}"

        self._listen_url, self._push_url = url(host), url(public)

    def _max_total(self) -> float:
        limits = [self.config.max_duration_s]
        if self.spec.max_duration_s is not None:
            limits.append(self.spec.max_duration_s)
        return min(limits)

    async def _supervise(self) -> None:
        reason: EndReason = EndReason.ERROR
        detail = ""
        stop_step: str | None = None
        reconnects = 0
        try:
            while True:
                remaining = self._max_total() - self._recorded_before - self._run_recorded
                if self._stop_reason is not None:
                    reason, detail = self._stop_reason, "stop requested"
                    break
                if remaining < 0.5:
                    reason, detail = EndReason.MAX_DURATION, f"reached max_duration_s={self._max_total():g}"
                    break
                attempt = await self._run_part(remaining)
                assert attempt.reason is not None
                reason, detail, stop_step = attempt.reason, attempt.detail, attempt.stop_step
                retryable = attempt.reason in {EndReason.STALLED, EndReason.INPUT_TIMEOUT, EndReason.ERROR}
                retryable |= attempt.reason is EndReason.START_TIMEOUT and not self.spec.is_listen
                if not retryable or reconnects >= self.spec.reconnects or self._stop_reason is not None:
                    break
                backoff = self.config.reconnect_backoff_s[min(reconnects, len(self.config.reconnect_backoff_s) - 1)]
                reconnects += 1
                log.warning("recording %s: %s (%s); new part in %.1fs (%d/%d)", self.spec.recording_id,
                            attempt.reason, attempt.detail, backoff, reconnects, self.spec.reconnects)
                self._set_state(SessionState.RECONNECTING)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), backoff)
        except asyncio.CancelledError:
            reason, detail = EndReason.CANCELLED, "supervisor task cancelled"
            raise
        except Exception as exc:
            log.exception("recording %s: supervisor failed", self.spec.recording_id)
            reason, detail = EndReason.ERROR, f"supervisor error: {exc!r}"
        finally:
            recorded = self._run_recorded
            ok = reason.is_normal and (recorded > 0 or self._recorded_before > 0)
            self._result = RunResult(
                recording_id=self.spec.recording_id, lesson_id=self.spec.lesson_id, ok=ok, reason=reason,
                detail=detail, parts=tuple(self._parts_written), recorded_s=round(recorded, 3),
                total_recorded_s=round(self._recorded_before + recorded, 3),
                exit_codes=tuple(self._exit_codes), stop_step=stop_step, stderr_tail=tuple(self._stderr),
                push_url=self._push_url)
            self.ended_at = time.monotonic()
            self._lock.release()
            if _ACTIVE.get(self.key) is self:
                del _ACTIVE[self.key]
            self._spawned.set()
            self._set_state(SessionState.ENDED)
            self._done.set()
            log.info("recording %s ended: %s (%s), %.1fs in %d part(s)", self.spec.recording_id, reason,
                     detail, recorded, len(self._parts_written))

    async def _run_part(self, remaining: float) -> _Attempt:
        spec, config = self.spec, self.config
        assert self._binaries is not None
        index = self.paths.next_part_index()
        part = self.paths.part_path(index, PART_FORMATS[config.part_format])
        url = self._listen_url if spec.is_listen else spec.source_url
        assert url is not None
        cmd = build_record_command(
            self._binaries, url, part, input_timeout_s=spec.input_timeout_s, part_format=config.part_format,
            max_duration_s=remaining, listen=spec.is_listen, listen_timeout_s=spec.listen_timeout_s,
            realtime=spec.realtime, extra_input_options=spec.input_options,
            progress_period_s=config.progress_period_s, loglevel=config.loglevel,
            flush_packets=config.flush_packets)
        self._stderr.clear()
        attempt = self._attempt = _Attempt()
        if spec.is_listen:
            self._listening.clear()      # a new listener per part: the port reopens
        if free_bytes(self.paths.dir) < config.effective_stop_free_bytes:
            attempt.reason = EndReason.DISK_LOW
            attempt.detail = f"free space under {config.effective_stop_free_bytes} bytes"
            return attempt
        proc = await spawn_ffmpeg(cmd)
        self._proc = proc
        self.part_index = index
        t_spawn = time.monotonic()
        log.info("recording %s: ffmpeg pid=%s → %s", spec.recording_id, proc.pid, part)
        write_pid_file(self.paths, proc.pid, part)
        self._spawned.set()
        self._set_state(SessionState.STARTING)
        self._last_block_at, self._part_checked = t_spawn, (0, t_spawn)
        readers = [asyncio.create_task(self._read_progress(proc.stdout, index, t_spawn)),
                   asyncio.create_task(self._read_stderr(proc.stderr))]
        proc_wait = asyncio.create_task(proc.wait())
        stop_wait = asyncio.create_task(self._stop_event.wait())
        if spec.is_listen:
            start_limit = spec.listen_timeout_s + spec.input_timeout_s + 5
        else:
            start_limit = spec.start_timeout_s or (spec.input_timeout_s + spec.stall_timeout_s)
        next_disk_check = t_spawn + config.disk_check_period_s
        stall_hint = max(2.0, 4 * config.progress_period_s)
        try:
            while True:
                waiting_port = spec.is_listen and not self._listening.is_set()
                done, _ = await asyncio.wait({proc_wait, stop_wait}, timeout=0.1 if waiting_port else 1.0,
                                             return_when=asyncio.FIRST_COMPLETED)
                if proc_wait in done:
                    break
                now = time.monotonic()
                if stop_wait in done:
                    attempt.reason, attempt.detail = self._stop_reason or EndReason.STOPPED, "stop requested"
                elif waiting_port and is_listening(self._listen_port or 0,
                                                   udp=spec.listen_spec.protocol == "srt") is not False:
                    self._listening.set()
                    if not attempt.media_started:
                        self._set_state(SessionState.LISTENING)
                if attempt.reason is None:
                    await self._measure_silent_part(part, index, t_spawn)
                    now = time.monotonic()
                if attempt.reason is None and not attempt.media_started and now - t_spawn > start_limit:
                    attempt.reason = EndReason.START_TIMEOUT
                    attempt.detail = (f"no publisher within {spec.listen_timeout_s:g}s" if spec.is_listen
                                      else f"no media within {start_limit:g}s")
                elif attempt.reason is None and attempt.media_started:
                    if now - self._last_advance > spec.stall_timeout_s:
                        attempt.reason = EndReason.STALLED
                        attempt.detail = f"no progress for {spec.stall_timeout_s:g}s"
                    elif now - t_spawn > remaining + start_limit + spec.stall_timeout_s:
                        attempt.reason, attempt.detail = EndReason.MAX_DURATION, "wall-clock limit"
                if attempt.reason is None and now >= next_disk_check:
                    next_disk_check = now + config.disk_check_period_s
                    if free_bytes(self.paths.dir) < config.effective_stop_free_bytes:
                        attempt.reason = EndReason.DISK_LOW
                        attempt.detail = f"free space under {config.effective_stop_free_bytes} bytes"
                if attempt.reason is not None:
                    self._set_state(SessionState.STOPPING)
                    stalled = attempt.reason in {EndReason.STALLED, EndReason.START_TIMEOUT} or (
                        attempt.media_started and now - self._last_advance > stall_hint)
                    attempt.stop_step = await stop_process(proc, config.stop_graces, input_stalled=stalled)
                    break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc_wait), 5)
            _, pending = await asyncio.wait(readers, timeout=3)
            for task in pending:
                task.cancel()
        finally:
            stop_wait.cancel()
            if proc.returncode is None:         # cancelled mid-way: never leave FFmpeg behind
                kill_now(proc)
            for task in readers:
                task.cancel()
            if proc.returncode is not None:
                self.paths.pid_file.unlink(missing_ok=True)
        attempt.exit_code = proc.returncode
        if proc.returncode is not None:
            self._exit_codes.append(proc.returncode)
        self._classify(attempt, remaining)
        await self._settle_part(part, attempt)
        return attempt

    def _classify(self, attempt: _Attempt, remaining: float) -> None:
        if attempt.reason is not None:        # we stopped it; our reason stands
            return
        rc = attempt.exit_code
        text = "\n".join(self._stderr).lower()
        timed_out = "timed out" in text
        if not attempt.media_started:
            if timed_out and self.spec.is_listen:
                attempt.reason = EndReason.START_TIMEOUT
                attempt.detail = f"no publisher within {self.spec.listen_timeout_s:g}s"
            elif timed_out:
                attempt.reason = EndReason.INPUT_TIMEOUT
                attempt.detail = f"source silent for {self.spec.input_timeout_s:g}s (input timeout)"
            elif rc == 0:
                attempt.reason, attempt.detail = EndReason.SOURCE_ENDED, "source ended before any media"
            else:
                attempt.reason, attempt.detail = EndReason.ERROR, f"ffmpeg exited {rc} before any media"
        elif rc == 0:
            if attempt.out_time_s >= remaining - 0.5:
                attempt.reason, attempt.detail = EndReason.MAX_DURATION, f"recorded {remaining:.1f}s limit"
            elif timed_out:
                attempt.reason = EndReason.INPUT_TIMEOUT
                attempt.detail = f"source silent for {self.spec.input_timeout_s:g}s (input timeout)"
            else:
                attempt.reason, attempt.detail = EndReason.SOURCE_ENDED, "end of input"
        else:
            attempt.reason, attempt.detail = EndReason.ERROR, f"ffmpeg exited {rc}"

    async def _settle_part(self, part: Path, attempt: _Attempt) -> None:
        """Keep a part with media (add its probed duration), drop one without."""
        size = _file_size(part)
        if size is None:
            return
        duration = 0.0
        if size > 0:
            try:
                info = await probe(part, self._binaries)
                if info.has_video or info.has_audio:
                    duration = info.duration_s or 0.0
            except FFmpegError:
                duration = 0.0
        if duration <= 0 and attempt.out_time_s > 0:
            duration = attempt.out_time_s
        if duration > 0:
            self._run_recorded += duration
            self._parts_written.append(str(part))   # root is absolute
        elif self._proc is None or self._proc.returncode is not None:
            _remove(part)
        attempt.out_time_s = 0.0   # now counted in _run_recorded

    async def _measure_silent_part(self, part: Path, index: int, t_spawn: float) -> None:
        """FFmpeg before 7.0 reads, muxes and reports in one thread: while a read blocks (a stalled input,
        the wait for the next HLS segment) it writes no ``-progress`` block at all, and the last one may
        be seconds behind the part (a 6 s burst then silence reads as 0.02 s). 7.x reports on time from
        a thread of its own. So when FFmpeg has said nothing for a while and the part grew since the last
        look, measure the part itself: its probed duration is the media time written, its mtime the
        moment of the last write (what ``idle_s`` and stall detection count from)."""
        now = time.monotonic()
        quiet = max(1.0, 4 * self.config.progress_period_s)
        checked_size, checked_at = self._part_checked
        if now - self._last_block_at < quiet or now - checked_at < quiet:
            return
        try:
            st = os.stat(part)
        except FileNotFoundError:
            return
        if st.st_size == checked_size:
            return
        self._part_checked = (st.st_size, now)
        try:
            info = await probe(part, self._binaries, timeout_s=5)
        except (FFmpegError, TimeoutError):
            return
        if (info.has_video or info.has_audio) and info.duration_s:
            written_at = now - max(0.0, time.time() - st.st_mtime)
            block = Progress(out_time_s=info.duration_s, total_size=st.st_size, speed=None, bitrate_kbps=None,
                             frame=None, ended=False, measured=True)
            self._on_block(block, index, t_spawn, advanced_at=written_at)

    async def _read_progress(self, stream: asyncio.StreamReader | None, index: int, t_spawn: float) -> None:
        if stream is None:
            return
        parser = ProgressParser()
        buf = b""
        while chunk := await stream.read(65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                block = parser.feed(raw.decode(errors="replace"))
                if block is not None:
                    self._last_block_at = time.monotonic()
                    self._on_block(block, index, t_spawn)

    def _on_block(self, block: Progress, index: int, t_spawn: float, advanced_at: float | None = None) -> None:
        now = time.monotonic()
        at = now if advanced_at is None else advanced_at
        attempt = self._attempt
        out = block.out_time_s or 0.0
        if out > attempt.out_time_s + 1e-6:
            attempt.out_time_s = out
            self._last_advance = max(self._last_advance, at)
        if not attempt.media_started and out > 0:
            attempt.media_started = True
            self._last_advance = at
            if self.first_media_at is None:
                self.first_media_at = now
            self._started.set()
            self._listening.set()
            self._set_state(SessionState.RECORDING)
        wall = now - t_spawn
        speed = block.speed
        if speed is None and out > 0 and wall > 0:   # 5.1 says speed=N/A in its first block: FFmpeg's
            speed = round(out / wall, 3)             # own formula (media time / time since start)
        progress = replace(block, part_index=index, wall_s=round(wall, 3), speed=speed,
                           recorded_s=round(self._recorded_before + self._run_recorded + out, 3))
        if self.on_progress is not None:
            self._emit(self.on_progress, progress)

    async def _read_stderr(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        buf = b""
        while chunk := await stream.read(65536):
            buf += chunk
            *lines, buf = buf.replace(b"\r", b"\n").split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                if line:
                    self._stderr.append(line)
                    log.debug("ffmpeg[%s]: %s", self.spec.recording_id, line)
        if buf.strip():
            self._stderr.append(buf.decode(errors="replace").strip())

    def _set_state(self, state: SessionState) -> None:
        if self.state is state:
            return
        self.state = state
        if self.on_state is not None:
            self._emit(self.on_state, state, self)

    def _emit(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            result = callback(*args)
        except Exception:
            log.exception("recording %s: callback failed", self.spec.recording_id)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._cb_tasks.add(task)
            task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._cb_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("recording %s: async callback failed: %r", self.spec.recording_id, task.exception())


def _file_size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _pick_port(host: str, port_range: tuple[int, int]) -> int:
    taken = {s._listen_port for s in _ACTIVE.values()}
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in range(port_range[0], port_range[1] + 1):
        if port in taken:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port
    raise RecordingError("port", f"no free listen port on {host} in {port_range[0]}-{port_range[1]}")


# ------------------------------------------------------------------------------- process-wide control


def active_sessions() -> list[RecordingSession]:
    """Sessions of this process that have not ended."""
    return list(_ACTIVE.values())


def get_session(recording_id: str | None = None, *, lesson_id: str | None = None) -> RecordingSession | None:
    """The running session of a recording id, or of a lesson (``recording.stop`` may name either)."""
    if recording_id is None and lesson_id is None:
        raise ValueError("give recording_id or lesson_id")
    for (lesson, rec), session in _ACTIVE.items():
        if (recording_id is None or rec == recording_id) and (lesson_id is None or lesson == lesson_id):
            return session
    return None


async def stop_all(reason: EndReason | str = EndReason.SHUTDOWN,
                   timeout_s: float | None = None) -> list[RunResult]:
    """Stop every running session at once; bounded by the stop graces (or ``timeout_s``)."""
    sessions = active_sessions()
    for session in sessions:
        session.request_stop(reason)
    results = []
    for session in sessions:
        limit = timeout_s if timeout_s is not None else session.config.stop_graces.total + 15
        with contextlib.suppress(TimeoutError):
            results.append(await session.wait(limit))
    return results


async def finalize_all(timeout_s: float = 120.0, *, concurrency: int = 2,
                       reason: EndReason | str = EndReason.SHUTDOWN) -> dict[str, FinalizeResult]:
    """For SIGTERM: stop every running session, then join each one's parts. Keys are recording ids.

    A session not finalized within ``timeout_s`` gets ``ok=False, reason="timeout"`` (its parts stay;
    the job's re-run continues in a new part and finalizes later).
    """
    sessions = active_sessions()
    deadline = time.monotonic() + timeout_s
    await stop_all(reason, timeout_s=timeout_s)
    sem = asyncio.Semaphore(concurrency)

    async def one(session: RecordingSession) -> FinalizeResult:
        async with sem:
            return await session.finalize()

    tasks = {session.spec.recording_id: asyncio.create_task(one(session)) for session in sessions}
    if tasks:
        await asyncio.wait(tasks.values(), timeout=max(0.1, deadline - time.monotonic()))
    out: dict[str, FinalizeResult] = {}
    for session in sessions:
        task = tasks[session.spec.recording_id]
        if task.done() and not task.cancelled() and task.exception() is None:
            out[session.spec.recording_id] = task.result()
        else:
            task.cancel()
            out[session.spec.recording_id] = FinalizeResult(
                ok=False, recording_id=session.spec.recording_id, lesson_id=session.spec.lesson_id,
                reason="timeout", stderr_tail=(f"not finalized within {timeout_s:g}s",))
    return out
