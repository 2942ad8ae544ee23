"""POST /v1/events/{source} over real HTTP against a real Redis: the contract's answers."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.requests import Request

from bridge.errors import ApiError
from bridge.intake import MAX_IN_FLIGHT, AcceptBatcher, DurableAccept, read_body
from bridge.routing import plan
from bridge.signing import sign
from bridge.store import ACCEPT_SCRIPT, EVENT_LOG, WORKER_QUEUE, EventRecord
from tests.conftest import FIXTURES, MOODLE_TOKEN, write_config

EVENT = {"id": "evt_1", "type": "user.joined", "lesson": {"id": "c12-l7", "title": "Algebra I"},
         "user": {"id": "42", "name": "Ada Lovelace", "role": "teacher"}}
SIGNING_SECRET = "whsec_" + base64.b64encode(b"inbound-signing-secret-32-bytes!").decode()


def moodle_fixture(name: str) -> dict:
    return json.loads((FIXTURES / "moodle" / f"{name}.json").read_text())


async def nothing_stored(redis: aioredis.Redis) -> bool:
    return await redis.xlen(EVENT_LOG) == 0 and await redis.zcard(WORKER_QUEUE) == 0


async def test_accepts_an_event_and_stores_log_entry_and_job(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    answer = await client.post(f"{bridge.base_url}/v1/events/default", json=EVENT)
    assert answer.status_code == 202
    assert answer.json() == {"accepted": ["evt_1"], "duplicates": [], "ignored": []}
    entries = await redis.xrange(EVENT_LOG)
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"source"] == b"default" and json.loads(fields[b"canonical"])["type"] == "user.joined"
    assert json.loads(fields[b"raw"]) == EVENT
    assert await redis.zrange(WORKER_QUEUE, 0, -1) == [b"default:evt_1:user_joined"]


async def test_repeat_is_200_duplicate_and_enqueues_nothing_more(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    first = await client.post(f"{bridge.base_url}/v1/events/default", json=EVENT)
    second = await client.post(f"{bridge.base_url}/v1/events/default", json=EVENT)
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json() == {"accepted": [], "duplicates": ["evt_1"], "ignored": []}
    assert await redis.xlen(EVENT_LOG) == 1 and await redis.zcard(WORKER_QUEUE) == 1


async def test_fifty_concurrent_copies_give_one_job(make_bridge, redis) -> None:
    bridge = make_bridge()
    async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=50)) as http:
        answers = await asyncio.gather(*[http.post(f"{bridge.base_url}/v1/events/default", json=EVENT)
                                         for _ in range(50)])
    assert sorted(a.status_code for a in answers) == [200] * 49 + [202]
    assert await redis.xlen(EVENT_LOG) == 1
    assert await redis.zcard(WORKER_QUEUE) == 1


async def test_batch_is_atomic_and_reports_each_event(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    batch = [EVENT, {**EVENT, "id": "evt_2"}, EVENT]
    answer = await client.post(f"{bridge.base_url}/v1/events/default", json=batch)
    assert answer.status_code == 202
    assert answer.json() == {"accepted": ["evt_1", "evt_2"], "duplicates": ["evt_1"], "ignored": []}
    bad_batch = [{**EVENT, "id": "evt_3"}, {**EVENT, "id": "evt_4", "lesson": {}}]
    refused = await client.post(f"{bridge.base_url}/v1/events/default", json=bad_batch)
    assert refused.status_code == 400
    assert refused.json()["error"]["details"]["path"] == "[1].lesson.id"
    assert await redis.xlen(EVENT_LOG) == 2   # evt_3 was not half-stored


@pytest.mark.parametrize(("body", "headers", "status", "code"), [
    (b"{not json", {"content-type": "application/json"}, 400, "invalid_json"),
    (b'"a string"', {"content-type": "application/json"}, 400, "invalid_body"),
    (b"[]", {"content-type": "application/json"}, 400, "empty_batch"),
    (json.dumps({**EVENT, "type": "nope"}).encode(), {"content-type": "application/json"}, 400, "invalid_event"),
    (json.dumps(EVENT).encode(), {"content-type": "text/plain"}, 415, "unsupported_media_type"),
    (json.dumps(EVENT).encode(), {}, 415, "unsupported_media_type"),
    (json.dumps([EVENT] * 501).encode(), {"content-type": "application/json"}, 400, "batch_too_large"),
    (json.dumps({**EVENT, "lesson": {"id": "x", "provider": "zoom"}}).encode(),
     {"content-type": "application/json"}, 400, "invalid_event"),
])
async def test_bad_input_gets_its_4xx_and_stores_nothing(make_bridge, client, redis, body, headers, status,
                                                         code) -> None:
    bridge = make_bridge()
    answer = await client.post(f"{bridge.base_url}/v1/events/default", content=body, headers=headers)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert error["code"] == code and error["message"]
    assert await nothing_stored(redis)


async def test_schema_error_names_the_field_path(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    answer = await client.post(f"{bridge.base_url}/v1/events/default", json={**EVENT, "user": {"name": "x"}})
    assert answer.status_code == 400
    assert answer.json()["error"]["details"]["path"] == "user.id"
    assert "user.id" in answer.json()["error"]["message"]


async def test_unknown_source_is_404_and_unknown_route_uses_error_body(make_bridge, client) -> None:
    bridge = make_bridge()
    answer = await client.post(f"{bridge.base_url}/v1/events/nope", json=EVENT)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_source"
    route = await client.get(f"{bridge.base_url}/v2/whatever")
    assert route.status_code == 404 and route.json()["error"]["code"] == "not_found"
    method = await client.get(f"{bridge.base_url}/v1/events/default")
    assert method.status_code == 405 and method.json()["error"]["code"] == "method_not_allowed"


async def test_body_over_limit_is_413_by_content_length(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    big = json.dumps({**EVENT, "data": {"blob": "x" * 300_000}}).encode()
    answer = await client.post(f"{bridge.base_url}/v1/events/default", content=big,
                               headers={"content-type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"
    assert await nothing_stored(redis)


async def test_a_huge_stream_is_refused_without_reading_it_whole(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    sent = 0
    total_chunks = 1600                      # 100 MB in 64 KiB chunks, no Content-Length: far past any buffer

    async def chunks():
        nonlocal sent
        for _ in range(total_chunks):
            sent += 65536
            yield b" " * 65536

    started = time.monotonic()
    tracemalloc.start()                       # the app runs in this process: its allocations count here
    try:
        answer = await client.post(f"{bridge.base_url}/v1/events/default", content=chunks(),
                                   headers={"content-type": "application/json"})
        assert answer.status_code == 413
    except (httpx.WriteError, httpx.RemoteProtocolError):
        pass                                  # the server answered and closed while we were still sending
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - started < 10
    assert peak < 16 * 2**20, peak           # the app never held the body: uvicorn drained and dropped it
    assert await nothing_stored(redis)


async def test_body_reader_stops_pulling_at_the_limit() -> None:
    pulled = 0

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b" " * 65536, "more_body": pulled < 160}

    request = Request({"type": "http", "method": "POST", "headers": [], "path": "/"}, receive)
    with pytest.raises(ApiError) as error:
        await read_body(request, 256 * 1024)
    assert error.value.status == 413
    assert pulled == 5          # 5 x 64 KiB crosses 256 KiB; the other 155 chunks are never read


async def test_moodle_token_is_checked_and_never_stored(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    event = moodle_fixture("bigbluebuttonbn_meeting_joined")
    wrong = await client.post(f"{bridge.base_url}/v1/events/moodle", json={**event, "token": "guess"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "bad_token"
    missing = await client.post(f"{bridge.base_url}/v1/events/moodle",
                                json={k: v for k, v in event.items() if k != "token"})
    assert missing.status_code == 401
    assert await nothing_stored(redis)
    right = await client.post(f"{bridge.base_url}/v1/events/moodle", json=event)
    assert right.status_code == 202
    assert MOODLE_TOKEN.encode() not in b"".join(v for _, f in await redis.xrange(EVENT_LOG) for v in f.values())


async def test_unmapped_moodle_event_is_accepted_and_ignored(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    answer = await client.post(f"{bridge.base_url}/v1/events/moodle", json=moodle_fixture("user_loggedin"))
    assert answer.status_code == 202
    body = answer.json()
    assert body["accepted"] == [] and len(body["ignored"]) == 1
    assert await nothing_stored(redis)


async def test_same_moodle_event_with_string_ids_is_a_duplicate(make_bridge, client) -> None:
    bridge = make_bridge()
    event = moodle_fixture("bigbluebuttonbn_meeting_joined")
    as_strings = {k: str(v) if isinstance(v, int) else v for k, v in event.items()}
    first = await client.post(f"{bridge.base_url}/v1/events/moodle", json=event)
    second = await client.post(f"{bridge.base_url}/v1/events/moodle", json=as_strings)
    assert (first.status_code, second.status_code) == (202, 200)


def signed_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "signed.toml", f"""
[sources.signed]
format = "canonical"
signing_secret = "{SIGNING_SECRET}"
""")


def signed_headers(body: bytes, secrets: list[str], timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {"content-type": "application/json", "webhook-id": "msg_in_1", "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secrets, "msg_in_1", timestamp, body)}


async def test_standard_webhooks_signature_is_required_and_checked(make_bridge, client, redis, tmp_path) -> None:
    bridge = make_bridge(signed_config(tmp_path))
    url = f"{bridge.base_url}/v1/events/signed"
    body = json.dumps(EVENT).encode()
    other = "whsec_" + base64.b64encode(b"some-other-secret-of-32-bytes!!!").decode()
    for headers in (
        {"content-type": "application/json"},                                    # unsigned
        signed_headers(body, [other]),                                           # wrong secret
        signed_headers(body, [SIGNING_SECRET], int(time.time()) - 310),          # too old (tolerance is 300 s)
        signed_headers(body, [SIGNING_SECRET], int(time.time()) + 310),          # from the future
        {**signed_headers(body, [SIGNING_SECRET]), "webhook-id": "msg_other"},   # id not the signed one
    ):
        answer = await client.post(url, content=body, headers=headers)
        assert answer.status_code == 401, headers
        assert answer.json()["error"]["code"] == "bad_signature"
    tampered = await client.post(url, content=body.replace(b"Ada", b"Eve"),
                                 headers=signed_headers(body, [SIGNING_SECRET]))
    assert tampered.status_code == 401
    assert await nothing_stored(redis)
    # Several signatures (a sender rotating secrets): one valid is enough.
    answer = await client.post(url, content=body, headers=signed_headers(body, [other, SIGNING_SECRET]))
    assert answer.status_code == 202


async def test_wait_answers_with_the_join_link(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    bridge.start_worker()
    answer = await client.post(f"{bridge.base_url}/v1/events/default?wait=10", json=EVENT)
    assert answer.status_code == 200
    (webhook,) = answer.json()["webhooks"]
    assert webhook["type"] == "join.ready"
    assert webhook["data"]["event_id"] == "evt_1" and webhook["data"]["role"] == "moderator"
    assert webhook["data"]["join_url"].endswith(webhook["data"]["token"])


async def test_wait_out_of_range_is_400(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    answer = await client.post(f"{bridge.base_url}/v1/events/default?wait=11", json=EVENT)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_wait"
    assert await nothing_stored(redis)


async def test_redis_down_is_503_then_accepted_after_restart_with_nothing_lost(make_bridge, client, redis,
                                                                              redis_server) -> None:
    bridge = make_bridge()
    url = f"{bridge.base_url}/v1/events/default"
    assert (await client.post(url, json=EVENT)).status_code == 202
    redis_server.stop()
    try:
        down = await client.post(url, json={**EVENT, "id": "evt_2"})
        assert down.status_code == 503
        assert down.headers["retry-after"] and down.json()["error"]["code"] == "store_unavailable"
        ready = await client.get(f"{bridge.base_url}/readyz")
        assert ready.status_code == 503
    finally:
        redis_server.start()
    again = await client.post(url, json={**EVENT, "id": "evt_2"})
    assert again.status_code == 202
    ids = [json.loads(f[b"canonical"])["id"] for _, f in await redis.xrange(EVENT_LOG)]
    assert ids == ["evt_1", "evt_2"]
    assert await redis.zcard(WORKER_QUEUE) == 2


async def test_sandbox_join_link_opens_a_page_only_with_its_token(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    bridge.start_worker()
    answer = await client.post(f"{bridge.base_url}/v1/events/default?wait=10", json=EVENT)
    token = answer.json()["webhooks"][0]["data"]["token"]
    page = await client.get(f"{bridge.base_url}/sandbox/c12-l7", params={"token": token})
    assert page.status_code == 200 and "Ada Lovelace" in page.text and "moderator" in page.text
    other_room = await client.get(f"{bridge.base_url}/sandbox/another-room", params={"token": token})
    forged = await client.get(f"{bridge.base_url}/sandbox/c12-l7", params={"token": token[:-4] + "AAAA"})
    assert other_room.status_code == forged.status_code == 401
    assert forged.json()["error"]["code"] == "bad_token"


async def test_accept_calls_in_flight_are_bounded_when_redis_is_slow(redis) -> None:
    """A Redis that answers slowly must not get one new call (and connection) per loop turn."""
    real = DurableAccept(redis, redis.register_script(ACCEPT_SCRIPT))
    active = peak = 0

    async def slow_accept(keys: list[str], args: list[Any]) -> Any:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.05)               # the stall, before the real call
            return await real(keys, args)
        finally:
            active -= 1

    batcher = AcceptBatcher(slow_accept, 60_000)
    submitted = []
    for n in range(60):                             # one request per loop turn, far more turns than calls
        event = {**EVENT, "id": f"evt_slow_{n}"}
        record = EventRecord("default", event["id"], "2026-11-25T00:00:00Z", event, event, plan("default", event))
        submitted.append(asyncio.create_task(batcher.submit([record])))
        await asyncio.sleep(0)
    results = await asyncio.wait_for(asyncio.gather(*submitted), timeout=10)
    assert peak == MAX_IN_FLIGHT                    # busy enough to reach the cap, never past it
    assert [int(result[1]) for result in results] == [1] * 60
    assert await redis.xlen(EVENT_LOG) == 60 and await redis.zcard(WORKER_QUEUE) == 60
