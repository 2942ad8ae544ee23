"""BlendVision's chatroom API on the wire (../shared/provider-docs/blendvision-chatroom-token.txt).

- Tokens: `POST /bv/chatroom/v1/chatrooms/{id}/tokens` with `{role, subject, name}` answers
  `{token, expires_in, refresh_token, refresh_expires_in}`; roles ROLE_ADMIN (moderators) and
  ROLE_VIEWER or ROLE_GUEST (everyone else, configurable).
- Errors are gRPC-gateway shaped: `{"code": <gRPC code>, "message": ..., "details": [...]}`.
- Chatrooms have no name or external id a caller can set: the adapter tags a lesson's chatroom with a
  custom counter keyed `lesson-bridge:<room name>` and finds it again by that key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CHATROOMS = "/bv/chatroom/v1/chatrooms"
GUEST_ROLES = ("ROLE_VIEWER", "ROLE_GUEST")
ADMIN_ROLE = "ROLE_ADMIN"
TAG_PREFIX = "lesson-bridge:"
JOIN_PLACEHOLDERS = ("chatroom_id", "token", "role", "user_id")


def error_fields(body: Any) -> tuple[str, str]:
    if not isinstance(body, Mapping):
        return "", ""
    code = body.get("code")
    return ("" if code is None else str(code)), str(body.get("message") or "")


def tag_of(room_name: str) -> str:
    return f"{TAG_PREFIX}{room_name}"


def has_tag(chatroom: Any, tag: str) -> bool:
    counters = (chatroom.get("custom_counters") or []) if isinstance(chatroom, Mapping) else []
    return any(isinstance(c, Mapping) and c.get("key") == tag for c in counters)


def chatroom_of(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The chatroom in a create answer (bare or under `chatroom`), None when it has no id."""
    chatroom = body.get("chatroom", body)
    return chatroom if isinstance(chatroom, Mapping) and chatroom.get("id") else None
