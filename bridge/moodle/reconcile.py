"""Reconciliation: repair what Moodle's webhooks never told the bridge.

`local_webhooks` posts each event once, inside the Moodle request that caused it, and never retries:
an event sent while the bridge was down or answering 503 is gone. So every `reconcile_s`, for each
course the source's events came from, the bridge reads Moodle's own state (the course's conference
activities from core_course_get_contents, its calendar around now from core_calendar_get_calendar_events)
and turns every difference into the canonical event that was missed, accepted exactly as intake
accepts one (event log, dedupe, the same jobs, the same webhooks):
- an activity or course event with no lesson → lesson.scheduled (activities already closed are left);
- a lesson whose title Moodle has changed → lesson.updated;
- a started lesson whose activity has closed → lesson.ended;
- a lesson whose activity Moodle no longer has at all → lesson.cancelled.
A known lesson whose state has expired (LESSON_TTL_S) and that Moodle no longer lists is forgotten.
Event ids derive from the lesson and the change, so a repeat (the next interval, another worker, a
late webhook's job finding the room made) creates nothing twice.

One reconciler per source across all workers: each worker looks every quarter interval, and only the
one that takes the source's lock (held for the interval) runs it.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog
from redis.asyncio import Redis

from bridge.clock import utc_now_iso
from bridge.config import SourceConfig
from bridge.moodle.answers import (
    calendar_lesson_id,
    cmid_of,
    course_parts,
    is_activity_entry,
    iso_time,
    module_lesson_id,
    module_times,
    unix,
)
from bridge.moodle.client import ACCESS_ERRORS, MoodleClient, MoodleError
from bridge.redis_link import REDIS_AWAY
from bridge.routing import plan
from bridge.sources.canonical import validate
from bridge.store import (
    ACCEPT_SCRIPT,
    EventRecord,
    accept_call,
    lesson_key,
    moodle_course_lessons_key,
    moodle_courses_key,
    moodle_reconcile_lock_key,
)

if TYPE_CHECKING:
    from bridge.lifecycle import Runtime

log = structlog.get_logger("bridge.moodle")

CALENDAR_PAST_S = 24 * 3600          # course events that started up to a day ago may still be running
CALENDAR_AHEAD_S = 30 * 24 * 3600    # and those of the next month are scheduled now
LIVE = ("scheduled", "started")
MAX_COURSES = 500                    # per run; courses past this wait for the next interval


async def reconcile_loop(rt: Runtime) -> None:
    """Run in every worker process; cancelled at shutdown."""
    sources = [s for s in rt.settings.sources.values() if s.format == "moodle" and s.ws_token and s.reconcile_s]
    if not sources:
        return
    pause = max(0.25, min(30.0, min(s.reconcile_s for s in sources) / 4))
    while True:
        for source in sources:
            await _maybe_reconcile(rt, source)
        await asyncio.sleep(pause)


async def _maybe_reconcile(rt: Runtime, source: SourceConfig) -> None:
    try:
        if not await rt.redis.set(moodle_reconcile_lock_key(source.name), utc_now_iso(), nx=True,
                                  px=source.reconcile_s * 1000):
            return
        async with asyncio.timeout(max(source.reconcile_s, 10)):
            created = await reconcile(rt, source)
        if created:
            log.info("moodle.reconciled", source=source.name, events=created)
    except REDIS_AWAY as exc:
        log.warning("moodle.reconcile_redis_away", source=source.name, error=type(exc).__name__)
    except TimeoutError:
        log.warning("moodle.reconcile_timeout", source=source.name)
    except Exception:      # a bug must not end the loop: the next interval tries again
        log.exception("moodle.reconcile_crashed", source=source.name)


async def reconcile(rt: Runtime, source: SourceConfig) -> list[str]:
    """One pass over the source's courses; returns the types of the events it accepted."""
    client = MoodleClient(source, rt.http, rt.redis)
    courses = sorted(c.decode() for c in await rt.redis.smembers(moodle_courses_key(source.name)))[:MAX_COURSES]
    accepted: list[str] = []
    for course in courses:
        try:
            events = await course_differences(rt.redis, client, source, course)
        except MoodleError as exc:
            log.warning("moodle.reconcile_skipped", source=source.name, course=course, code=exc.code)
            if exc.code in ("paused", "unreachable") or exc.code in ACCESS_ERRORS:
                break           # every other course would fail the same way
            continue
        accepted += await _accept(rt, source, events)
    return accepted


async def course_differences(redis: Redis, client: MoodleClient, source: SourceConfig,
                              course: str) -> list[dict[str, Any]]:
    host, course_id = course_parts(course)
    now = int(time.time())
    wanted: dict[str, dict[str, Any]] = {}          # lesson id → lesson as Moodle has it now
    closes: dict[str, int | None] = {}
    for module in await client.course_modules(course_id, fresh=True):
        if module.get("modname") not in source.conference_modules:
            continue
        opens, closing = module_times(module)
        lesson_id = module_lesson_id(host, module.get("id"))
        wanted[lesson_id] = {"id": lesson_id, "title": str(module.get("name") or ""),
                             "starts_at": iso_time(opens), "ends_at": iso_time(closing)}
        closes[lesson_id] = closing
    if source.calendar_lessons != "none":
        for entry in await client.course_calendar(course_id, now - CALENDAR_PAST_S, now + CALENDAR_AHEAD_S):
            if source.calendar_lessons == "course" and is_activity_entry(entry):
                continue
            starts, duration = unix(entry.get("timestart")), unix(entry.get("timeduration"))
            lesson_id = calendar_lesson_id(host, entry.get("id"))
            wanted[lesson_id] = {"id": lesson_id, "title": str(entry.get("name") or ""), "starts_at": iso_time(starts),
                                 "ends_at": iso_time(starts + duration) if starts and duration else None}
            closes[lesson_id] = None
    known = {m.decode() for m in await redis.smembers(moodle_course_lessons_key(source.name, course))}
    unlisted = sorted(known - set(wanted))
    # Activities gone from the course; calendar lessons are left alone (the window shows only some).
    gone = [lesson for lesson in unlisted if cmid_of(host, lesson)]
    states = await _states(redis, source, [*wanted, *unlisted])
    # An unlisted lesson without state leads to no event (nothing to cancel), and were Moodle to list it
    # again its listing alone would bring it back: the set need not keep it once its state has expired.
    if expired := [lesson for lesson in unlisted if not states[lesson].get("status")]:
        await redis.srem(moodle_course_lessons_key(source.name, course), *expired)
    events: list[dict[str, Any]] = []
    for lesson_id, lesson in wanted.items():
        state, closing = states[lesson_id], closes[lesson_id]
        if not state.get("status"):
            if closing is None or closing > now:
                events.append(_event("lesson.scheduled", lesson, course))
        elif state["status"] == "started" and closing is not None and closing <= now:
            events.append(_event("lesson.ended", lesson, course, str(closing)))
        elif state["status"] in LIVE and lesson["title"] and state.get("title") != lesson["title"]:
            events.append(_event("lesson.updated", lesson, course, lesson["title"]))
    for lesson_id in gone:
        if states[lesson_id].get("status") in LIVE and await _deleted(client, cmid_of(host, lesson_id) or ""):
            events.append(_event("lesson.cancelled", {"id": lesson_id}, course))
    return events


async def _deleted(client: MoodleClient, cmid: str) -> bool:
    """Whether Moodle has no such activity at all: one missing from the course's contents may only be
    hidden from the web-service user, and a hidden activity must keep its room."""
    try:
        await client.course_module(cmid, fresh=True)
    except MoodleError as exc:
        if exc.code == "invalidrecord":         # Moodle's answer for a course module that does not exist
            return True
        raise
    return False


async def _states(redis: Redis, source: SourceConfig, lesson_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    ids = list(lesson_ids)
    async with redis.pipeline(transaction=False) as pipe:
        for lesson_id in ids:
            pipe.hmget(lesson_key(source.name, lesson_id), ["status", "title"])
        answers = await pipe.execute()
    return {lesson_id: {name: value.decode() for name, value in zip(("status", "title"), answer, strict=True)
                        if value is not None}
            for lesson_id, answer in zip(ids, answers, strict=True)}


def _event(event_type: str, lesson: dict[str, Any], course: str, version: str = "") -> dict[str, Any]:
    """The missed event; its id is the same for the same lesson and change, whichever worker finds it."""
    digest = hashlib.sha256(f"{lesson['id']}|{event_type}|{version}".encode()).hexdigest()[:32]
    return {"id": f"mdl_rec_{digest}", "type": event_type, "occurred_at": utc_now_iso(), "lesson": lesson,
            "data": {"moodle_course": course, "reconciled": True}}


async def _accept(rt: Runtime, source: SourceConfig, events: list[dict[str, Any]]) -> list[str]:
    """Accept as intake does (one atomic script: dedupe, event log, jobs); returns the types that were new."""
    if not events:
        return []
    received_at = utc_now_iso()
    records = []
    for event in events:
        canonical = validate(event, source.provider)
        records.append(EventRecord(source.name, canonical["id"], received_at,
                                   {"reconciled": True, "event": event}, canonical, plan(source.name, canonical)))
    keys, args = accept_call(records, rt.settings.dedupe_window_s * 1000, int(time.time() * 1000))
    result = await rt.redis.register_script(ACCEPT_SCRIPT)(keys=keys, args=args)
    return [record.canonical["type"] for index, record in enumerate(records) if int(result[2 * index + 1])]
