"""Recording through real processes: web → recorder (real FFmpeg) → signed webhooks, with crashes."""

from __future__ import annotations

import hashlib
import signal
import subprocess
from pathlib import Path

import pytest

from bridge.recorder import recording_id_for
from bridge.recording import RecordingPaths, probe
from bridge.recording.ffmpeg import FFmpegBinaries
from bridge.store import recording_key
from tests.conftest import default_config, wait_until
from tests.fakes.server import serve
from tests.providers.owt.sim import OwtSim
from tests.recording.conftest import CUT_TOLERANCE_S, FPS, GOP_S, SOURCE_SECONDS, choice, ffmpeg_pids, running
from tests.test_metrics import scrape, value

LESSON = {"id": "c12-l7", "title": "Algebra I"}
LONG_SECONDS = 40


def recorder_config(tmp_path: Path, hook_url: str, ffbin: FFmpegBinaries, extra: str = "") -> Path:
    """The usual test configuration plus a recording section with a short lease and the binary under test;
    `extra` goes after it (a [storage] table)."""
    config = default_config(tmp_path, hook_url)
    config.write_text(config.read_text() + f"""
[recording]
dir = "{tmp_path / 'recordings'}"
ffmpeg = "{choice(ffbin)}"
min_free_bytes = 16777216
lease_s = 3
progress_period_s = 0.25
{extra}""")
    return config


@pytest.fixture(scope="session")
def long_source(media_bin: FFmpegBinaries, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("media") / "long.ts"
    subprocess.run(
        [media_bin.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={FPS}", "-f", "lavfi", "-i", "sine=frequency=440",
         "-t", str(LONG_SECONDS), "-c:v", "libx264", "-preset", "ultrafast", "-g", str(round(GOP_S * FPS)),
         "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "mpegts", str(out)], check=True, timeout=120)
    return out


async def first_part_s(tmp_path: Path, recording_id: str, ffbin: FFmpegBinaries) -> float:
    """What ffprobe measures of part 0 once its recorder is gone."""
    part = RecordingPaths(tmp_path / "recordings", LESSON["id"], recording_id).part_path(0)
    info = await probe(part, ffbin)
    assert info.has_video and info.has_audio and info.duration_s, info
    return info.duration_s


async def start(client, bridge, source_url: Path, event_id: str = "rec_1") -> None:
    answer = await client.post(f"{bridge.base_url}/v1/events/default", json={
        "id": event_id, "type": "recording.start", "lesson": LESSON, "data": {"source_url": str(source_url)}})
    assert answer.status_code == 202, answer.text


async def stop(client, bridge) -> None:
    answer = await client.post(f"{bridge.base_url}/v1/events/default",
                               json={"id": "stop_1", "type": "recording.stop", "lesson": LESSON})
    assert answer.status_code == 202, answer.text


async def recording_under_way(client, bridge, redis, hook, source: Path, seconds: float) -> str:
    """Start recording `source`, wait for recording.started and `seconds` on disk; the recording id."""
    await start(client, bridge, source)
    (started,) = await wait_until(lambda: hook.of_type("recording.started"), timeout=30)
    recording_id = started["data"]["recording_id"]
    await wait_until(lambda: recorded_at_least(redis, recording_id, seconds), timeout=30)
    return recording_id


async def recorded(redis, recording_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(recording_key(recording_id))).items()}


async def recorded_at_least(redis, recording_id: str, seconds: float, part: int = 0) -> bool:
    record = await recorded(redis, recording_id)
    return float(record.get("recorded_s", 0)) >= seconds and int(record.get("part", -1)) >= part


async def check_file(hook, completed: dict, ffbin) -> float:
    """The finished recording, as `local` storage keeps it once recording.ready is out: FFmpeg's file
    and parts removed, the stored copy the same bytes."""
    data = completed["data"]
    (ready,) = await wait_until(lambda: hook.of_type("recording.ready"), timeout=30)
    assert (ready["data"]["recording_id"], ready["data"]["bytes"]) == (data["recording_id"], data["bytes"])
    path = Path(data["file"])
    assert path.is_absolute() and data["container"] == "mp4" and data["parts"]
    assert not path.parent.exists()
    stored = path.parents[2] / f"{data['recording_id']}.mp4"       # <[recording] dir>/<lesson>/<id>/<file>
    assert data["bytes"] == stored.stat().st_size
    assert data["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    info = await probe(stored, ffbin)
    assert info.has_video and info.has_audio
    assert abs(info.duration_s - data["duration_s"]) < 0.5
    return data["duration_s"]


async def test_pull_recording_start_and_stop_from_another_process(make_bridge, client, redis, receiver, tmp_path,
                                                                  long_source, ffbin) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(recorder_config(tmp_path, hook_url, ffbin))
    bridge.start_worker()
    bridge.start_worker("recorder")
    recording_id = await recording_under_way(client, bridge, redis, hook, long_source, seconds=4)
    await stop(client, bridge)                  # handled by the worker; the recorder stops FFmpeg
    (completed,) = await wait_until(lambda: hook.of_type("recording.completed"), timeout=40)
    duration = await check_file(hook, completed, ffbin)
    assert completed["data"]["recording_id"] == recording_id and completed["data"]["reason"] == "stopped"
    # At least what FFmpeg had reported when the stop was sent; stopped long before the source's end.
    assert 4 - CUT_TOLERANCE_S <= duration < LONG_SECONDS - 10
    assert Path(completed["data"]["file"]).is_relative_to(tmp_path / "recordings")


async def test_a_recording_under_way_is_no_job_left_waiting(make_bridge, client, redis, receiver, tmp_path,
                                                          long_source, ffbin) -> None:
    """The recorder queue runs on arq's own protocol, which keeps a running job in its queue: a recording
    supervised for an hour must not read on /metrics as a job that has waited an hour for a recorder."""
    hook, hook_url = receiver
    bridge = make_bridge(recorder_config(tmp_path, hook_url, ffbin))
    bridge.start_worker("recorder")
    await recording_under_way(client, bridge, redis, hook, long_source, seconds=2)
    samples = await scrape(client, bridge.base_url)
    assert value(samples, "bridge_queue_depth", queue="recorder") == 1
    assert value(samples, "bridge_queue_due", queue="recorder") == 1                    # due, and running
    assert value(samples, "bridge_queue_oldest_due_seconds", queue="recorder") == 0


async def test_source_that_ends_completes_with_its_full_length(make_bridge, client, redis, receiver, tmp_path,
                                                               source_ts, ffbin) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(recorder_config(tmp_path, hook_url, ffbin))
    bridge.start_worker("recorder")
    await start(client, bridge, source_ts)
    (completed,) = await wait_until(lambda: hook.of_type("recording.completed"), timeout=40)
    assert abs(await check_file(hook, completed, ffbin) - SOURCE_SECONDS) <= CUT_TOLERANCE_S


async def test_sigkilled_recorder_resumes_in_a_new_part(make_bridge, client, redis, receiver, tmp_path,
                                                        long_source, ffbin) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(recorder_config(tmp_path, hook_url, ffbin))
    bridge.start_worker()
    first = bridge.start_worker("recorder")
    recording_id = await recording_under_way(client, bridge, redis, hook, long_source, seconds=3)
    assert ffmpeg_pids(recording_id)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    await wait_until(lambda: not ffmpeg_pids(recording_id), timeout=10)     # no orphaned FFmpeg
    before = await first_part_s(tmp_path, recording_id, ffbin)
    bridge.start_worker("recorder")
    # The new recorder sees the lease lapse, takes the job back and records 2 s more in part 1
    # (recorded_s counts the whole recording: the parts on disk as probed, plus FFmpeg's progress).
    await wait_until(lambda: recorded_at_least(redis, recording_id, before + 2, part=1), timeout=60)
    await stop(client, bridge)
    (completed,) = await wait_until(lambda: hook.of_type("recording.completed"), timeout=40)
    assert len(completed["data"]["parts"]) >= 2
    assert await check_file(hook, completed, ffbin) >= before + 2 - CUT_TOLERANCE_S


async def test_sigterm_finalizes_then_the_next_recorder_continues(make_bridge, client, redis, receiver, tmp_path,
                                                                  long_source, ffbin) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(recorder_config(tmp_path, hook_url, ffbin))
    bridge.start_worker()
    first = bridge.start_worker("recorder")
    recording_id = await recording_under_way(client, bridge, redis, hook, long_source, seconds=3)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=25) == 0
    assert not ffmpeg_pids(recording_id)
    assert (await recorded(redis, recording_id))["status"] == "interrupted"
    finals = list((tmp_path / "recordings").rglob("*.mp4"))
    assert len(finals) == 1                                   # a playable file even if no recorder comes back
    assert (await probe(finals[0], ffbin)).duration_s >= 3 - CUT_TOLERANCE_S
    before = await first_part_s(tmp_path, recording_id, ffbin)
    bridge.start_worker("recorder")
    await wait_until(lambda: recorded_at_least(redis, recording_id, before + 2, part=1), timeout=30)
    await stop(client, bridge)
    (completed,) = await wait_until(lambda: hook.of_type("recording.completed"), timeout=40)
    assert await check_file(hook, completed, ffbin) >= before + 2 - CUT_TOLERANCE_S
    assert not hook.of_type("recording.failed")
    assert completed["data"]["event_id"] == "rec_1"


async def test_listen_mode_hands_out_a_push_url_that_records(make_bridge, client, redis, receiver, tmp_path,
                                                             source_ts, ffbin) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(recorder_config(tmp_path, hook_url, ffbin))
    bridge.start_worker("recorder")
    answer = await client.post(f"{bridge.base_url}/v1/events/default", json={
        "id": "rec_push", "type": "recording.start", "lesson": LESSON})       # no source_url: listen
    assert answer.status_code == 202
    (started,) = await wait_until(lambda: hook.of_type("recording.started"), timeout=30)
    push_url = started["data"]["push_url"]
    assert push_url.startswith("rtmp://127.0.0.1:")
    with running([ffbin.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-t", "4",
                  "-i", str(source_ts), "-c", "copy", "-f", "flv", push_url]):
        (completed,) = await wait_until(lambda: hook.of_type("recording.completed"), timeout=40)
    assert completed["data"]["reason"] == "source_ended"
    assert abs(await check_file(hook, completed, ffbin) - 4) <= CUT_TOLERANCE_S


async def test_a_failed_stream_out_leaves_no_ffmpeg_behind(make_bridge, client, redis, receiver, tmp_path,
                                                           ffbin) -> None:
    hook, hook_url = receiver
    sim = OwtSim("5f0c1a2b3c4d5e6f7a8b9c0d", "owt-service-key-for-tests")
    with serve(sim.app) as owt_url:
        config = recorder_config(tmp_path, hook_url, ffbin)
        config.write_text(config.read_text().replace('[providers.sandbox]\nkind = "sandbox"', f"""
[providers.owt]
kind = "owt"
base_url = "{owt_url}"
service_id = "5f0c1a2b3c4d5e6f7a8b9c0d"
service_key = "owt-service-key-for-tests"
""").replace('provider = "sandbox"', 'provider = "owt"'))
        bridge = make_bridge(config)
        bridge.start_worker("recorder")
        sim.inject(400, body={"error": {"code": 1201, "message": "bad url"}}, path="streaming-outs")
        answer = await client.post(f"{bridge.base_url}/v1/events/default", json={
            "id": "rec_owt", "type": "recording.start", "lesson": LESSON})        # listen + OWT streaming-out
        assert answer.status_code == 202
        (failed,) = await wait_until(lambda: hook.of_type("event.failed"), timeout=30)
    assert failed["data"]["error"]["code"] == "1201"
    recording_id = recording_id_for("default:rec_owt")
    assert not ffmpeg_pids(recording_id)
    assert (await recorded(redis, recording_id))["status"] == "failed"
