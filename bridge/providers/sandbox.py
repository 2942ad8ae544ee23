"""A provider that needs no account: rooms live in memory, join tokens are HS256 JWTs.

It is the default provider so that `bridge dev` does something visible on a machine with no
provider credentials, and plugin developers can exercise every event type.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import jwt

from bridge.providers.base import Capability, JoinGrant, Lesson, Provider, Room, User


class SandboxProvider(Provider):
    kind = "sandbox"
    # Everything but streaming out: in listen mode a plugin developer pushes to the handed-out URL herself.
    capabilities = frozenset(Capability) - {Capability.STREAM_OUT}

    def __init__(self, name: str, settings: Mapping[str, Any], http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        self._secret = str(settings.get("secret", "sandbox-only-secret-not-for-production-use"))
        self._join_base = str(settings.get("join_base", "http://127.0.0.1:8000/sandbox")).rstrip("/")
        self._token_ttl = timedelta(seconds=int(settings.get("token_ttl_s", 3600)))
        # Simulated provider latency, for plugin developers and for crash tests with jobs in flight.
        self._delay_s = float(settings.get("delay_s", 0))

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
        token = jwt.encode(
            {"sub": user.id, "name": user.name, "room": room.id, "role": role,
             "iat": now, "nbf": now, "exp": expires_at},
            self._secret, algorithm="HS256",
        )
        return JoinGrant(join_url=f"{self._join_base}/{quote(room.id)}?token={token}", token=token,
                         expires_at=expires_at, role=role)

    def verify_join(self, room: str, token: str) -> dict[str, Any]:
        """The claims of a join token this provider minted for `room`; raises jwt.InvalidTokenError."""
        claims = jwt.decode(token, self._secret, algorithms=["HS256"])
        if claims.get("room") != room:
            raise jwt.InvalidTokenError("the token is for another room")
        return claims

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

    async def start_recording(self, lesson: Lesson, room: Room) -> str:
        return f"sandbox-rec-{room.id}"

    async def stop_recording(self, lesson: Lesson, room: Room, recording_id: str) -> None:
        return None
