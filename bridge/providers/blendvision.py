"""BlendVision One chatroom adapter: one chatroom per lesson, chatroom tokens for joins.

Wire facts (see ../shared/provider-docs/blendvision-chatroom-token.txt and DESIGN.md):
- Every call carries `Authorization: Bearer <api_token>` and `x-bv-org-id: <org_id>`.
- Tokens: `POST /bv/chatroom/v1/chatrooms/{id}/tokens` with `{role, subject, name}` answers
  `{token, expires_in, refresh_token, refresh_expires_in}`; roles ROLE_ADMIN (moderators) and
  ROLE_VIEWER or ROLE_GUEST (everyone else, configurable).
- Refresh: `POST /bv/chatroom/v1/chatrooms/tokens:refresh` `{refresh_token}` -> `{token, expires_in}`;
  it needs no authorization header (BlendVision's public API reference).
- Errors are gRPC-gateway shaped: `{"code": <gRPC code>, "message": ..., "details": [...]}`.

Chatrooms have no name or external id a caller can set, so to find a lesson's chatroom again the
adapter tags it at creation with a custom counter keyed `lesson-bridge:<room name>` and looks for
that key (GET /bv/chatroom/v1/chatrooms, paged, bounded) before creating. The provider document
covers neither deleting nor ending chatrooms nor kicking: those raise Unsupported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
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

DEFAULT_API_BASE = "https://api.one.blendvision.com"
GUEST_ROLES = ("ROLE_VIEWER", "ROLE_GUEST")
ADMIN_ROLE = "ROLE_ADMIN"
TAG_PREFIX = "lesson-bridge:"
CHATROOMS = "/bv/chatroom/v1/chatrooms"


class BlendVisionProvider(Provider):
    kind = "blendvision"
    capabilities = frozenset({Capability.ROOMS, Capability.JOIN})

    def __init__(self, name: str, settings: Mapping[str, Any], http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        api_base = str_setting(settings, "api_base", DEFAULT_API_BASE)
        if not api_base.startswith(("http://", "https://")):
            raise SettingsError("api_base", "must be an http(s) URL")
        self._api_base = api_base.rstrip("/")
        self._api_token = str_setting(settings, "api_token", secret=True).strip()
        self._org_id = str_setting(settings, "org_id")
        self._guest_role = str_setting(settings, "guest_role", "ROLE_VIEWER").upper()
        if self._guest_role not in GUEST_ROLES:
            raise SettingsError("guest_role", f"must be one of {list(GUEST_ROLES)}")
        self._join_template = settings.get("join_url_template", "")
        if not isinstance(self._join_template, str):
            raise SettingsError("join_url_template", "must be a string")
        try:
            self._join_template.format(chatroom_id="", token="", role="", user_id="")
        except (KeyError, IndexError, ValueError):
            raise SettingsError("join_url_template",
                                "placeholders are {chatroom_id} {token} {role} {user_id}") from None
        self._page_size = int_setting(settings, "page_size", 100, 1, 1000)
        self._max_pages = int_setting(settings, "max_lookup_pages", 50, 1, 10000)
        # Prepared once: the same headers go on every authorised call.
        self._headers = {"Authorization": f"Bearer {self._api_token}", "x-bv-org-id": self._org_id,
                         "Accept": "application/json"}

    def __repr__(self) -> str:
        return f"<BlendVisionProvider name={self.name!r} api_base={self._api_base!r} org_id={self._org_id!r}>"

    # ---- plumbing ------------------------------------------------------------------------------

    def role_for(self, user: User) -> str:
        return ADMIN_ROLE if user.is_moderator else self._guest_role

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_token, "***") if self._api_token else text

    async def _request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                       auth: bool = True) -> dict[str, Any]:
        headers = self._headers if auth else {"Accept": "application/json"}
        try:
            response = await self.http.request(method, f"{self._api_base}{path}", json=json, params=params,
                                               headers=headers)
        except httpx.TransportError as exc:
            raise transport_error(self.kind, exc) from None
        if not response.is_success:
            self._fail(response)
        if not response.content:
            return {}
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ProviderError("bad_response", "blendvision answered an unexpected body", retryable=True,
                                status=response.status_code)
        return body

    def _fail(self, response: httpx.Response) -> NoReturn:
        code, message = "", response.reason_phrase or ""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping):       # gRPC-gateway: {"code": 3, "message": "...", "details": [...]}
            if body.get("code") is not None:
                code = str(body["code"])
            if body.get("message"):
                message = str(body["message"])
        elif response.text:
            message = response.text[:200]
        raise_for_http(self.kind, response, code, self._scrub(message))
        raise AssertionError("raise_for_http returned")  # pragma: no cover

    @staticmethod
    def _tag(lesson: Lesson) -> str:
        return f"{TAG_PREFIX}{lesson.room_name}"

    @staticmethod
    def _chatroom(body: Mapping[str, Any]) -> Mapping[str, Any]:
        chatroom = body.get("chatroom", body)
        if not isinstance(chatroom, Mapping) or not chatroom.get("id"):
            raise ProviderError("bad_response", "blendvision answered no chatroom id", retryable=True)
        return chatroom

    def _to_room(self, chatroom: Mapping[str, Any], lesson: Lesson) -> Room:
        return Room(id=str(chatroom["id"]), name=lesson.room_name,
                    extra={"tag": self._tag(lesson), "status": chatroom.get("status", "")})

    async def _find(self, tag: str) -> Mapping[str, Any] | None:
        for page in range(1, self._max_pages + 1):
            body = await self._request("GET", CHATROOMS, params={"page": page, "page_size": self._page_size})
            items = body.get("chatrooms") or []
            for chatroom in items:
                counters = (chatroom.get("custom_counters") or []) if isinstance(chatroom, Mapping) else []
                if any(isinstance(c, Mapping) and c.get("key") == tag for c in counters):
                    return chatroom
            if len(items) < self._page_size:
                return None
        log.warning("blendvision chatroom lookup stopped at max_lookup_pages", extra={"provider": self.name})
        return None

    # ---- operations ----------------------------------------------------------------------------

    async def create_room(self, lesson: Lesson) -> Room:
        tag = self._tag(lesson)
        found = await self._find(tag)
        if found is not None:
            return self._to_room(found, lesson)
        body = await self._request("POST", CHATROOMS, json={"custom_counters": [{"key": tag}]})
        return self._to_room(self._chatroom(body), lesson)

    async def update_room(self, lesson: Lesson, room: Room) -> Room:
        # A chatroom carries nothing derived from the lesson but its tag, which never changes.
        return Room(id=room.id, name=room.name, extra=dict(room.extra))

    async def join_with_refresh(self, lesson: Lesson, room: Room, user: User) -> tuple[JoinGrant, str, datetime | None]:
        """Join, also returning the refresh token and its expiry (for a caller that keeps them)."""
        role = self.role_for(user)
        body: dict[str, Any] = {"role": role, "subject": user.id}
        if user.name:
            body["name"] = user.name
        now = datetime.now(UTC).replace(microsecond=0)
        data = await self._request("POST", f"{CHATROOMS}/{quote(room.id, safe='')}/tokens", json=body)
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise ProviderError("bad_response", "blendvision answered no chatroom token", retryable=True)
        expires_at = self._expiry(now, data.get("expires_in"), token)
        join_url = self._join_template.format(chatroom_id=quote(room.id, safe=""), token=token, role=role,
                                              user_id=quote(user.id, safe=""))
        refresh = data.get("refresh_token") or ""
        refresh_in = data.get("refresh_expires_in")
        refresh_at = now + timedelta(seconds=int(refresh_in)) if isinstance(refresh_in, int) and refresh_in > 0 \
            else None
        return JoinGrant(join_url=join_url, token=token, expires_at=expires_at, role=role), refresh, refresh_at

    async def join(self, lesson: Lesson, room: Room, user: User) -> JoinGrant:
        grant, _, _ = await self.join_with_refresh(lesson, room, user)
        return grant

    async def refresh_token(self, refresh_token: str) -> tuple[str, datetime]:
        """A new chatroom token from a refresh token (no authorization header, per BlendVision)."""
        now = datetime.now(UTC).replace(microsecond=0)
        data = await self._request("POST", f"{CHATROOMS}/tokens:refresh", json={"refresh_token": refresh_token},
                                   auth=False)
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise ProviderError("bad_response", "blendvision answered no chatroom token", retryable=True)
        return token, self._expiry(now, data.get("expires_in"), token)

    @staticmethod
    def _expiry(now: datetime, expires_in: Any, token: str) -> datetime:
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
            return now + timedelta(seconds=int(expires_in))
        try:    # no lifetime in the answer: the token's own exp claim (we cannot verify it, only read it)
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        except jwt.PyJWTError:
            exp = None
        if isinstance(exp, int | float):
            return datetime.fromtimestamp(int(exp), UTC)
        raise ProviderError("bad_response", "blendvision token has no expiry", retryable=True)
