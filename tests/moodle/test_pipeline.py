"""Moodle as it really is, through real worker processes: the calendar twin of an activity never gets a
room, reconciliation repairs a dropped course_module_created, names reach the provider's token, and a
refused web-service token is logged once without a retry storm."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.store import job_runs_key, lesson_key
from tests.conftest import MOODLE_TOKEN, WEBHOOK_SECRET, wait_until, worker_ready, write_config
from tests.fakes.server import serve
from tests.moodle.sim import MoodleSim
from tests.providers.hms.sim import HmsSim
from tests.providers.jaas.sim import JaasSim

FIXTURES = Path(__file__).parent.parent / "fixtures" / "moodle"
WS_TOKEN = "ws-token-3b8e1f"
ACTIVITY = "moodle:lms.example.edu:87"
TWIN = "moodle:lms.example.edu:event:2211"
COURSE_EVENT = "moodle:lms.example.edu:event:2210"
SANDBOX = '[providers.sandbox]\nkind = "sandbox"'
APP_ID = "vpaas-magic-cookie-0123456789abcdef"


def fixture(name: str, **changes: object) -> dict:
    return {**json.loads((FIXTURES / f"{name}.json").read_text()), **changes}


@pytest.fixture
def moodle() -> Iterator[tuple[MoodleSim, str]]:
    sim = MoodleSim(WS_TOKEN)
    sim.add_user(31, "Ada", "Lovelace", "ada@example.edu")
    now = int(time.time())
    sim.add_activity(12, 87, 9, "Algebra I - live lesson", opens=now + 3600, closes=now + 7200)
    sim.add_activity_entry(2211, 87, now + 3600)
    sim.add_course_event(2210, 12, "Revision session", now + 86400, 3600)
    with serve(sim.app) as url:
        yield sim, url


def moodle_config(tmp_path: Path, moodle_url: str, hook_url: str, *, provider: str = SANDBOX,
                  ws_token: str = WS_TOKEN, reconcile_s: int = 0) -> Path:
    return write_config(tmp_path / "bridge.toml", f"""
{provider}

[sources.moodle]
format = "moodle"
token = "{MOODLE_TOKEN}"
moodle_url = "{moodle_url}"
ws_token = "{ws_token}"
reconcile_s = {reconcile_s}
webhook_url = "{hook_url}"
webhook_secret = "{WEBHOOK_SECRET}"
allow_private_network = true

[bridge]
data_dir = "{tmp_path / 'var'}"
""")


def jaas_key(tmp_path: Path) -> rsa.RSAPrivateKey:
    """A JaaS API key, its PEM at tmp_path/jaas.pem for `private_key_file`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "jaas.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return key


async def post(client, bridge, item: dict) -> dict:
    answer = await client.post(f"{bridge.base_url}/v1/events/moodle?wait=10", json=item)
    assert answer.status_code == 200, answer.text
    return answer.json()


def rooms(hook) -> dict[str, dict]:
    return {d["data"]["lesson_id"]: d["data"] for d in hook.of_type("room.created")}


async def test_an_activitys_calendar_entry_never_gets_a_room(make_bridge, client, redis, receiver, moodle,
                                                             tmp_path) -> None:
    hook, hook_url = receiver
    sim, url = moodle
    bridge = make_bridge(moodle_config(tmp_path, url, hook_url))
    bridge.start_worker()
    await post(client, bridge, fixture("twin_course_module_created"))
    twin = await post(client, bridge, fixture("twin_calendar_event_created"))
    assert twin["webhooks"] == []
    await post(client, bridge, fixture("calendar_event_created"))      # a teacher's own course event
    await wait_until(lambda: sorted(rooms(hook)) == [ACTIVITY, COURSE_EVENT])
    assert not await redis.exists(lesson_key("moodle", TWIN))
    (event_id,) = twin["accepted"]
    run = json.loads(await redis.hget(job_runs_key(f"moodle:{event_id}"), "lesson_scheduled"))
    assert run["status"] == "ok" and "bigbluebuttonbn activity's own entry" in run["ignored"]
    # The ~23 KB calendar answer is cached: the same twin updated asks Moodle no more.
    asked = sim.functions_called().count("core_calendar_get_calendar_event_by_id")
    await post(client, bridge, fixture("twin_calendar_event_created",
                                       eventname="\\core\\event\\calendar_event_updated", timecreated=1763805700))
    assert sim.functions_called().count("core_calendar_get_calendar_event_by_id") == asked
    assert sorted(rooms(hook)) == [ACTIVITY, COURSE_EVENT] and not hook.of_type("room.updated")


async def test_reconciliation_repairs_a_dropped_course_module_created(make_bridge, client, redis, receiver, moodle,
                                                                      tmp_path) -> None:
    hook, hook_url = receiver
    sim, url = moodle
    bridge = make_bridge(moodle_config(tmp_path, url, hook_url, reconcile_s=1))
    for _ in range(2):                  # two workers, one reconciler
        bridge.start_worker()
    await wait_until(lambda: worker_ready(redis))
    # course_module_created never reached the bridge; only the activity's calendar entry did.
    await post(client, bridge, fixture("twin_calendar_event_created"))
    started = time.monotonic()
    await wait_until(lambda: ACTIVITY in rooms(hook), timeout=10)
    assert time.monotonic() - started < 4      # within an interval or so (1 s, checked every 0.25 s)
    repaired = rooms(hook)[ACTIVITY]
    assert repaired["title"] == "Algebra I - live lesson" and repaired["event_id"].startswith("mdl_rec_")
    assert COURSE_EVENT in rooms(hook)        # the course's calendar came with it
    assert TWIN not in rooms(hook)
    # The late webhook finds the room made: no second room; the next intervals create nothing again.
    await post(client, bridge, fixture("twin_course_module_created"))
    await wait_until(lambda: len(hook.of_type("room.created")) == 3)
    assert [d["data"]["created"] for d in hook.of_type("room.created") if d["data"]["lesson_id"] == ACTIVITY] == [
        True, False]
    # The activity deleted in Moodle while its course_module_deleted was lost: the lesson is cancelled.
    sim.remove_activity(87)
    await wait_until(lambda: hook.of_type("room.deleted"), timeout=10)
    assert [d["data"]["lesson_id"] for d in hook.of_type("room.deleted")] == [ACTIVITY]
    assert len(hook.of_type("room.created")) == 3


async def test_join_tokens_carry_the_moodle_users_full_name(make_bridge, client, receiver, moodle, tmp_path,
                                                            redis) -> None:
    _, hook_url = receiver
    _, url = moodle
    key = jaas_key(tmp_path)
    jaas = JaasSim(APP_ID)
    jaas.add_key(f"{APP_ID}/k1", key.public_key())
    with serve(jaas.app) as jaas_url:
        provider = (f'[providers.jaas]\nkind = "jaas"\napp_id = "{APP_ID}"\nkey_id = "k1"\n'
                    f'private_key_file = "{tmp_path / "jaas.pem"}"\napi_base = "{jaas_url}"\n')
        bridge = make_bridge(moodle_config(tmp_path, url, hook_url, provider=provider))
        bridge.start_worker()
        joined = await post(client, bridge, fixture("bigbluebuttonbn_meeting_joined"))    # other: null, bare ids
    (ready,) = joined["webhooks"]
    claims = jwt.decode(ready["data"]["token"], key.public_key(), algorithms=["RS256"], audience="jitsi")
    user = claims["context"]["user"]
    assert (user["id"], user["name"], user["email"]) == ("31", "Ada Lovelace", "ada@example.edu")
    stored = await redis.hgetall(lesson_key("moodle", ACTIVITY))
    assert stored[b"title"] == b"Algebra I - live lesson"       # the room carries the activity's name


async def test_a_refused_ws_token_is_logged_once_and_jobs_still_run(make_bridge, client, receiver, moodle,
                                                                    tmp_path) -> None:
    hook, hook_url = receiver
    sim, url = moodle
    bridge = make_bridge(moodle_config(tmp_path, url, hook_url, ws_token="revoked-token-77aa", reconcile_s=1))
    bridge.start_worker()
    for second in range(4):
        joined = await post(client, bridge, fixture("bigbluebuttonbn_meeting_joined", timecreated=1763809200 + second))
        assert [w["type"] for w in joined["webhooks"]] == ["join.ready"]     # degraded, never blocked
    await asyncio.sleep(2)              # two reconcile intervals
    # One refused call starts the pause; a reconciler that asked in the same millisecond may add one.
    assert 1 <= len(sim.refused) <= 2 and sim.calls == []
    logs = bridge.logs()
    assert logs.count("moodle.ws_misconfigured") == 1 and "revoked-token-77aa" not in logs
    await wait_until(lambda: len(hook.of_type("join.ready")) == 4)


async def test_100ms_join_carries_the_moodle_users_id_in_its_token_and_name_in_its_link(
        make_bridge, client, receiver, moodle, tmp_path) -> None:
    """100ms app tokens have no name claim (the client SDK sends the name when it joins): the token names
    the user by id, and the prebuilt link's name parameter carries the full name."""
    _, hook_url = receiver
    _, url = moodle
    hms = HmsSim()
    with serve(hms.app) as hms_url:
        provider = (f'[providers.hms]\nkind = "100ms"\naccess_key = "{hms.access_key}"\n'
                    f'app_secret = "{hms.app_secret}"\napi_base = "{hms_url}"\npolicy_base = "{hms_url}"\n'
                    'join_url_template = "{join_base}/{room_id}?token={token}&name={user_name}"\n')
        bridge = make_bridge(moodle_config(tmp_path, url, hook_url, provider=provider))
        bridge.start_worker()
        joined = await post(client, bridge, fixture("bigbluebuttonbn_meeting_joined"))
    (ready,) = joined["webhooks"]
    claims = jwt.decode(ready["data"]["token"], hms.app_secret, algorithms=["HS256"])
    assert (claims["type"], claims["user_id"]) == ("app", "31")
    assert ready["data"]["join_url"].endswith("&name=Ada%20Lovelace")
    (room,) = hms.rooms.values()
    assert room["description"] == "Algebra I - live lesson"      # the room carries the activity's name


async def test_a_moodle_lesson_gets_its_attendance_report(make_bridge, client, receiver, moodle, tmp_path,
                                                          redis) -> None:
    """Moodle fixtures drive the room (created, joined, ended), JaaS tells who was there: the Moodle
    source's endpoint gets an attendance.report naming the Moodle user with the name Moodle gave."""
    hook, hook_url = receiver
    _, url = moodle
    key = jaas_key(tmp_path)
    jaas = JaasSim(APP_ID, webhook_secret="jaas-webhook-secret")
    jaas.add_key(f"{APP_ID}/k1", key.public_key())
    with serve(jaas.app) as jaas_url:
        provider = (f'[providers.jaas]\nkind = "jaas"\napp_id = "{APP_ID}"\nkey_id = "k1"\n'
                    f'private_key_file = "{tmp_path / "jaas.pem"}"\napi_base = "{jaas_url}"\n'
                    'webhook_secret = "jaas-webhook-secret"\n')
        bridge = make_bridge(moodle_config(tmp_path, url, hook_url, provider=provider))
        bridge.start_worker()
        await post(client, bridge, fixture("bigbluebuttonbn_course_module_created"))
        (ready,) = (await post(client, bridge, fixture("bigbluebuttonbn_meeting_joined")))["webhooks"]
        jaas.outbox.clock_ms = 1_763_809_200_000
        jaas.join(ready["data"]["token"])
        jaas.outbox.advance(1800)
        jaas.leave(next(iter(jaas.sessions)), "31")
        await post(client, bridge, fixture("bigbluebuttonbn_meeting_ended"))      # the bridge ends the room
        answers = await jaas.outbox.send(client, f"{bridge.base_url}/v1/providers/jaas/events", jaas.outbox.events)
        assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
        (report,) = await wait_until(lambda: hook.of_type("attendance.report"))
    assert report["data"]["source"] == "moodle" and report["data"]["lesson_id"] == ACTIVITY
    [ada] = report["data"]["participants"]
    assert (ada["user_id"], ada["name"], ada["total_s"]) == ("31", "Ada Lovelace", 1800.0)
