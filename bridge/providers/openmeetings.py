"""Apache OpenMeetings adapter over its REST API (services/...), following the provider's REST sample.

Wire facts (see ../shared/provider-docs/openmeetings-rest-api-sample.txt and DESIGN.md):
- `GET services/user/login?user=..&pass=..` answers `{"serviceResult": {"message": SID, "type": "SUCCESS"}}`
  (or type ERROR with a negative code). The SID is cached and reused by every later call (`?sid=`).
- Sessions expire when idle: a call with an expired SID answers HTTP 500 `error.notallowed`. We log in
  again and retry that call once; a second `error.notallowed` is permanent (the user lacks rights).
- Room per lesson: `GET services/room/{type}/{externalType}/{externalId}?room=<RoomDTO JSON>` looks the
  room up by external id and creates it only when missing (external id = lesson id).
- Join: `POST services/user/hash?sid=..` with form fields `user` and `options` (JSON strings,
  options carry `roomId` and `moderator`), then `<base_url>/hash?secure=<hash>`.
- Kick one user only: `GET services/room/kick/{id}/{externalType}/{externalId}` (never kick-all).
- End: `GET services/room/close/{id}`; delete: `DELETE services/room/{id}`; update: `POST services/room`
  with the form field `room` carrying the room's id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import quote

import httpx

from bridge.providers.base import (
    MODERATOR_ROLES,
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

ROOM_TYPES = ("CONFERENCE", "PRESENTATION", "INTERVIEW")
NOT_ALLOWED = "error.notallowed"


class _RedactQuery(logging.Filter):
    """The REST API takes the password (login) and the SID (every call) in the query string, and httpx
    logs request URLs at INFO: blank those values in httpx's records before any handler sees them."""

    _pattern = re.compile(r"([?&](?:pass|sid)=)[^&\s\"']*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(self._pattern.sub(r"\1***", str(a)) if isinstance(a, str | httpx.URL) else a
                                for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self._pattern.sub(r"\1***", record.msg)
        return True


_REDACT = _RedactQuery()
logging.getLogger("httpx").addFilter(_REDACT)     # the same object: added once however often imported


class _NotAllowed(Exception):
    """HTTP 500 error.notallowed: the SID expired (or the user lacks the right)."""


class OpenMeetingsProvider(Provider):
    kind = "openmeetings"
    capabilities = frozenset({Capability.ROOMS, Capability.JOIN, Capability.KICK, Capability.END_ROOM})

    def __init__(self, name: str, settings: Mapping[str, Any], http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        base = str_setting(settings, "base_url")
        if not base.startswith(("http://", "https://")):
            raise SettingsError("base_url", "must be an http(s) URL such as https://om.example/openmeetings")
        self._base = base.rstrip("/")
        self._services = f"{self._base}/services"
        self._user = str_setting(settings, "user")
        self._password = str_setting(settings, "password", secret=True)
        self._external_type = str_setting(settings, "external_type", "LessonBridge")
        if "/" in self._external_type:
            raise SettingsError("external_type", "must not contain '/'")
        self._room_type = str_setting(settings, "room_type", "CONFERENCE").upper()
        if self._room_type not in ROOM_TYPES:
            raise SettingsError("room_type", f"must be one of {list(ROOM_TYPES)}")
        self._capacity = int_setting(settings, "room_capacity", 50, 1, 10000)
        self._hash_ttl = int_setting(settings, "hash_ttl_s", 3600, 60, 7 * 86400)
        language = settings.get("language")
        if language is not None:
            language = int_setting(settings, "language", 1, 1, 1000)
        self._language: int | None = language
        self._show_av_test = settings.get("show_audio_video_test", True)
        if not isinstance(self._show_av_test, bool):
            raise SettingsError("show_audio_video_test", "must be true or false")
        # Moderator mapping: canonical roles that become OpenMeetings moderators (contract default).
        roles = settings.get("moderator_roles", sorted(MODERATOR_ROLES))
        if not isinstance(roles, list | tuple) or not roles or not all(isinstance(r, str) for r in roles):
            raise SettingsError("moderator_roles", "must be a non-empty list of role names")
        self._moderator_roles = frozenset(roles)

        self._sid: str | None = None
        self._login_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<OpenMeetingsProvider name={self.name!r} base_url={self._base!r} user={self._user!r}>"

    # ---- plumbing ------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in (self._password, self._sid):
            if secret:
                text = text.replace(secret, "***")
        return text

    def is_moderator(self, user: User) -> bool:
        return user.role in self._moderator_roles

    async def _send(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                    data: Mapping[str, str] | None = None) -> httpx.Response:
        try:
            return await self.http.request(method, f"{self._services}/{path}", params=params, data=data,
                                           headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise transport_error(self.kind, exc) from None

    def _fail(self, response: httpx.Response) -> NoReturn:
        code, message = "", response.reason_phrase or ""
        result = self._service_result(response)
        if result is not None:
            code = str(result.get("code") or "")
            message = str(result.get("message") or message)
        elif response.text:
            message = response.text[:200]
        raise_for_http(self.kind, response, code, self._scrub(message))
        raise AssertionError("raise_for_http returned")  # pragma: no cover

    @staticmethod
    def _service_result(response: httpx.Response) -> Mapping[str, Any] | None:
        try:
            body = response.json()
        except ValueError:
            return None
        if isinstance(body, Mapping) and isinstance(body.get("serviceResult"), Mapping):
            return body["serviceResult"]
        return None

    def _check(self, response: httpx.Response) -> Any:
        """The JSON body of a successful call; error shapes become ProviderError (or _NotAllowed)."""
        if response.status_code == 500 and NOT_ALLOWED in response.text:
            raise _NotAllowed
        if not response.is_success:
            self._fail(response)
        if not response.content:
            return None
        try:
            body = response.json()
        except ValueError:
            raise ProviderError("bad_response", "OpenMeetings answered a non-JSON body", retryable=True,
                                status=response.status_code) from None
        result = body.get("serviceResult") if isinstance(body, Mapping) else None
        if isinstance(result, Mapping) and str(result.get("type", "")).upper() == "ERROR":
            code = str(result.get("code") or "ERROR")
            message = self._scrub(str(result.get("message") or f"OpenMeetings error {code}"))
            raise ProviderError(code, f"{self.kind}: {message}"[:500], retryable=False, status=response.status_code)
        return body

    async def _login(self) -> str:
        response = await self._send("GET", "user/login", params={"user": self._user, "pass": self._password})
        try:
            body = self._check(response)
        except _NotAllowed:
            raise ProviderError(NOT_ALLOWED, f"{self.kind}: login refused", retryable=False, status=500) from None
        except ProviderError as exc:
            if exc.retryable:
                raise
            raise ProviderError(exc.code, f"{self.kind}: login failed ({exc.message})"[:500], retryable=False,
                                status=exc.status) from None
        result = body.get("serviceResult") if isinstance(body, Mapping) else None
        sid = result.get("message") if isinstance(result, Mapping) else None
        if not isinstance(sid, str) or not sid:
            raise ProviderError("bad_response", f"{self.kind}: login answered no SID", retryable=True)
        log.info("openmeetings login", extra={"provider": self.name})
        return sid

    async def _session(self) -> str:
        sid = self._sid
        if sid is not None:
            return sid
        async with self._login_lock:
            if self._sid is None:
                self._sid = await self._login()
            return self._sid

    async def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                    data: Mapping[str, str] | None = None) -> Any:
        """One authenticated call; on error.notallowed log in again and retry exactly once."""
        for attempt in (1, 2):
            sid = await self._session()
            response = await self._send(method, path, params={**(params or {}), "sid": sid}, data=data)
            try:
                return self._check(response)
            except _NotAllowed:
                if self._sid == sid:     # drop it, unless a concurrent call already replaced it
                    self._sid = None
                if attempt == 2:
                    raise ProviderError(NOT_ALLOWED, f"{self.kind}: call refused again after a fresh login "
                                        f"({NOT_ALLOWED}); check the user's REST/SOAP rights",
                                        retryable=False, status=500) from None
                log.info("openmeetings session expired, logging in again", extra={"provider": self.name})
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _room_dto(body: Any) -> Mapping[str, Any]:
        dto = body.get("roomDTO", body) if isinstance(body, Mapping) else None
        if not isinstance(dto, Mapping) or dto.get("id") is None:
            raise ProviderError("bad_response", "openmeetings answered no room", retryable=True)
        return dto

    def _room_body(self, lesson: Lesson, room_id: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": lesson.room_name, "comment": lesson.title[:2000], "type": self._room_type,
            "capacity": self._capacity, "appointment": False, "moderated": False,
            "allowRecording": True, "allowUserQuestions": True, "waitModerator": False,
            "externalId": lesson.id, "externalType": self._external_type,
        }
        if room_id is not None:
            body["id"] = room_id
        return body

    @staticmethod
    def _room_id(room: Room) -> str:
        return quote(str(room.id), safe="")

    @staticmethod
    def _int_id(room: Room) -> int:
        try:
            return int(room.id)
        except ValueError:
            raise ProviderError("invalid_room", "openmeetings room ids are integers", retryable=False) from None

    def _to_room(self, dto: Mapping[str, Any], lesson: Lesson) -> Room:
        return Room(id=str(dto["id"]), name=str(dto.get("name") or lesson.room_name),
                    extra={"external_id": lesson.id, "external_type": self._external_type,
                           "closed": bool(dto.get("closed", False))})

    # ---- operations ----------------------------------------------------------------------------

    async def create_room(self, lesson: Lesson) -> Room:
        # Looks the room up by (externalType, externalId) and creates it only when missing.
        path = (f"room/{self._room_type}/{quote(self._external_type, safe='')}/"
                f"{quote(lesson.id, safe='')}")
        dto = self._room_dto(await self._call("GET", path, params={"room": json.dumps(self._room_body(lesson))}))
        if dto.get("closed"):    # closed by an earlier end/cancel: a new schedule opens it again
            await self._call("GET", f"room/open/{quote(str(dto['id']), safe='')}")
            dto = {**dto, "closed": False}
        return self._to_room(dto, lesson)

    async def update_room(self, lesson: Lesson, room: Room) -> Room:
        body = self._room_body(lesson, self._int_id(room))
        dto = self._room_dto(await self._call("POST", "room", data={"room": json.dumps(body)}))
        return self._to_room(dto, lesson)

    async def delete_room(self, lesson: Lesson, room: Room) -> None:
        await self._call("DELETE", f"room/{self._room_id(room)}")

    async def end_room(self, lesson: Lesson, room: Room) -> None:
        await self._call("GET", f"room/close/{self._room_id(room)}")

    async def join(self, lesson: Lesson, room: Room, user: User) -> JoinGrant:
        moderator = self.is_moderator(user)
        first, _, last = (user.name or user.id).partition(" ")
        om_user = {"firstname": first, "lastname": last, "externalId": user.id,
                   "externalType": self._external_type, "login": f"{self._external_type}-{user.id}"}
        if user.email:
            om_user["email"] = user.email
        if user.avatar:
            om_user["profilePictureUrl"] = user.avatar
        options = {"roomId": self._int_id(room), "moderator": moderator, "showAudioVideoTest": self._show_av_test}
        now = datetime.now(UTC).replace(microsecond=0)
        body = await self._call("POST", "user/hash",
                                data={"user": json.dumps(om_user), "options": json.dumps(options)})
        result = body.get("serviceResult") if isinstance(body, Mapping) else None
        secure = result.get("message") if isinstance(result, Mapping) else None
        if not isinstance(secure, str) or not secure:
            raise ProviderError("bad_response", "openmeetings answered no room hash", retryable=True)
        url = f"{self._base}/hash?secure={quote(secure, safe='')}"
        if self._language is not None:
            url += f"&language={self._language}"
        # A room hash is single-use and has no documented lifetime: expires_at is our own hint.
        return JoinGrant(join_url=url, token=secure, expires_at=now + timedelta(seconds=self._hash_ttl),
                         role="moderator" if moderator else "user")

    async def kick(self, lesson: Lesson, room: Room, user_id: str, participant_id: str | None = None) -> None:
        # OpenMeetings identifies users to kick by (externalType, externalId) only: the LMS user id.
        path = (f"room/kick/{self._room_id(room)}/{quote(self._external_type, safe='')}/"
                f"{quote(user_id, safe='')}")
        await self._call("GET", path)

    async def aclose(self) -> None:
        self._sid = None
