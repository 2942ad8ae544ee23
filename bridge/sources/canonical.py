"""The canonical event format: schema validation and normalisation.

Moodle events are turned into this shape and validated by the same code, so workers only ever
see one shape.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bridge.clock import utc_now_iso
from bridge.sources.base import InvalidEvent, Parsed

if TYPE_CHECKING:
    from bridge.config import SourceConfig

EVENT_TYPES = frozenset({
    "lesson.scheduled", "lesson.updated", "lesson.cancelled", "lesson.started", "lesson.ended",
    "user.joined", "user.left", "user.removed", "user.banned",
    "recording.start", "recording.stop", "call.dial_out", "call.hang_up",
})
# Produced only by sources (Moodle role events teach the bridge who is a teacher); never accepted raw.
INTERNAL_TYPES = frozenset({"role.assigned", "role.unassigned"})
USER_TYPES = frozenset({"user.joined", "user.left", "user.removed", "user.banned", "role.assigned",
                        "role.unassigned"})
MAX_ID_LENGTH = 200


def _string(obj: dict[str, Any], key: str, path: str, *, required: bool = False, allow_int: bool = False,
            max_length: int = 1000) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidEvent(f"{path}{key}", "is required")
        return None
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidEvent(f"{path}{key}", f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise InvalidEvent(f"{path}{key}", "must not be empty")
    if len(value) > max_length:
        raise InvalidEvent(f"{path}{key}", f"is longer than {max_length} characters")
    return value


def _time(obj: dict[str, Any], key: str, path: str) -> str | None:
    value = _string(obj, key, path)
    if value is None:
        return None
    if len(value) == 20 and value[19] == "Z" and value[4] + value[7] + value[10] + value[13] + value[16] == "--T::":
        try:                     # already canonical (YYYY-MM-DDTHH:MM:SSZ): check the numbers, keep it as is
            datetime.fromisoformat(value[:19])
            return value
        except ValueError:
            pass                 # the general path below names the problem
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidEvent(f"{path}{key}", "must be an ISO 8601 time such as 2026-11-22T10:00:00Z") from None
    if parsed.tzinfo is None:
        raise InvalidEvent(f"{path}{key}", "must carry a time zone (Z or +hh:mm)")
    try:
        return iso(parsed)
    except OverflowError:        # 0001-01-01T00:00:00+01:00 is before the first moment a datetime holds
        raise InvalidEvent(f"{path}{key}", "is out of range") from None


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _object(obj: dict[str, Any], key: str, path: str, *, required: bool = False) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidEvent(f"{path}{key}", "is required")
        return None
    if not isinstance(value, dict):
        raise InvalidEvent(f"{path}{key}", f"must be an object, got {type(value).__name__}")
    return value


def validate(item: Any, default_provider: str, *, internal: bool = False) -> dict[str, Any]:
    """Return the normalised canonical event or raise InvalidEvent naming the field path."""
    if not isinstance(item, dict):
        raise InvalidEvent("", f"an event must be a JSON object, got {type(item).__name__}")
    event_id = _string(item, "id", "", required=True, allow_int=True, max_length=MAX_ID_LENGTH)
    event_type = _string(item, "type", "", required=True)
    allowed = EVENT_TYPES | INTERNAL_TYPES if internal else EVENT_TYPES
    if event_type not in allowed:
        raise InvalidEvent("type", f"unknown event type {event_type!r}; known: {', '.join(sorted(EVENT_TYPES))}")
    lesson_in = _object(item, "lesson", "", required=event_type not in INTERNAL_TYPES) or {}
    lesson = {
        "id": _string(lesson_in, "id", "lesson.", required=event_type not in INTERNAL_TYPES, allow_int=True,
                      max_length=MAX_ID_LENGTH),
        "title": _string(lesson_in, "title", "lesson.") or "",
        "starts_at": _time(lesson_in, "starts_at", "lesson."),
        "ends_at": _time(lesson_in, "ends_at", "lesson."),
        "provider": _string(lesson_in, "provider", "lesson.") or default_provider,
        "record": lesson_in.get("record", False),
    }
    if not isinstance(lesson["record"], bool):
        raise InvalidEvent("lesson.record", "must be true or false")
    user_in = _object(item, "user", "", required=event_type in USER_TYPES)
    user = None
    if user_in is not None:
        user = {
            "id": _string(user_in, "id", "user.", required=True, allow_int=True, max_length=MAX_ID_LENGTH),
            "name": _string(user_in, "name", "user.") or "",
            "email": _string(user_in, "email", "user.") or "",
            "role": _string(user_in, "role", "user.") or "student",
        }
    data = _object(item, "data", "") or {}
    if event_type in ("call.dial_out", "call.hang_up"):
        _string(data, "phone", "data.", required=True)
    for key in ("source_url", "recording_id", "participant_id", "token"):
        _string(data, key, "data.")
    occurred_at = _time(item, "occurred_at", "") or utc_now_iso()
    return {"id": event_id, "type": event_type, "occurred_at": occurred_at, "lesson": lesson, "user": user,
            "data": data}


def parse(source: SourceConfig, item: Any) -> Parsed:
    event = validate(item, source.provider)
    raw = {k: v for k, v in item.items() if k != "token"}
    return Parsed(event_id=event["id"], raw=raw, event=event)
