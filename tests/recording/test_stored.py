"""Recordings into storage through real processes: web, worker and recorder (real FFmpeg), moto's S3 server.

Each test records the 8-second source once, with the bundled FFmpeg only: what is under test here is the
storage that follows FFmpeg, not FFmpeg.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bridge.processes import free_port
from bridge.recording.ffmpeg import FFmpegBinaries
from bridge.store import RECORDING_TTL_S, job_runs_key, recording_key
from tests.conftest import wait_until
from tests.recording.test_recorder_job import LESSON, recorder_config, start
from tests.storage.conftest import ACCESS_KEY, SECRET_KEY, MotoServer, s3_storage


async def ran(redis, ref: str, function: str) -> bool:
    return bool(await redis.hget(job_runs_key(ref), function))


async def test_local_recording_is_served_by_a_signed_link_then_deleted_once(
        make_bridge, client, redis, receiver, tmp_path, source_ts, media_bin: FFmpegBinaries) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(recorder_config(tmp_path, hook_url, media_bin))
    port = free_port()
    bridge.extra_env["PORT"] = str(port)        # public_url defaults to http://127.0.0.1:$PORT
    bridge.start_worker()
    bridge.start_worker("recorder")
    await start(client, bridge, source_ts)
    (completed,) = await wait_until(lambda: hook.of_type("recording.completed"), timeout=40)
    (ready,) = await wait_until(lambda: hook.of_type("recording.ready"), timeout=30)
    data, done = ready["data"], completed["data"]
    recording_id = done["recording_id"]
    assert (data["recording_id"], data["bytes"]) == (recording_id, done["bytes"])
    assert data["duration_s"] == done["duration_s"]
    assert (data["content_type"], data["origin"], data["event_id"]) == ("video/mp4", "bridge", "rec_1")
    assert data["url"].startswith(f"http://127.0.0.1:{port}/v1/recordings/{recording_id}?expires=")
    assert data["expires_at"].endswith("Z")
    assert not Path(done["file"]).exists()
    assert await redis.ttl(recording_key(recording_id)) == -1         # in storage: kept as long as the file
    # The recorder signed with the secret it found in Redis; web (another process) checks it with the same.
    link = urlsplit(data["url"])
    url = f"{bridge.base_url}{link.path}?{link.query}"
    fetched = await client.get(url)
    assert fetched.status_code == 200, fetched.text
    assert hashlib.sha256(fetched.content).hexdigest() == done["sha256"]
    assert (await client.get(url, headers={"Range": "bytes=0-9"})).content == fetched.content[:10]

    for event_id in ("del_1", "del_2"):          # the LMS deletes twice: one recording.deleted
        answer = await client.post(f"{bridge.base_url}/v1/events/default", json={
            "id": event_id, "type": "recording.delete", "lesson": LESSON, "data": {"recording_id": recording_id}})
        assert answer.status_code == 202, answer.text
        await wait_until(lambda e=event_id: ran(redis, f"default:{e}", "recording_delete"), timeout=20)
    answer = await client.post(f"{bridge.base_url}/v1/events/default", json={
        "id": "del_3", "type": "recording.delete", "lesson": LESSON, "data": {"recording_id": "rec_unknown"}})
    assert answer.status_code == 202
    (failed,) = await wait_until(lambda: hook.of_type("event.failed"), timeout=20)
    assert failed["data"]["error"]["code"] == "no_recording"
    (deleted,) = hook.of_type("recording.deleted")
    assert (deleted["data"]["recording_id"], deleted["data"]["event_id"]) == (recording_id, "del_1")
    assert (await client.get(url)).status_code == 404
    assert 0 < await redis.ttl(recording_key(recording_id)) <= RECORDING_TTL_S
    assert len(hook.of_type("recording.ready")) == 1
    bad = await client.post(f"{bridge.base_url}/v1/events/default", json={
        "id": "del_4", "type": "recording.delete", "lesson": LESSON, "data": {"recording_id": "../rec"}})
    assert bad.status_code == 400 and "recording_id" in bad.text


async def test_s3_outage_keeps_the_file_then_recording_ready_once_storage_is_back(
        make_bridge, client, redis, receiver, tmp_path, source_ts, media_bin: FFmpegBinaries) -> None:
    hook, hook_url = receiver
    moto = MotoServer(tmp_path / "moto.log")      # not started: storage is down when the recording ends
    bucket = "lesson-recordings"
    bridge = make_bridge(recorder_config(tmp_path, hook_url, media_bin, extra=f"""
[storage]
kind = "s3"
bucket = "{bucket}"
prefix = "recordings/"
endpoint_url = "{moto.url}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
"""))
    bridge.start_worker("recorder")
    try:
        await start(client, bridge, source_ts)
        (completed,) = await wait_until(lambda: hook.of_type("recording.completed"), timeout=40)
        done = completed["data"]
        await asyncio.sleep(3)                    # the upload is being retried meanwhile
        assert not hook.of_type("recording.ready") and not hook.of_type("recording.failed")
        assert hashlib.sha256(Path(done["file"]).read_bytes()).hexdigest() == done["sha256"]   # kept
        moto.start()
        async with httpx.AsyncClient() as s3:     # an empty bucket, as after a restart of the service
            storage = s3_storage(moto, bucket)
            await (await storage.client()).create_bucket(Bucket=bucket)
            await storage.aclose()
            (ready,) = await wait_until(lambda: hook.of_type("recording.ready"), timeout=40)
            assert ready["data"]["url"].startswith(f"{moto.url}/{bucket}/recordings/{done['recording_id']}.mp4?")
            fetched = await s3.get(ready["data"]["url"])
        assert fetched.status_code == 200
        assert hashlib.sha256(fetched.content).hexdigest() == done["sha256"]
        assert not Path(done["file"]).parent.exists()          # local copy gone after the verified upload
        assert len(hook.of_type("recording.ready")) == 1 and not hook.of_type("recording.failed")
    finally:
        moto.stop()
