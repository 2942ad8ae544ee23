"""What a Moodle event's job learns from Moodle before its handler runs.

Moodle's webhook payloads are thin (no names, no activity title or times), and an activity's own
calendar entry arrives as a course calendar event indistinguishable from a teacher's. Intake cannot
ask Moodle (it answers before any slow work), so the source flags such an event (CALENDAR_CHECK) and
its job asks here first: an activity's entry ends the job "ignored" (no room, no webhook), as does one
Moodle cannot vouch for (reconciliation adds a real course event later). Names, titles and times
degrade to what the event carried when Moodle fails: a join link with the bare id beats none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from bridge.moodle.answers import cmid_of, course_parts, is_activity_entry, iso_time, module_times, unix
from bridge.moodle.client import MoodleClient, MoodleError
from bridge.schema.events import MAX_TEXT
from bridge.sources.moodle import CALENDAR_CHECK, normalise_id
from bridge.store import moodle_course_lessons_key, moodle_courses_key

if TYPE_CHECKING:
    from bridge.lifecycle import Job

log = structlog.get_logger("bridge.moodle")
# The events whose jobs may make or change a room (bridge.lifecycle.ensure_room): only they need a title
# and times; only a join needs the user's name.
ROOM_MAKING = frozenset({"lesson.scheduled", "lesson.updated", "lesson.started", "user.joined", "call.dial_out"})


class Ignored(Exception):
    """The event needs no work after all; the job ends with this reason and produces no webhook."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def prepare(job: Job) -> None:
    """Record the course for reconciliation, settle a calendar twin, fill in names, title and times."""
    if job.source.format != "moodle":
        return
    data, lesson = job.event.get("data") or {}, job.event.get("lesson") or {}
    course = data.get("moodle_course")
    if not course or course_parts(course)[1] in ("", "0"):      # the site (course 0) is no course
        return
    if job.source.reconcile_s:
        async with job.rt.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(moodle_courses_key(job.source.name), course)
            if lesson.get("id"):
                pipe.sadd(moodle_course_lessons_key(job.source.name, course), lesson["id"])
            await pipe.execute()
    if not job.source.ws_token:
        return
    client = MoodleClient(job.source, job.rt.http, job.rt.redis)
    host, course_id = course_parts(course)
    if data.get(CALENDAR_CHECK):
        lesson = await _settle_calendar_entry(job, client, lesson, str(data[CALENDAR_CHECK]))
    elif job.event["type"] in ROOM_MAKING and lesson.get("id") and (cmid := cmid_of(host, lesson["id"])):
        lesson = await _activity_details(client, lesson, course_id, cmid)
    if lesson:
        job.event["lesson"] = lesson
    if job.event["type"] == "user.joined":
        job.event["user"] = await _person(client, job.event["user"])


async def _settle_calendar_entry(job: Job, client: MoodleClient, lesson: dict[str, Any],
                                 event_id: str) -> dict[str, Any]:
    if job.event["type"] == "lesson.cancelled":
        # Moodle has already deleted the entry (asking answers nopermissions): what the bridge made decides.
        if not await job.state():
            raise Ignored("no lesson was made for this calendar event")
        return lesson
    try:
        entry = await client.calendar_event(event_id)
    except MoodleError as exc:
        if exc.code == "nopermissions":      # Moodle's answer for an entry that no longer exists
            raise Ignored(f"Moodle no longer has calendar event {event_id}") from None
        raise Ignored(f"Moodle could not say whether calendar event {event_id} is an activity's ({exc.code}); "
                      "reconciliation adds it if it is a course event") from None
    if is_activity_entry(entry):
        raise Ignored(f"calendar event {event_id} is the {entry.get('modulename') or 'activity'} activity's own "
                      f"entry (cmid {entry.get('instance')}): the activity is the lesson")
    starts = unix(entry.get("timestart"))
    duration = unix(entry.get("timeduration"))
    return {**lesson, "title": lesson.get("title") or _text(entry.get("name")),
            "starts_at": lesson.get("starts_at") or iso_time(starts),
            "ends_at": lesson.get("ends_at") or (iso_time(starts + duration) if starts and duration else None)}


async def _activity_details(client: MoodleClient, lesson: dict[str, Any], course_id: str,
                            cmid: str) -> dict[str, Any]:
    title, opens, closes = lesson.get("title"), None, None
    try:
        if not title:
            title = _text((await client.course_module(cmid)).get("name"))
        modules = await client.course_modules(course_id, cmid=cmid)
        opens, closes = next((module_times(m) for m in modules if normalise_id(m.get("id")) == cmid), (None, None))
    except MoodleError as exc:
        log.warning("moodle.enrich_failed", what="activity", cmid=cmid, code=exc.code)
    return {**lesson, "title": title or "", "starts_at": lesson.get("starts_at") or iso_time(opens),
            "ends_at": lesson.get("ends_at") or iso_time(closes)}


async def _person(client: MoodleClient, user: dict[str, Any]) -> dict[str, Any]:
    if user.get("name") and user.get("email"):
        return user
    try:
        found = await client.user(str(user["id"]))
    except MoodleError as exc:
        log.warning("moodle.enrich_failed", what="user", user_id=user["id"], code=exc.code)
        return user
    if not found:
        return user
    return {**user, "name": user.get("name") or _text(found.get("fullname")),
            "email": user.get("email") or _text(found.get("email"))}


def _text(value: Any) -> str:
    return str(value or "")[:MAX_TEXT]

