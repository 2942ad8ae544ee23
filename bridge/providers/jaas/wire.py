"""JaaS on the wire (../shared/provider-docs/jaas-conference-commands.md and the JaaS JWT guide).

- Conference commands (`DESTROY`, `KICK_PARTICIPANT`, `DIAL_OUT_PARTICIPANT`, `HANG_UP_CALL`) are
  `POST /v1/_jaas/conference-commands/v1/meeting` with `{"action", "payload": {...}}` and an admin JWT;
  `conferenceFullName = "<room>@conference.<appId>.8x8.vc"`.
- Bans are `POST /v1/_jaas/jaccess/v1/access-management/{appId}/ban/...`.
- Error bodies are not documented: the common JSON shapes are read, else the text.
"""

from __future__ import annotations

import re
from typing import Any

from bridge.providers.base import ProviderError

COMMANDS_PATH = "/v1/_jaas/conference-commands/v1/meeting"
ACCESS_PATH = "/v1/_jaas/jaccess/v1/access-management"

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
PHONE_SEPARATORS = re.compile(r"[\s().-]")


def conference_full_name(room_name: str, app_id: str) -> str:
    return f"{room_name}@conference.{app_id}.8x8.vc"


def command(action: str, room_name: str, app_id: str, **payload: str) -> dict[str, Any]:
    return {"action": action, "payload": {"conferenceFullName": conference_full_name(room_name, app_id), **payload}}


def normalise_phone(phone: str) -> str:
    """Strip common separators and check E.164 (`+` then 2-15 digits, no leading 0).

    Raises a permanent ProviderError `invalid_phone`: the number is wrong, retrying will not help.
    """
    cleaned = PHONE_SEPARATORS.sub("", phone or "")
    if not E164.match(cleaned):
        raise ProviderError("invalid_phone", "phone number is not in E.164 form (+<country><number>)",
                            retryable=False)
    return cleaned


def error_fields(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict):
        return "", ""
    err = body.get("error")
    if isinstance(err, dict):
        return str(err.get("code") or ""), str(err.get("message") or "")
    code = body.get("code") or body.get("errorCode") or (err if isinstance(err, str) else "")
    message = (body.get("message") or body.get("error_description") or body.get("detail")
               or (err if isinstance(err, str) else ""))
    return str(code or ""), str(message or "")
