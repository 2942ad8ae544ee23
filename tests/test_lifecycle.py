"""End to end through real processes: LMS event → web → worker → provider simulator → signed webhook.

The receiver verifies every delivery with the `standardwebhooks` library; the OWT simulator checks
the MAuth signature of every call the way the real MCU does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from bridge.deliveries import delivery
from bridge.store import delivery_key, endpoint_disabled_key, job_runs_key
from tests.conftest import MOODLE_TOKEN, WEBHOOK_SECRET, wait_until, write_config
from tests.fakes.server import serve
from tests.providers.owt.sim import OwtSim
from tests.test_intake import moodle_fixture

SERVICE_ID = "5f0c1a2b3c4d5e6f7a8b9c0d"
SERVICE_KEY = "owt-service-key-for-tests"
ROOM = "moodle-lms-example-edu-87"


@pytest.fixture(scope="module")
def owt_server() -> Iterator[tuple[OwtSim, str]]:
    sim = OwtSim(SERVICE_ID, SERVICE_KEY)
    with serve(sim.app) as url:
        yield sim, url


@pytest.fixture
def owt(owt_server: tuple[OwtSim, str]) -> tuple[OwtSim, str]:
    owt_server[0].reset()
    return owt_server


def owt_config(tmp_path: Path, owt_url: str, hook_url: str, secrets: str = f'"{WEBHOOK_SECRET}"',
               allow_private: bool = True) -> Path:
    return write_config(tmp_path / "bridge.toml", f"""
[providers.owt]
kind = "owt"
base_url = "{owt_url}"
service_id = "{SERVICE_ID}"
service_key = "{SERVICE_KEY}"

[sources.moodle]
format = "moodle"
token = "{MOODLE_TOKEN}"
provider = "owt"
webhook_url = "{hook_url}"
webhook_secret = {secrets}
allow_private_network = {str(allow_private).lower()}

[sources.default]
format = "canonical"
provider = "owt"
webhook_url = "{hook_url}"
webhook_secret = {secrets}
allow_private_network = {str(allow_private).lower()}

[webhooks]
retry_schedule = [0.2, 0.4, 0.8]
timeout_s = 2

[bridge]
job_retry_base_s = 0.1
""")


async def post(client, bridge, source: str, event: dict) -> dict:
    answer = await client.post(f"{bridge.base_url}/v1/events/{source}", json=event)
    assert answer.status_code in (200, 202), answer.text
    return answer.json()


async def run_of(redis, ref: str, function: str) -> dict:
    raw = await redis.hget(job_runs_key(ref), function)
    return json.loads(raw) if raw else {}


async def finished(redis, ref: str, function: str) -> dict:
    async def final() -> dict | None:
        run = await run_of(redis, ref, function)
        return run if run.get("status") in ("ok", "failed") else None
    return await wait_until(final)


async def test_moodle_lesson_schedule_join_leave_end(make_bridge, client, redis, receiver, owt, tmp_path) -> None:
    hook, hook_url = receiver
    sim, owt_url = owt
    bridge = make_bridge(owt_config(tmp_path, owt_url, hook_url))
    bridge.start_worker()

    role = await post(client, bridge, "moodle", moodle_fixture("role_assigned_editingteacher"))
    assert (await finished(redis, f"moodle:{role['accepted'][0]}", "role_changed"))["status"] == "ok"

    scheduled = await post(client, bridge, "moodle", moodle_fixture("bigbluebuttonbn_course_module_created"))
    (created,) = await wait_until(lambda: hook.of_type("room.created"))
    assert created["data"]["event_id"] == scheduled["accepted"][0]
    assert created["data"]["lesson_id"] == "moodle:lms.example.edu:87" and created["data"]["provider"] == "owt"
    assert [room["name"] for room in sim.rooms.values()] == [ROOM]

    await post(client, bridge, "moodle", moodle_fixture("bigbluebuttonbn_meeting_joined"))
    (ready,) = await wait_until(lambda: hook.of_type("join.ready"))
    assert ready["data"]["user_id"] == "31"
    assert ready["data"]["role"] == "presenter"        # learnt from role_assigned: teacher → OWT moderator role
    token = json.loads(base64.b64decode(ready["data"]["token"]))
    assert set(token) >= {"tokenId", "host", "secure", "signature"}
    assert ready["data"]["expires_at"].endswith("Z")
    participant_room = sim.redeem(ready["data"]["token"])    # the simulator accepts the minted token
    assert participant_room

    left = await post(client, bridge, "moodle", moodle_fixture("bigbluebuttonbn_meeting_left"))
    assert (await finished(redis, f"moodle:{left['accepted'][0]}", "user_left"))["status"] == "ok"

    await post(client, bridge, "moodle", moodle_fixture("bigbluebuttonbn_meeting_ended"))
    (ended,) = await wait_until(lambda: hook.of_type("room.ended"))
    assert ended["data"]["lesson_id"] == "moodle:lms.example.edu:87"
    room_id = next(iter(sim.rooms))
    assert not sim.participants.get(room_id)                  # everyone dropped
    assert hook.rejected == 0
    assert len({d["webhook_id"] for d in hook.delivered}) == len(hook.delivered)
    # (OWT's attendance polling may or may not have seen the participant in its short stay.)
    assert [d["type"] for d in hook.delivered if not d["type"].startswith("participant.")] == [
        "room.created", "join.ready", "room.ended"]


async def test_scheduled_twice_is_one_room_and_join_first_creates_it(make_bridge, client, redis, receiver, owt,
                                                                    tmp_path) -> None:
    hook, hook_url = receiver
    sim, owt_url = owt
    bridge = make_bridge(owt_config(tmp_path, owt_url, hook_url))
    bridge.start_worker()
    join_first = {"id": "evt_join", "type": "user.joined", "lesson": {"id": "c12-l7", "title": "Algebra"},
                  "user": {"id": "42", "name": "Bob"}}
    await post(client, bridge, "default", join_first)
    (ready,) = await wait_until(lambda: hook.of_type("join.ready"))
    assert ready["data"]["role"] == "viewer"
    for n in range(2):
        await post(client, bridge, "default", {"id": f"evt_sched_{n}", "type": "lesson.scheduled",
                                               "lesson": {"id": "c12-l7", "title": "Algebra"}})
    await wait_until(lambda: len(hook.of_type("room.created")) == 2)
    assert [room["name"] for room in sim.rooms.values()] == ["c12-l7"]
    assert [d["data"]["created"] for d in hook.of_type("room.created")] == [False, False]


async def test_provider_outage_retries_then_one_webhook(make_bridge, client, redis, receiver, owt, tmp_path) -> None:
    hook, hook_url = receiver
    sim, owt_url = owt
    bridge = make_bridge(owt_config(tmp_path, owt_url, hook_url))
    sim.inject(503, times=3)
    bridge.start_worker()
    await post(client, bridge, "default", {"id": "evt_1", "type": "lesson.scheduled", "lesson": {"id": "c1"}})
    (_created,) = await wait_until(lambda: hook.of_type("room.created"))
    run = await finished(redis, "default:evt_1", "lesson_scheduled")
    assert run["status"] == "ok" and run["try"] >= 2
    assert len(sim.rooms) == 1
    await wait_until(lambda: len(hook.delivered) == 1)
    assert [d["type"] for d in hook.delivered] == ["room.created"]


async def test_provider_400_becomes_event_failed(make_bridge, client, redis, receiver, owt, tmp_path) -> None:
    hook, hook_url = receiver
    sim, owt_url = owt
    bridge = make_bridge(owt_config(tmp_path, owt_url, hook_url))
    sim.inject(400, body={"error": {"code": 1201, "message": "Invalid room option"}})
    bridge.start_worker()
    await post(client, bridge, "default", {"id": "evt_bad", "type": "lesson.scheduled", "lesson": {"id": "c2"}})
    (failed,) = await wait_until(lambda: hook.of_type("event.failed"))
    assert failed["data"]["event_id"] == "evt_bad"
    assert failed["data"]["error"]["code"] == "1201" and "Invalid room option" in failed["data"]["error"]["message"]
    run = await finished(redis, "default:evt_bad", "lesson_scheduled")
    assert run["status"] == "failed" and run["try"] == 1          # permanent: no retry
    assert not hook.of_type("room.created")


async def test_operation_the_provider_lacks_is_unsupported(make_bridge, client, redis, receiver, owt,
                                                           tmp_path) -> None:
    hook, hook_url = receiver
    _sim, owt_url = owt
    bridge = make_bridge(owt_config(tmp_path, owt_url, hook_url))
    bridge.start_worker()
    await post(client, bridge, "default", {"id": "evt_dial", "type": "call.dial_out", "lesson": {"id": "c3"},
                                           "data": {"phone": "+4930123456"}})
    (failed,) = await wait_until(lambda: hook.of_type("event.failed"))
    assert failed["data"]["error"]["code"] == "unsupported"
    assert (await run_of(redis, "default:evt_dial", "call_dial_out"))["try"] == 1


async def test_receiver_down_then_delivered_with_the_same_webhook_id(make_bridge, client, redis, receiver, owt,
                                                                     tmp_path) -> None:
    hook, hook_url = receiver
    _sim, owt_url = owt
    hook.answer_next(500, 503, 302)                 # a redirect counts as a failure too
    bridge = make_bridge(owt_config(tmp_path, owt_url, hook_url))
    bridge.start_worker()
    await post(client, bridge, "default", {"id": "evt_1", "type": "lesson.scheduled", "lesson": {"id": "c4"}})
    (created,) = await wait_until(lambda: hook.of_type("room.created"))
    ids = [msg_id for msg_id, _ in hook.attempts]
    assert len(ids) == 4 and set(ids) == {created["webhook_id"]}
    assert [status for _, status in hook.attempts] == [500, 503, 302, 200]
    # The receiver logs the 200 before the bridge has read it and recorded the delivery.
    record = await wait_until(lambda: _delivered(redis, created["webhook_id"]))
    assert record[b"attempts"] == b"4"
    logged = (await delivery(redis, created["webhook_id"]))["attempt_log"]
    assert [a["status"] for a in logged] == [500, 503, 302, 200] and all("ms" in a for a in logged)


async def _delivered(redis, webhook_id: str) -> dict[bytes, bytes] | None:
    record = await redis.hgetall(delivery_key(webhook_id))
    return record if record.get(b"status") == b"delivered" else None


async def test_receiver_gone_disables_endpoint_and_keeps_deliveries(make_bridge, client, redis, receiver, owt,
                                                                    tmp_path) -> None:
    hook, hook_url = receiver
    _sim, owt_url = owt
    hook.answer_next(410)
    bridge = make_bridge(owt_config(tmp_path, owt_url, hook_url))
    bridge.start_worker()
    await post(client, bridge, "default", {"id": "evt_1", "type": "lesson.scheduled", "lesson": {"id": "c5"}})
    await wait_until(lambda: redis.exists(endpoint_disabled_key("default")))
    await post(client, bridge, "default", {"id": "evt_2", "type": "lesson.updated", "lesson": {"id": "c5"}})
    await finished(redis, "default:evt_2", "lesson_updated")
    deliveries = [await redis.hgetall(key) async for key in redis.scan_iter(delivery_key("*"))]
    await wait_until(lambda: _all_disabled(redis))
    assert len(deliveries) == 2
    assert hook.attempts and [s for _, s in hook.attempts] == [410]    # nothing sent after the 410


async def _all_disabled(redis) -> bool:
    statuses = [await redis.hget(key, "status") async for key in redis.scan_iter(delivery_key("*"))]
    return len(statuses) == 2 and all(s == b"disabled" for s in statuses)


async def test_private_destination_is_refused_without_allow_private_network(make_bridge, client, redis, receiver,
                                                                            owt, tmp_path) -> None:
    hook, hook_url = receiver
    _sim, owt_url = owt
    bridge = make_bridge(owt_config(tmp_path, owt_url, hook_url, allow_private=False))
    bridge.start_worker()
    await post(client, bridge, "default", {"id": "evt_1", "type": "lesson.scheduled", "lesson": {"id": "c6"}})
    await finished(redis, "default:evt_1", "lesson_scheduled")

    async def dead() -> bool:
        statuses = [await redis.hget(k, "status") async for k in redis.scan_iter(delivery_key("*"))]
        return statuses == [b"dead"]
    await wait_until(dead)
    assert hook.attempts == []
    (key,) = [k async for k in redis.scan_iter(delivery_key("*"))]
    (attempt,) = (await delivery(redis, key.decode().rsplit(":", 1)[1]))["attempt_log"]
    assert "non-public address" in attempt["error"]


async def test_rotating_secrets_every_delivery_is_signed_with_each(make_bridge, client, redis, receiver, owt,
                                                                   tmp_path) -> None:
    hook, hook_url = receiver
    _sim, owt_url = owt
    old = "whsec_" + base64.b64encode(b"the-old-secret-being-rotated-out").decode()
    bridge = make_bridge(owt_config(tmp_path, owt_url, hook_url, secrets=f'["{old}", "{WEBHOOK_SECRET}"]'))
    bridge.start_worker()
    await post(client, bridge, "default", {"id": "evt_1", "type": "lesson.scheduled", "lesson": {"id": "c7"}})
    await wait_until(lambda: hook.of_type("room.created"))     # verified with the new secret alone
    hook.verifier = Webhook(old)                              # an LMS still on the old secret
    await post(client, bridge, "default", {"id": "evt_2", "type": "lesson.scheduled", "lesson": {"id": "c8"}})
    await wait_until(lambda: len(hook.of_type("room.created")) == 2)
    assert hook.rejected == 0
