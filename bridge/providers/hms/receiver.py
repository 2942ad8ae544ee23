"""100ms webhooks in: not signed, so every header configured in `webhook_headers` must be present and
equal (constant time); the body as a Notice.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from bridge.attendance import Presence
from bridge.providers.hms.settings import HmsSettings
from bridge.providers.receiver import Notice, Receiver, ReceiverAuthError
from bridge.schema.provider_events import HMS_TYPES, Fact, HmsEvent, RecordingFact

LINK_TTL_MS = 24 * 3600 * 1000        # recording_presigned_url is valid 24 h
# 100ms's leave reasons → the contract's; anything else is `unknown`.
LEAVE_REASONS = {"client_request": "left", "peer_kicked": "kicked", "removed": "kicked",
                 "network_error": "disconnected", "connection_timeout": "disconnected"}


def _ms(moment: datetime | None) -> int | None:
    return round(moment.timestamp() * 1000) if moment is not None else None


class HmsReceiver(Receiver):
    settings: HmsSettings

    def configured(self) -> bool:
        return bool(self.settings.webhook_headers)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        # Every header is compared, each in constant time: which one failed is said, not how far it matched.
        missing, wrong = [], []
        for name, expected in self.settings.webhook_headers.items():
            offered = headers.get(name)
            if offered is None:
                missing.append(name)
            elif not hmac.compare_digest(offered.encode(), expected.get_secret_value().encode()):
                wrong.append(name)
        if missing:
            raise ReceiverAuthError("missing_headers", f"the configured webhook header(s) {', '.join(missing)} "
                                    "are missing")
        if wrong:
            raise ReceiverAuthError("bad_headers", f"the webhook header(s) {', '.join(wrong)} do not match "
                                    "the configured values")

    def _presence(self, event: HmsEvent) -> Presence:
        data = event.data
        joined = event.type == "peer.join.success"
        at_ms = _ms(data.joined_at if joined else data.left_at) or _ms(event.timestamp)
        assert at_ms is not None
        participant = data.peer_id or data.user_id or data.user_name or "unknown"
        return Presence(
            kind="joined" if joined else "left", at_ms=at_ms, participant_id=participant,
            user_id=data.user_id or None, name=data.user_name or data.user_id or participant,
            role="moderator" if data.role == self.settings.teacher_role else "guest",
            reason=None if joined else LEAVE_REASONS.get(data.reason or "", "unknown"),
            joined_at_ms=None if joined else _ms(data.joined_at))

    def fact_of(self, event: HmsEvent) -> Fact:
        data = event.data
        session_id = data.session_id or data.room_id or data.room_name or "unknown"
        at_ms = _ms(event.timestamp)
        assert at_ms is not None
        if event.type in ("peer.join.success", "peer.leave.success"):
            presence = self._presence(event)
            return Fact(kind="presence", session_id=session_id, at_ms=presence.at_ms, presence=asdict(presence))
        if event.type == "session.close.success":
            return Fact(kind="session_ended", session_id=session_id, at_ms=_ms(data.session_stopped_at) or at_ms)
        recording = RecordingFact(recording_id=f"100ms-{event.id}", url=data.recording_presigned_url or "",
                                  expires_at_ms=at_ms + LINK_TTL_MS, content_type="video/mp4", bytes=data.size,
                                  duration_s=data.duration)
        return Fact(kind="recording", session_id=session_id, at_ms=at_ms, recording=recording)

    def notice(self, document: dict[str, Any]) -> Notice:
        event = HmsEvent.model_validate(document)
        acted_on = event.type in HMS_TYPES and (event.type != "recording.success"
                                                or bool(event.data.recording_presigned_url))
        rooms = tuple(room for room in (event.data.room_id, event.data.room_name) if room)
        return Notice(event_id=event.id, type=event.type, rooms=rooms, fact=self.fact_of(event) if acted_on else None)
