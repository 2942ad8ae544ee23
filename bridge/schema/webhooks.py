"""Every outbound webhook: its type and the `data` it carries (DESIGN.md, "Outbound webhooks").

Producers name a type by `WebhookType` (a typo fails at import, not at the LMS); the models are what
the OpenAPI document's `webhooks` section publishes and what the tests check real payloads against.
The body of every webhook is `{"type": ..., "timestamp": ..., "data": {...}}`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field


class WebhookType(StrEnum):
    ROOM_CREATED = "room.created"
    ROOM_UPDATED = "room.updated"
    ROOM_DELETED = "room.deleted"
    ROOM_ENDED = "room.ended"
    JOIN_READY = "join.ready"
    PARTICIPANT_KICKED = "participant.kicked"
    PARTICIPANT_BANNED = "participant.banned"
    RECORDING_STARTED = "recording.started"
    RECORDING_COMPLETED = "recording.completed"
    RECORDING_FAILED = "recording.failed"
    RECORDING_READY = "recording.ready"
    RECORDING_DELETED = "recording.deleted"
    PARTICIPANT_JOINED = "participant.joined"
    PARTICIPANT_LEFT = "participant.left"
    ATTENDANCE_REPORT = "attendance.report"
    CALL_DIALING = "call.dialing"
    CALL_HUNG_UP = "call.hung_up"
    EVENT_FAILED = "event.failed"


IsoTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]   # ISO 8601 UTC, as sent


class WebhookData(BaseModel):
    """What every webhook's `data` carries."""

    event_id: str = Field(description="The inbound event that caused it.")
    source: str = Field(description="The source the event came from (whose endpoint receives the webhook).")
    lesson_id: str | None
    provider: str | None
    replay_of: str | None = Field(None, description="Only on webhooks of a replayed event: the original event id.")


class RoomData(WebhookData):
    room_id: str
    room_name: str
    title: str


class RoomCreated(RoomData):
    created: bool = Field(description="False when the room already existed (a repeat, or created by another event).")


class RoomUpdated(RoomData):
    status: Literal["started"] | None = Field(None, description="`started` when lesson.started caused it.")


class RoomClosed(WebhookData):
    room_id: str | None = Field(description="Null when the lesson never had a room.")
    status: Literal["cancelled", "ended"]


class JoinReady(WebhookData):
    user_id: str
    role: str = Field(description="The provider's own role name given to this user.")
    join_url: str
    token: str
    expires_at: IsoTime


class ParticipantAction(WebhookData):
    user_id: str


class Call(WebhookData):
    phone: str


class RecordingStarted(WebhookData):
    recording_id: str
    push_url: str | None = Field(description="Where the provider (or anyone) pushes the media, when listening.")
    source_url: str | None = Field(description="Where the recorder pulls the media from, when pulling.")
    part: int = Field(description="0 for a new recording; more when a recorder continues it after a restart.")


class RecordingCompleted(WebhookData):
    recording_id: str
    file: str = Field(description="Absolute path under `[recording] dir`.")
    bytes: int
    duration_s: float
    container: str
    sha256: str | None
    parts: list[str]
    reason: str = Field(description="Why the recording ended (stopped, lesson ended, maximum duration...).")


class RecordingFailed(WebhookData):
    recording_id: str
    reason: str
    detail: str
    ffmpeg_stderr: list[str] = Field(description="FFmpeg's last lines.")


class RecordingReady(WebhookData):
    recording_id: str
    url: str = Field(description="An HTTP(S) GET the LMS can fetch without other credentials.")
    expires_at: IsoTime | None
    content_type: str
    bytes: int | None = Field(description="Null when the provider does not say (JaaS, not copied to storage).")
    duration_s: float | None
    origin: Literal["bridge", "provider"]


class RecordingDeleted(WebhookData):
    recording_id: str


class ParticipantJoined(WebhookData):
    user_id: str | None = Field(description="The LMS user id; null when the provider did not know it.")
    name: str
    role: Literal["moderator", "guest"]
    participant_id: str
    session_id: str
    joined_at: IsoTime
    precision: Literal["poll"] | None = Field(
        None, description="`poll` when the times come from polling the provider's participants (OWT, OpenMeetings).")


class ParticipantLeft(ParticipantJoined):
    left_at: IsoTime
    duration_s: float
    reason: Literal["left", "kicked", "disconnected", "unknown"]


class Attendee(BaseModel):
    user_id: str | None
    name: str
    role: Literal["moderator", "guest"]
    first_joined_at: IsoTime
    last_left_at: IsoTime
    total_s: float = Field(description="Overlapping intervals of the same person (two tabs) counted once.")
    intervals: list[tuple[str, str]] = Field(description="[[joined_at, left_at], ...]")
    precision: Literal["exact", "poll"] = Field(
        description="`poll` when the times come from polling the provider's participants (OWT, OpenMeetings).")


class AttendanceReport(WebhookData):
    session_id: str
    started_at: IsoTime
    ended_at: IsoTime
    participants: list[Attendee] = Field(description="One entry per person (user_id, else name), sorted by user_id.")


class Failure(BaseModel):
    code: str = Field(description="Machine-readable, e.g. `unsupported`.")
    message: str


class EventFailed(WebhookData):
    job: str = Field(description="The job that failed.")
    error: Failure


WEBHOOK_DATA: dict[WebhookType, type[WebhookData]] = {
    WebhookType.ROOM_CREATED: RoomCreated,
    WebhookType.ROOM_UPDATED: RoomUpdated,
    WebhookType.ROOM_DELETED: RoomClosed,
    WebhookType.ROOM_ENDED: RoomClosed,
    WebhookType.JOIN_READY: JoinReady,
    WebhookType.PARTICIPANT_KICKED: ParticipantAction,
    WebhookType.PARTICIPANT_BANNED: ParticipantAction,
    WebhookType.RECORDING_STARTED: RecordingStarted,
    WebhookType.RECORDING_COMPLETED: RecordingCompleted,
    WebhookType.RECORDING_FAILED: RecordingFailed,
    WebhookType.RECORDING_READY: RecordingReady,
    WebhookType.RECORDING_DELETED: RecordingDeleted,
    WebhookType.PARTICIPANT_JOINED: ParticipantJoined,
    WebhookType.PARTICIPANT_LEFT: ParticipantLeft,
    WebhookType.ATTENDANCE_REPORT: AttendanceReport,
    WebhookType.CALL_DIALING: Call,
    WebhookType.CALL_HUNG_UP: Call,
    WebhookType.EVENT_FAILED: EventFailed,
}


def payload_schema(webhook_type: WebhookType, data_ref: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a whole webhook body of this type; `data_ref` points at its data model's schema."""
    return {"type": "object", "required": ["type", "timestamp", "data"],
            "properties": {"type": {"const": str(webhook_type)},
                           "timestamp": {"type": "string", "format": "date-time"},
                           "data": data_ref}}
