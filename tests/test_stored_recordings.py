"""The storage jobs in-process, against the real Redis, a real webhook receiver and real HTTP on loopback:
a storage outage outlasting the retry budget, and retention."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest
from arq.connections import ArqRedis

from bridge.config import load_settings
from bridge.http_transport import ConnectionPerRequestTransport
from bridge.lifecycle import Job, Runtime
from bridge.providers.base import ProviderError
from bridge.recorder import recording_id_for
from bridge.recording import RecordingPaths
from bridge.storage import LocalStorage, S3Storage, Storage
from bridge.store import RECORDING_TTL_S, STORED_RECORDINGS, recording_key
from bridge.stored_recordings import retention_job, store_finished
from tests.conftest import default_config, wait_until
from tests.fakes.server import free_port

LESSON = {"id": "c12-l7", "title": "Algebra I", "provider": "sandbox"}


async def runtime(tmp_path: Path, hook_url: str, redis: ArqRedis, storage: Storage, extra: str = "") -> Runtime:
    config = default_config(tmp_path, hook_url)
    config.write_text(config.read_text() + extra)
    settings = load_settings({"BRIDGE_CONFIG": str(config)})
    transport = ConnectionPerRequestTransport()
    return Runtime(settings=settings, redis=redis, http=httpx.AsyncClient(transport=transport), webhooks=transport,
                   providers={}, storage=storage)


def finished_file(rt: Runtime, recording_id: str) -> Path:
    paths = RecordingPaths(rt.settings.recording.dir, LESSON["id"], recording_id)
    paths.dir.mkdir(parents=True)
    paths.final_file.write_bytes(b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 40)
    return paths.final_file


async def test_an_outage_past_the_retry_budget_sends_recording_failed_and_keeps_the_file(
        tmp_path, arq_redis, receiver) -> None:
    hook, hook_url = receiver
    down = S3Storage("lesson-recordings", "key", "secret", endpoint_url=f"http://127.0.0.1:{free_port()}",
                     retry_budget_s=0.5)
    rt = await runtime(tmp_path, hook_url, arq_redis, down)
    ref = "default:rec_1"
    recording_id = recording_id_for(ref)
    file = finished_file(rt, recording_id)
    await arq_redis.hset(recording_key(recording_id), mapping={
        "file": str(file), "sha256": hashlib.sha256(file.read_bytes()).hexdigest(), "bytes": file.stat().st_size})
    event = {"id": "rec_1", "type": "recording.start", "lesson": LESSON, "data": {}}
    source = rt.settings.sources["default"]

    with pytest.raises(ProviderError) as retried:            # tries left: the job's back-off tries again
        await store_finished(Job(rt, source, ref, event, None), recording_id)
    assert retried.value.retryable and retried.value.code == "storage_unavailable"
    last = Job(rt, source, ref, event, None, last_try=True)
    assert await store_finished(last, recording_id) == "store_failed"
    await last.flush()
    (failed,) = await wait_until(lambda: hook.of_type("recording.failed"))
    assert (failed["data"]["recording_id"], failed["data"]["reason"]) == (recording_id, "storage_unavailable")
    assert file.is_file() and not hook.of_type("recording.ready")
    await down.aclose()
    await rt.http.aclose()


async def test_retention_deletes_recordings_older_than_retention_days_once_each(
        tmp_path, arq_redis, receiver) -> None:
    hook, hook_url = receiver
    storage = LocalStorage(tmp_path / "stored", "http://127.0.0.1:8000", "a-link-secret-for-tests")
    rt = await runtime(tmp_path, hook_url, arq_redis, storage, extra="[storage]\nretention_days = 2\n")
    now = time.time()
    for recording_id, age_days in (("rec_old", 3), ("rec_new", 1)):
        await storage.upload(recording_id, finished_file(rt, recording_id))
        await arq_redis.hset(recording_key(recording_id), mapping={
            "source": "default", "event_id": f"evt_{recording_id}", "lesson_id": LESSON["id"], "provider": "sandbox"})
        await arq_redis.zadd(STORED_RECORDINGS, {recording_id: now - age_days * 86400})

    assert await retention_job({"bridge": rt}) == 1
    assert storage.find("rec_old") is None and storage.find("rec_new") is not None
    (deleted,) = await wait_until(lambda: hook.of_type("recording.deleted"))
    assert (deleted["data"]["recording_id"], deleted["data"]["event_id"]) == ("rec_old", "evt_rec_old")
    assert await retention_job({"bridge": rt}) == 0            # nothing old is left: no second webhook
    assert len(hook.of_type("recording.deleted")) == 1
    assert await arq_redis.zrange(STORED_RECORDINGS, 0, -1) == [b"rec_new"]
    assert 0 < await arq_redis.ttl(recording_key("rec_old")) <= RECORDING_TTL_S      # its file is gone
    assert await arq_redis.ttl(recording_key("rec_new")) == -1                       # as long as its file
    await rt.http.aclose()
