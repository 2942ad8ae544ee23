"""OWT and OpenMeetings attendance by polling, end to end through real worker processes: canonical
events in, the provider simulators over loopback HTTP, participant.* and attendance.report out to a
receiver that verifies every signature."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.store import attendance_poll_key
from tests.conftest import lms_source_toml, wait_until, write_config
from tests.fakes.server import serve
from tests.providers.openmeetings.sim import OpenMeetingsSim
from tests.providers.owt.sim import OwtSim
from tests.test_lifecycle import SERVICE_ID, SERVICE_KEY, post

POLL_S = 0.2
LESSON = {"id": "c12-l7", "title": "Algebra I"}
TEACHER = {"id": "7", "name": "Ada Lovelace", "role": "teacher"}
STUDENT = {"id": "42", "name": "Bob Student", "role": "student"}
OM_PASSWORD = "!HansHans1-for-tests"


@pytest.fixture
def owt() -> Iterator[tuple[OwtSim, str]]:
    sim = OwtSim(SERVICE_ID, SERVICE_KEY)
    with serve(sim.app) as url:
        yield sim, url


@pytest.fixture
def om() -> Iterator[tuple[OpenMeetingsSim, str]]:
    sim = OpenMeetingsSim(password=OM_PASSWORD)
    with serve(sim.app) as url:
        yield sim, f"{url}/openmeetings"


def config(tmp_path: Path, provider: str, hook_url: str, poll_s: float = POLL_S) -> Path:
    return write_config(tmp_path / "bridge.toml", f"""
{provider}
attendance_poll_s = {poll_s}

{lms_source_toml("p", hook_url)}
[bridge]
job_retry_base_s = 0.1
""")


def owt_table(url: str) -> str:
    return (f'[providers.p]\nkind = "owt"\nbase_url = "{url}"\nservice_id = "{SERVICE_ID}"\n'
            f'service_key = "{SERVICE_KEY}"')


def om_table(url: str) -> str:
    return f'[providers.p]\nkind = "openmeetings"\nbase_url = "{url}"\nuser = "soapuser"\npassword = "{OM_PASSWORD}"'


def event(n: str, kind: str, user: dict[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": f"evt_{n}", "type": kind, "occurred_at": "2026-11-22T10:00:00Z",
                            "lesson": {**LESSON, "provider": "p"}, "data": {}}
    if user:
        body["user"] = user
    return body


async def join(client, bridge, hook, n: str, user: dict[str, str]) -> str:
    """user.joined → the join token the LMS hands the user."""
    await post(client, bridge, "default", event(n, "user.joined", user))
    ready = await wait_until(lambda: [w for w in hook.of_type("join.ready") if w["data"]["user_id"] == user["id"]])
    return ready[0]["data"]["token"]


async def _not(check: Awaitable[int]) -> bool:
    return not await check


def by_user(hook, webhook_type: str) -> dict[str | None, list[dict[str, Any]]]:
    seen: dict[str | None, list[dict[str, Any]]] = {}
    for webhook in hook.of_type(webhook_type):
        seen.setdefault(webhook["data"]["user_id"], []).append(webhook["data"])
    return seen


async def test_owt_joins_and_leaves_are_polled_and_the_report_follows_the_end(
        make_bridge, client, redis, receiver, owt, tmp_path) -> None:
    hook, hook_url = receiver
    sim, url = owt
    bridge = make_bridge(config(tmp_path, owt_table(url), hook_url))
    bridge.start_worker()

    teacher = sim.redeem(await join(client, bridge, hook, "1", TEACHER))
    room_id = next(iter(sim.rooms))
    (joined,) = (await wait_until(lambda: by_user(hook, "participant.joined").get("7")))
    assert joined["precision"] == "poll" and joined["participant_id"] == teacher
    assert joined["name"] == "Ada Lovelace" and joined["role"] == "moderator"    # named as the bridge joined them
    assert joined["session_id"].startswith("poll:c12-l7:") and joined["event_id"] == "evt_1"

    student = sim.redeem(await join(client, bridge, hook, "2", STUDENT))
    await wait_until(lambda: by_user(hook, "participant.joined").get("42"))
    sim.leave(room_id, student)
    (left,) = await wait_until(lambda: by_user(hook, "participant.left").get("42"))
    assert left["precision"] == "poll" and left["reason"] == "unknown" and left["role"] == "guest"
    assert 0 < left["duration_s"] < 5 and left["participant_id"] == student
    assert not hook.of_type("attendance.report")          # the lesson is still on

    await post(client, bridge, "default", event("3", "lesson.ended"))     # OWT drops everyone
    (report,) = await wait_until(lambda: hook.of_type("attendance.report"))
    data = report["data"]
    assert data["session_id"] == joined["session_id"]
    assert [(p["user_id"], p["name"], p["role"]) for p in data["participants"]] == [
        ("42", "Bob Student", "guest"), ("7", "Ada Lovelace", "moderator")]
    assert all(p["precision"] == "poll" and len(p["intervals"]) == 1 for p in data["participants"])
    # The closing tick's webhooks go out side by side: the teacher's leave may land after the report.
    (teacher_left,) = await wait_until(lambda: by_user(hook, "participant.left").get("7"))
    assert teacher_left["participant_id"] == teacher

    # Polling stopped with the session: the simulator is asked no more.
    # The tick is marked done once its webhooks are out: the report can arrive first.
    await wait_until(lambda: _not(redis.exists(attendance_poll_key("default", LESSON["id"]))))
    polls = sim.calls_to(f"/v1/rooms/{room_id}/participants", "GET")
    await asyncio.sleep(POLL_S * 6)
    assert sim.calls_to(f"/v1/rooms/{room_id}/participants", "GET") == polls
    assert len(hook.of_type("attendance.report")) == 1 and hook.rejected == 0


async def test_two_workers_poll_once_and_report_each_join_once(make_bridge, client, redis, receiver, owt,
                                                               tmp_path) -> None:
    hook, hook_url = receiver
    sim, url = owt
    bridge = make_bridge(config(tmp_path, owt_table(url), hook_url))
    bridge.start_worker()
    bridge.start_worker()

    sim.redeem(await join(client, bridge, hook, "1", TEACHER))
    sim.redeem(await join(client, bridge, hook, "2", STUDENT))
    await post(client, bridge, "default", event("3", "lesson.started"))     # live already: no second poller
    await wait_until(lambda: len(hook.of_type("participant.joined")) >= 2)
    room_id = next(iter(sim.rooms))
    before = sim.calls_to(f"/v1/rooms/{room_id}/participants", "GET")
    window_s = 2.0
    await asyncio.sleep(window_s)
    polls = sim.calls_to(f"/v1/rooms/{room_id}/participants", "GET") - before
    assert 0 < polls <= window_s / POLL_S + 2          # one chain: at most one poll per interval

    await post(client, bridge, "default", event("4", "lesson.ended"))
    await wait_until(lambda: hook.of_type("attendance.report"))
    await asyncio.sleep(POLL_S * 5)
    assert sorted(w["data"]["user_id"] for w in hook.of_type("participant.joined")) == ["42", "7"]
    assert sorted(w["data"]["user_id"] for w in hook.of_type("participant.left")) == ["42", "7"]
    assert len(hook.of_type("attendance.report")) == 1
    assert len({d["webhook_id"] for d in hook.delivered}) == len(hook.delivered)


async def test_zero_turns_polling_off(make_bridge, client, redis, receiver, owt, tmp_path) -> None:
    hook, hook_url = receiver
    sim, url = owt
    bridge = make_bridge(config(tmp_path, owt_table(url), hook_url, poll_s=0))
    bridge.start_worker()
    sim.redeem(await join(client, bridge, hook, "1", TEACHER))
    await asyncio.sleep(1.0)
    assert sim.calls_to("/participants", "GET") == 0
    assert not hook.of_type("participant.joined")
    # The tick is marked done once its webhooks are out: the report can arrive first.
    await wait_until(lambda: _not(redis.exists(attendance_poll_key("default", LESSON["id"]))))


async def test_a_provider_outage_skips_polls_without_failing_anything(make_bridge, client, redis, receiver, owt,
                                                                      tmp_path) -> None:
    hook, hook_url = receiver
    sim, url = owt
    bridge = make_bridge(config(tmp_path, owt_table(url), hook_url))
    bridge.start_worker()
    await join(client, bridge, hook, "1", TEACHER)
    sim.inject(503, times=4, path="/participants")
    await wait_until(lambda: sim.calls_to("/participants", "GET") >= 5)     # through the outage and on
    sim.redeem(hook.of_type("join.ready")[0]["data"]["token"])
    await wait_until(lambda: hook.of_type("participant.joined"))
    assert not hook.of_type("event.failed")


async def test_a_room_deleted_under_a_live_lesson_closes_the_session(make_bridge, client, redis, receiver, owt,
                                                                     tmp_path) -> None:
    hook, hook_url = receiver
    sim, url = owt
    bridge = make_bridge(config(tmp_path, owt_table(url), hook_url))
    bridge.start_worker()
    sim.redeem(await join(client, bridge, hook, "1", TEACHER))
    await wait_until(lambda: hook.of_type("participant.joined"))
    room_id = next(iter(sim.rooms))
    with sim._lock:                             # an operator deletes the room at the MCU
        del sim.rooms[room_id]
    (report,) = await wait_until(lambda: hook.of_type("attendance.report"))
    assert [p["user_id"] for p in report["data"]["participants"]] == ["7"]
    (left,) = await wait_until(lambda: hook.of_type("participant.left"))   # sent beside the report
    assert left["data"]["user_id"] == "7"
    # The tick is marked done once its webhooks are out: the report can arrive first.
    await wait_until(lambda: _not(redis.exists(attendance_poll_key("default", LESSON["id"]))))


async def test_openmeetings_room_users_are_polled_by_external_id(make_bridge, client, redis, receiver, om,
                                                                 tmp_path) -> None:
    hook, hook_url = receiver
    sim, url = om
    bridge = make_bridge(config(tmp_path, om_table(url), hook_url))
    bridge.start_worker()

    sim.enter(await join(client, bridge, hook, "1", TEACHER))
    room_id = next(iter(sim.rooms))
    sim.visit(room_id, "Walter")                        # came in without a room hash: name only
    await wait_until(lambda: len(hook.of_type("participant.joined")) == 2)
    joined = by_user(hook, "participant.joined")
    assert joined["7"][0]["name"] == "Ada Lovelace" and joined["7"][0]["role"] == "moderator"
    assert joined[None][0]["name"] == "Walter" and joined[None][0]["role"] == "guest"
    sim.expire_sessions()                               # the SID expires mid-lesson: logged in again
    sim.leave(room_id, "7")
    await wait_until(lambda: by_user(hook, "participant.left").get("7"))

    await post(client, bridge, "default", event("2", "lesson.ended"))     # OpenMeetings closes the room
    (report,) = await wait_until(lambda: hook.of_type("attendance.report"))
    assert [(p["user_id"], p["name"]) for p in report["data"]["participants"]] == [("7", "Ada Lovelace"),
                                                                                   (None, "Walter")]
    polls = sim.calls_to("/room/users/", "GET")
    await asyncio.sleep(POLL_S * 6)
    assert sim.calls_to("/room/users/", "GET") == polls
    assert not hook.of_type("event.failed")
