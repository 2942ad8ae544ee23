"""WorkerSettings for the two worker processes: `worker` (short jobs) and `recorder` (FFmpeg)."""

from __future__ import annotations

from typing import Any

import httpx
from arq import cron
from arq.worker import Function, func

from bridge.config import Settings
from bridge.lifecycle import Runtime
from bridge.providers import build_provider
from bridge.replay import trim_job
from bridge.routing import JOBS_BY_TYPE
from bridge.store import RECORDER_QUEUE, WORKER_QUEUE, arq_redis_settings
from workers.jobs import deliver_webhook, event_job

DRAIN_S = 20                 # on SIGTERM, in-flight jobs get this long; platforms kill at 30 s
HEALTH_CHECK_S = 10


def _functions(queue: str) -> list[Function]:
    names = sorted({function for steps in JOBS_BY_TYPE.values() for q, function in steps if q == queue})
    return [func(event_job(name), name=name, max_tries=8) for name in names]


def worker_settings(settings: Settings, queue: str = WORKER_QUEUE) -> dict[str, Any]:
    async def startup(ctx: dict[str, Any]) -> None:
        http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0),
                                 limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))
        providers = {name: build_provider(name, cfg.kind, cfg.settings, http)
                     for name, cfg in settings.providers.items()}
        ctx["bridge"] = Runtime(settings=settings, redis=ctx["redis"], http=http, providers=providers)

    async def shutdown(ctx: dict[str, Any]) -> None:
        runtime: Runtime | None = ctx.get("bridge")
        if runtime is not None:
            for provider in runtime.providers.values():
                await provider.aclose()
            await runtime.http.aclose()

    functions = _functions(queue)
    if queue == WORKER_QUEUE:
        functions.append(func(deliver_webhook, name="deliver_webhook", max_tries=3))
    recorder = queue == RECORDER_QUEUE
    return {
        "functions": functions,
        "queue_name": queue,
        "redis_settings": arq_redis_settings(settings.redis_url or "redis://127.0.0.1:6379"),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_jobs": 60 if recorder else 50,
        "job_timeout": settings.recording_max_duration_s + 120 if recorder else settings.job_timeout_s,
        "keep_result": 3600,
        "max_tries": 8,
        "health_check_interval": HEALTH_CHECK_S,
        "job_completion_wait": DRAIN_S,
        "poll_delay": 0.05,
        "handle_signals": True,
        # Event-log retention (bridge.replay.trim_event_log): every 15 minutes, once across all workers.
        # No timeout of its own: arq's crash-recovery delay is the longest job timeout + 10 s.
        "cron_jobs": [cron(trim_job, name="trim_event_log", minute={7, 22, 37, 52}, unique=True)]
        if queue == WORKER_QUEUE else [],
    }
