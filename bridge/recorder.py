"""The recorder's side of recording: a Redis lease and stop flag around one FFmpeg session.

`recording.start` runs here, on the recorder queue, for as long as the recording lasts. Any process
can stop it (`recording.stop` sets a flag the supervising job polls). The supervising process holds
a short lease; when a recorder dies (SIGKILL, lost machine) another recorder sees the lease lapse
and hands the job back to arq at once, instead of after arq's hours-long in-progress timeout, and
the recording continues in a new part. On SIGTERM the recorder finalizes what it has (a playable
file even if no recorder comes back) and hands the job back, so a deploy does not end a lesson's
recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import sys
import time
from typing import Any, NamedTuple
from urllib.parse import urlparse

import structlog
from arq import Retry
from arq.constants import in_progress_key_prefix
from redis.commands.core import AsyncScript

from bridge import metrics
from bridge.config import Settings
from bridge.lifecycle import Job, ensure_room
from bridge.providers.base import Capability, ProviderError
from bridge.recording import (
    EndReason,
    ListenSpec,
    RecordingError,
    RecordingSession,
    RecordingSpec,
    RunResult,
    check_ffmpeg,
    stop_all,
)
from bridge.redis_link import LINK, REDIS_AWAY
from bridge.schema.webhooks import WebhookType
from bridge.store import ACTIVE_RECORDINGS, RECORDING_TTL_S, recording_key, recording_lease_key, recording_stop_key
from bridge.stored_recordings import STORE_FUNCTION, enqueue_store, enqueue_store_job, store_finished

log = structlog.get_logger("bridge.recorder")
POLL_S = 0.5
OWNER = f"{socket.gethostname()}:{os.getpid()}"


def recording_id_for(ref: str) -> str:
    """Stable across re-runs of the same event's job: a re-run continues the same recording."""
    return "rec_" + hashlib.sha256(ref.encode()).hexdigest()[:20]


def check_ffmpeg_at_startup(settings: Settings) -> None:
    """The recorder process refuses to start without a supported FFmpeg: exit 2 with one clear line
    (the binary's path, its version, the supported range), as for a configuration error."""
    try:
        binaries = check_ffmpeg(settings.recording)
    except RecordingError as exc:
        print(f"recorder cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("recorder.ffmpeg", ffmpeg=binaries.ffmpeg, version=binaries.info.label if binaries.info else None,
             origin=binaries.origin, ffprobe=binaries.ffprobe, skipped=list(binaries.skipped))


def _is_file(url: str) -> bool:
    return urlparse(url).scheme in ("", "file")


# A reclaimer marks the lease it hands back with this prefix, for one lease period: other reclaimers
# leave the job alone meanwhile, and the re-run, wherever arq starts it, takes the lease over.
RECLAIMED = "reclaimed-by:"
RECLAIM_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('DEL', KEYS[2])
"""
_reclaim = AsyncScript(None, RECLAIM_SCRIPT.encode())  # type: ignore[arg-type]

# Renews the lease for its holder only (or takes one that lapsed) and records progress, in one call, which
# begins the record's lifetime again. ARGV: holder, lease ms, record ttl s, then field, value pairs.
# Returns [the other holder's name or false, whether the stop flag is set].
RENEW_LEASE_SCRIPT = f"""
local holder = redis.call('GET', KEYS[1])
local stop = redis.call('EXISTS', KEYS[3])
if holder and holder ~= ARGV[1] and string.sub(holder, 1, {len(RECLAIMED)}) ~= '{RECLAIMED}' then
  return {{holder, stop}}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {{false, stop}}
"""
_renew_lease = AsyncScript(None, RENEW_LEASE_SCRIPT.encode())  # type: ignore[arg-type]
LEASE_LOST = "lease_lost"


class Lease(NamedTuple):
    holder: str | None       # another recorder's name when it holds the lease: we must not record
    stop_requested: bool


async def _refresh(job: Job, recording_id: str, session: RecordingSession | None, status: str) -> Lease:
    fields = ["status", status, "owner", OWNER, "updated_at", str(time.time())]
    if session is not None:
        fields += ["recorded_s", f"{session.recorded_s:.1f}", "part", str(session.part_index)]
    holder, stop = await _renew_lease(
        keys=[recording_lease_key(recording_id), recording_key(recording_id), recording_stop_key(recording_id)],
        args=[OWNER, int(job.rt.settings.recording.lease_s * 1000), RECORDING_TTL_S, *fields], client=job.rt.redis)
    return Lease(holder.decode() if holder else None, bool(stop))


async def _supervise(job: Job, recording_id: str, session: RecordingSession) -> RunResult:
    """Until FFmpeg ends: keep the lease, and stop when any process sets the stop flag.

    Redis away: FFmpeg records on, and the lease is renewed when Redis answers again. The lease
    means "a recorder holding it supervises an FFmpeg for this recording". Other recorders take a
    lapsed lease only after they, and Redis itself, have been up for a whole lease period (see
    reclaim_orphans), which a live holder always uses to renew; so an outage that every process
    sees never starts a second FFmpeg. A holder that finds its lease taken (it alone was cut off
    from Redis for longer than the lease) stops its FFmpeg: the recording goes on in one place.
    """
    waiter = asyncio.ensure_future(session.wait())
    try:
        while not waiter.done():
            try:
                lease = await _refresh(job, recording_id, session, "recording")
            except REDIS_AWAY as exc:
                LINK.failed(exc)
            else:
                LINK.ok()
                if lease.stop_requested:
                    session.request_stop(EndReason.STOPPED)
                if lease.holder:
                    log.error("recording.lease_lost", recording_id=recording_id, holder=lease.holder)
                    session.request_stop(LEASE_LOST)
            await asyncio.wait({waiter}, timeout=POLL_S)
        return waiter.result()
    finally:
        if not waiter.done():       # cancelled (arq gave up on us): stop FFmpeg before leaving
            session.request_stop(EndReason.CANCELLED)
            await asyncio.wait({waiter}, timeout=15)


# A recording in one of these states has its final file: a re-run of its start job (arq is at-least-once)
# must not record it again, only make sure its upload is queued.
FINISHED = frozenset({b"completed", b"storing", b"store_retrying", b"stored", b"store_failed", b"deleted"})


async def recording_start(job: Job) -> None:
    rt, data = job.rt, job.event.get("data") or {}
    recording_id = recording_id_for(job.ref)
    if await rt.redis.hget(recording_key(recording_id), "status") in FINISHED:
        await enqueue_store_job(job)
        return
    active = (await job.state()).get("recording")
    if (active and active != recording_id and not data.get("allow_concurrent")
            and await rt.redis.exists(recording_lease_key(active))):
        raise ProviderError("recording_active", f"lesson is already recording ({active})", retryable=False)

    lease = await _refresh(job, recording_id, None, "starting")     # the lease first, FFmpeg second
    if lease.holder:
        # arq ran this job again (its in-progress mark lapsed) while the recorder holding the lease
        # still supervises the recording: one FFmpeg per recording.
        log.warning("recording.held_elsewhere", recording_id=recording_id, holder=lease.holder)
        return

    source_url = data.get("source_url")
    spec = RecordingSpec(
        recording_id=recording_id, lesson_id=job.event["lesson"]["id"], source_url=source_url,
        listen=None if source_url else ListenSpec(protocol=str(data.get("listen_protocol", "rtmp"))),
        max_duration_s=data.get("max_duration_s"), realtime=bool(source_url and _is_file(source_url)),
    )
    session = RecordingSession(spec, rt.recording)
    try:
        await session.start()
    except RecordingError as exc:
        raise ProviderError(exc.code, str(exc), retryable=False) from None
    try:
        lease = await _refresh(job, recording_id, session, "recording")
        if lease.holder:                  # another recorder took the lease since we looked
            await session.stop(EndReason.STOPPED)
            log.warning("recording.held_elsewhere", recording_id=recording_id, holder=lease.holder)
            return
        stream_out_id = await _announce(job, recording_id, session, source_url)
        result = await _supervise(job, recording_id, session)
        if stream_out_id:
            provider = await job.provider()
            room = await job.room()
            if room is not None:
                await provider.stop_stream_out(job.lesson, room, stream_out_id)
        if result.reason == LEASE_LOST:
            await session.finalize(deep_verify=False)   # this part stays playable; the holder records on
            return
        if result.reason in (EndReason.SHUTDOWN, EndReason.CANCELLED):
            # A playable file now, in case no recorder comes back; then the job goes back to the queue
            # and the next recorder continues in a new part and joins them all at the end.
            await session.finalize(deep_verify=False)
            await _refresh(job, recording_id, session, "interrupted")
            await rt.redis.delete(recording_lease_key(recording_id))
            log.info("recording.handed_back", recording_id=recording_id, reason=str(result.reason))
            raise Retry(defer=0.5)
        final = await session.finalize()
    except Retry:
        raise
    except Exception as exc:
        if not session.done:
            await session.stop(EndReason.ERROR)           # never leave an FFmpeg behind a failed job
        if isinstance(exc, REDIS_AWAY):
            raise       # the job runs again once Redis is back, and the recording goes on in a new part
        await _close(job, recording_id, "failed")      # the job fails visibly (event.failed); no lease left
        raise
    # FFmpeg is done and its file final: from here on, wait out an outage rather than re-run the job.
    await LINK.retrying(rt.redis, lambda: _close(job, recording_id, "completed" if final.ok else "failed"))
    if final.ok:
        data = {"recording_id": recording_id, "file": str(final.file), "bytes": final.bytes,
                "duration_s": final.duration_s, "container": final.container, "sha256": final.sha256,
                "parts": final.parts, "reason": str(result.reason)}
        await LINK.retrying(rt.redis, lambda: _emit_now(job, WebhookType.RECORDING_COMPLETED, data))
        await LINK.retrying(rt.redis, lambda: enqueue_store(job, recording_id, final))
    else:
        data = {"recording_id": recording_id, "reason": final.reason or str(result.reason),
                "detail": result.detail, "ffmpeg_stderr": (final.stderr_tail or result.stderr_tail)[-20:]}
        await LINK.retrying(rt.redis, lambda: _emit_now(job, WebhookType.RECORDING_FAILED, data))


async def _emit_now(job: Job, webhook_type: WebhookType, data: dict[str, Any]) -> None:
    """Recorded at once rather than with the run's outcome: the recording is over whatever befalls this run."""
    await job.emit(webhook_type, data)
    await job.record()


async def recording_store(job: Job) -> None:
    """The upload of a finished recording (bridge/stored_recordings.py), under the recording's lease: if
    this recorder dies mid-upload, another sees the lease lapse and hands the job back within `lease_s`
    (reclaim_orphans), instead of after arq's in-progress timeout (hours on the recorder queue); the
    re-run resumes the upload."""
    redis = job.rt.redis
    recording_id = recording_id_for(job.ref)
    lease = await _refresh(job, recording_id, None, "storing")
    if lease.holder:
        log.warning("recording.store_held_elsewhere", recording_id=recording_id, holder=lease.holder)
        return
    await redis.hset(recording_key(recording_id), "job_id", f"{job.ref}:{STORE_FUNCTION}")
    await metrics.recording_started(redis, recording_id)      # what reclaim_orphans watches
    renewing = asyncio.ensure_future(_keep_lease(job, recording_id))
    status = "store_retrying"
    try:
        status = await store_finished(job, recording_id)
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(recording_key(recording_id), mapping={"status": status, "updated_at": str(time.time())})
            if status == "stored":          # the record lasts as long as the file in storage
                pipe.persist(recording_key(recording_id))
            pipe.delete(recording_lease_key(recording_id))
            await pipe.execute()
        await metrics.recording_finished(redis, recording_id)


async def _keep_lease(job: Job, recording_id: str) -> None:
    """Renew the lease every third of its period until cancelled."""
    while True:
        await asyncio.sleep(job.rt.settings.recording.lease_s / 3)
        try:
            lease = await _refresh(job, recording_id, None, "storing")
        except REDIS_AWAY as exc:
            LINK.failed(exc)
            continue
        LINK.ok()
        if lease.holder:       # cut off from Redis longer than the lease: the other holder uploads too
            log.error("recording.lease_lost", recording_id=recording_id, holder=lease.holder)


async def _announce(job: Job, recording_id: str, session: RecordingSession, source_url: str | None) -> str | None:
    """Record the running recording, point the provider's stream at a listener, tell the LMS now."""
    rt, data = job.rt, job.event.get("data") or {}
    await job.save(recording=recording_id)
    await rt.redis.hset(recording_key(recording_id), mapping={
        "lesson": job.lesson_key, "job_id": f"{job.ref}:recording_start", "push_url": session.push_url or "",
        "source_url": source_url or "", "event_id": job.event["id"], "source": job.source.name})
    await metrics.recording_started(rt.redis, recording_id)
    stream_out_id = None
    if session.push_url:
        provider = await job.provider()
        if provider.supports(Capability.STREAM_OUT) and data.get("stream_out", True):
            room, _ = await ensure_room(job)
            stream_out_id = await provider.start_stream_out(job.lesson, room, session.push_url)
    await job.emit(WebhookType.RECORDING_STARTED, {"recording_id": recording_id, "push_url": session.push_url,
                                         "source_url": source_url, "part": session.part_index})
    await job.flush()                # the LMS hears of it now, not when the lesson ends
    return stream_out_id


async def _close(job: Job, recording_id: str, status: str) -> None:
    redis = job.rt.redis
    await redis.hset(recording_key(recording_id), mapping={"status": status, "updated_at": str(time.time())})
    await redis.delete(recording_lease_key(recording_id))
    await metrics.recording_finished(redis, recording_id)
    if (await job.state(fresh=True)).get("recording") == recording_id:
        await job.forget("recording")


async def reclaim_orphans(redis: Any, settings: Settings) -> list[str]:
    """Hand back to arq the recording jobs whose supervisor stopped renewing its lease.

    Only once this process and Redis itself have been up for a whole lease period: after an outage
    (or a Redis restart, which expires every lease that lapsed meanwhile) a holder still recording
    gets that long to renew before its lease counts as abandoned.
    """
    period = settings.recording.lease_s
    if not await may_reclaim(redis, period):
        return []
    reclaimed = []
    for raw_id in await redis.zrange(ACTIVE_RECORDINGS, 0, -1):
        recording_id = raw_id.decode()
        if await redis.exists(recording_lease_key(recording_id)):
            continue
        job_id = await redis.hget(recording_key(recording_id), "job_id")
        if job_id and await _reclaim(keys=[recording_lease_key(recording_id), in_progress_key_prefix + job_id.decode()],
                                     args=[RECLAIMED + OWNER, int(period * 1000)], client=redis):
            reclaimed.append(recording_id)
            log.warning("recording.reclaimed", recording_id=recording_id)
    return reclaimed


async def may_reclaim(redis: Any, period: float) -> bool:
    """Whether this process and Redis have both been up a whole lease period (see reclaim_orphans)."""
    return LINK.reachable_for() >= period and int((await redis.info("server"))["uptime_in_seconds"]) >= period


async def reclaim_loop(redis: Any, settings: Settings) -> None:
    interval = max(1.0, settings.recording.lease_s / 3)
    while True:
        try:
            await reclaim_orphans(redis, settings)
        except REDIS_AWAY as exc:
            LINK.failed(exc)
        except Exception:   # never let the watchdog die: the next round tries again
            log.exception("recording.reclaim_failed")
        else:
            LINK.ok()
        await asyncio.sleep(interval)


async def shutdown_recordings() -> None:
    """SIGTERM: stop every FFmpeg now so each job can finalize and hand back within the platform's 30 s."""
    await stop_all(EndReason.SHUTDOWN)


HANDLERS = {"recording_start": recording_start, STORE_FUNCTION: recording_store}
