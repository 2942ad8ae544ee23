"""Reconciliation's decisions, against the simulator and a real Redis: what Moodle has now versus what
the bridge made."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from bridge.config import SourceConfig
from bridge.moodle.client import MoodleClient
from bridge.moodle.reconcile import course_differences
from bridge.store import lesson_key, moodle_course_lessons_key
from tests.fakes.server import serve
from tests.moodle.sim import MoodleSim

WS_TOKEN = "ws-token-3b8e1f"
COURSE = "lms.example.edu:12"


@pytest.fixture
def sim() -> Iterator[tuple[MoodleSim, str]]:
    moodle = MoodleSim(WS_TOKEN)
    with serve(moodle.app) as url:
        yield moodle, url


@pytest.fixture
async def client(sim, redis) -> AsyncIterator[MoodleClient]:
    _, url = sim
    source = SourceConfig(name="moodle", format="moodle", provider="sandbox", token="t", moodle_url=url,
                          ws_token=WS_TOKEN)
    async with httpx.AsyncClient(timeout=5) as http:
        yield MoodleClient(source, http, redis)


async def differences(client: MoodleClient, redis) -> dict[str, str]:
    events = await course_differences(redis, client, client.source, COURSE)
    return {event["lesson"]["id"].rsplit(":", 1)[1]: event["type"] for event in events}


async def test_missed_creates_renames_ends_and_deletions(sim, client, redis) -> None:
    moodle, _ = sim
    now = int(time.time())
    moodle.add_activity(12, 87, 9, "Algebra I - live lesson", opens=now + 60, closes=now + 3600)   # unknown
    moodle.add_activity(12, 88, 10, "Renamed lesson")                                              # renamed
    moodle.add_activity(12, 89, 11, "Over", opens=now - 7200, closes=now - 3600)                   # closed
    moodle.add_activity(12, 90, 12, "Old and never seen", opens=now - 7200, closes=now - 3600)
    moodle.add_activity(12, 91, 13, "A forum", modname="forum")
    moodle.add_course_event(2210, 12, "Revision session", now + 86400, 3600)
    moodle.add_activity_entry(2211, 87, now + 60)
    for cmid, status, title in (("88", "scheduled", "Old title"), ("89", "started", "Over"),
                                ("92", "scheduled", "Deleted in Moodle")):
        await redis.hset(lesson_key("moodle", f"moodle:lms.example.edu:{cmid}"),
                         mapping={"status": status, "title": title})
        await redis.sadd(moodle_course_lessons_key("moodle", COURSE), f"moodle:lms.example.edu:{cmid}")
    assert await differences(client, redis) == {"87": "lesson.scheduled", "88": "lesson.updated",
                                                "89": "lesson.ended", "2210": "lesson.scheduled",
                                                "92": "lesson.cancelled"}
    events = await course_differences(redis, client, client.source, COURSE)
    assert [e["id"] for e in events] == [e["id"] for e in await course_differences(redis, client, client.source,
                                                                                     COURSE)]   # stable ids


async def test_an_activity_only_hidden_from_the_listing_is_not_cancelled(sim, client, redis) -> None:
    moodle, _ = sim
    moodle.add_activity(12, 87, 9, "Hidden from the web-service user")
    await redis.hset(lesson_key("moodle", "moodle:lms.example.edu:87"), mapping={"status": "scheduled"})
    await redis.sadd(moodle_course_lessons_key("moodle", COURSE), "moodle:lms.example.edu:87")
    moodle.modules[87]["course"] = 13          # no longer listed in course 12, yet Moodle still has it
    assert await differences(client, redis) == {}


async def test_a_lesson_moodle_no_longer_lists_is_forgotten_once_its_state_has_expired(sim, client, redis) -> None:
    known = moodle_course_lessons_key("moodle", COURSE)
    await redis.hset(lesson_key("moodle", "moodle:lms.example.edu:88"), mapping={"status": "ended"})
    await redis.sadd(known, "moodle:lms.example.edu:88", "moodle:lms.example.edu:89",
                     "moodle:lms.example.edu:event:2212")
    assert await differences(client, redis) == {}
    assert await redis.smembers(known) == {b"moodle:lms.example.edu:88"}      # 89 and the event: state expired
