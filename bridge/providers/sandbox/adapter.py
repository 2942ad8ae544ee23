"""The sandbox adapter: every operation succeeds at once (after `delay_s`), nothing leaves the process.

It is the default provider so that `bridge dev` does something visible on a machine with no
provider credentials, and plugin developers can exercise every event type.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from bridge.providers.base import Capability, JoinGrant, Lesson, Provider, Room, User
from bridge.providers.sandbox import auth
from bridge.providers.sandbox.settings import SandboxSettings


class SandboxProvider(Provider):
    kind = "sandbox"
    # Everything but streaming out: in listen mode a plugin developer pushes to the handed-out URL herself.
    capabilities = frozenset(Capability) - {Capability.STREAM_OUT}
    settings_model = SandboxSettings

    def __init__(self, name: str, settings: SandboxSettings, http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        self._secret = settings.secret.get_secret_value()
        self._join_base = settings.join_base
        self._token_ttl = timedelta(seconds=settings.token_ttl_s)
        self._delay_s = settings.delay_s

    async def _latency(self) -> None:
        if self._delay_s:
            await asyncio.sleep(self._delay_s)

    async def create_room(self, lesson: Lesson) -> Room:
        await self._latency()
        return Room(id=lesson.room_name, name=lesson.room_name, extra={"title": lesson.title})

    async def update_room(self, lesson: Lesson, room: Room) -> Room:
        return Room(id=room.id, name=room.name, extra={**room.extra, "title": lesson.title})

    async def delete_room(self, lesson: Lesson, room: Room) -> None:
        return None

    async def end_room(self, lesson: Lesson, room: Room) -> None:
        return None

    async def join(self, lesson: Lesson, room: Room, user: User) -> JoinGrant:
        await self._latency()
        now = datetime.now(UTC).replace(microsecond=0)
        expires_at = now + self._token_ttl
        role = "moderator" if user.is_moderator else "guest"
        token = auth.join_token(self._secret, user.id, user.name, room.id, role, now, expires_at)
        return JoinGrant(join_url=f"{self._join_base}/{quote(room.id)}?token={token}", token=token,
                         expires_at=expires_at, role=role)

    def verify_join(self, room: str, token: str) -> dict[str, Any]:
        """The claims of a join token this provider minted for `room`; raises jwt.InvalidTokenError."""
        return auth.verify_join(self._secret, room, token)

    async def kick(self, lesson: Lesson, room: Room, user_id: str, participant_id: str | None = None) -> None:
        return None

    async def ban_user(self, lesson: Lesson, room: Room, user_id: str) -> None:
        return None

    async def ban_token(self, lesson: Lesson, room: Room, token: str) -> None:
        return None

    async def dial_out(self, lesson: Lesson, room: Room, phone: str) -> None:
        return None

    async def hang_up(self, lesson: Lesson, room: Room, phone: str) -> None:
        return None
