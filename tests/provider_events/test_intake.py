"""POST /v1/providers/{provider}/events: each provider's auth, stored like LMS intake, duplicates,
what is ignored, and every refusal with its 4xx and nothing stored."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from bridge.store import EVENT_LOG, WORKER_QUEUE, attendance_key, room_owner_key, seen_key
from tests.provider_events.conftest import HMS_HEADERS, ROOM, fixture, providers_config
from tests.providers.jaas.sim import JaasSim
from tests.test_intake import nothing_stored


async def own_room(redis, provider: str, room: str = ROOM) -> None:
    """The room → lesson index ensure_room writes when the bridge makes a room."""
    await redis.set(room_owner_key(provider, room), "default\tmoodle:lms.example.edu:87")


async def post_jaas(client, bridge, body: dict[str, Any], sim: JaasSim, **headers: str):
    raw = json.dumps(body).encode()
    sent = {"Content-Type": "application/json", "X-Jaas-Signature": sim.sign(raw), **headers}
    return await client.post(f"{bridge.base_url}/v1/providers/jaas/events", content=raw, headers=sent)


async def test_a_jaas_event_is_stored_once_and_a_repeat_is_200(bridge, client, redis, jaas) -> None:
    sim, _ = jaas
    await own_room(redis, "jaas")
    body = fixture("jaas/participant_joined.json")
    first = await post_jaas(client, bridge, body, sim)
    assert first.status_code == 202, first.text
    assert first.json() == {"accepted": [body["idempotencyKey"]], "duplicates": [], "ignored": []}
    again = await post_jaas(client, bridge, body, sim)
    assert again.status_code == 200
    assert again.json() == {"accepted": [], "duplicates": [body["idempotencyKey"]], "ignored": []}
    ((_, fields),) = await redis.xrange(EVENT_LOG)
    assert fields[b"source"] == b"provider:jaas" and json.loads(fields[b"raw"]) == body
    canonical = json.loads(fields[b"canonical"])
    assert canonical["type"] == "provider.event"
    assert canonical["lesson"] == {"id": "moodle:lms.example.edu:87", "provider": "jaas"}
    assert canonical["data"]["source"] == "default"
    assert canonical["data"]["fact"]["presence"] == {
        "kind": "joined", "at_ms": 1763805600112, "participant_id": "8a6c3e2b", "user_id": "31",
        "name": "Ada Lovelace", "role": "moderator", "reason": None, "joined_at_ms": None, "precision": "exact"}
    assert await redis.exists(seen_key("provider:jaas", body["idempotencyKey"]))
    # In the ledger with the event itself (no worker runs here), written once.
    ledger = attendance_key("default", "moodle:lms.example.edu:87", body["sessionId"])
    assert await redis.hkeys(ledger) == [f"e:{body['idempotencyKey']}".encode()]
    assert json.loads(await redis.hget(ledger, f"e:{body['idempotencyKey']}")) == canonical["data"]["fact"]["presence"]


async def test_a_session_end_is_queued_ahead_of_the_participant_jobs(bridge, client, redis, jaas) -> None:
    sim, _ = jaas
    await own_room(redis, "jaas")
    joined, ended = fixture("jaas/participant_joined.json"), fixture("jaas/room_destroyed.json")
    for body in (joined, ended):
        assert (await post_jaas(client, bridge, body, sim)).status_code == 202
    queued = [job.decode() for job in await redis.zrange(WORKER_QUEUE, 0, -1)]
    assert queued == [f"provider:jaas:{ended['idempotencyKey']}:provider_event",
                      f"provider:jaas:{joined['idempotencyKey']}:provider_event"]


async def test_several_v1_signatures_and_other_schemes(bridge, client, redis, jaas) -> None:
    sim, _ = jaas
    await own_room(redis, "jaas")
    body = fixture("jaas/participant_left_kicked.json")
    raw = json.dumps(body).encode()
    good = sim.sign(raw)
    t, v1 = good.split(",")
    rotated = sim.sign(raw, secret="an-older-secret").split(",")[1]
    header = f"{t},v0=bm90LWEtc2lnbmF0dXJl,{rotated},{v1}"       # the second v1 matches; v0 is ignored
    answer = await client.post(f"{bridge.base_url}/v1/providers/jaas/events", content=raw,
                               headers={"Content-Type": "application/json", "X-Jaas-Signature": header})
    assert answer.status_code == 202, answer.text


JAAS_REFUSALS = [
    ("missing_signature", lambda sim, raw: {}),
    ("bad_signature", lambda sim, raw: {"X-Jaas-Signature": sim.sign(raw, secret="not-the-secret")}),
    ("bad_signature", lambda sim, raw: {"X-Jaas-Signature": sim.sign(raw + b" ")}),     # another body
    ("bad_signature", lambda sim, raw: {"X-Jaas-Signature": sim.sign(raw).replace("v1=", "v2=")}),
    ("bad_signature", lambda sim, raw: {"X-Jaas-Signature": sim.sign(raw).split(",")[1]}),   # no t
    ("stale_signature", lambda sim, raw: {"X-Jaas-Signature": sim.sign(raw, t=int(time.time()) - 301)}),
    ("stale_signature", lambda sim, raw: {"X-Jaas-Signature": sim.sign(raw, t=int(time.time()) + 301)}),
]


@pytest.mark.parametrize(("code", "headers"), JAAS_REFUSALS)
async def test_jaas_auth_failures_are_401_and_store_nothing(bridge, client, redis, jaas, code, headers) -> None:
    sim, _ = jaas
    await own_room(redis, "jaas")
    raw = json.dumps(fixture("jaas/participant_joined.json")).encode()
    answer = await client.post(f"{bridge.base_url}/v1/providers/jaas/events", content=raw,
                               headers={"Content-Type": "application/json", **headers(sim, raw)})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == code and answer.json()["error"]["message"]
    assert await nothing_stored(redis)


async def test_jaas_fixed_authorization_when_configured(make_bridge, tmp_path, key, jaas, hms, client,
                                                        redis) -> None:
    sim, url = jaas
    bridge = make_bridge(providers_config(tmp_path, key, url, hms[1], "http://127.0.0.1:9/unused",
                                          jaas_extra='webhook_authorization = "Bearer jaas-says-hi"'))
    await own_room(redis, "jaas")
    body = fixture("jaas/participant_joined.json")
    missing = await post_jaas(client, bridge, body, sim)
    wrong = await post_jaas(client, bridge, body, sim, Authorization="Bearer jaas-says-hello")
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_authorization")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "bad_authorization")
    assert await nothing_stored(redis)
    right = await post_jaas(client, bridge, body, sim, Authorization="Bearer jaas-says-hi")
    assert right.status_code == 202


async def post_hms(client, bridge, body: dict[str, Any], headers: dict[str, str]):
    return await client.post(f"{bridge.base_url}/v1/providers/hms/events", json=body, headers=headers)


async def test_hms_headers_all_present_and_equal(bridge, client, redis) -> None:
    await own_room(redis, "hms", "6571b1f1e3b6c2a5b1f0c0de")
    body = fixture("100ms/peer_leave_success.json")
    missing = await post_hms(client, bridge, body, {"X-Lesson-Bridge-Secret": "hms-webhook-secret"})
    wrong = await post_hms(client, bridge, body, {**HMS_HEADERS, "X-Tenant": "school-8"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "missing_headers")
    assert "X-Tenant" in missing.json()["error"]["message"]
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "bad_headers")
    assert await nothing_stored(redis)
    accepted = await post_hms(client, bridge, body, {name.lower(): value for name, value in HMS_HEADERS.items()})
    assert accepted.status_code == 202 and accepted.json()["accepted"] == [body["id"]]
    fact = json.loads((await redis.xrange(EVENT_LOG))[0][1][b"canonical"])["data"]["fact"]
    assert fact["session_id"] == "6571b2a0e3b6c2a5b1f0c0df"
    assert fact["presence"]["reason"] == "left" and fact["presence"]["joined_at_ms"] == 1763805600100


async def test_unknown_types_and_foreign_rooms_are_accepted_and_ignored(bridge, client, redis, jaas) -> None:
    sim, _ = jaas
    transcript = fixture("jaas/room_destroyed.json", eventType="TRANSCRIPTION_UPLOADED")
    ignored_type = await post_jaas(client, bridge, transcript, sim)
    foreign = fixture("jaas/room_destroyed.json")                   # no lesson owns this room
    ignored_room = await post_jaas(client, bridge, foreign, sim)
    for answer, body in ((ignored_type, transcript), (ignored_room, foreign)):
        assert answer.status_code == 202
        assert answer.json() == {"accepted": [], "duplicates": [], "ignored": [body["idempotencyKey"]]}
    assert await nothing_stored(redis)


async def test_refusals_name_the_problem_and_store_nothing(bridge, client, redis, jaas) -> None:
    sim, _ = jaas
    await own_room(redis, "jaas")
    base = bridge.base_url
    cases = [
        (await client.post(f"{base}/v1/providers/nope/events", json={}), 404, "unknown_provider"),
        (await client.post(f"{base}/v1/providers/quiet/events", json={}), 404, "no_webhook_settings"),
        (await client.post(f"{base}/v1/providers/jaas/events", content=b"{}",
                           headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
    ]
    for raw in (b"{not json", b"[1, 2]", json.dumps({"eventType": "PARTICIPANT_JOINED"}).encode()):
        answer = await client.post(f"{base}/v1/providers/jaas/events", content=raw,
                                   headers={"Content-Type": "application/json", "X-Jaas-Signature": sim.sign(raw)})
        cases.append((answer, 400, None))
    for answer, status, code in cases:
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        assert error["message"] and (code is None or error["code"] == code)
    assert [c[0].json()["error"]["code"] for c in cases[3:]] == ["invalid_json", "invalid_body", "invalid_event"]
    assert "idempotencyKey" in cases[-1][0].json()["error"]["message"]
    assert await nothing_stored(redis)


async def test_redis_away_is_503_and_the_provider_retries_into_a_202(bridge, client, redis, redis_server,
                                                                    jaas) -> None:
    sim, _ = jaas
    await own_room(redis, "jaas")
    body = fixture("jaas/participant_joined.json")
    redis_server.stop()
    try:
        down = await post_jaas(client, bridge, body, sim)
        assert down.status_code == 503
        assert down.headers["retry-after"] and down.json()["error"]["code"] == "store_unavailable"
    finally:
        redis_server.start()
    assert (await post_jaas(client, bridge, body, sim)).status_code == 202
    assert await redis.xlen(EVENT_LOG) == 1
