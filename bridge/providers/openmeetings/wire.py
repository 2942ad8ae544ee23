"""OpenMeetings' REST API on the wire (../shared/provider-docs/openmeetings-rest-api-sample.txt).

- Answers wrap their result as `{"serviceResult": {"message", "type", "code"}}`; type ERROR (with a
  negative code) is a refusal even under HTTP 200.
- Sessions expire when idle: a call with an expired SID answers HTTP 500 `error.notallowed`.
- Room per lesson: `GET services/room/{type}/{externalType}/{externalId}?room=<RoomDTO JSON>` looks the
  room up by external id and creates it only when missing (external id = lesson id).
- Join: `POST services/user/hash?sid=..` with form fields `user` and `options` (JSON strings,
  options carry `roomId` and `moderator`), then `<base_url>/hash?secure=<hash>`.
- Kick one user only: `GET services/room/kick/{id}/{externalType}/{externalId}` (never kick-all).
- Who is in a room: `GET services/room/users/{id}` lists the UserDTOs of the room's clients (bare, or
  under `userDTO`, a lone one unwrapped); a user who entered by a room hash carries the
  `externalId`/`externalType` it was made with. It names no connections: one entry per user.
- End: `GET services/room/close/{id}`; delete: `DELETE services/room/{id}`; update: `POST services/room`
  with the form field `room` carrying the room's id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROOM_TYPES = ("CONFERENCE", "PRESENTATION", "INTERVIEW")
NOT_ALLOWED = "error.notallowed"


def service_result(body: Any) -> Mapping[str, Any] | None:
    result = body.get("serviceResult") if isinstance(body, Mapping) else None
    return result if isinstance(result, Mapping) else None


def error_fields(body: Any) -> tuple[str, str]:
    result = service_result(body)
    if result is None:
        return "", ""
    return str(result.get("code") or ""), str(result.get("message") or "")


def is_refusal(result: Mapping[str, Any] | None) -> bool:
    return result is not None and str(result.get("type", "")).upper() == "ERROR"


def room_dto(body: Any) -> Mapping[str, Any] | None:
    """The RoomDTO of an answer (bare or under `roomDTO`), None when it has no id."""
    dto = body.get("roomDTO", body) if isinstance(body, Mapping) else None
    return dto if isinstance(dto, Mapping) and dto.get("id") is not None else None


def user_dtos(body: Any) -> list[Mapping[str, Any]] | None:
    """The UserDTOs of a room-users answer, None when the answer is no such list."""
    items = body.get("userDTO", []) if isinstance(body, Mapping) else body
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list):
        return None
    return [item for item in items if isinstance(item, Mapping) and item.get("id") is not None]
