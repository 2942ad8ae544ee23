"""Moodle events as the `local_webhooks` plugin sends them: Moodle's own event shape.

Moodle sends every event it has; those not in the map are accepted and ignored, never an error.
Moodle gives no event id, so the id is a stable hash of the fields that identify an occurrence.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bridge.sources.base import InvalidEvent, Parsed
from bridge.sources.canonical import EVENT_TYPES, INTERNAL_TYPES, iso, validate

if TYPE_CHECKING:
    from bridge.schema.config import SourceConfig

DEFAULT_EVENT_MAP: dict[str, str] = {
    "\\core\\event\\calendar_event_created": "lesson.scheduled",
    "\\core\\event\\calendar_event_updated": "lesson.updated",
    "\\core\\event\\calendar_event_deleted": "lesson.cancelled",
    "\\core\\event\\course_module_created": "lesson.scheduled",
    "\\core\\event\\course_module_updated": "lesson.updated",
    "\\core\\event\\course_module_deleted": "lesson.cancelled",
    "\\mod_bigbluebuttonbn\\event\\meeting_joined": "user.joined",
    "\\mod_bigbluebuttonbn\\event\\meeting_left": "user.left",
    "\\mod_bigbluebuttonbn\\event\\meeting_ended": "lesson.ended",
    "\\mod_zoom\\event\\join_meeting_button_clicked": "user.joined",
    "\\mod_jitsi\\event\\jitsi_session_enter": "user.joined",
    "\\mod_jitsi\\event\\jitsi_session_exit": "user.left",
    "\\mod_jitsi\\event\\jitsi_press_record_button": "recording.start",
    "\\core\\event\\role_assigned": "role.assigned",
    "\\core\\event\\role_unassigned": "role.unassigned",
}
CONTEXT_MODULE = "70"
CONTEXT_COURSE = "50"
# data key of a course calendar event whose job must first ask Moodle whether it is an activity's own
# entry (calendar_lessons = "course"): intake never calls Moodle, so the job decides (bridge/moodle/jobs.py).
CALENDAR_CHECK = "moodle_calendar_check"
MAX_UNIX_TIME = 253402300799     # 9999-12-31T23:59:59Z: the last second a datetime holds
IDENTITY_FIELDS = ("host", "eventname", "objectid", "contextinstanceid", "userid", "relateduserid",
                   "timecreated")


def normalise_id(value: Any) -> str:
    """Moodle sends ids as numbers or strings depending on the plugin; 7, "7" and "7 " are one id."""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def event_id(item: dict[str, Any]) -> str:
    identity = [normalise_id(item.get(name)) for name in IDENTITY_FIELDS]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    return f"mdl_{digest[:32]}"


def event_map(source: SourceConfig) -> dict[str, str]:
    return {**DEFAULT_EVENT_MAP, **source.event_map}


def _lesson_id(host: str, item: dict[str, Any]) -> str | None:
    if normalise_id(item.get("contextlevel")) == CONTEXT_MODULE and normalise_id(item.get("contextinstanceid")):
        return f"moodle:{host}:{normalise_id(item['contextinstanceid'])}"
    if item.get("objecttable") == "event" and normalise_id(item.get("objectid")):
        return f"moodle:{host}:event:{normalise_id(item['objectid'])}"
    return None


def _calendar_rule(source: SourceConfig, item: dict[str, Any]) -> str | None:
    """Why a calendar event makes no lesson, or None when it may (subject to the job's check)."""
    level = normalise_id(item.get("contextlevel"))
    if level and level != CONTEXT_COURSE:
        return f"a calendar event in context level {level} (user, site or category) is not a course lesson"
    if source.calendar_lessons == "none":
        return 'calendar events make no lessons (calendar_lessons = "none")'
    return None


def _check_shape(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidEvent("", f"a Moodle event must be a JSON object, got {type(item).__name__}")
    name = item.get("eventname")
    if not isinstance(name, str) or not name.strip():
        raise InvalidEvent("eventname", "is required (a Moodle event name such as \\core\\event\\user_loggedin)")
    time_created = item.get("timecreated")
    if isinstance(time_created, str) and time_created.strip().isdecimal():   # isdigit() admits "²"
        time_created = int(time_created)
    if time_created is not None and (not isinstance(time_created, int) or isinstance(time_created, bool)
                                     or not 0 <= time_created <= MAX_UNIX_TIME):
        raise InvalidEvent("timecreated", "must be a Unix time in seconds")
    return item


def parse(source: SourceConfig, item: Any) -> Parsed:
    item = _check_shape(item)
    raw = {k: v for k, v in item.items() if k != "token"}
    eid = event_id(item)
    name = item["eventname"].strip()
    canonical_type = event_map(source).get(name)
    if not canonical_type:
        return Parsed(eid, raw, None, ignored_reason=f"no mapping for {name}")
    if canonical_type not in EVENT_TYPES | INTERNAL_TYPES:
        raise InvalidEvent("eventname", f"source maps it to unknown type {canonical_type!r}")

    other = item.get("other") if isinstance(item.get("other"), dict) else {}
    # Course-module events concern every activity (forums, quizzes...); only conference modules are lessons.
    if name.startswith("\\core\\event\\course_module_") and other.get("modulename") not in source.conference_modules:
        return Parsed(eid, raw, None, ignored_reason=f"module {other.get('modulename')!r} is not a lesson")

    host = normalise_id(item.get("host")) or source.name
    course_id = normalise_id(item.get("courseid"))
    time_created = int(item.get("timecreated") or 0)
    occurred_at = iso(datetime.fromtimestamp(time_created, UTC)) if time_created else None
    data: dict[str, Any] = {"moodle_course": f"{host}:{course_id}"}
    event: dict[str, Any] = {"id": eid, "type": canonical_type, "occurred_at": occurred_at, "data": data}

    if canonical_type in INTERNAL_TYPES:
        role_id = normalise_id(item.get("objectid"))
        data["teacher"] = role_id in source.teacher_role_ids
        event["user"] = {"id": normalise_id(item.get("relateduserid")) or "0"}
        return Parsed(eid, raw, validate(event, source.provider, internal=True))

    lesson_id = _lesson_id(host, item)
    if lesson_id is None:
        return Parsed(eid, raw, None, ignored_reason=f"{name} is not in a course-module or calendar context")
    if lesson_id.startswith(f"moodle:{host}:event:"):
        skipped = _calendar_rule(source, item)
        if skipped:
            return Parsed(eid, raw, None, ignored_reason=skipped)
        if source.calendar_lessons == "course":
            data[CALENDAR_CHECK] = normalise_id(item["objectid"])
    start = other.get("timestart")
    event["lesson"] = {
        "id": lesson_id,
        "title": str(other.get("name") or ""),
        "starts_at": (iso(datetime.fromtimestamp(int(start), UTC))
                      if str(start or "").isdecimal() and int(start) <= MAX_UNIX_TIME else None),
    }
    user_id = normalise_id(item.get("userid"))
    if user_id and user_id != "0":
        is_host = other.get("userishost") in (True, 1, "1", "true")
        event["user"] = {"id": user_id, "role": "teacher" if is_host else source.default_role}
    return Parsed(eid, raw, validate(event, source.provider))
