"""Real FFmpeg fixtures: one generated source per test session, a recorder root per test, helpers that
wait on conditions with bounded deadlines (never fixed sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.recording import RecorderConfig, active_sessions, locate_ffmpeg
from bridge.recording.ffmpeg import FFmpegBinaries
from bridge.recording.process import is_listening

SOURCE_SECONDS = 8


@pytest.fixture(scope="session")
def ffbin() -> FFmpegBinaries:
    return locate_ffmpeg()


@pytest.fixture(scope="session")
def source_ts(ffbin: FFmpegBinaries, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 s of testsrc2 + sine, H.264 (1 s GOP) + AAC in MPEG-TS: cheap to make, real codecs."""
    out = tmp_path_factory.mktemp("media") / "source.ts"
    subprocess.run(
        [ffbin.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", str(SOURCE_SECONDS), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
         "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "mpegts", str(out)],
        check=True, timeout=60)
    return out


@pytest.fixture(scope="session")
def source_head(source_ts: Path) -> bytes:
    """The first ≈ 6 s of the source (FFmpeg probes up to 5 s of a TS stream before it writes)."""
    data = source_ts.read_bytes()
    return data[: len(data) * 6 // SOURCE_SECONDS // 188 * 188]


@pytest.fixture
def rec_config(tmp_path: Path) -> RecorderConfig:
    return RecorderConfig(root=tmp_path / "recordings", min_free_bytes=16 * 2**20, progress_period_s=0.25)


@pytest.fixture(autouse=True)
def _no_leftover_sessions() -> Iterator[None]:
    yield
    leftovers = active_sessions()
    for session in leftovers:
        if session.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(session.pid, signal.SIGKILL)
    assert not leftovers, f"test left recordings running: {[s.spec.recording_id for s in leftovers]}"



async def wait_for(cond: Callable[[], object], timeout_s: float, what: str, step: float = 0.05) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(step)


async def wait_listening(port: int, timeout_s: float = 10) -> None:
    await wait_for(lambda: is_listening(port), timeout_s, f"a listener on port {port}")


@contextlib.contextmanager
def running(cmd: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A helper FFmpeg (publisher / server) that is always killed and reaped."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


@contextlib.contextmanager
def stalling_server(payload: bytes) -> Iterator[int]:
    """A loopback TCP server that sends ``payload`` to each client, then nothing, keeping the
    connection open: a source that stalls mid-stream. Yields the port."""
    import threading

    stop = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    clients: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            clients.append(conn)
            with contextlib.suppress(OSError):
                conn.sendall(payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
        for conn in clients:
            conn.close()


def ffmpeg_pids(recording_id: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ffmpeg" in cmdline and recording_id.encode() in cmdline:
                pids.append(int(entry.name))
    return pids
