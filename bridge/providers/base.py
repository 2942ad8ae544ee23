"""The one interface every provider adapter implements, and the shared error model.

An adapter holds all of its provider's wire details; the router only sees these types.
Every operation must be safe to call twice (arq is at-least-once): look before you create,
and derive names and ids from the lesson, never from the clock or a random source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

import httpx

# Declared once in bridge.schema (the canonical event carries the same lesson and user); adapters import them here.
from bridge.schema.events import MODERATOR_ROLES as MODERATOR_ROLES
from bridge.schema.events import Lesson, User


class Capability(StrEnum):
    ROOMS = "rooms"              # create / update / delete room
    JOIN = "join"                # mint a join token and URL
    KICK = "kick"
    BAN_USER = "ban_user"
    BAN_TOKEN = "ban_token"
    END_ROOM = "end_room"
    DIAL_OUT = "dial_out"
    HANG_UP = "hang_up"
    RECORDING = "recording"      # provider-side recording
    STREAM_OUT = "stream_out"    # push the room's media to a URL (for the bridge's own FFmpeg recorder)


@dataclass
class Room:
    """What the bridge keeps about a provider room between jobs (stored as JSON in lesson state)."""

    id: str                      # the provider's room id (for JaaS, the room name)
    name: str
    extra: dict[str, Any] = field(default_factory=dict)   # provider-specific, JSON-serialisable


@dataclass(frozen=True)
class JoinGrant:
    join_url: str
    token: str
    expires_at: datetime         # timezone-aware UTC
    role: str                    # the provider's own role name given to this user


class SettingsError(ValueError):
    """A provider's settings are wrong; raised at start-up, names the key (never its value)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def str_setting(settings: Mapping[str, Any], key: str, default: str | None = None, *, secret: bool = False) -> str:
    """A required string setting (stripped unless it is a secret); the error names the key only."""
    value = settings.get(key, default)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SettingsError(key, "is required")
    if not isinstance(value, str):
        raise SettingsError(key, "must be a string")
    return value if secret else value.strip()


def int_setting(settings: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    """An integer setting within [lo, hi]."""
    value = settings.get(key, default)
    if isinstance(value, bool):
        raise SettingsError(key, "must be an integer")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SettingsError(key, "must be an integer") from None
    if not lo <= number <= hi:
        raise SettingsError(key, f"must be between {lo} and {hi}")
    return number


class ProviderError(Exception):
    """A provider call failed. `retryable` decides between a retry and `event.failed`.

    `code` and `message` are the provider's own (kept for the `event.failed` webhook); they must
    never contain a secret.
    """

    def __init__(self, code: str, message: str, *, retryable: bool, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class Unsupported(ProviderError):
    def __init__(self, provider_kind: str, operation: str) -> None:
        super().__init__("unsupported", f"{provider_kind} does not support {operation}", retryable=False)


class Provider:
    """Base class: every operation a provider lacks raises `Unsupported`.

    Subclasses set `kind` and `capabilities`, parse keys once in `__init__`, and use the shared
    `http` client (one per process) for every call.
    """

    kind: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def __init__(self, name: str, settings: Mapping[str, Any], http: httpx.AsyncClient) -> None:
        self.name = name
        self.http = http

    def supports(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def _unsupported(self, operation: str) -> Unsupported:
        return Unsupported(self.kind, operation)

    async def create_room(self, lesson: Lesson) -> Room:
        raise self._unsupported("create_room")

    async def update_room(self, lesson: Lesson, room: Room) -> Room:
        raise self._unsupported("update_room")

    async def delete_room(self, lesson: Lesson, room: Room) -> None:
        raise self._unsupported("delete_room")

    async def end_room(self, lesson: Lesson, room: Room) -> None:
        raise self._unsupported("end_room")

    async def join(self, lesson: Lesson, room: Room, user: User) -> JoinGrant:
        raise self._unsupported("join")

    async def kick(self, lesson: Lesson, room: Room, user_id: str, participant_id: str | None = None) -> None:
        raise self._unsupported("kick")

    async def ban_user(self, lesson: Lesson, room: Room, user_id: str) -> None:
        raise self._unsupported("ban_user")

    async def ban_token(self, lesson: Lesson, room: Room, token: str) -> None:
        raise self._unsupported("ban_token")

    async def dial_out(self, lesson: Lesson, room: Room, phone: str) -> None:
        raise self._unsupported("dial_out")

    async def hang_up(self, lesson: Lesson, room: Room, phone: str) -> None:
        raise self._unsupported("hang_up")

    async def start_recording(self, lesson: Lesson, room: Room) -> str:
        """Provider-side recording; returns the provider's recording id."""
        raise self._unsupported("start_recording")

    async def stop_recording(self, lesson: Lesson, room: Room, recording_id: str) -> None:
        raise self._unsupported("stop_recording")

    async def start_stream_out(self, lesson: Lesson, room: Room, url: str) -> str:
        """Push the room's mixed media to `url` (the bridge's recorder listens there)."""
        raise self._unsupported("start_stream_out")

    async def stop_stream_out(self, lesson: Lesson, room: Room, stream_out_id: str) -> None:
        raise self._unsupported("stop_stream_out")

    async def aclose(self) -> None:
        """Release provider-held resources (sessions); the shared http client is closed by its owner."""


def raise_for_http(kind: str, response: httpx.Response, code: str, message: str) -> None:
    """Map a failed HTTP answer to the error model: 5xx/429 retryable, other 4xx permanent."""
    status = response.status_code
    retry_after: float | None = None
    header = response.headers.get("retry-after")
    if header:
        try:
            retry_after = max(0.0, float(header))
        except ValueError:
            retry_after = None
    retryable = status >= 500 or status in (408, 429)
    raise ProviderError(code or str(status), f"{kind} HTTP {status}: {message}"[:500],
                        retryable=retryable, status=status, retry_after=retry_after)


def transport_error(kind: str, exc: httpx.TransportError) -> ProviderError:
    """Timeouts and connection errors are always retryable; the message names no URL query (secrets)."""
    return ProviderError(type(exc).__name__, f"{kind}: {type(exc).__name__}", retryable=True)
