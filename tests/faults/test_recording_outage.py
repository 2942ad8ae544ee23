"""A recording goes on through a Redis outage longer than its lease, and is never started twice.

Two recorder processes run; one supervises a real FFmpeg recording a source in real time. Redis is
stopped (its lease lapses meanwhile: the restarted server has expired it) or paused for 6 s, three
times the 2 s lease. The same FFmpeg keeps recording throughout, the other recorder does not take
the recording over once Redis is back (it waits a whole lease period of a working Redis, which the
holder uses to renew), and the finished recording is one part covering the outage.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from bridge.recording import locate_ffmpeg, probe
from bridge.store import RECORDER_QUEUE, recording_key
from tests.conftest import wait_until, worker_ready
from tests.faults.conftest import FaultRedis, fault_bridge
from tests.recording.conftest import ffmpeg_pids

pytestmark = pytest.mark.faults
LEASE_S = 2
OUTAGE_S = 6.0


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("media") / "lesson.ts"
    subprocess.run(
        [locate_ffmpeg().ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine=frequency=440",
         "-t", "40", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "64k", "-f", "mpegts", str(out)], check=True, timeout=120)
    return out


async def recorded(redis: aioredis.Redis, recording_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(recording_key(recording_id))).items()}


@pytest.mark.parametrize("fault", ["stop", "pause"])
async def test_a_recording_rides_out_an_outage_longer_than_its_lease(fault: str, fault_redis: FaultRedis,
                                                                      timed_receiver, tmp_path: Path,
                                                                      source: Path) -> None:
    hook, hook_url = timed_receiver
    bridge = fault_bridge(tmp_path, fault_redis.url, hook_url, extra=f"""
[recording]
dir = "{tmp_path / 'recordings'}"
min_free_bytes = 16777216
lease_s = {LEASE_S}
progress_period_s = 0.25
""")
    redis = aioredis.from_url(fault_redis.url)
    try:
        url = f"{bridge.start_web()}/v1/events/default"
        bridge.start_worker()
        bridge.start_worker("recorder")
        bridge.start_worker("recorder")
        await wait_until(lambda: worker_ready(redis, RECORDER_QUEUE), timeout=30)
        lesson = {"id": "c12-l7", "title": "Algebra I"}
        async with httpx.AsyncClient(timeout=15) as http:
            answer = await http.post(url, json={"id": "rec-1", "type": "recording.start", "lesson": lesson,
                                                "data": {"source_url": str(source)}})
            assert answer.status_code == 202, answer.text
            (started,) = await wait_until(lambda: hook.of_type("recording.started"), timeout=30)
            recording_id = started["data"]["recording_id"]

            async def under_way() -> bool:
                return float((await recorded(redis, recording_id)).get("recorded_s", 0)) >= 2

            await wait_until(under_way, timeout=30)
            (pid,) = ffmpeg_pids(recording_id)
            before = float((await recorded(redis, recording_id))["recorded_s"])

            # The outage, then three lease periods of a working Redis: one FFmpeg, always the same.
            if fault == "stop":
                fault_redis.stop()
            else:
                fault_redis.pause()
            seen: set[tuple[int, ...]] = set()
            deadline = time.monotonic() + OUTAGE_S
            while time.monotonic() < deadline:
                seen.add(tuple(ffmpeg_pids(recording_id)))
                await asyncio.sleep(0.2)
            if fault == "stop":
                fault_redis.start()
            else:
                fault_redis.resume()
            deadline = time.monotonic() + 3 * LEASE_S + 2
            while time.monotonic() < deadline:
                seen.add(tuple(ffmpeg_pids(recording_id)))
                await asyncio.sleep(0.2)
            assert seen == {(pid,)}, f"FFmpeg processes seen for the recording: {seen}"
            during = await recorded(redis, recording_id)
            assert during["part"] == "0"                      # never handed over: no second part
            assert float(during["recorded_s"]) >= before + OUTAGE_S * 0.8   # FFmpeg's own count went on

            answer = await http.post(url, json={"id": "stop-1", "type": "recording.stop", "lesson": lesson})
            assert answer.status_code == 202, answer.text
            (completed,) = await wait_until(lambda: hook.of_type("recording.completed"), timeout=40)
            await wait_until(lambda: hook.of_type("recording.ready"), timeout=40)
        dead = [p.args for p in bridge.workers if p.poll() is not None]
        assert not dead, f"processes exited: {dead}"
    finally:
        bridge.stop_all()
        await redis.aclose()
    data = completed["data"]
    assert len(data["parts"]) == 1
    stored = tmp_path / "recordings" / f"{recording_id}.mp4"     # local storage, once recording.ready is out
    info = await probe(stored, locate_ffmpeg())
    assert info.duration_s >= float(during["recorded_s"]) - 1   # the outage is in the file
    assert len(hook.of_type("recording.started")) == 1
    logs = bridge.logs()
    assert "recording.reclaimed" not in logs and "recording.lease_lost" not in logs
