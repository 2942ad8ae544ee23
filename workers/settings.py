"""WorkerSettings for the two worker processes: `worker` (short jobs) and `recorder` (FFmpeg)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from arq import cron
from arq.worker import Function, func

from bridge.config import Settings
from bridge.eventlog.retention import trim_job
from bridge.http_transport import ConnectionPerRequestTransport
from bridge.lifecycle import Runtime
from bridge.metrics import BufferedCounts
from bridge.moodle.reconcile import reconcile_loop
from bridge.polling import POLL_FUNCTION
from bridge.processes import tune_gc_for_service
from bridge.providers import build_provider
from bridge.providers.base import PROVIDER_DEADLINE_S
from bridge.recorder import reclaim_loop
from bridge.routing import JOBS_BY_TYPE
from bridge.storage import storage_from_settings
from bridge.store import RECORDER_QUEUE, WORKER_QUEUE, deserialize_arq, serialize_arq, worker_redis
from bridge.stored_recordings import STORE_DEADLINE_S, STORE_FUNCTION, STORE_TRIES, retention_job
from workers.jobs import MAX_TRIES, attendance_poll_job, deliver_webhook, event_job, rides_out_redis

RECORDER_GRACE_S = 300      # joining parts and probing after the longest recording
DRAIN_S = 20                 # on SIGTERM, in-flight jobs get this long; platforms kill at 30 s
HEALTH_CHECK_S = 10
POLL_RESULT_KEEP_S = 60


RECORDER_TRIES = 100         # a recording is handed back at every recorder restart (deploys, scaling)


# arq fails a job that overruns its timeout and drops it, with no retry (the recorder's worker;
# LeanWorker runs such a job again, up to its max tries). So arq's timeout for short jobs leaves room
# past the job's own deadline for one Redis call against a server that accepts and never answers: up
# to 20 s waiting for a pooled connection (POOL_WAIT_S), a 5 s connect and a 5 s socket timeout; then
# the job hands itself back (rides_out_redis).
REDIS_STALL_GRACE_S = 35


def job_deadline_s(settings: Settings) -> float:
    """A short job's own deadline, well inside arq's job timeout."""
    return max(1.0, settings.job_timeout_s - 1)


def _functions(settings: Settings, queue: str) -> list[Function]:
    names = sorted({function for steps in JOBS_BY_TYPE.values() for q, function in steps if q == queue})
    if queue == RECORDER_QUEUE:
        timeout = settings.recording.max_duration_s + RECORDER_GRACE_S
        return [func(event_job(name, timeout - 5, RECORDER_TRIES), name=name, timeout=timeout,
                     max_tries=RECORDER_TRIES + 1) for name in names]
    deadline = job_deadline_s(settings)
    return [func(event_job(name, deadline, MAX_TRIES), name=name, max_tries=MAX_TRIES + 1, keep_result=0)
            for name in names]


def worker_settings(settings: Settings, queue: str = WORKER_QUEUE) -> dict[str, Any]:
    recorder = queue == RECORDER_QUEUE

    async def startup(ctx: dict[str, Any]) -> None:
        transport = ConnectionPerRequestTransport(deadline_s=PROVIDER_DEADLINE_S)
        http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0), transport=transport)
        providers = {name: build_provider(name, cfg.kind, cfg.settings, http)
                     for name, cfg in settings.providers.items()}
        ctx["bridge"] = Runtime(settings=settings, redis=ctx["redis"], http=http, webhooks=transport,
                                providers=providers, recording=settings.recording if recorder else None,
                                storage=await storage_from_settings(settings, ctx["redis"]),
                                counts=BufferedCounts(ctx["redis"]).start())
        if recorder:
            ctx["reclaim"] = asyncio.ensure_future(reclaim_loop(ctx["redis"], settings))
        else:
            ctx["moodle_reconcile"] = asyncio.ensure_future(reconcile_loop(ctx["bridge"]))
        tune_gc_for_service()

    async def shutdown(ctx: dict[str, Any]) -> None:
        for loop in ("reclaim", "moodle_reconcile"):
            if loop in ctx:
                ctx[loop].cancel()
        runtime: Runtime | None = ctx.get("bridge")
        if runtime is not None:
            await runtime.counts.stop()
            for provider in runtime.providers.values():
                await provider.aclose()
            await runtime.http.aclose()
            if runtime.storage is not None:
                await runtime.storage.aclose()

    functions = _functions(settings, queue)
    cron_jobs = []
    if queue == WORKER_QUEUE:
        functions.append(func(rides_out_redis(deliver_webhook, job_deadline_s(settings)), name="deliver_webhook",
                              max_tries=3, keep_result=0))
        # A tick's result guards nothing once the next tick is queued (bridge.polling): kept briefly, so
        # a lesson polled every few seconds leaves a handful of result keys, not an hour's worth.
        functions.append(func(attendance_poll_job(job_deadline_s(settings)), name=POLL_FUNCTION,
                              max_tries=MAX_TRIES + 1, keep_result=POLL_RESULT_KEEP_S))
        # Event-log retention (bridge.eventlog.retention.trim_event_log): every 15 minutes, once across all
        # workers. No timeout of its own: arq's crash-recovery delay is the longest job timeout + 10 s.
        cron_jobs.append(cron(trim_job, name="trim_event_log", minute={7, 22, 37, 52}, unique=True))
        if settings.storage.retention_days:
            cron_jobs.append(cron(retention_job, name="recording_retention", minute={44}, unique=True))
    else:
        functions.append(func(event_job(STORE_FUNCTION, STORE_DEADLINE_S, STORE_TRIES), name=STORE_FUNCTION,
                              timeout=STORE_DEADLINE_S + 30, max_tries=STORE_TRIES + 1))
    return {
        "functions": functions,
        "queue_name": queue,
        "redis_pool": worker_redis(settings.redis_url or "redis://127.0.0.1:6379", settings.worker_redis_connections,
                                   queue),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_jobs": 60 if recorder else 50,
        # (short job timeouts, as in tests, get a grace of their own length: a stall that long is rare)
        "job_timeout": settings.job_timeout_s + min(REDIS_STALL_GRACE_S, settings.job_timeout_s),
        # Only cron jobs keep arq's result (an hour): it keeps a second worker from running the same tick.
        # An event's outcome is in its runs hash and a delivery's in its record: their arq results
        # were an unread 0.7 KB per job.
        "keep_result": 3600,
        "job_serializer": serialize_arq,
        "job_deserializer": deserialize_arq,
        "max_tries": MAX_TRIES + 1,
        "health_check_interval": HEALTH_CHECK_S,
        "job_completion_wait": DRAIN_S,
        "poll_delay": 0.02,          # the mean wait before a new job starts is half of this
        "handle_signals": True,
        "cron_jobs": cron_jobs,
    }
