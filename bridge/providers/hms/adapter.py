"""The 100ms adapter. The template is provisioned once per process (looked up by name, created or
its roles fixed to match config) unless `template_id` names one the operator manages. Recording is
not covered by the provider document we follow, so it stays Unsupported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from bridge.providers.base import Capability, HttpProvider, JoinGrant, Lesson, Room, User
from bridge.providers.hms import auth, wire
from bridge.providers.hms.settings import HmsSettings

log = logging.getLogger(__name__)


class HmsProvider(HttpProvider):
    kind = "100ms"
    capabilities = frozenset({Capability.ROOMS, Capability.JOIN, Capability.KICK, Capability.END_ROOM})
    settings_model = HmsSettings
    error_fields = staticmethod(wire.error_fields)

    def __init__(self, name: str, settings: HmsSettings, http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        self._access_key = settings.access_key
        secret = settings.app_secret.get_secret_value()
        self._app_secret = secret.encode()          # HS256 key, prepared once
        self._secrets = (secret, self._access_key)  # scrubbed from any provider text we pass on
        self._api_base = settings.api_base
        self._policy_base = settings.policy_base
        self._join_base = settings.join_base
        self._join_template = settings.join_url_template
        self._token_ttl = settings.token_ttl_s
        self._management = auth.ManagementToken(self._app_secret, self._access_key, settings.management_token_ttl_s)
        self.teacher_role = settings.teacher_role
        self.student_role = settings.student_role
        self._template_id = settings.template_id
        self.template_name = settings.template
        self._region = settings.region
        self.roles = settings.template_roles
        self._provision_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<HmsProvider name={self.name!r} api_base={self._api_base!r} template={self.template_name!r}>"

    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def management_token(self) -> str:
        return self._management.current()

    def role_for(self, user: User) -> str:
        return self.teacher_role if user.is_moderator else self.student_role

    async def _request(self, method: str, url: str, *, json: Any = None, params: Mapping[str, str] | None = None,
                       ok_statuses: tuple[int, ...] = ()) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.management_token()}", "Accept": "application/json"}
        return await self.send(method, url, headers=headers, json=json, params=params, handles=ok_statuses)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        body = self.read_json(response, "the answer")
        if not isinstance(body, dict):
            raise self.unreadable("the answer is not a JSON object", response.status_code)
        return body

    # ---- template and roles (policy API) -------------------------------------------------------

    async def ensure_template(self) -> str:
        """Look up the template by name; create it, or fix its roles, to match config. Once per process."""
        if self._template_id is not None:
            return self._template_id
        async with self._provision_lock:
            if self._template_id is not None:
                return self._template_id
            url = f"{self._policy_base}{wire.TEMPLATES_PATH}"
            found = await self._request("GET", url, params={"name": self.template_name}, ok_statuses=(404,))
            template = self._find_template(found) if found.status_code != 404 else None
            if template is None:
                body: dict[str, Any] = {"name": self.template_name, "roles": self.roles}
                if self._region:
                    body["settings"] = {"region": self._region}
                created = self._json(await self._request("POST", url, json=body))
                template_id = str(created.get("id") or "")
                if not template_id:
                    raise self.unreadable("the template create answer has no id")
                log.info("100ms template created", extra={"provider": self.name, "template": self.template_name})
            else:
                template_id = str(template["id"])
                existing_roles = template.get("roles") or {}
                for role_name, role in self.roles.items():
                    if not wire.contains(existing_roles.get(role_name), role):
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
        data = self._json(await self._request("POST", f"{self._api_base}{wire.ROOMS_PATH}", json=body))
        if "id" not in data:
            raise self.unreadable("the room create answer has no id")
        if data.get("enabled") is False:   # disabled by an earlier delete: a new schedule revives it
            data = self._json(await self._request("POST", self._room_url(str(data["id"])), json={"enabled": True}))
        return self._room_from(data, lesson)

    def _room_url(self, room_id: str) -> str:
        return f"{self._api_base}{wire.ROOMS_PATH}/{quote(room_id, safe='')}"

    async def update_room(self, lesson: Lesson, room: Room) -> Room:
        data = self._json(await self._request("POST", self._room_url(room.id),
                                              json={"description": lesson.title[:500]}))
        return self._room_from(data, lesson)

    async def delete_room(self, lesson: Lesson, room: Room) -> None:
        # 100ms rooms cannot be deleted: disabling is the documented end state. Gone already = done.
        await self._request("POST", self._room_url(room.id), json={"enabled": False}, ok_statuses=(404,))

    def _active_url(self, room_id: str, action: str) -> str:
        return f"{self._api_base}{wire.ACTIVE_ROOMS_PATH}/{quote(room_id, safe='')}/{action}"

    async def end_room(self, lesson: Lesson, room: Room) -> None:
        # 404 = no active session: the room is already ended.
        await self._request("POST", self._active_url(room.id, "end-room"),
                            json={"reason": "The lesson has ended", "lock": False}, ok_statuses=(404,))

    async def join(self, lesson: Lesson, room: Room, user: User) -> JoinGrant:
        role = self.role_for(user)
        token, expires = auth.app_token(self._app_secret, self._access_key, self._token_ttl, room.id, user.id, role)
        expires_at = datetime.fromtimestamp(expires, UTC)
        join_url = self._join_template.format(
            join_base=self._join_base, room_id=quote(room.id, safe=""), room_name=quote(room.name, safe=""),
            role=quote(role, safe=""), token=token, user_id=quote(user.id, safe=""),
            user_name=quote(user.name or user.id, safe=""))
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
