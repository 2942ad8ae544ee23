"""The JaaS adapter. Rooms are implicit (a room exists while someone is in it), so `create_room` makes
no call; joins are tokens minted locally; ending, kicking, dialling and banning are REST calls with
the admin token."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from bridge.providers.base import Capability, HttpProvider, JoinGrant, Lesson, ProviderError, Room, User
from bridge.providers.jaas import auth, wire
from bridge.providers.jaas.settings import JaasSettings


@functools.lru_cache(maxsize=4096)
def _path_segment(value: str) -> str:
    return quote(value, safe="")


class JaasProvider(HttpProvider):
    kind = "jaas"
    capabilities = frozenset({
        Capability.ROOMS, Capability.JOIN, Capability.KICK, Capability.BAN_USER, Capability.BAN_TOKEN,
        Capability.END_ROOM, Capability.DIAL_OUT, Capability.HANG_UP,
    })
    settings_model = JaasSettings
    error_fields = staticmethod(wire.error_fields)

    def __init__(self, name: str, settings: JaasSettings, http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        self.app_id = settings.app_id
        self.kid = settings.kid
        self.api_base = settings.api_base
        self.join_base = settings.join_base
        features = {k: (v if isinstance(v, str) else auth.flag(v)) for k, v in settings.features.items()}
        self._signer = auth.Signer(self.app_id, self.kid, settings.signing_key, settings.token_ttl_s,
                                   settings.admin_token_ttl_s, features)
        self._commands_url = self.api_base + wire.COMMANDS_PATH
        self._access_url = f"{self.api_base}{wire.ACCESS_PATH}/{_path_segment(self.app_id)}"
        self._join_prefix = f"{self.join_base}/{_path_segment(self.app_id)}/"

    def __repr__(self) -> str:
        return f"<JaasProvider name={self.name!r} app_id={self.app_id!r} kid={self.kid!r}>"

    def admin_token(self, *, force: bool = False) -> str:
        return self._signer.admin_token(force=force)

    async def _post(self, url: str, body: Mapping[str, Any] | None, *, absent_ok: bool = False) -> None:
        """POST with the admin token; one re-mint and retry if a cached token is refused (401)."""
        for attempt in range(2):
            cached = self._signer.has_admin_token and attempt == 0
            headers = {"Authorization": f"Bearer {self.admin_token(force=attempt > 0)}", "Accept": "*/*"}
            response = await self.send("POST", url, json=body, headers=headers, handles=(401, 404))
            if response.status_code == 401 and cached:
                continue
            if response.is_success or (absent_ok and response.status_code == 404):
                return     # 404: the meeting / participant / call is already gone, the job is done
            raise self.failure(response)
        raise AssertionError("unreachable")   # pragma: no cover

    async def _command(self, action: str, room_name: str, **payload: str) -> None:
        await self._post(self._commands_url, wire.command(action, room_name, self.app_id, **payload),
                         absent_ok=action != "DIAL_OUT_PARTICIPANT")

    # ------------------------------------------------------------------ operations

    async def create_room(self, lesson: Lesson) -> Room:
        return Room(id=lesson.room_name, name=lesson.room_name, extra={"title": lesson.title})

    async def update_room(self, lesson: Lesson, room: Room) -> Room:
        return Room(id=room.id, name=room.name, extra={**room.extra, "title": lesson.title})

    async def delete_room(self, lesson: Lesson, room: Room) -> None:
        return None      # implicit rooms: nothing to delete (ending a live meeting is end_room)

    async def join(self, lesson: Lesson, room: Room, user: User) -> JoinGrant:
        if not user.id:
            raise ProviderError("invalid_user", "a join token needs the LMS user id", retryable=False)
        claims = self._signer.participant_claims(room.id, user, int(time.time()))
        token = self._signer.sign(claims)
        url = f"{self._join_prefix}{_path_segment(room.id)}?jwt={token}"
        return JoinGrant(join_url=url, token=token, expires_at=datetime.fromtimestamp(claims["exp"], UTC),
                         role="moderator" if user.is_moderator else "participant")

    async def end_room(self, lesson: Lesson, room: Room) -> None:
        await self._command("DESTROY", room.id)

    async def kick(self, lesson: Lesson, room: Room, user_id: str, participant_id: str | None = None) -> None:
        target = participant_id or user_id
        if not target:
            raise ProviderError("invalid_participant", "no participant to kick", retryable=False)
        await self._command("KICK_PARTICIPANT", room.id, participantId=target)

    async def dial_out(self, lesson: Lesson, room: Room, phone: str) -> None:
        await self._command("DIAL_OUT_PARTICIPANT", room.id, phoneNo=wire.normalise_phone(phone))

    async def hang_up(self, lesson: Lesson, room: Room, phone: str) -> None:
        await self._command("HANG_UP_CALL", room.id, phoneNo=wire.normalise_phone(phone))

    async def ban_user(self, lesson: Lesson, room: Room, user_id: str) -> None:
        if not user_id:
            raise ProviderError("invalid_user", "no user id to ban", retryable=False)
        await self._post(f"{self._access_url}/ban/user/{_path_segment(user_id)}", None)

    async def ban_token(self, lesson: Lesson, room: Room, token: str) -> None:
        if not token or token.count(".") != 2:
            raise ProviderError("invalid_token", "the token to ban is not a JWT", retryable=False)
        await self._post(f"{self._access_url}/ban/jwt", {"jwt": token})
