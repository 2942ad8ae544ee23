"""100ms on the wire (../shared/provider-docs/100ms-templates-and-roles.txt and DESIGN.md).

- Template and roles live on the policy host: looked up by name, created (POST /policy/v1/templates)
  when missing, roles fixed with POST /policy/v1/templates/{id}/roles/{role} when they differ. A role
  object is checked against the documented types and ranges before anything is sent.
- Rooms: POST /v2/rooms is create-or-get by name; update and disable with POST /v2/rooms/{id}
  (100ms rooms cannot be deleted, only disabled); end with POST /v2/active-rooms/{id}/end-room;
  kick = GET /v2/active-rooms/{id}/peers, then POST /v2/active-rooms/{id}/remove-peers per peer.
- Errors: {"code", "message", "details"}.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from bridge.providers.base import ProviderError

TEMPLATES_PATH = "/policy/v1/templates"
ROOMS_PATH = "/v2/rooms"
ACTIVE_ROOMS_PATH = "/v2/active-rooms"
# user_name: 100ms app tokens carry no name (the client SDK sends one when it joins), so a prebuilt
# link's name parameter is where the LMS user's full name can go.
JOIN_PLACEHOLDERS = ("join_base", "room_id", "room_name", "role", "token", "user_id", "user_name")
REGIONS = frozenset({"in", "us", "eu", "auto"})
TEMPLATE_NAME_RE = re.compile(r"^[A-Za-z0-9.:_-]+$")
_ROLE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_TRACKS = ("audio", "video", "screen")
_PERMISSIONS = frozenset({"endRoom", "removeOthers", "mute", "unmute", "changeRole"})

# Documented ranges (min, max); max None = no upper bound. Key: publishParams.<track>.<field>.
_PUBLISH_RANGES: dict[str, dict[str, tuple[int, int | None]]] = {
    "audio": {"bitRate": (16, 128)},
    "video": {"bitRate": (30, 2000), "frameRate": (1, 30), "height": (50, 1080), "width": (50, 1920)},
    "screen": {"bitRate": (500, None), "frameRate": (1, 30), "height": (270, 1080), "width": (480, 1920)},
}
_CODECS = {"audio": ("opus",), "video": ("vp8",), "screen": ("vp8",)}
_DEGRADATION_RANGES: dict[str, tuple[int, int]] = {
    "packetLossThreshold": (1, 100),
    "degradeGracePeriodSeconds": (1, 10),
    "recoverGracePeriodSeconds": (1, 10),
}



def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(field: str, problem: str) -> ProviderError:
    return ProviderError("invalid_role_param", f"{field}: {problem}", retryable=False)


def _check_range(field: str, value: Any, lo: int, hi: int | None) -> None:
    if not _is_int(value):
        raise _invalid(field, "must be an integer")
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo}-{hi}" if hi is not None else f">= {lo}"
        raise _invalid(field, f"{value} is out of the documented range {bound}")


def validate_role(role_name: str, role: Any, template_roles: frozenset[str] | None = None) -> None:
    """Check a policy-API roleObject against the documented types and ranges.

    Raises a permanent ProviderError (code "invalid_role_param") whose message names the field,
    e.g. "roles.student.publishParams.video.bitRate: 5000 is out of the documented range 30-2000".
    """
    base = f"roles.{role_name}"
    if not _ROLE_NAME_RE.match(role_name):
        raise _invalid(base, "role names use A-Z a-z 0-9 . _ -")
    if not isinstance(role, Mapping):
        raise _invalid(base, "must be an object")
    unknown = set(role) - {"publishParams", "subscribeParams", "permissions", "priority"}
    if unknown:
        raise _invalid(f"{base}.{sorted(unknown)[0]}", "unknown role field")
    if "priority" in role:
        _check_range(f"{base}.priority", role["priority"], 1, 10)

    publish = role.get("publishParams", {})
    if not isinstance(publish, Mapping):
        raise _invalid(f"{base}.publishParams", "must be an object")
    unknown = set(publish) - {"allowed", *_TRACKS}
    if unknown:
        raise _invalid(f"{base}.publishParams.{sorted(unknown)[0]}", "unknown field")
    if "allowed" in publish:
        allowed = publish["allowed"]
        if not isinstance(allowed, list) or any(t not in _TRACKS for t in allowed):
            raise _invalid(f"{base}.publishParams.allowed", "must be a subarray of [audio, video, screen]")
    for track in _TRACKS:
        if track not in publish:
            continue
        params = publish[track]
        field = f"{base}.publishParams.{track}"
        if not isinstance(params, Mapping):
            raise _invalid(field, "must be an object")
        ranges = _PUBLISH_RANGES[track]
        for key, value in params.items():
            if key == "codec":
                if value not in _CODECS[track]:
                    raise _invalid(f"{field}.codec", f"must be one of {list(_CODECS[track])}")
            elif key in ranges:
                _check_range(f"{field}.{key}", value, *ranges[key])
            else:
                raise _invalid(f"{field}.{key}", "unknown field")

    subscribe = role.get("subscribeParams", {})
    if not isinstance(subscribe, Mapping):
        raise _invalid(f"{base}.subscribeParams", "must be an object")
    for key, value in subscribe.items():
        field = f"{base}.subscribeParams.{key}"
        if key == "maxSubsBitRate":
            _check_range(field, value, 1, None)
        elif key == "subscribeToRoles":
            if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
                raise _invalid(field, "must be a list of role names")
            if template_roles is not None:
                missing = [r for r in value if r not in template_roles]
                if missing:
                    raise _invalid(field, f"names roles not in the template: {missing}")
        elif key == "subscribeDegradation":
            if not isinstance(value, Mapping):
                raise _invalid(field, "must be an object")
            for dkey, dvalue in value.items():
                if dkey not in _DEGRADATION_RANGES:
                    raise _invalid(f"{field}.{dkey}", "unknown field")
                _check_range(f"{field}.{dkey}", dvalue, *_DEGRADATION_RANGES[dkey])
        else:
            raise _invalid(field, "unknown field")

    permissions = role.get("permissions", {})
    if not isinstance(permissions, Mapping):
        raise _invalid(f"{base}.permissions", "must be an object")
    for key, value in permissions.items():
        if key not in _PERMISSIONS:
            raise _invalid(f"{base}.permissions.{key}", "unknown permission")
        if not isinstance(value, bool):
            raise _invalid(f"{base}.permissions.{key}", "must be true or false")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def contains(actual: Any, wanted: Any) -> bool:
    """True when every value in `wanted` is present and equal in `actual` (server defaults may add more)."""
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(k in actual and contains(actual[k], v) for k, v in wanted.items())
    if isinstance(wanted, list) and isinstance(actual, list):
        return sorted(map(str, wanted)) == sorted(map(str, actual))
    return actual == wanted




def default_roles(teacher: str, student: str) -> dict[str, dict[str, Any]]:
    """The template's two roles: the teacher may end the room and remove others (contract)."""
    both = [teacher, student]
    return {
        teacher: {
            "publishParams": {"allowed": ["audio", "video", "screen"]},
            "subscribeParams": {"subscribeToRoles": both},
            "permissions": {"endRoom": True, "removeOthers": True, "mute": True, "unmute": True,
                            "changeRole": False},
            "priority": 1,
        },
        student: {
            "publishParams": {"allowed": ["audio", "video"]},
            "subscribeParams": {"subscribeToRoles": both},
            "permissions": {"endRoom": False, "removeOthers": False, "mute": False, "unmute": False,
                            "changeRole": False},
            "priority": 2,
        },
    }


def error_fields(body: Any) -> tuple[str, str]:
    if not isinstance(body, Mapping):
        return "", ""
    code = "" if body.get("code") is None else str(body["code"])
    message = str(body.get("message") or "")
    if body.get("details"):
        message = f"{message} ({body['details']})"
    return code, message
