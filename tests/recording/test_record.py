"""Recording with real FFmpeg: pull (file, live HTTP), listen (RTMP, HTTP push), stalls, stop, finalize."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
import time
from pathlib import Path

import pytest

from bridge.processes import free_port
from bridge.recording import (
    EndReason,
    ListenSpec,
    RecorderConfig,
    RecordingBusy,
    RecordingSession,
    RecordingSpec,
    SessionState,
    active_sessions,
    finalize,
    finalize_all,
    get_session,
    probe,
)
from bridge.recording.ffmpeg import FFmpegBinaries, Progress
from bridge.recording.parts import DirLock
from tests.recording.conftest import (
    CUT_TOLERANCE_S,
    FRAME_S,
    choice,
    running,
    stalling_server,
    wait_for,
    wait_listening,
)

pytestmark = pytest.mark.timeout(60)


async def _assert_playable(path: str, ffbin: FFmpegBinaries, expected_s: float,
                           tolerance: float = CUT_TOLERANCE_S) -> None:
    info = await probe(path, ffbin, deep=True)
    assert info.has_video and info.has_audio, info
    assert info.codec("video") == "h264" and info.codec("audio") == "aac"
    assert info.duration_s == pytest.approx(expected_s, abs=tolerance), info


async def test_pull_file_in_real_time_then_finalize(source_ts: Path, rec_config: RecorderConfig,
                                                    ffbin: FFmpegBinaries) -> None:
    seen: list[Progress] = []
    states: list[SessionState] = []
    spec = RecordingSpec(recording_id="rec-1", lesson_id="moodle:lms.example.edu:7", source_url=str(source_ts),
                         realtime=True, max_duration_s=3)
    session = RecordingSession(spec, rec_config, on_progress=seen.append,
                               on_state=lambda state, _s: states.append(state))
    await session.start()
    assert session.pid is not None
    result = await session.wait(20)
    assert result.ok and result.reason is EndReason.MAX_DURATION, result
    assert result.recorded_s == pytest.approx(3, abs=2 * FRAME_S)      # -t 3 cuts at a packet
    assert [Path(p).name for p in result.parts] == ["part-000.ts"]
    assert states[0] is SessionState.STARTING and SessionState.RECORDING in states and states[-1] is SessionState.ENDED
    media = [p for p in seen if p.out_time_s]
    assert media and media[-1].total_size and media[-1].total_size > 0
    assert all(p.speed and p.speed > 0 for p in media), media      # 5.1's first block says speed=N/A
    assert all(b.recorded_s <= a.recorded_s + 1e-6 for b, a in itertools.pairwise(media))

    final = await session.finalize()
    assert final.ok and final.container == "mp4" and final.parts == ("part-000.ts",)
    assert Path(final.file).is_absolute() and Path(final.file).is_relative_to(rec_config.dir)
    data = await asyncio.to_thread(Path(final.file).read_bytes)
    assert final.bytes == len(data) and final.sha256 == hashlib.sha256(data).hexdigest()
    assert final.duration_s == pytest.approx(3, abs=CUT_TOLERANCE_S)
    await _assert_playable(final.file, ffbin, 3)
    again = await finalize(spec.lesson_id, spec.recording_id, rec_config)
    assert again.cached and again.sha256 == final.sha256

    # The recording already reached its max duration: a new run adds nothing.
    rerun = RecordingSession(spec, rec_config)
    result2 = await rerun.run()
    assert result2.reason is EndReason.MAX_DURATION and result2.parts == () and result2.ok


async def test_pull_live_http_stream_served_by_another_ffmpeg(source_ts: Path, rec_config: RecorderConfig,
                                                              ffbin: FFmpegBinaries) -> None:
    port = free_port()
    serve = [ffbin.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
             "-i", str(source_ts), "-c", "copy", "-f", "mpegts", "-listen", "1", f"http://127.0.0.1:{port}/live.ts"]
    with running(serve):
        await wait_listening(port)
        spec = RecordingSpec(recording_id="rec-http", lesson_id="c1-l2", input_timeout_s=5,
                             source_url=f"http://127.0.0.1:{port}/live.ts")
        session = RecordingSession(spec, rec_config)
        await session.start()
        assert await session.wait_started(15)
        await wait_for(lambda: session.recorded_s >= 2.5, 15, "2.5 s recorded")
        t0 = time.monotonic()
        stopper = threading.Thread(target=session.request_stop)   # e.g. a Redis watcher thread
        stopper.start()
        stopper.join(5)
        result = await session.wait(15)
        assert time.monotonic() - t0 < rec_config.stop_graces.q + 1
    assert result.ok and result.reason is EndReason.STOPPED and result.stop_step == "q", result
    final = await finalize(spec.lesson_id, spec.recording_id, rec_config)
    assert final.ok, final
    assert final.duration_s == pytest.approx(result.recorded_s, abs=CUT_TOLERANCE_S)
    assert final.duration_s >= 2.5 - CUT_TOLERANCE_S
    await _assert_playable(final.file, ffbin, result.recorded_s)


@pytest.mark.parametrize(("protocol", "muxer"), [("rtmp", "flv"), ("http", "mpegts")])
async def test_listen_mode_records_a_push(protocol: str, muxer: str, source_ts: Path,
                                          rec_config: RecorderConfig, ffbin: FFmpegBinaries) -> None:
    port = free_port()
    spec = RecordingSpec(recording_id=f"push-{protocol}", lesson_id="lesson-push", listen_timeout_s=20,
                         listen=ListenSpec(protocol=protocol, port=port), input_timeout_s=5)
    session = RecordingSession(spec, rec_config)
    await session.start()
    assert session.push_url and session.push_url.startswith(f"{protocol}://127.0.0.1:{port}/")
    assert await session.wait_listening(10) and session.state is SessionState.LISTENING
    publish = [ffbin.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-t", "3",
               "-i", str(source_ts), "-c", "copy", "-f", muxer, session.push_url]
    with running(publish):
        result = await session.wait(25)
    assert result.ok and result.reason is EndReason.SOURCE_ENDED, result
    assert result.push_url == session.push_url
    final = await session.finalize()
    assert final.ok and final.duration_s == pytest.approx(3, abs=CUT_TOLERANCE_S), final
    await _assert_playable(final.file, ffbin, 3)


async def test_stop_while_the_input_is_stalled_is_bounded_and_keeps_a_valid_part(
        source_head: bytes, source_head_s: float, rec_config: RecorderConfig, ffbin: FFmpegBinaries) -> None:
    with stalling_server(source_head) as port:             # ≈ 6 s of media, then silence
        spec = RecordingSpec(recording_id="rec-stalled", lesson_id="l-stall",
                             source_url=f"tcp://127.0.0.1:{port}",
                             input_timeout_s=60, stall_timeout_s=60)          # neither may help here
        session = RecordingSession(spec, rec_config)
        await session.start()
        assert await session.wait_started(15)
        # FFmpeg < 7 reports nothing while its read blocks: the session measures the part itself.
        await wait_for(lambda: session.recorded_s >= source_head_s - CUT_TOLERANCE_S, 15,
                       "the burst to be written")
        await wait_for(lambda: (session.idle_s or 0) > 2.5, 10, "the input to be seen stalled")
        assert session.pid is not None             # still running: neither timeout has fired
        t0 = time.monotonic()
        result = await session.stop()
        elapsed = time.monotonic() - t0
    graces = rec_config.stop_graces
    # q cannot unblock the read; the supervisor knows the input is stalled and escalates quickly
    assert elapsed < graces.q_stalled + graces.sigint_stalled + graces.sigint2 + graces.sigkill + 1.5
    assert result.reason is EndReason.STOPPED and result.ok, result
    assert result.stop_step in {"SIGINT", "SIGINT2", "SIGKILL"}, result
    final = await session.finalize()
    assert final.ok, final
    await _assert_playable(final.file, ffbin, result.recorded_s)
    # An abort can drop the muxer's unflushed tail (< 1 GOP); everything before it is kept and playable.
    assert source_head_s - CUT_TOLERANCE_S <= final.duration_s <= source_head_s + FRAME_S, (final, result)


async def test_stall_is_detected_reconnects_into_a_new_part_then_fails(
        source_head: bytes, source_head_s: float, tmp_path: Path, ffbin: FFmpegBinaries) -> None:
    config = RecorderConfig(dir=tmp_path / "rec", min_free_bytes=2**20, progress_period_s=0.25,
                            reconnect_backoff_s=(0.2,), ffmpeg=choice(ffbin))
    states: list[SessionState] = []
    with stalling_server(source_head) as port:             # ≈ 6 s per connection, then silence
        spec = RecordingSpec(recording_id="rec-stall-detect", lesson_id="l-stall",
                             source_url=f"tcp://127.0.0.1:{port}", input_timeout_s=60, stall_timeout_s=1.5,
                             reconnects=1)
        session = RecordingSession(spec, config, on_state=lambda s, _: states.append(s))
        await session.start()
        result = await session.wait(30)
    assert result.reason is EndReason.STALLED and not result.ok, result
    assert [Path(p).name for p in result.parts] == ["part-000.ts", "part-001.ts"]
    assert SessionState.RECONNECTING in states
    final = await session.finalize()         # what was recorded is still usable
    assert final.ok and final.parts == ("part-000.ts", "part-001.ts"), final
    assert final.duration_s == pytest.approx(final.parts_duration_s, abs=CUT_TOLERANCE_S)
    assert final.duration_s >= 2 * (source_head_s - CUT_TOLERANCE_S)     # each connection's burst


async def test_input_timeout_from_ffmpeg_itself(source_head: bytes, rec_config: RecorderConfig) -> None:
    with stalling_server(source_head) as port:
        spec = RecordingSpec(recording_id="rec-rw", lesson_id="l-rw", source_url=f"tcp://127.0.0.1:{port}",
                             input_timeout_s=1, stall_timeout_s=60, reconnects=0)
        session = RecordingSession(spec, rec_config)
        result = await session.run()
    assert result.reason is EndReason.INPUT_TIMEOUT and result.stop_step is None, result
    assert any("timed out" in line.lower() for line in result.stderr_tail)
    assert len(result.parts) == 1


async def test_unreachable_source_fails_with_ffmpeg_stderr_and_no_part(rec_config: RecorderConfig) -> None:
    port = free_port()                 # nothing listens there
    spec = RecordingSpec(recording_id="rec-refused", lesson_id="l-x", source_url=f"rtmp://127.0.0.1:{port}/a/b",
                         input_timeout_s=3, reconnects=0)
    result = await RecordingSession(spec, rec_config).run()
    assert result.reason is EndReason.ERROR and not result.ok and result.parts == ()
    assert result.exit_codes and result.exit_codes[0] != 0
    assert any("refused" in line.lower() or "error" in line.lower() for line in result.stderr_tail), result
    final = await finalize("l-x", "rec-refused", rec_config)
    assert not final.ok and final.reason == "no_media"
    missing = await finalize("l-none", "rec-none", rec_config)
    assert not missing.ok and missing.reason == "no_media"


async def test_finalize_all_stops_and_finalizes_every_session(source_ts: Path, rec_config: RecorderConfig,
                                                              ffbin: FFmpegBinaries) -> None:
    sessions = []
    for i in range(2):
        spec = RecordingSpec(recording_id=f"rec-all-{i}", lesson_id="l-all", source_url=str(source_ts),
                             realtime=True, input_options={"stream_loop": -1})
        session = RecordingSession(spec, rec_config)
        await session.start()
        sessions.append(session)
    with pytest.raises(RecordingBusy):            # one supervisor per recording, in-process ...
        await RecordingSession(sessions[0].spec, rec_config).start()
    other = DirLock(sessions[0].paths.lock_file)  # ... and across processes (flock)
    assert not other.try_acquire()
    assert get_session("rec-all-1") is sessions[1] and get_session(lesson_id="l-all") in sessions
    assert get_session("rec-all-1", lesson_id="other") is None
    await wait_for(lambda: all(s.recorded_s >= 1.5 for s in sessions), 15, "both recording")
    results = await finalize_all(timeout_s=30)
    assert set(results) == {"rec-all-0", "rec-all-1"}
    for session in sessions:
        final = results[session.spec.recording_id]
        assert session.result and session.result.reason is EndReason.SHUTDOWN and session.result.ok
        assert final.ok and final.duration_s == pytest.approx(session.result.recorded_s, abs=CUT_TOLERANCE_S), final
        await _assert_playable(final.file, ffbin, final.duration_s, tolerance=0.1)
    assert active_sessions() == []
    assert other.try_acquire()
    other.release()
