"""The canonical inbound event, its lesson, user and data: what every source format becomes.

`Lesson` and `User` are also what provider adapters receive (frozen, hashable), so the shape a
plugin sends and the one a provider reads are the same declaration.

In an event, a JSON `null` means "absent" for every optional field (a default applies) and "missing"
for a required one; `lesson.record` alone is a boolean that null does not satisfy.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictBool,
    StrictStr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bridge.clock import utc_now_iso
from bridge.schema.problems import message_of, path_of

MAX_ID_LENGTH = 200
MAX_TEXT = 1000
MODERATOR_ROLES = frozenset({"teacher", "moderator", "admin"})
# Recording ids become file names and object keys (bridge/storage/): a strict charset leaves no room for
# `..`, `/`, encoded separators or glob characters, whatever a caller passes.
RECORDING_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

LessonType = Literal["lesson.scheduled", "lesson.updated", "lesson.cancelled", "lesson.started", "lesson.ended",
                     "recording.start", "recording.stop"]
UserType = Literal["user.joined", "user.left", "user.removed", "user.banned"]
CallType = Literal["call.dial_out", "call.hang_up"]
RecordingDeleteType = Literal["recording.delete"]
# Produced only by sources (Moodle role events teach the bridge who is a teacher); never accepted raw.
RoleType = Literal["role.assigned", "role.unassigned"]

EVENT_TYPES = frozenset(get_args(LessonType) + get_args(UserType) + get_args(CallType) + get_args(RecordingDeleteType))
INTERNAL_TYPES = frozenset(get_args(RoleType))
USER_TYPES = frozenset(get_args(UserType) + get_args(RoleType))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("not_a_string", f"must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise PydanticCustomError("too_long", f"is longer than {MAX_TEXT} characters")
    return value


def parse_time(value: Any) -> datetime:
    """An ISO 8601 time with a zone (a datetime given by code must carry one too)."""
    if isinstance(value, datetime):
        moment = value
    else:
        text = _text(value)      # outside the try: its errors are ValueErrors too
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise PydanticCustomError("time_format", "must be an ISO 8601 time such as 2026-11-22T10:00:00Z") from None
    if moment.tzinfo is None:
        raise PydanticCustomError("time_zone", "must carry a time zone (Z or +hh:mm)")
    try:
        moment.astimezone(UTC)
    except OverflowError:        # 0001-01-01T00:00:00+01:00 is before the first moment a datetime holds
        raise PydanticCustomError("time_range", "is out of range") from None
    return moment


def normalised_time(value: Any) -> str:
    """The time as `YYYY-MM-DDTHH:MM:SSZ` (fractions kept); one already in that form is only checked."""
    if (isinstance(value, str) and len(value) == 20 and value[19] == "Z"
            and value[4] + value[7] + value[10] + value[13] + value[16] == "--T::"):
        try:
            datetime.fromisoformat(value[:19])
            return value
        except ValueError:
            pass                 # the general path names the problem
    return iso(parse_time(value))


def _decimal(value: Any) -> Any:
    """Ids may be JSON integers (Moodle's are): the same id as its decimal string."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _non_empty(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
    return value


def _decimal_id(value: Any) -> Any:
    """_decimal and _non_empty in one call: three ids per event on the accept path."""
    if isinstance(value, str):
        if not value.strip():
            raise PydanticCustomError("blank", "must not be empty")
        return value
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


TIME_SCHEMA = {"type": "string", "format": "date-time",
               "description": "ISO 8601 with a time zone, e.g. `2026-11-22T10:00:00Z`."}
Id = Annotated[StrictStr, Field(max_length=MAX_ID_LENGTH), BeforeValidator(_decimal_id), WithJsonSchema({
    "description": "A string, or an integer (normalised to its decimal string).",
    "anyOf": [{"type": "string", "pattern": r"\S", "maxLength": MAX_ID_LENGTH},
              {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1}]})]
# A source-internal event's lesson id is optional, and not checked for blanks.
OptionalId = Annotated[StrictStr, Field(max_length=MAX_ID_LENGTH), BeforeValidator(_decimal)]
Text = Annotated[StrictStr, Field(max_length=MAX_TEXT)]
RequiredText = Annotated[StrictStr, Field(max_length=MAX_TEXT), BeforeValidator(_non_empty),
                         WithJsonSchema({"type": "string", "pattern": r"\S", "maxLength": MAX_TEXT})]
# Lesson times are datetimes for the code and normalised ISO text on the wire.
UtcTime = Annotated[datetime, PlainValidator(parse_time), PlainSerializer(iso, when_used="json"),
                    WithJsonSchema(TIME_SCHEMA)]
IsoTime = Annotated[str, PlainValidator(normalised_time), WithJsonSchema(TIME_SCHEMA)]


class Shape(BaseModel):
    """Frozen and hashable; unknown properties are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Lesson(Shape):
    id: Id
    title: Text = ""
    starts_at: UtcTime | None = None
    ends_at: UtcTime | None = None
    provider: Text = Field("", description="A configured provider name; default: the source's provider.")
    record: StrictBool = Field(False, description="Record the lesson when it starts (lesson.started).")

    @property
    def room_name(self) -> str:
        """Stable across retries: derived from the lesson id only (contract)."""
        return re.sub(r"[^A-Za-z0-9_-]", "-", self.id)


class LessonRef(Lesson):
    """The lesson of a source-internal event (a role change), which may name none."""

    id: OptionalId | None = None     # type: ignore[assignment]


def _student_when_blank(value: str) -> str:
    return value or "student"


class User(Shape):
    id: Id
    name: Text = ""
    email: Text = ""
    role: Annotated[Text, AfterValidator(_student_when_blank)] = Field(
        "student", description="teacher, moderator and admin are moderators; anything else (default student) "
                               "is a guest.")
    avatar: Text = Field("", description="A picture URL, for providers that show one (JaaS, OpenMeetings).")

    @property
    def is_moderator(self) -> bool:
        return self.role in MODERATOR_ROLES


class EventData(Shape):
    """Type-specific data. Unknown properties are kept in the stored event as sent."""

    source_url: Text | None = Field(None, description="recording.start: pull the recording from here.")
    recording_id: Text | None = Field(None, description="recording.stop: which recording.")
    participant_id: Text | None = Field(None, description="user.removed: the provider's participant.")
    token: Text | None = Field(None, description="user.banned: ban this join token.")


class CallData(EventData):
    phone: RequiredText


class RecordingDeleteData(EventData):
    recording_id: Annotated[StrictStr, Field(pattern=f"^{RECORDING_ID.pattern}$",  # type: ignore[assignment]
                                             description="The recording.ready webhook's recording_id.")]


def _without_nulls(value: dict[str, Any], keep: str = "") -> dict[str, Any]:
    return {k: v for k, v in value.items() if v is not None or k == keep}


class _Event(Shape):
    id: Id = Field(description="Unique per source: a repeat within the dedupe window is a duplicate.")
    type: str
    lesson: Lesson
    user: User | None = None
    data: EventData = EventData()
    occurred_at: IsoTime = Field(default_factory=utc_now_iso, description="When it happened (default: when received).")

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, value: Any) -> Any:
        """One pass for the event and its objects (copies: the raw event is stored as sent)."""
        if not isinstance(value, dict):
            return value
        if None in value.values():
            value = _without_nulls(value)
        lesson, user, data = value.get("lesson"), value.get("user"), value.get("data")
        if ((isinstance(lesson, dict) and None in lesson.values()) or (isinstance(user, dict) and None in user.values())
                or (isinstance(data, dict) and None in data.values())):
            value = {**value, **{key: _without_nulls(inner, "record" if key == "lesson" else "")
                                 for key, inner in (("lesson", lesson), ("user", user), ("data", data))
                                 if isinstance(inner, dict)}}
        return value

    def stored(self, default_provider: str, data: dict[str, Any]) -> dict[str, Any]:
        """The event as the log keeps it and jobs receive it: JSON types, the source's provider filled in,
        `data` as sent (its unknown keys too), `user.avatar` only when one was sent.

        Built from the fields directly: a model_dump costs as much as the whole validation.
        """
        lesson = dict(self.lesson.__dict__)
        lesson["provider"] = lesson["provider"] or default_provider
        for key in ("starts_at", "ends_at"):
            if lesson[key] is not None:
                lesson[key] = iso(lesson[key])
        user = None
        if self.user is not None:
            user = dict(self.user.__dict__)
            if not user["avatar"]:
                del user["avatar"]
        return {"id": self.id, "type": self.type, "occurred_at": self.occurred_at, "lesson": lesson, "user": user,
                "data": data}


class LessonEvent(_Event):
    type: LessonType


class UserEvent(_Event):
    type: UserType
    user: User


class CallEvent(_Event):
    type: CallType
    data: CallData = Field(default_factory=dict, validate_default=True)   # type: ignore[assignment]


class RecordingDeleteEvent(_Event):
    type: RecordingDeleteType
    data: RecordingDeleteData = Field(default_factory=dict, validate_default=True)   # type: ignore[assignment]


class RoleEvent(_Event):
    type: RoleType
    lesson: LessonRef = LessonRef()
    user: User


CanonicalEvent = Annotated[LessonEvent | UserEvent | CallEvent | RecordingDeleteEvent, Field(discriminator="type")]
SourceEvent = Annotated[LessonEvent | UserEvent | CallEvent | RecordingDeleteEvent | RoleEvent,
                        Field(discriminator="type")]
CANONICAL = TypeAdapter(CanonicalEvent)
FROM_SOURCE = TypeAdapter(SourceEvent)


def first_problem(exc: ValidationError, item: dict[str, Any]) -> tuple[str, str]:
    """(field path, message) of the first error, in the bridge's words."""
    error = exc.errors(include_url=False)[0]
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return "type", _type_problem(item.get("type"))
    return path_of(error["loc"][1:]), message_of(error)     # loc[0] is the event type (the union's tag)


def _type_problem(value: Any) -> str:
    if value is None:
        return "is required"
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty"
    if len(value) > MAX_TEXT:
        return f"is longer than {MAX_TEXT} characters"
    return f"unknown event type {value!r}; known: {', '.join(sorted(EVENT_TYPES))}"
