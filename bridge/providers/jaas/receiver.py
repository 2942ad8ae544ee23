"""JaaS webhooks in: `X-Jaas-Signature: t=<unix s>,v1=<sig>[,v1=...]` where
sig = base64(HMAC-SHA256(webhook_secret, "<t>.<raw body>")), and the body as a Notice.

Schemes other than `v1` are ignored (JaaS may add them); `t` must be within 5 minutes of now. With
`webhook_authorization` set, the `Authorization` header must equal it as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from bridge.attendance import Presence
from bridge.providers.jaas.settings import JaasSettings
from bridge.providers.receiver import Notice, Receiver, ReceiverAuthError
from bridge.schema.provider_events import JAAS_TYPES, Fact, JaasEvent, RecordingFact

TOLERANCE_S = 300
LINK_TTL_MS = 24 * 3600 * 1000        # JaaS's preAuthenticatedLink is valid 24 h
LEAVE_REASONS = {"left": "left", "kicked": "kicked"}


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """The v1 signature JaaS sends for this body at this time."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify_signature(secret: str, header: str | None, body: bytes, now: float) -> None:
    if not header:
        raise ReceiverAuthError("missing_signature", "the X-Jaas-Signature header is missing")
    timestamp: str | None = None
    offered: list[str] = []
    for part in header.split(","):
        scheme, _, value = part.strip().partition("=")
        if scheme == "t":
            timestamp = value.strip()
        elif scheme == "v1":
            offered.append(value.strip())
    if timestamp is None or not timestamp.isdigit():
        raise ReceiverAuthError("bad_signature", "the X-Jaas-Signature header has no t=<unix seconds>")
    if not offered:
        raise ReceiverAuthError("bad_signature", "the X-Jaas-Signature header has no v1 signature")
    if abs(now - int(timestamp)) > TOLERANCE_S:
        raise ReceiverAuthError("stale_signature", f"the signature's time t={timestamp} is more than "
                                f"{TOLERANCE_S} s away from now")
    expected = signature(secret, timestamp, body).encode()
    # Every candidate is compared (each in constant time): the time taken does not say which matched.
    if not any([hmac.compare_digest(expected, candidate.encode()) for candidate in offered]):
        raise ReceiverAuthError("bad_signature", "no v1 signature in X-Jaas-Signature matches the body")


def _presence(event: JaasEvent, kind: str) -> Presence:
    data = event.data
    participant = data.participant_id or data.participant_jid or data.id or data.name or "unknown"
    return Presence(
        kind="joined" if kind == "PARTICIPANT_JOINED" else "left", at_ms=event.timestamp,
        participant_id=participant, user_id=data.id or None, name=data.name or data.id or participant,
        role="moderator" if data.moderator else "guest",
        reason=LEAVE_REASONS.get(data.disconnect_reason or "", "unknown") if kind == "PARTICIPANT_LEFT" else None)


def fact_of(event: JaasEvent) -> Fact | None:
    session_id = event.session_id or event.room
    kind = event.event_type
    if kind in ("PARTICIPANT_JOINED", "PARTICIPANT_LEFT"):
        presence = _presence(event, kind)
        return Fact(kind="presence", session_id=session_id, at_ms=event.timestamp, presence=asdict(presence))
    if kind == "ROOM_CREATED":
        return Fact(kind="session_started", session_id=session_id, at_ms=event.timestamp)
    if kind == "ROOM_DESTROYED":
        return Fact(kind="session_ended", session_id=session_id, at_ms=event.timestamp)
    if kind == "RECORDING_UPLOADED" and event.data.pre_authenticated_link:
        recording = RecordingFact(recording_id=f"jaas-{event.idempotency_key}",
                                  url=event.data.pre_authenticated_link,
                                  expires_at_ms=event.timestamp + LINK_TTL_MS, content_type="video/mp4",
                                  bytes=None, duration_s=event.data.duration_sec)
        return Fact(kind="recording", session_id=session_id, at_ms=event.timestamp, recording=recording)
    return None


class JaasReceiver(Receiver):
    settings: JaasSettings

    def configured(self) -> bool:
        return self.settings.webhook_secret is not None

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        assert self.settings.webhook_secret is not None
        expected_authorization = self.settings.webhook_authorization
        if expected_authorization is not None:
            offered = headers.get("authorization")
            if offered is None:
                raise ReceiverAuthError("missing_authorization", "the Authorization header is missing")
            if not hmac.compare_digest(offered.encode(), expected_authorization.get_secret_value().encode()):
                raise ReceiverAuthError("bad_authorization",
                                        "the Authorization header is not the one configured (webhook_authorization)")
        verify_signature(self.settings.webhook_secret.get_secret_value(), headers.get("x-jaas-signature"), body, now)

    def notice(self, document: dict[str, Any]) -> Notice:
        event = JaasEvent.model_validate(document)
        fact = fact_of(event) if event.event_type in JAAS_TYPES else None
        return Notice(event_id=event.idempotency_key, type=event.event_type, rooms=(event.room,), fact=fact)
