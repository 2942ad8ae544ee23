"""Outbound webhook deliveries as an operator handles them: read, list, retry, re-enable an endpoint.

Shared by the `bridge deliveries|endpoints` commands and the admin API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from arq.constants import job_key_prefix
from redis.asyncio import Redis
from redis.exceptions import WatchError

from bridge.config import Settings
from bridge.eventlog.entries import new_replay_id
from bridge.sources.canonical import iso
from bridge.store import (
    DEAD_LETTERS,
    FAILED_DELIVERIES,
    JOB_EXPIRES_MS,
    WORKER_QUEUE,
    arq_payload,
    delivery_key,
    endpoint_disabled_key,
    read_delivery,
    split_delivery,
)

DELIVERY_LISTS = {"failed": FAILED_DELIVERIES, "dead": DEAD_LETTERS, "disabled": FAILED_DELIVERIES}


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def delivery(redis: Redis, msg_id: str, *, with_attempts: bool = True) -> dict[str, Any] | None:
    record, attempt_log = await read_delivery(redis, msg_id)
    if not record:
        return None
    try:
        payload = json.loads(record.get("payload") or "null")
    except ValueError:
        payload = None
    data = (payload or {}).get("data") or {}
    next_at = record.get("next_at")
    info: dict[str, Any] = {
        "webhook_id": msg_id, "source": record.get("source"), "type": record.get("type"),
        "status": record.get("status"), "attempts": int(record.get("attempts") or 0),
        "last_status": record.get("last_status"), "ref": record.get("ref"), "created_at": record.get("created_at"),
        "next_at": iso(datetime.fromtimestamp(float(next_at), UTC)) if next_at and record.get("status") == "failed"
        else None,
        "event_id": data.get("event_id"), "replay_of": data.get("replay_of"), "payload": payload,
    }
    if with_attempts:
        info["attempt_log"] = attempt_log
    return info


async def list_deliveries(redis: Redis, status: str, *, endpoint: str | None = None, limit: int | None = 100,
                          cursor: int = 0) -> tuple[list[dict[str, Any]], int | None]:
    """Failed (still retrying or held), dead or disabled deliveries, most recent first; next cursor or None."""
    if status not in DELIVERY_LISTS:
        raise ValueError(f"status must be one of {', '.join(DELIVERY_LISTS)}")
    key = DELIVERY_LISTS[status]
    out: list[dict[str, Any]] = []
    offset = cursor
    chunk = 200
    while True:
        rows = await redis.zrevrange(key, offset, offset + chunk - 1, withscores=True)
        for index, (member, score) in enumerate(rows):
            info = await delivery(redis, member.decode(), with_attempts=False)
            if info is None or info["status"] == "delivered":
                continue         # expired record, or delivered since (a manual retry)
            if status == "disabled" and info["status"] != "disabled":
                continue
            if endpoint and info["source"] != endpoint:
                continue
            info["listed_at"] = iso(datetime.fromtimestamp(score, UTC))
            out.append(info)
            if limit is not None and len(out) >= limit:
                more = offset + index + 1 < await redis.zcard(key)
                return out, (offset + index + 1) if more else None
        if len(rows) < chunk:
            return out, None
        offset += chunk


@dataclass
class RetryResult:
    webhook_id: str
    ok: bool
    code: str | None = None
    message: str | None = None
    job_id: str | None = None
    attempt: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def retry_delivery(redis: Redis, settings: Settings, msg_id: str) -> RetryResult:
    """Enqueue one more attempt, under a fresh job id; the webhook keeps its id (and its payload).

    Checked and written under WATCH, so a delivery that succeeds meanwhile is never sent again.
    """
    for _ in range(5):
        async with redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(delivery_key(msg_id))
                record, _ = split_delivery(await pipe.hgetall(delivery_key(msg_id)))
                if not record:
                    return RetryResult(msg_id, False, "not_found", "no such delivery (or its record expired)")
                if record.get("status") == "delivered":
                    return RetryResult(msg_id, False, "already_delivered", "this webhook was delivered already")
                source = settings.sources.get(record.get("source", ""))
                if source is None or not source.webhook_url:
                    return RetryResult(msg_id, False, "no_endpoint",
                                       f"source {record.get('source')!r} has no webhook_url configured")
                await pipe.watch(endpoint_disabled_key(source.name))
                if await pipe.exists(endpoint_disabled_key(source.name)):
                    return RetryResult(msg_id, False, "endpoint_disabled",
                                       f"endpoint {source.name!r} is disabled (it answered 410); "
                                       f"enable it first: bridge endpoints enable {source.name}")
                number = int(record.get("attempts") or 0)
                job_id = f"{msg_id}:retry:{new_replay_id()}"
                now_ms = int(time.time() * 1000)
                pipe.multi()
                pipe.hset(delivery_key(msg_id), "status", "pending")
                pipe.hdel(delivery_key(msg_id), "next_at")
                pipe.zrem(DEAD_LETTERS, msg_id)
                pipe.psetex(job_key_prefix + job_id, JOB_EXPIRES_MS,
                            arq_payload("deliver_webhook", (msg_id, number), now_ms))
                pipe.zadd(WORKER_QUEUE, {job_id: now_ms})
                await pipe.execute()
                return RetryResult(msg_id, True, job_id=job_id, attempt=number)
            except WatchError:
                continue
    return RetryResult(msg_id, False, "busy", "the delivery kept changing; try again")


async def select_for_retry(redis: Redis, *, ids: Iterable[str] = (), endpoint: str | None = None,
                           all_dead: bool = False) -> list[str]:
    chosen = list(ids)
    if endpoint:
        for status in ("dead", "failed"):
            chosen += [d["webhook_id"] for d in (await list_deliveries(redis, status, endpoint=endpoint,
                                                                        limit=None))[0]]
    if all_dead:
        chosen += [d["webhook_id"] for d in (await list_deliveries(redis, "dead", limit=None))[0]]
    return list(dict.fromkeys(chosen))


async def enable_endpoint(redis: Redis, settings: Settings, name: str, *, retry: bool = False) -> dict[str, Any]:
    """Clear the 410 switch. Deliveries held as `disabled` become retryable (and are retried with `retry`)."""
    if name not in settings.sources:
        raise LookupError(f"no source (endpoint) named {name!r} is configured")
    since = _text(await redis.get(endpoint_disabled_key(name)))
    await redis.delete(endpoint_disabled_key(name))
    held = [d["webhook_id"] for d in (await list_deliveries(redis, "disabled", endpoint=name, limit=None))[0]]
    retried = [(await retry_delivery(redis, settings, msg_id)).as_dict() for msg_id in held] if retry else []
    return {"endpoint": name, "was_disabled": since is not None, "disabled_since": since, "held": held,
            "retried": retried}

