"""The OWT MCU management API adapter. Join roles must exist in the room (`presenter` for
moderators, `viewer` otherwise by default); the recorder takes the room's mixed stream through a
streaming-out (`start_stream_out`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from bridge.polling import Attendee
from bridge.providers.base import Capability, HttpProvider, JoinGrant, Lesson, ProviderError, Room, User
from bridge.providers.owt import wire
from bridge.providers.owt.auth import MAuth
from bridge.providers.owt.settings import OwtSettings


def _invalid(code: str, problems: list[str]) -> ProviderError:
    return ProviderError(code, "; ".join(problems)[:500], retryable=False)


class OwtProvider(HttpProvider):
    kind = "owt"
    capabilities = frozenset({
        Capability.ROOMS, Capability.JOIN, Capability.KICK, Capability.END_ROOM, Capability.STREAM_OUT,
    })
    settings_model = OwtSettings
    error_fields = staticmethod(wire.error_fields)

    def __init__(self, name: str, settings: OwtSettings, http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        self.base_url = settings.base_url
        self.join_base = settings.join_url_base
        self.service_id = settings.service_id
        self.mauth = MAuth(settings.service_id, settings.service_key.get_secret_value())
        self.moderator_role = settings.moderator_role
        self.guest_role = settings.guest_role
        self.room_options = settings.room_options
        self.mix_view = settings.mix_view
        self.token_ttl_s = settings.token_ttl_s
        self.token_preference = settings.token_preference
        self.attendance_poll_s = settings.attendance_poll_s

    def __repr__(self) -> str:
        return f"<OwtProvider name={self.name!r} base_url={self.base_url!r} service_id={self.service_id!r}>"

    # ------------------------------------------------------------------ HTTP

    async def _send(self, method: str, path: str, *, json_body: Any = None, params: Mapping[str, Any] | None = None,
                    auth: tuple[str, str] | None = None, absent_ok: bool = False) -> httpx.Response | None:
        headers = {"Authorization": self.mauth.header(*(auth or (None, None)))}
        response = await self.send(method, self.base_url + path, json=json_body, params=params, headers=headers,
                                   handles=(wire.NOT_FOUND,) if absent_ok else ())
        if response.is_success:
            return response
        code, message = self.error_of(response)
        if code in wire.ABSENT_CODES:
            return None     # already gone: the repeat of a delete/drop/stop is done
        raise self.failure(response, code, message)

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._send(method, path, **kwargs)
        if response is None:
            return None
        return self.read_json(response, f"the answer to {method} {path.split('?')[0]}")

    @staticmethod
    def _room_path(room: Room | str, *rest: str) -> str:
        room_id = room.id if isinstance(room, Room) else room
        return "/v1/rooms/" + "/".join(quote(part, safe="") for part in (room_id, *rest))

    def _id_of(self, data: Any, what: str) -> str:
        if isinstance(data, dict):
            value = data.get("id", data.get("_id"))
            if isinstance(value, str) and value:
                return value
        raise self.unreadable(f"the {what} answer has no id")

    # ------------------------------------------------------------------ rooms

    async def list_rooms(self) -> list[dict[str, Any]]:
        """Every room of the service, page by page (bounded)."""
        rooms: list[dict[str, Any]] = []
        seen: set[str] = set()
        for page in range(1, wire.MAX_PAGES + 1):
            batch = await self._json("GET", "/v1/rooms", params={"page": page, "per_page": wire.PAGE_SIZE})
            if not isinstance(batch, list):
                raise self.unreadable("the room list is not a list")
            fresh = [r for r in batch if isinstance(r, dict) and str(r.get("_id")) not in seen]
            rooms.extend(fresh)
            seen.update(str(r.get("_id")) for r in fresh)
            if len(batch) < wire.PAGE_SIZE or len(batch) > wire.PAGE_SIZE or not fresh:
                break      # last page, or a server that ignores pagination
        return rooms

    async def find_room(self, name: str) -> dict[str, Any] | None:
        matches = [r for r in await self.list_rooms() if r.get("name") == name]
        return min(matches, key=lambda r: str(r.get("_id"))) if matches else None

    def _options_for(self, lesson: Lesson, options: Mapping[str, Any] | None) -> dict[str, Any]:
        merged = {**self.room_options, **(options or {})}
        problems = wire.validate_room_options(merged)
        if problems:
            raise _invalid("invalid_room_options", problems)
        return merged

    def _room_from(self, data: Any) -> Room:
        if not isinstance(data, dict) or not data.get("_id") or not isinstance(data.get("name"), str):
            raise self.unreadable("the room answer has no _id/name")
        return Room(id=str(data["_id"]), name=data["name"])

    async def create_room(self, lesson: Lesson, options: Mapping[str, Any] | None = None) -> Room:
        """Find the room named after the lesson, else create it (validated options, nothing sent if bad)."""
        body_options = self._options_for(lesson, options)
        existing = await self.find_room(lesson.room_name)
        if existing is not None:
            return self._room_from(existing)
        body: dict[str, Any] = {"name": lesson.room_name}
        if body_options:
            body["options"] = body_options
        return self._room_from(await self._json("POST", "/v1/rooms", json_body=body))

    async def update_room(self, lesson: Lesson, room: Room, options: Mapping[str, Any] | None = None) -> Room:
        """Replace the room's configuration (settings' room_options + `options` or room.extra['options'])."""
        extra = options if options is not None else room.extra.get("options")
        body = {"name": room.name or lesson.room_name, **self._options_for(lesson, extra)}
        data = await self._json("PUT", self._room_path(room), json_body=body, absent_ok=True)
        if data is None:        # deleted behind our back: look again by name, else recreate
            return await self.create_room(lesson, extra)
        updated = self._room_from(data)
        return Room(id=updated.id, name=updated.name, extra=dict(room.extra))

    async def delete_room(self, lesson: Lesson, room: Room) -> None:
        await self._send("DELETE", self._room_path(room), absent_ok=True)

    async def end_room(self, lesson: Lesson, room: Room) -> None:
        """Drop everyone (the room itself stays, so the lesson can start again)."""
        participants = await self.list_participants(room, absent_ok=True)
        for participant in participants:
            await self.drop_participant(room, self._id_of(participant, "participant"))

    # ------------------------------------------------------------------ tokens

    async def join(self, lesson: Lesson, room: Room, user: User) -> JoinGrant:
        if not user.id:
            raise ProviderError("invalid_user", "a join token needs the LMS user id", retryable=False)
        role = self.moderator_role if user.is_moderator else self.guest_role
        body = {"preference": self.token_preference, "user": user.id, "role": role}
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=self.token_ttl_s)
        response = await self._send("POST", self._room_path(room, "tokens"), json_body=body,
                                    auth=(user.id, role))
        assert response is not None
        token = self.check_token(response.text)
        url = f"{self.join_base}/?room={quote(room.id, safe='')}&token={quote(token, safe='')}"
        return JoinGrant(join_url=url, token=token, expires_at=expires_at, role=role)

    def check_token(self, text: str) -> str:
        token = wire.token_of(text)
        if token is None:
            raise self.unreadable("the token is not base64 of a JSON object with tokenId, host and signature",
                                  code="bad_token")
        return token

    # ------------------------------------------------------------------ participants

    async def _items(self, room: Room, collection: str, *, absent_ok: bool) -> list[dict[str, Any]] | None:
        """GET a room's collection (participants, streams, streaming-outs) as a list of objects; None
        when the room is gone and `absent_ok`."""
        data = await self._json("GET", self._room_path(room, collection), absent_ok=absent_ok)
        if data is None:
            return None
        if not isinstance(data, list):
            raise self.unreadable(f"the {collection} list is not a list")
        return [item for item in data if isinstance(item, dict)]

    async def _list(self, room: Room, collection: str, *, absent_ok: bool = False) -> list[dict[str, Any]]:
        return await self._items(room, collection, absent_ok=absent_ok) or []

    async def list_participants(self, room: Room, *, absent_ok: bool = False) -> list[dict[str, Any]]:
        return await self._list(room, "participants", absent_ok=absent_ok)

    async def attendees(self, room: Room) -> list[Attendee] | None:
        """Who is in the room now (one entry per connection), None when the room is gone. `user` is
        the LMS user id the bridge minted the join token for; OWT knows no display names."""
        participants = await self._items(room, "participants", absent_ok=True)
        if participants is None:
            return None
        return [Attendee(participant_id=str(p["id"]), user_id=str(p["user"]) if p.get("user") else None, name=None,
                         role="moderator" if p.get("role") == self.moderator_role else "guest")
                for p in participants if p.get("id")]

    async def drop_participant(self, room: Room, participant_id: str) -> None:
        await self._send("DELETE", self._room_path(room, "participants", participant_id), absent_ok=True)

    async def kick(self, lesson: Lesson, room: Room, user_id: str, participant_id: str | None = None) -> None:
        if participant_id:
            await self.drop_participant(room, participant_id)
            return
        if not user_id:
            raise ProviderError("invalid_participant", "no participant to kick", retryable=False)
        for participant in await self.list_participants(room, absent_ok=True):
            if str(participant.get("user")) == user_id:
                await self.drop_participant(room, self._id_of(participant, "participant"))

    # ------------------------------------------------------------------ streams

    async def list_streams(self, room: Room) -> list[dict[str, Any]]:
        return await self._list(room, "streams")

    async def _mixed_stream(self, room: Room) -> str:
        """The room's mixed stream for `mix_view` (it exists once the room is running)."""
        mixed = [s for s in await self.list_streams(room) if s.get("type") == "mixed"]
        preferred = [s for s in mixed if (s.get("info") or {}).get("label") == self.mix_view]
        chosen = (preferred or mixed or [None])[0]
        if chosen is None:
            raise ProviderError("no_mixed_stream", "the room has no mixed stream yet (nobody has joined)",
                                retryable=True, retry_after=10.0)
        return self._id_of(chosen, "stream")

    # ------------------------------------------------------------------ streaming-outs

    async def list_stream_outs(self, room: Room) -> list[dict[str, Any]]:
        return await self._list(room, "streaming-outs")

    async def start_stream_out(self, lesson: Lesson, room: Room, url: str) -> str:
        """Push the room's mixed stream to `url`; an existing streaming-out to the same URL is reused."""
        parts = urlsplit(url or "")
        if not parts.scheme or not parts.netloc:
            raise _invalid("invalid_request", ["url: must be an absolute URL (rtmp://, rtsp://, ...)"])
        for existing in await self.list_stream_outs(room):
            if existing.get("url") == url:
                return self._id_of(existing, "streaming-out")
        mix = await self._mixed_stream(room)
        body = {"url": url, "media": {"audio": {"from": mix}, "video": {"from": mix}}}
        return self._id_of(await self._json("POST", self._room_path(room, "streaming-outs"), json_body=body),
                           "streaming-out")

    async def stop_stream_out(self, lesson: Lesson, room: Room, stream_out_id: str) -> None:
        await self._send("DELETE", self._room_path(room, "streaming-outs", stream_out_id), absent_ok=True)
