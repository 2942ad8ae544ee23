"""The Apache OpenMeetings adapter, following the provider's REST sample.

The SID is cached and reused by every call. An expired one answers HTTP 500 `error.notallowed`: log
in again and retry that call once; a second `error.notallowed` is permanent (the user lacks rights).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from bridge.polling import Attendee
from bridge.providers.base import Capability, HttpProvider, JoinGrant, Lesson, ProviderError, Room, User
from bridge.providers.openmeetings import auth, wire
from bridge.providers.openmeetings.settings import OpenMeetingsSettings

log = logging.getLogger(__name__)


class _NotAllowed(Exception):
    """HTTP 500 error.notallowed: the SID expired (or the user lacks the right)."""


class OpenMeetingsProvider(HttpProvider):
    kind = "openmeetings"
    capabilities = frozenset({Capability.ROOMS, Capability.JOIN, Capability.KICK, Capability.END_ROOM})
    settings_model = OpenMeetingsSettings
    error_fields = staticmethod(wire.error_fields)

    def __init__(self, name: str, settings: OpenMeetingsSettings, http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        self._base = settings.base_url
        self._services = f"{self._base}/services"
        self._user = settings.user
        self._password = settings.password.get_secret_value()
        self._external_type = settings.external_type
        self._room_type = settings.room_type
        self._capacity = settings.room_capacity
        self._hash_ttl = settings.hash_ttl_s
        self._language = settings.language
        self._show_av_test = settings.show_audio_video_test
        self._moderator_roles = frozenset(settings.moderator_roles)
        self.attendance_poll_s = settings.attendance_poll_s
        self._sid: str | None = None
        self._login_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<OpenMeetingsProvider name={self.name!r} base_url={self._base!r} user={self._user!r}>"

    # ---- plumbing ------------------------------------------------------------------------------

    def secrets(self) -> tuple[str, ...]:
        return (self._password, self._sid or "")

    def is_moderator(self, user: User) -> bool:
        return user.role in self._moderator_roles

    async def _checked(self, method: str, path: str, *, params: Mapping[str, Any],
                       data: Mapping[str, str] | None = None) -> Any:
        """The JSON body of a successful call; a refusal becomes ProviderError, an expired SID _NotAllowed."""
        response = await self.send(method, f"{self._services}/{path}", params=params, data=data,
                                   headers={"Accept": "application/json"}, handles=(500,))
        if response.status_code == 500:
            if wire.NOT_ALLOWED in response.text:
                raise _NotAllowed
            raise self.failure(response)
        if not response.content:
            return None
        body = self.read_json(response, "the answer")
        result = wire.service_result(body)
        if wire.is_refusal(result):
            assert result is not None
            code = str(result.get("code") or "ERROR")
            message = self.scrub(str(result.get("message") or f"OpenMeetings error {code}"))
            raise ProviderError(code, f"{self.kind}: {message}"[:500], retryable=False, status=response.status_code)
        return body

    async def _login(self) -> str:
        try:
            body = await self._checked("GET", auth.LOGIN_PATH, params=auth.login_params(self._user, self._password))
        except _NotAllowed:
            raise ProviderError(wire.NOT_ALLOWED, f"{self.kind}: login refused", retryable=False, status=500) from None
        except ProviderError as exc:
            if exc.retryable:
                raise
            raise ProviderError(exc.code, f"{self.kind}: login failed ({exc.message})"[:500], retryable=False,
                                status=exc.status) from None
        sid = auth.sid_of(body)
        if sid is None:
            raise self.unreadable("login answered no SID")
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
            try:
                return await self._checked(method, path, params={**(params or {}), "sid": sid}, data=data)
            except _NotAllowed:
                if self._sid == sid:     # drop it, unless a concurrent call already replaced it
                    self._sid = None
                if attempt == 2:
                    raise ProviderError(wire.NOT_ALLOWED, f"{self.kind}: call refused again after a fresh login "
                                        f"({wire.NOT_ALLOWED}); check the user's REST/SOAP rights",
                                        retryable=False, status=500) from None
                log.info("openmeetings session expired, logging in again", extra={"provider": self.name})
        raise AssertionError("unreachable")  # pragma: no cover

    def _room_dto(self, body: Any) -> Mapping[str, Any]:
        dto = wire.room_dto(body)
        if dto is None:
            raise self.unreadable("the answer names no room")
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
        result = wire.service_result(body)
        secure = result.get("message") if result is not None else None
        if not isinstance(secure, str) or not secure:
            raise self.unreadable("the answer has no room hash")
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

    async def attendees(self, room: Room) -> list[Attendee] | None:
        """Who is in the room now, one entry per OpenMeetings user. A user the bridge joined carries the
        LMS user id as external id; anyone else is reported by name only. A room OpenMeetings no longer
        has lists nobody (the lesson's own state says when the bridge deleted it)."""
        users = wire.user_dtos(await self._call("GET", f"room/users/{self._room_id(room)}"))
        if users is None:
            raise self.unreadable("the room users answer is not a list of users")
        return [Attendee(participant_id=str(user["id"]),
                         user_id=str(user["externalId"]) if user.get("externalType") == self._external_type
                         and user.get("externalId") else None,
                         name=" ".join(str(user.get(part) or "") for part in ("firstname", "lastname")).strip() or None,
                         role=None)
                for user in users]

    async def aclose(self) -> None:
        self._sid = None
