"""Reading Moodle's answers: ids that come as numbers or strings, Unix times, activity dates, and which
calendar entries belong to an activity (facts from a real Moodle 5.1, see DESIGN "Moodle web services")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bridge.sources.canonical import iso
from bridge.sources.moodle import MAX_UNIX_TIME, normalise_id

# core_course_get_contents modules[].dates[].dataid naming an activity's opening and closing times
# (mod_bigbluebuttonbn openingtime/closingtime; other activities use their own field names).
CLOSING_WORDS = ("clos", "end", "due", "cutoff")


def unix(value: Any) -> int | None:
    text = normalise_id(value)
    return int(text) if text.isdecimal() and 0 < int(text) <= MAX_UNIX_TIME else None


def iso_time(seconds: int | None) -> str | None:
    return iso(datetime.fromtimestamp(seconds, UTC)) if seconds else None


def module_times(module: dict[str, Any]) -> tuple[int | None, int | None]:
    """(opens, closes) of an activity from its `dates`; without `dataid`, the first date opens and the
    second closes (Moodle lists them in that order)."""
    opens = closes = None
    dates = [d for d in module.get("dates") or [] if isinstance(d, dict) and unix(d.get("timestamp"))]
    for position, date in enumerate(dates):
        dataid = str(date.get("dataid") or "").lower()
        closing = any(word in dataid for word in CLOSING_WORDS) if dataid else position == 1
        if closing:
            closes = closes or unix(date["timestamp"])
        else:
            opens = opens or unix(date["timestamp"])
    return opens, closes


def is_activity_entry(event: dict[str, Any]) -> bool:
    """An activity's own calendar entry (e.g. a BigBlueButton opening time), not a teacher's course event.

    core_calendar_get_calendar_event_by_id gives an activity's entry `modulename`, `component` and
    `instance`; a course event has `modulename` "" and neither key (core_calendar_get_calendar_events
    rows have `modulename` null)."""
    return bool(event.get("modulename") or event.get("component")
                or normalise_id(event.get("instance")) not in ("", "0"))


def course_parts(moodle_course: str) -> tuple[str, str]:
    """`<host>:<course id>` (the events' data.moodle_course; a host may carry a port) → (host, course id)."""
    host, _, course_id = moodle_course.rpartition(":")
    return host, course_id


def module_lesson_id(host: str, cmid: Any) -> str:
    return f"moodle:{host}:{normalise_id(cmid)}"


def calendar_lesson_id(host: str, event_id: Any) -> str:
    return f"moodle:{host}:event:{normalise_id(event_id)}"


def cmid_of(host: str, lesson_id: str) -> str | None:
    """The course-module id of a module lesson (`moodle:<host>:<cmid>`); None for a calendar lesson."""
    rest = lesson_id.removeprefix(f"moodle:{host}:")
    return rest if rest != lesson_id and rest.isdecimal() else None
