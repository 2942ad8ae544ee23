"""The BlendVision One chatroom adapter: one chatroom per lesson, chatroom tokens for joins.

To find a lesson's chatroom again it looks for the lesson's tag (GET chatrooms, paged, bounded)
before creating. The provider document covers neither deleting nor ending chatrooms nor kicking:
those raise Unsupported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import jwt

from bridge.providers.base import Capability, HttpProvider, JoinGrant, Lesson, Room, User
from bridge.providers.blendvision import auth, wire
from bridge.providers.blendvision.settings import BlendVisionSettings

log = logging.getLogger(__name__)


class BlendVisionProvider(HttpProvider):
    kind = "blendvision"
    capabilities = frozenset({Capability.ROOMS, Capability.JOIN})
    settings_model = BlendVisionSettings
    error_fields = staticmethod(wire.error_fields)

    def __init__(self, name: str, settings: BlendVisionSettings, http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        self._api_base = settings.api_base
        self._api_token = settings.api_token.get_secret_value().strip()
        self._org_id = settings.org_id
        self._guest_role = settings.guest_role
        self._join_template = settings.join_url_template
        self._page_size = settings.page_size
        self._max_pages = settings.max_lookup_pages
        self._headers = auth.headers(self._api_token, self._org_id)      # the same on every call

    def __repr__(self) -> str:
        return f"<BlendVisionProvider name={self.name!r} api_base={self._api_base!r} org_id={self._org_id!r}>"

    def secrets(self) -> tuple[str, ...]:
        return (self._api_token,)

    def role_for(self, user: User) -> str:
        return wire.ADMIN_ROLE if user.is_moderator else self._guest_role

    async def _request(self, method: str, path: str, *, json: Any = None,
                       params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        response = await self.send(method, f"{self._api_base}{path}", headers=self._headers, json=json, params=params)
        if not response.content:
            return {}
        body = self.read_json(response, "the answer")
        if not isinstance(body, dict):
            raise self.unreadable("the answer is not a JSON object", response.status_code)
        return body

    def _to_room(self, chatroom: Mapping[str, Any], lesson: Lesson) -> Room:
        return Room(id=str(chatroom["id"]), name=lesson.room_name,
                    extra={"tag": wire.tag_of(lesson.room_name), "status": chatroom.get("status", "")})

    async def _find(self, tag: str) -> Mapping[str, Any] | None:
        for page in range(1, self._max_pages + 1):
            body = await self._request("GET", wire.CHATROOMS, params={"page": page, "page_size": self._page_size})
            items = body.get("chatrooms") or []
            for chatroom in items:
                if wire.has_tag(chatroom, tag):
                    return chatroom
            if len(items) < self._page_size:
                return None
        log.warning("blendvision chatroom lookup stopped at max_lookup_pages", extra={"provider": self.name})
        return None

    async def create_room(self, lesson: Lesson) -> Room:
        tag = wire.tag_of(lesson.room_name)
        found = await self._find(tag)
        if found is not None:
            return self._to_room(found, lesson)
        created = await self._request("POST", wire.CHATROOMS, json={"custom_counters": [{"key": tag}]})
        chatroom = wire.chatroom_of(created)
        if chatroom is None:
            raise self.unreadable("the answer names no chatroom id")
        return self._to_room(chatroom, lesson)

    async def update_room(self, lesson: Lesson, room: Room) -> Room:
        # A chatroom carries nothing derived from the lesson but its tag, which never changes.
        return Room(id=room.id, name=room.name, extra=dict(room.extra))

    async def join(self, lesson: Lesson, room: Room, user: User) -> JoinGrant:
        role = self.role_for(user)
        body: dict[str, Any] = {"role": role, "subject": user.id}
        if user.name:
            body["name"] = user.name
        now = datetime.now(UTC).replace(microsecond=0)
        data = await self._request("POST", f"{wire.CHATROOMS}/{quote(room.id, safe='')}/tokens", json=body)
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise self.unreadable("the answer has no chatroom token")
        join_url = self._join_template.format(chatroom_id=quote(room.id, safe=""), token=token, role=role,
                                              user_id=quote(user.id, safe=""))
        return JoinGrant(join_url=join_url, token=token, expires_at=self._expiry(now, data.get("expires_in"), token),
                         role=role)

    def _expiry(self, now: datetime, expires_in: Any, token: str) -> datetime:
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
            return now + timedelta(seconds=int(expires_in))
        try:    # no lifetime in the answer: the token's own exp claim (we cannot verify it, only read it)
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        except jwt.PyJWTError:
            exp = None
        if isinstance(exp, int | float):
            return datetime.fromtimestamp(int(exp), UTC)
        raise self.unreadable("the chatroom token has no expiry")
