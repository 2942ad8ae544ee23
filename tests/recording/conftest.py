"""Real FFmpeg fixtures: one generated source per test session, a recorder root per test, helpers that
wait on conditions with bounded deadlines (never fixed sleeps).

Every test that records runs once per FFmpeg binary in ``BINARIES``: the bundled (imageio-ffmpeg) one
always, and the distribution's ``ffmpeg`` on PATH when one is installed and in the supported range. The
binaries and their versions are printed at the end of the run. Test media are made once, by the bundled
binary, so the binaries under test differ only in how they record.

Durations are judged by what FFmpeg and ffprobe report, never by wall-clock time; tolerances come from
the generated input (frame, GOP, audio frame), so a loaded machine gives the same verdict as an idle one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.recording import SUPPORTED, RecorderConfig, active_sessions, locate_ffmpeg
from bridge.recording.ffmpeg import FFmpegBinaries, unsupported
from bridge.recording.process import is_listening
from tests.conftest import SESSION_TMP_VAR

SOURCE_SECONDS = 8
FPS = 25
GOP_S = 1.0                        # -g 25 at 25 fps: a stream copy can only start on a key frame
AUDIO_FRAME_S = 1024 / 48000       # one AAC frame
FRAME_S = max(1 / FPS, AUDIO_FRAME_S)
# A cut part may lose or gain up to one GOP at a stop/kill (unflushed tail, key-frame start) plus a frame
# of each kind where probes measure to the end of the last packet.
CUT_TOLERANCE_S = GOP_S + 2 * FRAME_S


def _binaries() -> dict[str, FFmpegBinaries]:
    """``bundled`` always; ``system`` when PATH has another ffmpeg in the supported range."""
    found = {"bundled": locate_ffmpeg("bundled")}
    system = shutil.which("ffmpeg")
    if system and os.path.realpath(system) != os.path.realpath(found["bundled"].ffmpeg):
        candidate = locate_ffmpeg(system)
        if unsupported(candidate):
            SKIPPED_BINARIES.extend(unsupported(candidate))
        else:
            found["system"] = candidate
    return found


SKIPPED_BINARIES: list[str] = []
BINARIES = _binaries()


def choice(binaries: FFmpegBinaries) -> str:
    """The ``[recording] ffmpeg`` value that selects ``binaries``."""
    return "bundled" if binaries.origin == "imageio-ffmpeg" else binaries.ffmpeg


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [f"  {name}: {b.describe()}" for name, b in BINARIES.items()]
    lines += [f"  not tested (outside {SUPPORTED}): {note}" for note in SKIPPED_BINARIES]
    terminalreporter.write_line("recording tests ran against FFmpeg " + f"{SUPPORTED}:\n" + "\n".join(lines))


def _param_id(name: str) -> str:
    release = BINARIES[name].version
    return f"{name}-{release[0]}.{release[1]}" if release else name


@pytest.fixture(scope="session", params=sorted(BINARIES), ids=_param_id)
def ffbin(request: pytest.FixtureRequest) -> FFmpegBinaries:
    return BINARIES[request.param]


@pytest.fixture(scope="session")
def media_bin() -> FFmpegBinaries:
    return BINARIES["bundled"]


@pytest.fixture(scope="session")
def source_ts(media_bin: FFmpegBinaries, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 s of testsrc2 + sine, H.264 (1 s GOP) + AAC in MPEG-TS: cheap to make, real codecs."""
    out = tmp_path_factory.mktemp("media") / "source.ts"
    subprocess.run(
        [media_bin.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={FPS}",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", str(SOURCE_SECONDS), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
         "-g", str(round(GOP_S * FPS)), "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "mpegts",
         str(out)],
        check=True, timeout=60)
    return out


@pytest.fixture(scope="session")
def source_head(source_ts: Path) -> bytes:
    """The first ≈ 6 s of the source (FFmpeg probes up to 5 s of a TS stream before it writes)."""
    data = source_ts.read_bytes()
    return data[: len(data) * 6 // SOURCE_SECONDS // 188 * 188]


@pytest.fixture(scope="session")
def source_head_s(source_head: bytes, media_bin: FFmpegBinaries, tmp_path_factory: pytest.TempPathFactory) -> float:
    """The media duration of ``source_head`` as ffprobe/FFmpeg measure it (to the last packet's end)."""
    from bridge.recording import probe

    path = tmp_path_factory.mktemp("media") / "head.ts"
    path.write_bytes(source_head)
    info = asyncio.run(probe(path, media_bin, deep=True))
    assert info.duration_s and info.duration_s > 5, info
    return info.duration_s


@pytest.fixture
def rec_config(tmp_path: Path, ffbin: FFmpegBinaries) -> RecorderConfig:
    return RecorderConfig(dir=tmp_path / "recordings", min_free_bytes=16 * 2**20, progress_period_s=0.25,
                          ffmpeg=choice(ffbin), ffprobe=ffbin.ffprobe or "none")


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
    """FFmpeg processes of this test session recording `recording_id` (ids repeat across sessions)."""
    session_tmp = os.environ[SESSION_TMP_VAR].encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ffmpeg" in cmdline and recording_id.encode() in cmdline and session_tmp in cmdline:
                pids.append(int(entry.name))
    return pids
