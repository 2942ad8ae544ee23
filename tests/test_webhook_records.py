"""A webhook's record as Redis keeps it (join storms, #17: Redis bytes per join).

The payload has its own key, kept DELIVERED_PAYLOAD_KEEP_S once its first attempt delivered it (a
replay makes it again) and as long as the record while the webhook is retried; every other value is
short enough for Redis's compact hash encoding. Against a real Redis, a real worker and real HTTP
servers on loopback.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import httpx
from arq.connections import ArqRedis

from bridge.deliveries import delivery
from bridge.embedded import EmbeddedRedis
from bridge.eventlog.query import job_runs
from bridge.metrics import BufferedCounts
from bridge.schema.webhooks import WebhookType
from bridge.store import DELIVERED_PAYLOAD_KEEP_S, delivery_key, job_runs_key, payload_key
from bridge.webhooks import deliver, deliver_outbound, produce, produced_payloads, record_run
from tests.conftest import wait_until
from tests.fakes.raw_http import raw_http_server
from tests.test_intake import EVENT
from tests.test_webhook_timing import answer, settings_for
from tests.test_workers import queue_idle

REF = "default:evt_1"
TOKEN = "eyJ" + "x" * 700                      # a join link's token: what makes a payload long


async def record_and_first_attempt(arq_redis: ArqRedis, transport: httpx.AsyncBaseTransport, settings) -> str:
    """As a job does: record its webhook with its outcome, then make the first attempt itself."""
    produced = produce(settings.sources["default"], REF, WebhookType.JOIN_READY, {"event_id": "evt_1", "token": TOKEN})
    outcome = {"status": "ok", "try": 1, "at": int(time.time() * 1000), "ms": 3.2}
    (outbound,) = await record_run(arq_redis, settings.record_retention_s, "default", REF, [produced],
                                   "user_joined", outcome)
    await deliver_outbound(arq_redis, transport, settings, BufferedCounts(), settings.sources["default"], outbound, 0)
    return produced.msg_id


async def test_a_join_delivered_at_once_keeps_a_compact_record_and_its_payload_a_minute(
        make_bridge, client, redis, receiver) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(webhook_url=hook_url)
    bridge.start_worker()
    answer = await client.post(f"{bridge.base_url}/v1/events/default?wait=10", json=EVENT)
    assert answer.status_code == 200 and answer.json()["webhooks"][0]["type"] == "join.ready"   # ?wait read it
    await wait_until(lambda: hook.of_type("join.ready"))
    await wait_until(lambda: queue_idle(redis))
    msg_id = hook.of_type("join.ready")[0]["webhook_id"]
    # Every value within 64 B: Redis keeps both hashes as a listpack (a third of a hash table's bytes).
    assert await redis.object("encoding", delivery_key(msg_id)) == b"listpack"
    assert await redis.object("encoding", job_runs_key(REF)) == b"listpack"
    assert b"payload" not in await redis.hkeys(delivery_key(msg_id))
    run = job_runs(await redis.hgetall(job_runs_key(REF)))["user_joined"]
    assert run["status"] == "ok" and run["try"] == 1 and datetime.fromisoformat(run["at"]).tzinfo is not None
    assert 0 < await redis.ttl(payload_key(msg_id)) <= DELIVERED_PAYLOAD_KEEP_S
    shown = await delivery(redis, msg_id)
    assert shown is not None and shown["payload"]["data"]["token"] == hook.of_type("join.ready")[0]["data"]["token"]
    (logged,) = shown["attempt_log"]
    assert logged["attempt"] == 0 and logged["status"] == 200 and logged["error"] is None and logged["at"]

    await redis.delete(payload_key(msg_id))             # a minute on: the record stays, the payload is gone
    shown = await delivery(redis, msg_id)
    assert shown is not None and shown["status"] == "delivered" and shown["payload"] is None
    assert await produced_payloads(redis, REF) == []


async def test_a_webhook_its_first_attempt_did_not_deliver_keeps_its_payload_for_its_retries(
        tmp_path: Path, redis_server: EmbeddedRedis, redis, arq_redis, transport) -> None:
    async with raw_http_server(answer(503, "Service Unavailable")) as (failing, port):
        settings = settings_for(tmp_path, redis_server, f"http://127.0.0.1:{port}/hook")
        msg_id = await record_and_first_attempt(arq_redis, transport, settings)
    assert len(failing.requests) == 1
    assert await redis.ttl(payload_key(msg_id)) > settings.record_retention_s - 60
    async with raw_http_server() as (receiving, port):
        settings = settings_for(tmp_path, redis_server, f"http://127.0.0.1:{port}/hook")
        assert await deliver(arq_redis, transport, settings, BufferedCounts(), msg_id, 1) == "delivered"
    (body,) = receiving.bodies
    assert json.loads(body)["data"]["token"] == TOKEN                     # the payload the first run made
    assert 0 < await redis.ttl(payload_key(msg_id)) <= DELIVERED_PAYLOAD_KEEP_S


async def test_a_rerun_after_the_payload_lapsed_sends_nothing_again(
        tmp_path: Path, redis_server: EmbeddedRedis, redis, arq_redis, transport) -> None:
    """A job killed after its webhook was delivered runs again once its lease lapses, possibly after the
    payload did: the record, not the payload, says whether the webhook still needs sending."""
    async with raw_http_server() as (receiving, port):
        settings = settings_for(tmp_path, redis_server, f"http://127.0.0.1:{port}/hook")
        await record_and_first_attempt(arq_redis, transport, settings)
        msg_id = receiving.requests[0]["webhook-id"]
        await redis.delete(payload_key(msg_id))
        produced = produce(settings.sources["default"], REF, WebhookType.JOIN_READY, {"event_id": "evt_1"})
        assert await record_run(arq_redis, settings.record_retention_s, "default", REF, [produced]) == []
    assert len(receiving.requests) == 1
    assert not await redis.exists(payload_key(msg_id))                   # and no payload written back
