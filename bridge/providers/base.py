"""The one interface every provider adapter implements, the shared error model, the base of every
provider's declared settings, and the HTTP base every adapter of an HTTP API stands on.

An adapter holds all of its provider's wire details; the router only sees these types.
Every operation must be safe to call twice (arq is at-least-once): look before you create,
and derive names and ids from the lesson, never from the clock or a random source.

The HTTP base owns sending (with a whole-exchange deadline), turning a failed answer into a
ProviderError, keeping secrets out of its text, reading Retry-After, and what an unreadable answer
means; an adapter supplies only its auth and how its error body reads.

An unreadable answer (a success status whose body is not the JSON the API documents: a proxy's
maintenance page, a body cut short by a restarting server) is retryable for every provider. Every
operation is safe to repeat and retries are bounded, so a retry costs a little time while a
permanent failure would turn a passing glitch into `event.failed`, and the call may well have taken
effect at the provider even though its answer could not be read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, SecretStr, ValidationError

# Declared once in bridge.schema (the canonical event carries the same lesson and user); adapters import them here.
from bridge.schema.events import MODERATOR_ROLES as MODERATOR_ROLES
from bridge.schema.events import Lesson, User

# A whole provider exchange, body included (bridge/http_transport.py enforces it): a hanging provider
# API frees its job slot by then.
PROVIDER_DEADLINE_S = 20.0
# The longest wait a Retry-After header can impose on a provider call or an outbound webhook: an hour
# covers any real rate-limit window, and a bogus header (a date next year) cannot park a job for good.
RETRY_AFTER_MAX_S = 3600.0


class Capability(StrEnum):
    ROOMS = "rooms"              # create / update / delete room
    JOIN = "join"                # mint a join token and URL
    KICK = "kick"
    BAN_USER = "ban_user"
    BAN_TOKEN = "ban_token"
    END_ROOM = "end_room"
    DIAL_OUT = "dial_out"
    HANG_UP = "hang_up"
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


def _problem(error: Mapping[str, Any]) -> str:
    if error["type"] == "missing":
        return "is required"
    if error["type"] == "extra_forbidden":
        return "is not a setting of this provider"
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])       # our own check's words, without pydantic's prefix
    return str(error["msg"])


class ProviderSettings(BaseModel):
    """The base of every provider's declared settings: an unknown key is an error, and values are
    checked once, before the adapter is built."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Self:
        """Validated settings; the first problem as a SettingsError naming the key, never the value."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors(include_url=False, include_input=False)[0]
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, SettingsError):     # a check that names its own (deeper or other) key
                raise SettingsError(cause.key, cause.problem) from None
            key = ".".join(str(part) for part in error["loc"]) or "settings"
            raise SettingsError(key, _problem(error)) from None


def _whole_number(value: Any) -> Any:
    if isinstance(value, bool):          # pydantic would read true as 1
        raise ValueError("must be a whole number")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    return value.strip().rstrip("/")


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("is required")
    return value.strip()


def _secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("is required")
    return value


def format_template(*placeholders: str) -> AfterValidator:
    """Checks a setting that is a str.format template naming only these placeholders."""
    def check(value: str) -> str:
        try:
            value.format(**dict.fromkeys(placeholders, ""))
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"placeholders are {' '.join('{' + p + '}' for p in placeholders)}") from None
        return value
    return AfterValidator(check)


# Setting types shared by the providers' settings models.
Secret = Annotated[SecretStr, AfterValidator(_secret)]   # non-empty, kept as given, hidden from repr
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Text = Annotated[str, AfterValidator(_text)]           # non-empty, stripped


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


def retry_after_seconds(header: str | None, now: datetime | None = None) -> float | None:
    """The wait a `Retry-After` header asks for, delta-seconds or an HTTP date, at most RETRY_AFTER_MAX_S.

    None when the header is absent or unreadable; a date already past is 0.
    """
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:           # "-0000": HTTP dates are always GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_MAX_S)


class Provider:
    """Base class: every operation a provider lacks raises `Unsupported`.

    Subclasses set `kind`, `capabilities` and `settings_model` (what they are built from), and use
    the shared `http` client (one per process) for every call.
    """

    kind: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    settings_model: ClassVar[type[ProviderSettings]] = ProviderSettings

    def __init__(self, name: str, settings: ProviderSettings, http: httpx.AsyncClient) -> None:
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

    async def start_stream_out(self, lesson: Lesson, room: Room, url: str) -> str:
        """Push the room's mixed media to `url` (the bridge's recorder listens there)."""
        raise self._unsupported("start_stream_out")

    async def stop_stream_out(self, lesson: Lesson, room: Room, stream_out_id: str) -> None:
        raise self._unsupported("stop_stream_out")

    async def aclose(self) -> None:
        """Release provider-held resources (sessions); the shared http client is closed by its owner."""


class HttpProvider(Provider):
    """A provider behind an HTTP API. A subclass passes its auth to `send` (headers, query) and says
    how its error body reads (`error_fields`) and which values no error text may carry (`secrets`)."""

    def secrets(self) -> Iterable[str]:
        return ()

    @staticmethod
    def error_fields(body: Any) -> tuple[str, str]:
        """(code, message) from a parsed JSON error body; empty strings for what it does not say."""
        return "", ""

    def scrub(self, text: str) -> str:
        for secret in self.secrets():
            if secret:
                text = text.replace(secret, "***")
        return text

    async def send(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                   params: Mapping[str, Any] | None = None, json: Any = None, data: Mapping[str, str] | None = None,
                   handles: tuple[int, ...] = ()) -> httpx.Response:
        """One exchange within PROVIDER_DEADLINE_S. A success, or a status in `handles` (the caller's to
        read: "already gone", "log in again"), is returned; anything else raises a ProviderError."""
        try:
            response = await self.http.request(method, url, headers=headers, params=params, json=json, data=data,
                                               extensions={"deadline_s": PROVIDER_DEADLINE_S})
        except httpx.TransportError as exc:
            # Always retryable; the message names no URL (its query may carry a secret).
            raise ProviderError(type(exc).__name__, f"{self.kind}: {type(exc).__name__}", retryable=True) from None
        if response.is_success or response.status_code in handles:
            return response
        raise self.failure(response)

    def error_of(self, response: httpx.Response) -> tuple[str, str]:
        """The provider's (code, message) for a failed answer, the body's text when it says nothing."""
        try:
            code, message = self.error_fields(response.json())
        except ValueError:
            code, message = "", ""
        return code, message or response.text.strip()[:200] or response.reason_phrase

    def failure(self, response: httpx.Response, code: str | None = None, message: str | None = None
                ) -> ProviderError:
        """A failed answer as the error model: 5xx, 408 and 429 retryable (after Retry-After), other 4xx permanent."""
        if code is None or message is None:
            code, message = self.error_of(response)
        status = response.status_code
        return ProviderError(self.scrub(code or str(status)), self.scrub(f"{self.kind} HTTP {status}: {message}")[:500],
                             retryable=status >= 500 or status in (408, 429), status=status,
                             retry_after=retry_after_seconds(response.headers.get("retry-after")))

    def unreadable(self, problem: str, status: int | None = None, code: str = "bad_response") -> ProviderError:
        """An answer that is not what the API documents: retryable (the module's docstring says why)."""
        return ProviderError(code, f"{self.kind}: {problem}", retryable=True, status=status)

    def read_json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise self.unreadable(f"{what} is not JSON", response.status_code) from None
