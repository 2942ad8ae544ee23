"""100ms adapter: rooms on the v2 REST API, template and roles on the policy API, app tokens minted locally.

Wire facts (see ../shared/provider-docs/100ms-templates-and-roles.txt and DESIGN.md):
- Management token: HS256 JWT signed with the app secret, claims {access_key, type "management",
  version 2, iat, nbf, exp, jti}; sent as `Authorization: Bearer`. Minted once and reused until
  shortly before it expires.
- App token (join): the same plus {room_id, user_id, role} and type "app"; minted locally, no call.
- Template and roles: looked up by name on the policy host, created (POST /policy/v1/templates) when
  missing, roles fixed with POST /policy/v1/templates/{id}/roles/{role} when they differ from config.
  Role parameters are checked against the documented ranges before anything is sent.
- Rooms: POST /v2/rooms is create-or-get by name; update and disable with POST /v2/rooms/{id}
  (100ms rooms cannot be deleted, only disabled); end with POST /v2/active-rooms/{id}/end-room;
  kick = GET /v2/active-rooms/{id}/peers, then POST /v2/active-rooms/{id}/remove-peers per peer.
- Errors: {"code", "message", "details"}.
- Recording is not covered by the provider document we follow, so it stays Unsupported.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
import jwt

from bridge.providers.base import (
    Capability,
    JoinGrant,
    Lesson,
    Provider,
    ProviderError,
    Room,
    SettingsError,
    User,
    int_setting,
    raise_for_http,
    str_setting,
    transport_error,
)

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.100ms.live"
DEFAULT_POLICY_BASE = "https://prod-policy.100ms.live"
DEFAULT_JOIN_BASE = "https://app.100ms.live/meeting"
DEFAULT_JOIN_TEMPLATE = "{join_base}/{room_id}?token={token}"
DEFAULT_TEMPLATE_NAME = "lesson-bridge"

_TEMPLATE_NAME_RE = re.compile(r"^[A-Za-z0-9.:_-]+$")
_ROLE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_REGIONS = frozenset({"in", "us", "eu", "auto"})
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

# Management tokens live this long and are replaced this long before they expire.
_MGMT_TTL_S = 3600
_MGMT_MARGIN_S = 300


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


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _contains(actual: Any, wanted: Any) -> bool:
    """True when every value in `wanted` is present and equal in `actual` (server defaults may add more)."""
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(k in actual and _contains(actual[k], v) for k, v in wanted.items())
    if isinstance(wanted, list) and isinstance(actual, list):
        return sorted(map(str, wanted)) == sorted(map(str, actual))
    return actual == wanted


def _url_setting(settings: Mapping[str, Any], key: str, default: str) -> str:
    value = str_setting(settings, key, default)
    if not value.startswith(("http://", "https://")):
        raise SettingsError(key, "must be an http(s) URL")
    return value.rstrip("/")


class HmsProvider(Provider):
    kind = "100ms"
    capabilities = frozenset({Capability.ROOMS, Capability.JOIN, Capability.KICK, Capability.END_ROOM})

    def __init__(self, name: str, settings: Mapping[str, Any], http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        self._access_key = str_setting(settings, "access_key")
        secret = str_setting(settings, "app_secret", secret=True)
        self._app_secret = secret.encode()          # HS256 key, prepared once
        self._secrets = (secret, self._access_key)  # scrubbed from any provider text we pass on
        self._api_base = _url_setting(settings, "api_base", DEFAULT_API_BASE)
        self._policy_base = _url_setting(settings, "policy_base", DEFAULT_POLICY_BASE)
        self._join_base = _url_setting(settings, "join_base", DEFAULT_JOIN_BASE)
        self._join_template = str_setting(settings, "join_url_template", DEFAULT_JOIN_TEMPLATE)
        try:
            self._join_template.format(join_base="", room_id="", room_name="", role="", token="", user_id="")
        except (KeyError, IndexError, ValueError):
            raise SettingsError("join_url_template", "placeholders are {join_base} {room_id} {room_name} "
                                                     "{role} {token} {user_id}") from None
        self._token_ttl = int_setting(settings, "token_ttl_s", 86400, 60, 7 * 86400)
        self._mgmt_ttl = int_setting(settings, "management_token_ttl_s", _MGMT_TTL_S, 600, 86400)

        self.teacher_role = str_setting(settings, "teacher_role", "teacher")
        self.student_role = str_setting(settings, "student_role", "student")
        if self.teacher_role == self.student_role:
            raise SettingsError("student_role", "must differ from teacher_role")

        template_id = settings.get("template_id")
        if template_id is not None and (not isinstance(template_id, str) or not template_id.strip()):
            raise SettingsError("template_id", "must be a non-empty string")
        # With template_id the template is managed by the operator: used as is, never modified.
        self._template_id: str | None = template_id.strip() if template_id else None
        self.template_name = str_setting(settings, "template", DEFAULT_TEMPLATE_NAME)
        if not _TEMPLATE_NAME_RE.match(self.template_name):
            raise SettingsError("template", "accepted characters are a-z A-Z 0-9 . - : _")
        region = settings.get("region")
        if region is not None and region not in _REGIONS:
            raise SettingsError("region", f"must be one of {sorted(_REGIONS)}")
        self._region: str | None = region
        self.roles = self._build_roles(settings.get("roles", {}))

        self._mgmt_token: str | None = None
        self._mgmt_expires = 0.0
        self._provision_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<HmsProvider name={self.name!r} api_base={self._api_base!r} template={self.template_name!r}>"

    # ---- configuration -------------------------------------------------------------------------

    def _default_roles(self) -> dict[str, dict[str, Any]]:
        both = [self.teacher_role, self.student_role]
        return {
            self.teacher_role: {
                "publishParams": {"allowed": ["audio", "video", "screen"]},
                "subscribeParams": {"subscribeToRoles": both},
                "permissions": {"endRoom": True, "removeOthers": True, "mute": True, "unmute": True,
                                "changeRole": False},
                "priority": 1,
            },
            self.student_role: {
                "publishParams": {"allowed": ["audio", "video"]},
                "subscribeParams": {"subscribeToRoles": both},
                "permissions": {"endRoom": False, "removeOthers": False, "mute": False, "unmute": False,
                                "changeRole": False},
                "priority": 2,
            },
        }

    def _build_roles(self, overrides: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(overrides, Mapping):
            raise SettingsError("roles", "must be a table of role name -> role object")
        roles = self._default_roles()
        for role_name, override in overrides.items():
            if not isinstance(override, Mapping):
                raise SettingsError(f"roles.{role_name}", "must be a table")
            roles[role_name] = _deep_merge(roles.get(role_name, {}), override)
        teacher_perms = roles[self.teacher_role].get("permissions", {})
        for perm in ("removeOthers", "endRoom"):
            if teacher_perms.get(perm) is not True:
                raise SettingsError(f"roles.{self.teacher_role}.permissions.{perm}",
                                    "the teacher role needs removeOthers and endRoom")
        names = frozenset(roles)
        for role_name, role in roles.items():
            try:
                validate_role(role_name, role, names)
            except ProviderError as exc:
                field, _, problem = exc.message.partition(": ")
                raise SettingsError(field, problem) from None
        return roles

    # ---- tokens --------------------------------------------------------------------------------

    def management_token(self) -> str:
        """The current management token; a new one only when the cached one is near expiry."""
        now = time.time()
        if self._mgmt_token is None or now >= self._mgmt_expires - _MGMT_MARGIN_S:
            iat = int(now)
            exp = iat + self._mgmt_ttl
            self._mgmt_token = jwt.encode(
                {"access_key": self._access_key, "type": "management", "version": 2,
                 "iat": iat, "nbf": iat, "exp": exp, "jti": str(uuid.uuid4())},
                self._app_secret, algorithm="HS256",
            )
            self._mgmt_expires = float(exp)
        return self._mgmt_token

    def app_token(self, room_id: str, user_id: str, role: str) -> tuple[str, datetime]:
        iat = int(time.time())
        exp = iat + self._token_ttl
        token = jwt.encode(
            {"access_key": self._access_key, "room_id": room_id, "user_id": user_id, "role": role,
             "type": "app", "version": 2, "iat": iat, "nbf": iat, "exp": exp, "jti": str(uuid.uuid4())},
            self._app_secret, algorithm="HS256",
        )
        return token, datetime.fromtimestamp(exp, UTC)

    def role_for(self, user: User) -> str:
        return self.teacher_role if user.is_moderator else self.student_role

    # ---- HTTP ----------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    async def _request(self, method: str, url: str, *, json: Any = None, params: Mapping[str, str] | None = None,
                       ok_statuses: tuple[int, ...] = ()) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.management_token()}", "Accept": "application/json"}
        try:
            response = await self.http.request(method, url, json=json, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise transport_error(self.kind, exc) from None
        if response.is_success or response.status_code in ok_statuses:
            return response
        self._raise(response)

    def _raise(self, response: httpx.Response) -> NoReturn:
        code, message = "", response.reason_phrase or ""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping):
            if body.get("code") is not None:
                code = str(body["code"])
            if body.get("message"):
                message = str(body["message"])
            details = body.get("details")
            if details:
                message = f"{message} ({details})"
        elif response.text:
            message = response.text[:200]
        raise_for_http(self.kind, response, self._scrub(code), self._scrub(message))
        raise AssertionError("raise_for_http returned")  # pragma: no cover

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise ProviderError("bad_response", "100ms answered a non-JSON body", retryable=True,
                                status=response.status_code) from None
        if not isinstance(body, dict):
            raise ProviderError("bad_response", "100ms answered an unexpected JSON shape", retryable=True,
                                status=response.status_code)
        return body

    # ---- template and roles (policy API) -------------------------------------------------------

    async def ensure_template(self) -> str:
        """Look up the template by name; create it, or fix its roles, to match config. Once per process."""
        if self._template_id is not None:
            return self._template_id
        async with self._provision_lock:
            if self._template_id is not None:
                return self._template_id
            names = frozenset(self.roles)
            for role_name, role in self.roles.items():   # checked again right before sending
                validate_role(role_name, role, names)
            url = f"{self._policy_base}/policy/v1/templates"
            found = await self._request("GET", url, params={"name": self.template_name}, ok_statuses=(404,))
            template = self._find_template(found) if found.status_code != 404 else None
            if template is None:
                body: dict[str, Any] = {"name": self.template_name, "roles": self.roles}
                if self._region:
                    body["settings"] = {"region": self._region}
                created = self._json(await self._request("POST", url, json=body))
                template_id = str(created.get("id") or "")
                if not template_id:
                    raise ProviderError("bad_response", "100ms template create answered no id", retryable=True)
                log.info("100ms template created", extra={"provider": self.name, "template": self.template_name})
            else:
                template_id = str(template["id"])
                existing_roles = template.get("roles") or {}
                for role_name, role in self.roles.items():
                    if not _contains(existing_roles.get(role_name), role):
                        await self._request(
                            "POST", f"{url}/{quote(template_id, safe='')}/roles/{quote(role_name, safe='')}",
                            json=role)
                        log.info("100ms role updated",
                                 extra={"provider": self.name, "template": self.template_name, "role": role_name})
                if self._region and (template.get("settings") or {}).get("region") != self._region:
                    await self._request("POST", f"{url}/{quote(template_id, safe='')}/settings",
                                        json={"region": self._region})
            self._template_id = template_id
            return template_id

    def _find_template(self, response: httpx.Response) -> dict[str, Any] | None:
        body = self._json(response)
        candidates = body.get("data") if isinstance(body.get("data"), list) else [body]
        for item in candidates:
            if isinstance(item, dict) and item.get("id") and item.get("name") == self.template_name:
                return item
        return None

    # ---- rooms ---------------------------------------------------------------------------------

    def _room_from(self, body: Mapping[str, Any], lesson: Lesson) -> Room:
        return Room(id=str(body["id"]), name=str(body.get("name") or lesson.room_name),
                    extra={"template_id": body.get("template_id"), "enabled": body.get("enabled", True),
                           "description": body.get("description", "")})

    async def create_room(self, lesson: Lesson) -> Room:
        template_id = await self.ensure_template()
        body: dict[str, Any] = {"name": lesson.room_name, "description": lesson.title[:500],
                                "template_id": template_id}
        if self._region:
            body["region"] = self._region
        # POST /v2/rooms is create-or-get by name: running it twice yields the same room.
        data = self._json(await self._request("POST", f"{self._api_base}/v2/rooms", json=body))
        if "id" not in data:
            raise ProviderError("bad_response", "100ms room create answered no id", retryable=True)
        if data.get("enabled") is False:   # disabled by an earlier delete: a new schedule revives it
            data = self._json(await self._request("POST", self._room_url(str(data["id"])), json={"enabled": True}))
        return self._room_from(data, lesson)

    def _room_url(self, room_id: str) -> str:
        return f"{self._api_base}/v2/rooms/{quote(room_id, safe='')}"

    async def update_room(self, lesson: Lesson, room: Room) -> Room:
        data = self._json(await self._request("POST", self._room_url(room.id),
                                              json={"description": lesson.title[:500]}))
        return self._room_from(data, lesson)

    async def delete_room(self, lesson: Lesson, room: Room) -> None:
        # 100ms rooms cannot be deleted: disabling is the documented end state. Gone already = done.
        await self._request("POST", self._room_url(room.id), json={"enabled": False}, ok_statuses=(404,))

    def _active_url(self, room_id: str, action: str) -> str:
        return f"{self._api_base}/v2/active-rooms/{quote(room_id, safe='')}/{action}"

    async def end_room(self, lesson: Lesson, room: Room) -> None:
        # 404 = no active session: the room is already ended.
        await self._request("POST", self._active_url(room.id, "end-room"),
                            json={"reason": "The lesson has ended", "lock": False}, ok_statuses=(404,))

    async def join(self, lesson: Lesson, room: Room, user: User) -> JoinGrant:
        role = self.role_for(user)
        token, expires_at = self.app_token(room.id, user.id, role)
        join_url = self._join_template.format(
            join_base=self._join_base, room_id=quote(room.id, safe=""), room_name=quote(room.name, safe=""),
            role=quote(role, safe=""), token=token, user_id=quote(user.id, safe=""))
        return JoinGrant(join_url=join_url, token=token, expires_at=expires_at, role=role)

    async def kick(self, lesson: Lesson, room: Room, user_id: str, participant_id: str | None = None) -> None:
        if participant_id:
            peer_ids = [participant_id]
        else:
            response = await self._request("GET", self._active_url(room.id, "peers"), ok_statuses=(404,))
            if response.status_code == 404:   # no active session: nobody to remove
                return
            peers = self._json(response).get("peers") or {}
            items = peers.values() if isinstance(peers, Mapping) else peers
            peer_ids = [str(p.get("id")) for p in items
                        if isinstance(p, Mapping) and str(p.get("user_id")) == user_id and p.get("id")]
        for peer_id in peer_ids:
            # 404 = the peer left already (or a repeat of this job removed it).
            await self._request("POST", self._active_url(room.id, "remove-peers"),
                                json={"peer_id": peer_id, "reason": "Removed by the lesson host"},
                                ok_statuses=(404,))
