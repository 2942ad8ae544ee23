"""The bodies providers POST to /v1/providers/{provider}/events (DESIGN.md, "Provider events in").

Providers send more than the bridge reads and add fields over time, so unknown properties are
ignored everywhere; only what the attendance ledger and recording pipeline use is declared.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool


class Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


def _bool_text(value: Any) -> Any:
    """JaaS sends `moderator` as a JSON boolean or as the text "true"/"false"."""
    return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value


# ---------------------------------------------------------------------------------------------- JaaS

# The event types the bridge acts on; providers send others, which are accepted and ignored.
JAAS_TYPES = frozenset({"PARTICIPANT_JOINED", "PARTICIPANT_LEFT", "ROOM_CREATED", "ROOM_DESTROYED",
                        "RECORDING_UPLOADED"})


class JaasData(Wire):
    id: str | None = Field(None, description="The `context.user.id` the bridge put in the join token.")
    name: str | None = None
    email: str | None = None
    moderator: Annotated[StrictBool, BeforeValidator(_bool_text)] | None = None
    participant_id: str | None = Field(None, alias="participantId")
    participant_jid: str | None = Field(None, alias="participantJid")
    disconnect_reason: str | None = Field(None, alias="disconnectReason", description="`left` or `kicked`.")
    conference: str | None = None
    pre_authenticated_link: str | None = Field(None, alias="preAuthenticatedLink", description="Valid 24 h.")
    duration_sec: float | None = Field(None, alias="durationSec")


class JaasEvent(Wire):
    idempotency_key: str = Field(alias="idempotencyKey")
    customer_id: str | None = Field(None, alias="customerId")
    app_id: str | None = Field(None, alias="appId")
    event_type: str = Field(alias="eventType", description="One of JAAS_TYPES, or ignored.")
    session_id: str | None = Field(None, alias="sessionId")
    timestamp: int = Field(description="Unix milliseconds; events arrive out of order, order by this.")
    fqn: str = Field(description="`<appId>/<room>`.")
    data: JaasData = JaasData()

    @property
    def room(self) -> str:
        return self.fqn.partition("/")[2]


# --------------------------------------------------------------------------------------------- 100ms

HMS_TYPES = frozenset({"peer.join.success", "peer.leave.success", "session.close.success", "recording.success"})


class HmsData(Wire):
    room_id: str | None = None
    room_name: str | None = None
    session_id: str | None = None
    peer_id: str | None = None
    user_id: str | None = Field(None, description="The user id the bridge put in the app token.")
    user_name: str | None = None
    role: str | None = None
    joined_at: datetime | None = None
    left_at: datetime | None = None
    duration: float | None = Field(None, description="Seconds.")
    reason: str | None = None
    session_started_at: datetime | None = None
    session_stopped_at: datetime | None = None
    recording_presigned_url: str | None = Field(None, description="Valid 24 h.")
    size: int | None = Field(None, description="Bytes.")


class HmsEvent(Wire):
    version: str
    id: str = Field(description="Unique per event: the idempotency key.")
    app_id: str | None = None
    account_id: str | None = None
    timestamp: datetime
    type: str = Field(description="One of HMS_TYPES, or ignored.")
    data: HmsData = HmsData()


# ------------------------------------------------------------------------- what the bridge keeps of one

class RecordingFact(BaseModel):
    """A recording the provider made and uploaded; its link is the provider's own (valid 24 h)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recording_id: str
    url: str
    expires_at_ms: int | None
    content_type: str
    bytes: int | None = Field(description="Null when the provider does not say (JaaS).")
    duration_s: float | None


class Fact(BaseModel):
    """One provider event in the provider-neutral form the bridge stores (the logged event's `data.fact`)
    and the `provider_event` job acts on: a join or leave, a session's start or end, or a recording."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["presence", "session_started", "session_ended", "recording"]
    session_id: str
    at_ms: int = Field(description="The provider's time of the event, Unix milliseconds.")
    presence: dict[str, Any] | None = Field(None, description="bridge.attendance.Presence fields.")
    recording: RecordingFact | None = None
