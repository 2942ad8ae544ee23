"""Outbound delivery timing and identity, against a real Redis and a real HTTP server on loopback:
a 429/503 `Retry-After` defers the next attempt, the retry schedule's ±20 % jitter really varies,
and a webhook keeps its `webhook-id` across a job re-run after a crash and across retries."""

from __future__ import annotations

import random
import signal
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis

from bridge.config import Settings, load_settings
from bridge.embedded import EmbeddedRedis
from bridge.metrics import BufferedCounts
from bridge.providers.base import RETRY_AFTER_MAX_S
from bridge.schema.webhooks import WebhookType
from bridge.store import WORKER_QUEUE, delivery_key
from bridge.webhooks import deliver, next_delay, produce, record_run, webhook_id
from tests.conftest import default_config, hand_back_now, wait_until, worker_ready
from tests.fakes.raw_http import raw_http_server

JITTER = 0.2          # the documented band ([webhooks] retry_schedule: ±20 %), not the module's constant
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def answer(status: int, reason: str, retry_after: str | None = None) -> bytes:
    header = f"retry-after: {retry_after}\r\n" if retry_after is not None else ""
    return f"HTTP/1.1 {status} {reason}\r\n{header}content-length: 0\r\n\r\n".encode()


def settings_for(tmp_path: Path, redis_server: EmbeddedRedis, url: str) -> Settings:
    """The test configuration (retry schedule 0.2, 0.4, 0.8 s) with its webhook URL pointing at `url`."""
    return load_settings({"BRIDGE_CONFIG": str(default_config(tmp_path, url)), "REDIS_URL": redis_server.url})


async def first_attempt(arq_redis: ArqRedis, transport: httpx.AsyncBaseTransport, settings: Settings) -> str:
    """Record a join.ready webhook as a job does, make attempt 0 the way a worker does; its id."""
    produced = produce(settings.sources["default"], "default:evt_1", WebhookType.JOIN_READY, {"event_id": "evt_1"})
    await record_run(arq_redis, settings.record_retention_s, "default", "default:evt_1", [produced])
    await deliver(arq_redis, transport, settings, BufferedCounts(), produced.msg_id, 0)
    return produced.msg_id


async def scheduled_in(redis: aioredis.Redis, msg_id: str) -> tuple[float, float]:
    """Seconds from now until the next attempt's arq job is due, and until the delivery's `next_at`."""
    score = await redis.zscore(WORKER_QUEUE, f"{msg_id}:1")
    next_at = await redis.hget(delivery_key(msg_id), "next_at")
    assert score is not None and next_at, "no retry was scheduled"
    now = time.time()
    return score / 1000 - now, float(next_at) - now


@pytest.mark.parametrize(("status", "reason"), [(503, "Service Unavailable"), (429, "Too Many Requests")])
async def test_retry_after_defers_the_next_attempt(status, reason, tmp_path, redis_server, redis, arq_redis,
                                                   transport) -> None:
    """The schedule says 0.2 s; the receiver says 60 s: the retry is due no earlier than 60 s from now."""
    async with raw_http_server(answer(status, reason, "60")) as (server, port):
        settings = settings_for(tmp_path, redis_server, f"http://127.0.0.1:{port}/hook")
        msg_id = await first_attempt(arq_redis, transport, settings)
    assert len(server.requests) == 1
    assert (await redis.hget(delivery_key(msg_id), "status")) == b"failed"
    job_due, next_at = await scheduled_in(redis, msg_id)
    assert 59 <= job_due <= 61 and 59 <= next_at <= 61


async def test_an_http_date_retry_after_counts_and_a_huge_one_is_capped(tmp_path, redis_server, redis, arq_redis,
                                                                       transport) -> None:
    """One Retry-After parser for providers and webhooks: an HTTP date counts, and no receiver parks a
    delivery for longer than RETRY_AFTER_MAX_S however long it asks."""
    in_90_s = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    for header, low, high in ((in_90_s, 87, 91), (str(365 * 86400), RETRY_AFTER_MAX_S - 2, RETRY_AFTER_MAX_S + 1)):
        await redis.flushall()
        async with raw_http_server(answer(503, "Service Unavailable", header)) as (_server, port):
            settings = settings_for(tmp_path, redis_server, f"http://127.0.0.1:{port}/hook")
            msg_id = await first_attempt(arq_redis, transport, settings)
        job_due, next_at = await scheduled_in(redis, msg_id)
        assert low <= job_due <= high and low <= next_at <= high, header


async def test_without_retry_after_or_on_other_statuses_the_schedule_decides(tmp_path, redis_server, redis,
                                                                             arq_redis, transport) -> None:
    """Retry-After counts on 429 and 503 only, and a short or unreadable one never shortens the schedule."""
    for reply in (answer(503, "Service Unavailable"), answer(500, "Internal Server Error", "60"),
                  answer(503, "Service Unavailable", "soon"), answer(429, "Too Many Requests", "0")):
        await redis.flushall()
        async with raw_http_server(reply) as (_server, port):
            settings = settings_for(tmp_path, redis_server, f"http://127.0.0.1:{port}/hook")
            msg_id = await first_attempt(arq_redis, transport, settings)
        job_due, next_at = await scheduled_in(redis, msg_id)
        assert job_due <= 0.2 * (1 + JITTER) + 0.05 and next_at <= 0.2 * (1 + JITTER) + 0.05, reply


def test_retry_delays_jitter_within_20_percent_and_vary() -> None:
    schedule = (5.0, 300.0, 1800.0)
    state = random.getstate()
    random.seed(18)
    try:
        for attempt, base in enumerate(schedule):
            delays = [next_delay(schedule, attempt, None) for _ in range(200)]
            assert all(d is not None and base * (1 - JITTER) <= d <= base * (1 + JITTER) for d in delays)
            assert len(set(delays)) == len(delays)                       # a fresh draw every time
            assert min(delays) < base * 0.9 and max(delays) > base * 1.1   # spread over the band, both sides
        assert next_delay(schedule, len(schedule), None) is None            # exhausted: dead-letter
        assert next_delay(schedule, 0, 600) == 600                          # Retry-After wins when longer
        assert next_delay(schedule, 1, 5) >= 300 * (1 - JITTER)            # ...never when shorter
    finally:
        random.setstate(state)


def test_the_webhook_id_depends_on_what_the_webhook_is_and_nothing_else() -> None:
    first = webhook_id("default:evt_1", "join.ready", "42")
    assert first.startswith("msg_") and len(first) == 30
    assert webhook_id("default:evt_1", "join.ready", "42") == first
    others = {webhook_id("default:evt_2", "join.ready", "42"), webhook_id("default:evt_1", "room.created", "42"),
              webhook_id("default:evt_1", "join.ready", "43"), webhook_id("default:evt_1", "join.ready")}
    assert first not in others and len(others) == 4


async def test_a_job_rerun_after_a_crash_and_the_retries_keep_one_webhook_id(make_bridge, client, redis, tmp_path,
                                                                             redis_server) -> None:
    """A worker is SIGKILLed while its job's first webhook attempt is in flight; arq runs the job again
    (in a later second, on another worker), which sends the same webhook, then retries it: every POST
    carries the same `webhook-id`, and exactly one delivery record exists."""
    async with raw_http_server(OK) as (server, port):
        server.answers = [OK, answer(503, "Service Unavailable")]   # the killed attempt, the re-run's, then OK
        bridge = make_bridge(webhook_url=f"http://127.0.0.1:{port}/slow")
        first = bridge.start_worker()
        await wait_until(lambda: worker_ready(redis))
        posted = await client.post(f"{bridge.base_url}/v1/events/default", json={
            "id": "evt_1", "type": "user.joined", "lesson": {"id": "c12-l7"}, "user": {"id": "42", "role": "student"}})
        assert posted.status_code == 202
        await wait_until(lambda: len(server.requests) == 1)          # the attempt is held by the receiver
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        started = int(time.time())
        await wait_until(lambda: int(time.time()) > started, timeout=2)   # the re-run is in another second
        await hand_back_now(redis, "default:evt_1:user_joined")
        server.release.set()
        bridge.start_worker()
        await wait_until(lambda: len(server.requests) == 3)
        deliveries = [key async for key in redis.scan_iter(delivery_key("*"))]
        await wait_until(lambda: delivered(redis, deliveries[0]))
    ids = {request["webhook-id"] for request in server.requests}
    assert len(ids) == 1 and len(deliveries) == 1
    assert deliveries[0].decode() == delivery_key(ids.pop())


async def delivered(redis: aioredis.Redis, key: Any) -> bool:
    return await redis.hget(key, "status") == b"delivered"
