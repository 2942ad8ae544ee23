"""Trimming the event log by age and by size: on the worker's schedule, or now with `bridge trim`. The
same schedule prunes the dead-letter and failing sets of webhooks whose records have expired."""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from bridge.config import Settings
from bridge.store import DEAD_LETTERS, EVENT_LOG, FAILED_DELIVERIES


async def trim_event_log(redis: Redis, settings: Settings, *, exact: bool = False) -> int:
    """Drop entries older than event_retention_s (MINID), then beyond event_retention_max (MAXLEN).

    Approximate by default (`~`: whole radix-tree nodes, nearly free); `exact` trims to the entry.
    """
    min_id = int(time.time() * 1000) - settings.event_retention_s * 1000
    removed = int(await redis.xtrim(EVENT_LOG, minid=max(0, min_id), approximate=not exact))
    removed += int(await redis.xtrim(EVENT_LOG, maxlen=settings.event_retention_max, approximate=not exact))
    return removed


async def prune_delivery_sets(redis: Redis, settings: Settings) -> int:
    """Drop dead and failing webhooks filed more than record_retention_s ago: a record expires that long
    after its creation, which is before it was filed, so theirs are gone (listings skipped them already)."""
    cutoff = time.time() - settings.record_retention_s
    async with redis.pipeline(transaction=False) as pipe:
        for key in (DEAD_LETTERS, FAILED_DELIVERIES):
            pipe.zremrangebyscore(key, "-inf", cutoff)
        return sum(await pipe.execute())


async def trim_job(ctx: dict[str, Any]) -> int:
    """The worker's periodic trim (an arq cron job registered in workers/settings.py)."""
    runtime = ctx["bridge"]
    await prune_delivery_sets(runtime.redis, runtime.settings)
    return await trim_event_log(runtime.redis, runtime.settings)
