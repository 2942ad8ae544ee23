"""Finished recordings into storage and out of it: the upload that leads to `recording.ready`,
`recording.delete` and retention, each leading to one `recording.deleted`.

The upload is its own job (`recording_store`, on the recorder queue, enqueued under a deterministic id
once FFmpeg's file is final): a storage outage is retried with the job's back-off without re-running the
FFmpeg supervision job, and an upload gets a deadline of its own. bridge/recorder.py holds the
recording's lease around it, so a recorder killed mid-upload is noticed within `lease_s`.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from bridge.lifecycle import Job, Runtime
from bridge.providers.base import ProviderError
from bridge.recording import FinalizeResult, RecordingPaths
from bridge.schema.events import iso
from bridge.schema.webhooks import WebhookType
from bridge.storage import InvalidRecording, RecordingNotFound, S3Storage, Storage, StoredRecording
from bridge.store import JOB_EXPIRES_MS, RECORDER_QUEUE, RECORDING_TTL_S, STORED_RECORDINGS, recording_key
from bridge.webhooks import deliver_outbound, produce, record_run

log = structlog.get_logger("bridge.storage")

STORE_FUNCTION = "recording_store"
# Each try retries a storage outage for S3Storage.retry_budget_s (2 min) itself; the job's back-off
# (job_retry_base_s doubling, at most 5 min apart) spreads these tries over about 45 minutes.
STORE_TRIES = 12
STORE_DEADLINE_S = 3 * 3600          # one try: several GB over a slow uplink
RETENTION_BATCH = 100                # recordings deleted per retention run; the next run takes the rest
STALE_UPLOAD_S = 86400               # multipart uploads abandoned this long are aborted by retention


def _storage(rt: Runtime) -> Storage:
    assert rt.storage is not None, "the Runtime of workers and recorders always has a storage"
    return rt.storage


async def _record(redis: Any, recording_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(recording_key(recording_id))).items()}


async def enqueue_store(job: Job, recording_id: str, final: FinalizeResult) -> None:
    """Remember the finalized file and queue its upload (once: the job id derives from the event)."""
    await job.rt.redis.hset(recording_key(recording_id), mapping={
        "file": final.file or "", "sha256": final.sha256 or "", "bytes": str(final.bytes),
        "duration_s": str(final.duration_s)})
    await enqueue_store_job(job)


async def enqueue_store_job(job: Job) -> None:
    envelope = {"ref": job.ref, "source": job.source.name, "event": job.event, "replay_of": job.replay_of}
    await job.rt.redis.enqueue_job(STORE_FUNCTION, envelope, _job_id=f"{job.ref}:{STORE_FUNCTION}",
                                   _queue_name=RECORDER_QUEUE, _expires=JOB_EXPIRES_MS / 1000)


def _remove_local_copy(rt: Runtime, lesson_id: str, recording_id: str) -> None:
    """FFmpeg's parts and joined file: what is in storage now, or was deleted there."""
    paths = RecordingPaths(rt.settings.recording.dir, lesson_id, recording_id)
    shutil.rmtree(paths.dir, ignore_errors=True)
    with contextlib.suppress(OSError):        # the lesson's directory, when this was its last recording
        paths.dir.parent.rmdir()


async def _failed(job: Job, recording_id: str, code: str, detail: str) -> str:
    log.error("recording.store_failed", recording_id=recording_id, code=code, detail=detail)
    await job.emit(WebhookType.RECORDING_FAILED, {"recording_id": recording_id, "reason": code, "detail": detail,
                                                  "ffmpeg_stderr": []}, discriminator="storage")
    return "store_failed"


async def store_finished(job: Job, recording_id: str) -> str:
    """Upload the finalized file (verified), remove the local copy, send recording.ready. Returns the
    recording's new status. A failure the next try may not repeat is a retryable ProviderError until
    the job's last try, which sends recording.failed instead; the local file stays in every case."""
    rt, storage = job.rt, _storage(job.rt)
    record = await _record(rt.redis, recording_id)
    lesson_id = job.event["lesson"]["id"]
    if record.get("deleted_by"):             # recording.delete came first: nothing is to be stored
        _remove_local_copy(rt, lesson_id, recording_id)
        return "deleted"
    if not record.get("stored_at"):
        try:
            stored = await storage.upload(recording_id, Path(record.get("file", "")), record.get("sha256") or None)
        except InvalidRecording as exc:      # the file is gone or unusable: no try will do better
            return await _failed(job, recording_id, exc.code, str(exc))
        except Exception as exc:             # an outage, a failed verification, a full disk: try again later
            code = getattr(exc, "code", "storage_error")
            if job.last_try:
                return await _failed(job, recording_id, code, f"{type(exc).__name__}: {exc}"[:500])
            raise ProviderError(code, f"upload of {recording_id}: {type(exc).__name__}: {exc}"[:500],
                                retryable=True) from exc
        if await rt.redis.hget(recording_key(recording_id), "deleted_by"):   # deleted while uploading
            await storage.delete(recording_id)
            _remove_local_copy(rt, lesson_id, recording_id)
            return "deleted"
        await _remember_stored(job, recording_id, stored)
        record = await _record(rt.redis, recording_id)
    # Only now, with the upload verified and on record: a re-run finds it stored and skips the upload.
    _remove_local_copy(rt, lesson_id, recording_id)
    link = await storage.link(recording_id)
    await job.emit(WebhookType.RECORDING_READY, {
        "recording_id": recording_id, "url": link.url,
        "expires_at": iso(datetime.fromtimestamp(link.expires_at, UTC)),
        "content_type": record["content_type"], "bytes": int(record["bytes"]),
        "duration_s": float(record["duration_s"]) if record.get("duration_s") else None, "origin": "bridge"})
    return "stored"


async def _remember_stored(job: Job, recording_id: str, stored: StoredRecording) -> None:
    now = time.time()
    async with job.rt.redis.pipeline(transaction=True) as pipe:
        pipe.hset(recording_key(recording_id), mapping={
            "stored_at": str(now), "stored_key": stored.key, "content_type": stored.content_type,
            "bytes": str(stored.bytes), "lesson_id": job.event["lesson"]["id"],
            "provider": await job.provider_name()})
        pipe.zadd(STORED_RECORDINGS, {recording_id: now})
        await pipe.execute()


async def delete_recording(rt: Runtime, recording_id: str, ref: str) -> bool:
    """Delete a recording from storage for `ref` (an event, or retention). True when `ref` is the deletion
    that sends recording.deleted: the first one, again on its own re-runs; False for any later one.
    RecordingNotFound when the bridge never stored it."""
    key = recording_key(recording_id)
    storage = _storage(rt)
    known = await rt.redis.exists(key)
    if not known and not await storage.delete(recording_id):
        raise RecordingNotFound(f"no recording {recording_id} is stored")
    await rt.redis.hsetnx(key, "deleted_by", ref)
    if (await rt.redis.hget(key, "deleted_by")).decode() != ref:
        return False
    if known:
        await storage.delete(recording_id)
    async with rt.redis.pipeline(transaction=True) as pipe:
        pipe.zrem(STORED_RECORDINGS, recording_id)
        pipe.hset(key, mapping={"status": "deleted", "updated_at": str(time.time())})
        pipe.expire(key, RECORDING_TTL_S)
        await pipe.execute()
    return True


async def recording_delete(job: Job) -> None:
    """The `recording.delete` event (data.recording_id)."""
    recording_id = job.event["data"]["recording_id"]
    try:
        first = await delete_recording(job.rt, recording_id, job.ref)
    except RecordingNotFound as exc:
        raise ProviderError("no_recording", str(exc), retryable=False) from None
    except Exception as exc:                 # storage unreachable: the job's back-off tries again
        raise ProviderError(getattr(exc, "code", "storage_error"), f"{type(exc).__name__}: {exc}"[:500],
                            retryable=True) from exc
    if first:
        await job.emit(WebhookType.RECORDING_DELETED, {"recording_id": recording_id})
    else:
        log.info("recording.already_deleted", recording_id=recording_id)


async def retention_job(ctx: dict[str, Any]) -> int:
    """Cron (worker queue, unique): delete recordings stored more than [storage] retention_days ago, one
    recording.deleted each, and abort multipart uploads abandoned for a day. Returns how many it deleted."""
    rt: Runtime = ctx["bridge"]
    cutoff = time.time() - rt.settings.storage.retention_days * 86400
    deleted = 0
    for raw in await rt.redis.zrangebyscore(STORED_RECORDINGS, "-inf", cutoff, start=0, num=RETENTION_BATCH):
        recording_id = raw.decode()
        ref = f"retention:{recording_id}"
        try:
            first = await delete_recording(rt, recording_id, ref)
        except RecordingNotFound:
            await rt.redis.zrem(STORED_RECORDINGS, recording_id)
            continue
        if first:
            await _announce_deleted(rt, recording_id, ref)
            deleted += 1
    if isinstance(rt.storage, S3Storage):
        await rt.storage.abort_stale_uploads(STALE_UPLOAD_S)
    log.info("recording.retention", deleted=deleted, retention_days=rt.settings.storage.retention_days)
    return deleted


async def _announce_deleted(rt: Runtime, recording_id: str, ref: str) -> None:
    """recording.deleted to the source whose event made the recording, as a job's webhook would go."""
    record = await _record(rt.redis, recording_id)
    source = rt.settings.sources.get(record.get("source", ""))
    if source is None:
        log.warning("recording.deleted_unannounced", recording_id=recording_id, source=record.get("source"))
        return
    data = {"event_id": record.get("event_id"), "source": source.name, "lesson_id": record.get("lesson_id"),
            "provider": record.get("provider"), "recording_id": recording_id}
    produced = produce(source, ref, WebhookType.RECORDING_DELETED, data)
    for outbound in await record_run(rt.redis, rt.settings.record_retention_s, source.name, ref, [produced]):
        await deliver_outbound(rt.redis, rt.webhooks, rt.settings, rt.counts, source, outbound, 0)


HANDLERS = {"recording_delete": recording_delete}
