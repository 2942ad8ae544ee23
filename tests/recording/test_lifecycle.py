"""Process life cycle: a SIGKILLed supervisor leaves no FFmpeg behind and the recording continues in a
new part; an orphan from elsewhere is reaped; SIGTERM finalizes every running recording."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from bridge.recording import PDEATHSIG_AVAILABLE, RecorderConfig, RecordingSession, RecordingSpec, probe
from bridge.recording.ffmpeg import FFmpegBinaries
from bridge.recording.parts import RecordingPaths, process_gone, write_pid_file
from tests.recording.conftest import CUT_TOLERANCE_S, choice, wait_for

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]

# The supervising process: records a looping source in real time and reports on stdout.
CHILD = """
import asyncio, json, sys
from bridge.recording import RecorderConfig, RecordingSession, RecordingSpec

async def main():
    root, source, ffmpeg = sys.argv[1], sys.argv[2], sys.argv[3]
    config = RecorderConfig(dir=root, min_free_bytes=2**20, progress_period_s=0.25, ffmpeg=ffmpeg)
    spec = RecordingSpec(recording_id="rec-kill", lesson_id="l-kill", source_url=source, realtime=True,
                         input_options={"stream_loop": -1})
    def report(p):
        print(json.dumps({"pid": session.pid, "recorded": p.recorded_s}), flush=True)
    session = RecordingSession(spec, config, on_progress=report)
    await session.start()
    await asyncio.sleep(50)          # killed long before

asyncio.run(main())
"""


def _spec(source: Path) -> RecordingSpec:
    return RecordingSpec(recording_id="rec-kill", lesson_id="l-kill", source_url=str(source), realtime=True,
                         input_options={"stream_loop": -1})


@pytest.mark.skipif(not PDEATHSIG_AVAILABLE, reason="needs Linux PR_SET_PDEATHSIG")
async def test_sigkilled_supervisor_takes_ffmpeg_along_and_the_rerun_adds_a_part(
        source_ts: Path, rec_config: RecorderConfig, ffbin: FFmpegBinaries) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(rec_config.dir), str(source_ts), choice(ffbin), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    ffmpeg_pid = None
    try:
        async with asyncio.timeout(20):
            while True:
                line = await child.stdout.readline()
                assert line, "the supervising child exited early"
                report = json.loads(line)
                ffmpeg_pid = report["pid"] or ffmpeg_pid
                if report["recorded"] >= 2.0:
                    break
        assert ffmpeg_pid and not process_gone(ffmpeg_pid)
        child.kill()                                     # SIGKILL: no Python clean-up runs
        await asyncio.wait_for(child.wait(), 10)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    await wait_for(lambda: process_gone(ffmpeg_pid), 5, f"ffmpeg pid {ffmpeg_pid} to die with its parent")

    paths = RecordingPaths(rec_config.dir, "l-kill", "rec-kill")
    first = await probe(paths.part_path(0), ffbin)       # a part cut by SIGKILL is still readable
    assert first.has_video and first.has_audio and (first.duration_s or 0) >= 2.0 - CUT_TOLERANCE_S

    session = RecordingSession(_spec(source_ts), rec_config)   # the job's re-run
    await session.start()
    await wait_for(lambda: session.recorded_s >= first.duration_s + 2, 15, "2 s more in the new part")
    result = await session.stop()
    assert result.ok and [Path(p).name for p in result.parts] == ["part-001.ts"], result
    assert result.total_recorded_s == pytest.approx(first.duration_s + result.recorded_s, abs=0.01)

    final = await session.finalize()
    assert final.ok and final.parts == ("part-000.ts", "part-001.ts"), final
    second = await probe(paths.part_path(1), ffbin)
    assert final.duration_s == pytest.approx(first.duration_s + second.duration_s, abs=CUT_TOLERANCE_S)
    played = await probe(final.file, ffbin, deep=True)
    assert played.has_video and played.has_audio
    assert played.duration_s == pytest.approx(final.duration_s, abs=0.1)


async def test_a_surviving_ffmpeg_of_the_recording_is_reaped_on_the_next_start(
        source_ts: Path, rec_config: RecorderConfig, ffbin: FFmpegBinaries) -> None:
    """Without PDEATHSIG (other platforms) an FFmpeg may survive its supervisor; the next supervisor
    of the same recording finds it through .ffmpeg.pid and /proc and kills it before writing."""
    paths = RecordingPaths(rec_config.dir, "l-kill", "rec-kill")
    paths.dir.mkdir(parents=True)
    orphan_part = paths.part_path(0)
    orphan = await asyncio.create_subprocess_exec(
        ffbin.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
        "-i", str(source_ts), "-c", "copy", "-f", "mpegts", str(orphan_part),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        write_pid_file(paths, orphan.pid, orphan_part)
        await wait_for(lambda: _size(orphan_part) > 50_000, 10, "orphan output")
        session = RecordingSession(_spec(source_ts), rec_config)
        await session.start()
        await asyncio.wait_for(orphan.wait(), 5)          # killed by the new supervisor
        assert orphan.returncode == -9 and session.part_index == 1
        # A stop before the new FFmpeg wrote anything leaves no part: FFmpeg 5.1 acts on 'q' before it
        # muxes the packets it read while probing the input, 7.x usually after. Wait for media.
        assert await session.wait_started(15)
        result = await session.stop()
        assert result.ok and [Path(p).name for p in result.parts] == ["part-001.ts"]
        assert not paths.pid_file.exists() and _size(orphan_part) > 0
    finally:
        if orphan.returncode is None:
            orphan.kill()
            await orphan.wait()


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


# A recorder process that finalizes everything on SIGTERM, the way the recorder worker should.
SIGTERM_CHILD = """
import asyncio, json, signal, sys
from bridge.recording import RecorderConfig, RecordingSession, RecordingSpec, finalize_all

async def main():
    root, source, ffmpeg = sys.argv[1], sys.argv[2], sys.argv[3]
    config = RecorderConfig(dir=root, min_free_bytes=2**20, progress_period_s=0.25, ffmpeg=ffmpeg)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    sessions = []
    for i in range(2):
        spec = RecordingSpec(recording_id=f"rec-term-{i}", lesson_id="l-term", source_url=source,
                             realtime=True, input_options={"stream_loop": -1})
        session = RecordingSession(spec, config)
        await session.start()
        sessions.append(session)
    while min(s.recorded_s for s in sessions) < 1.5:
        await asyncio.sleep(0.05)
    print(json.dumps({"recording": True}), flush=True)
    await asyncio.wait_for(done.wait(), 30)
    results = await finalize_all(timeout_s=30)
    print(json.dumps({k: v.as_dict() for k, v in results.items()}), flush=True)

asyncio.run(main())
"""


async def test_sigterm_finalizes_every_running_recording(source_ts: Path, rec_config: RecorderConfig,
                                                          ffbin: FFmpegBinaries) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SIGTERM_CHILD, str(rec_config.dir), str(source_ts), choice(ffbin), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 20)
        assert json.loads(line) == {"recording": True}
        child.send_signal(signal.SIGTERM)
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert await asyncio.wait_for(child.wait(), 10) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    results = json.loads(line)
    assert set(results) == {"rec-term-0", "rec-term-1"}
    for final in results.values():
        assert final["ok"] and final["container"] == "mp4" and final["duration_s"] >= 1.5, final
        info = await probe(final["file"], ffbin, deep=True)
        assert info.has_video and info.has_audio
        assert info.duration_s == pytest.approx(final["duration_s"], abs=0.1)
