"""Where a recording's files live, its parts, and the final join.

Layout under ``[recording] dir`` (the root)::

    <root>/<lesson slug>/<recording slug>/
        part-000.ts, part-001.ts, ...     one per FFmpeg run (a re-run after a crash adds a part)
        <lesson slug>--<recording slug>.mp4   the finalized file (written by finalize())
        final.json                        what finalize() joined, so a repeat returns the same answer
        .lock                             flock held by the supervisor while FFmpeg writes, and by finalize
        .ffmpeg.pid                       pid + part of the running FFmpeg (orphan clean-up on Linux)
        concat.txt                        the concat-demuxer list of the last join

A slug keeps ``[A-Za-z0-9_.-]``; anything else (or a long id) gets a hash suffix so two ids never share
a directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.recording.config import (
    FinalizeResult,
    InsufficientDiskSpace,
    RecorderConfig,
    RecordingError,
    select_ffmpeg,
)
from bridge.recording.ffmpeg import (
    PART_FORMATS,
    FFmpegBinaries,
    FFmpegError,
    ProbeResult,
    build_concat_command,
    concat_list_text,
    probe,
)
from bridge.recording.process import child_kwargs

try:
    import fcntl
except ImportError:          # pragma: no cover - Windows: no advisory lock, best effort
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("bridge.recording")

_SLUG_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_PART_RE = re.compile(r"^part-(\d{3,})\.(" + "|".join(PART_FORMATS.values()) + r")$")
MAX_SLUG = 80


def slug(value: str) -> str:
    """A file-name-safe, collision-free form of an id (deterministic: same id, same name)."""
    cleaned = _SLUG_BAD.sub("-", value).strip(".-")[:MAX_SLUG]
    if cleaned != value or not cleaned:
        cleaned = f"{cleaned}-{hashlib.sha256(value.encode()).hexdigest()[:8]}".lstrip("-")
    return cleaned


@dataclass(frozen=True)
class Part:
    index: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class RecordingPaths:
    root: Path
    lesson_id: str
    recording_id: str

    @property
    def dir(self) -> Path:
        return self.root / slug(self.lesson_id) / slug(self.recording_id)

    @property
    def final_file(self) -> Path:
        return self.dir / f"{slug(self.lesson_id)}--{slug(self.recording_id)}.mp4"

    @property
    def manifest(self) -> Path:
        return self.dir / "final.json"

    @property
    def lock_file(self) -> Path:
        return self.dir / ".lock"

    @property
    def pid_file(self) -> Path:
        return self.dir / ".ffmpeg.pid"

    def part_path(self, index: int, extension: str = "ts") -> Path:
        return self.dir / f"part-{index:03d}.{extension}"

    def parts(self) -> list[Part]:
        """Existing parts in recording order."""
        if not self.dir.is_dir():
            return []
        found = []
        for entry in self.dir.iterdir():
            if m := _PART_RE.match(entry.name):
                found.append(Part(int(m.group(1)), entry))
        return sorted(found, key=lambda p: p.index)

    def next_part_index(self) -> int:
        parts = self.parts()
        return parts[-1].index + 1 if parts else 0


# ---------------------------------------------------------------------------------------------- lock


class DirLock:
    """An exclusive flock on ``<dir>/.lock``: one writer per recording per host. The kernel drops it
    when the holder dies, and the descriptor is not inherited by FFmpeg (close-on-exec)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        if fcntl is None:
            self._fd = fd
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        return True

    async def acquire(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)            # closing drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None


# ------------------------------------------------------------------------------------ disk and orphans


def free_bytes(path: Path) -> int:
    probe_dir = path
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    return shutil.disk_usage(probe_dir).free


def check_free_space(path: Path, minimum: int, what: str = "start a recording") -> int:
    free = free_bytes(path)
    if free < minimum:
        raise InsufficientDiskSpace(
            f"cannot {what}: only {free / 2**20:.0f} MiB free under {path}, need at least "
            f"{minimum / 2**20:.0f} MiB (recording.min_free_bytes)")
    return free


def write_pid_file(paths: RecordingPaths, pid: int, part: Path) -> None:
    tmp = paths.pid_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid, "part": str(part)}))
    os.replace(tmp, paths.pid_file)


def _proc_cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def reap_orphan(paths: RecordingPaths, timeout_s: float = 5.0) -> int | None:
    """Kill an FFmpeg left by an earlier supervisor of this recording (only when /proc shows that it
    is an FFmpeg writing into this recording's directory, so a reused pid is never hit)."""
    try:
        info = json.loads(paths.pid_file.read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    cmdline = _proc_cmdline(pid)
    killed = None
    if cmdline and "ffmpeg" in cmdline and str(paths.dir) in cmdline and not process_gone(pid):
        log.warning("killing orphaned ffmpeg pid=%s of recording %s", pid, paths.recording_id)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while not process_gone(pid) and time.monotonic() < deadline:  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.05)
        killed = pid
    with contextlib.suppress(OSError):
        paths.pid_file.unlink()
    return killed


# ----------------------------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class ProbedPart:
    part: Part
    info: ProbeResult | None
    error: str | None = None

    @property
    def usable(self) -> bool:
        return (self.info is not None and (self.info.has_video or self.info.has_audio)
                and (self.info.duration_s or 0) > 0)


async def probe_parts(paths: RecordingPaths, binaries: FFmpegBinaries) -> list[ProbedPart]:
    out = []
    for part in paths.parts():
        try:
            if part.path.stat().st_size == 0:
                out.append(ProbedPart(part, None, "empty"))
                continue
            out.append(ProbedPart(part, await probe(part.path, binaries)))
        except (OSError, FFmpegError) as exc:
            out.append(ProbedPart(part, None, str(exc)))
    return out


async def recorded_duration(paths: RecordingPaths, binaries: FFmpegBinaries) -> float:
    return sum(p.info.duration_s or 0.0 for p in await probe_parts(paths, binaries) if p.usable and p.info)


# -------------------------------------------------------------------------------------------- finalize


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _part_fingerprint(parts: Sequence[Part]) -> list[list[object]]:
    fp = []
    for p in parts:
        st = p.path.stat()
        fp.append([p.name, st.st_size, st.st_mtime_ns])
    return fp


async def finalize(lesson_id: str, recording_id: str, config: RecorderConfig | None = None, *,
                   binaries: FFmpegBinaries | None = None, deep_verify: bool = True,
                   lock_timeout_s: float = 10.0, remove_parts: bool = False) -> FinalizeResult:
    """Join every part of a recording into one MP4, verify it with a probe, and describe it.

    Safe to repeat (arq is at-least-once): when the parts have not changed since the last successful
    join, the recorded answer is returned (``cached=True``); a part added since (a recording that
    continued) makes it join again. Never raises for media problems: ``ok=False`` with ``reason`` and
    FFmpeg's last stderr lines instead.
    """
    config = config or RecorderConfig()
    paths = RecordingPaths(config.dir, lesson_id, recording_id)
    base = {"recording_id": recording_id, "lesson_id": lesson_id}

    def fail(reason: str, detail: str = "", tail: Sequence[str] = (), **extra: object) -> FinalizeResult:
        lines = tuple(tail)[-config.stderr_tail_lines:]
        if detail:
            lines = (detail, *lines)
        log.warning("finalize %s/%s failed: %s %s", lesson_id, recording_id, reason, detail)
        return FinalizeResult(ok=False, reason=reason, stderr_tail=lines, **base, **extra)  # type: ignore[arg-type]

    try:
        binaries = binaries or select_ffmpeg(config)
    except RecordingError as exc:
        return fail(exc.code, str(exc))
    if not paths.dir.is_dir():
        return fail("no_media", f"no recording directory {paths.dir}")
    lock = DirLock(paths.lock_file)
    if not await lock.acquire(lock_timeout_s):
        return fail("busy", "the recording is still being written (its lock is held)")
    try:
        all_parts = paths.parts()
        fingerprint = _part_fingerprint(all_parts)
        cached = _cached_result(paths, fingerprint)
        if cached is not None:
            return cached
        probed = await probe_parts(paths, binaries)
        usable = [p for p in probed if p.usable]
        skipped = tuple(p.part.name for p in probed if not p.usable)
        if not usable:
            tails = [f"{p.part.name}: {p.error}" for p in probed if p.error]
            return fail("no_media", "no part holds readable audio or video", tails, skipped_parts=skipped)
        first = usable[0].info
        assert first is not None
        vcodec, acodec = first.codec("video"), first.codec("audio")
        odd = [p.part.name for p in usable
               if p.info and (p.info.codec("video"), p.info.codec("audio")) != (vcodec, acodec)]
        if odd:
            return fail("incompatible_parts",
                        f"parts {odd} differ in codecs from {usable[0].part.name} ({vcodec}, {acodec}); "
                        "they are kept, nothing was joined", skipped_parts=skipped)
        parts_bytes = sum(p.part.path.stat().st_size for p in usable)
        parts_duration = round(sum(p.info.duration_s or 0.0 for p in usable if p.info), 3)
        try:
            check_free_space(paths.dir, parts_bytes + 64 * 2**20, "join the parts")
        except InsufficientDiskSpace as exc:
            return fail("disk_space", str(exc), skipped_parts=skipped)

        list_file = paths.dir / "concat.txt"
        list_file.write_text(concat_list_text([p.part.name for p in usable]))
        final = paths.final_file
        tmp = final.with_name(final.stem + ".tmp.mp4")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        cmd = build_concat_command(binaries, list_file, tmp, audio_codec=acodec, video_codec=vcodec)
        try:
            rc, err = await _run(cmd, config.finalize_timeout_s)
        except TimeoutError:
            rc, err = -1, f"join took longer than {config.finalize_timeout_s:g} s (finalize_timeout_s)"
        if rc != 0 or not tmp.exists():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            return fail("join_failed", f"ffmpeg exited {rc} joining {len(usable)} part(s)",
                        err.splitlines(), skipped_parts=skipped)
        try:
            info = await probe(tmp, binaries, deep=deep_verify, timeout_s=config.finalize_timeout_s)
        except (FFmpegError, TimeoutError) as exc:
            tmp.unlink()
            return fail("verify_failed", str(exc) or "probe timed out", getattr(exc, "stderr_tail", ()),
                        skipped_parts=skipped)
        missing = [k for k, c in (("video", vcodec), ("audio", acodec)) if c and info.codec(k) is None]
        if missing or not (info.duration_s or 0) > 0:
            tmp.unlink()
            return fail("verify_failed", f"joined file lacks {missing or 'a duration'}", info.errors,
                        skipped_parts=skipped)
        os.replace(tmp, final)
        digest = await asyncio.to_thread(_sha256, final)
        result = FinalizeResult(
            ok=True, file=str(final.resolve()), bytes=final.stat().st_size,
            duration_s=round(info.duration_s or 0.0, 3), container="mp4", sha256=digest,
            parts=tuple(p.part.name for p in usable), parts_duration_s=parts_duration,
            skipped_parts=skipped, stderr_tail=tuple(info.errors[-config.stderr_tail_lines:]), **base)
        manifest = {"fingerprint": fingerprint, "result": result.as_dict()}
        tmp_manifest = paths.manifest.with_suffix(".tmp")
        tmp_manifest.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp_manifest, paths.manifest)
        if remove_parts:
            for p in usable:
                p.part.path.unlink(missing_ok=True)
        log.info("finalized %s: %.1fs, %d bytes from %d part(s)", final, result.duration_s, result.bytes,
                 len(usable))
        return result
    finally:
        lock.release()


def _cached_result(paths: RecordingPaths, fingerprint: list[list[object]]) -> FinalizeResult | None:
    try:
        manifest = json.loads(paths.manifest.read_text())
        data = manifest["result"]
        if manifest.get("fingerprint") != fingerprint:
            return None
        if not data.get("ok") or Path(data["file"]).stat().st_size != data["bytes"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    data["cached"] = True
    return FinalizeResult(**data)


async def _run(cmd: Sequence[str], timeout_s: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE, **child_kwargs())
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    return proc.returncode or 0, err.decode(errors="replace")
