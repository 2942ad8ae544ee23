"""The bodies providers POST to /v1/providers/{provider}/events (DESIGN.md, "Provider events in").

Providers send more than the bridge reads and add fields over time, so unknown properties are
ignored everywhere; only what the attendance ledger and recording pipeline use is declared.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

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
