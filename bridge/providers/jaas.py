"""JaaS (8x8 Jitsi as a Service) adapter.

Wire facts (../shared/provider-docs/jaas-conference-commands.md and the JaaS JWT guide):
- Every token is an RS256 JWT with header ``kid = "<appId>/<keyId>"`` and claims ``aud = "jitsi"``,
  ``iss = "chat"``, ``sub = appId``.
- Participant tokens carry ``room`` and ``context.user{id,name,email,avatar,moderator}``; ``moderator``
  and every ``context.features`` value are the strings ``"true"``/``"false"``, and features are only
  given to moderators (they are ignored for anyone else).
- Rooms are implicit: a room exists while someone is in it, so ``create_room`` makes no call.
- Conference commands (``DESTROY``, ``KICK_PARTICIPANT``, ``DIAL_OUT_PARTICIPANT``, ``HANG_UP_CALL``)
  are ``POST /v1/_jaas/conference-commands/v1/meeting`` with ``{"action", "payload": {...}}`` and an
  admin JWT (``admin: true``); bans are ``POST /v1/_jaas/jaccess/v1/access-management/{appId}/ban/...``.
  ``conferenceFullName = "<room>@conference.<appId>.8x8.vc"``.

The private key is parsed once here (PyJWT re-parses a PEM string on every call: ~30 signs/s, while a
loaded key object signs ~4,000/s), and tokens are signed with the loaded key directly over a header
segment encoded once, so a join costs little more than the RSA signature (bench/tokens.py). The admin
token is minted once and reused until shortly before it expires.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bridge.providers.base import (
    Capability,
    JoinGrant,
    Lesson,
    Provider,
    ProviderError,
    Room,
    SettingsError,
    User,
    raise_for_http,
    transport_error,
)

DEFAULT_API_BASE = "https://8x8.vc"
DEFAULT_JOIN_BASE = "https://8x8.vc"
COMMANDS_PATH = "/v1/_jaas/conference-commands/v1/meeting"
ACCESS_PATH = "/v1/_jaas/jaccess/v1/access-management"

# Features JaaS understands (its JWT guide); given to moderators only. Overridable with `features`.
DEFAULT_MODERATOR_FEATURES: dict[str, bool] = {
    "livestreaming": True,
    "recording": True,
    "transcription": True,
    "outbound-call": True,
    "sip-outbound-call": False,
}

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
PHONE_SEPARATORS = re.compile(r"[\s().-]")
APP_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
NBF_SKEW_S = 10              # nbf a little in the past: the provider's clock may be behind ours
ADMIN_REFRESH_MARGIN_S = 300  # mint a new admin token this long before the cached one expires
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@functools.lru_cache(maxsize=4096)
def _path_segment(value: str) -> str:
    return quote(value, safe="")


def normalise_phone(phone: str) -> str:
    """Strip common separators and check E.164 (``+`` then 2-15 digits, no leading 0).

    Raises a permanent ProviderError ``invalid_phone``: the number is wrong, retrying will not help.
    """
    cleaned = PHONE_SEPARATORS.sub("", phone or "")
    if not E164.match(cleaned):
        raise ProviderError("invalid_phone", "phone number is not in E.164 form (+<country><number>)",
                            retryable=False)
    return cleaned


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _http_url(settings: Mapping[str, Any], key: str, default: str) -> str:
    value = settings.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(key, "must be a non-empty URL string")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(key, "must be an http(s) URL")
    return value.strip().rstrip("/")


def _load_private_key(settings: Mapping[str, Any]) -> RSAPrivateKey:
    pem = settings.get("private_key")
    path = settings.get("private_key_file")
    if pem and path:
        raise SettingsError("private_key", "set private_key or private_key_file, not both")
    if path:
        if not isinstance(path, str):
            raise SettingsError("private_key_file", "must be a file path string")
        try:
            data = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise SettingsError("private_key_file", f"cannot read the file ({type(exc).__name__})") from None
        key_name = "private_key_file"
    elif pem:
        if not isinstance(pem, str):
            raise SettingsError("private_key", "must be a PEM string")
        if "\\n" in pem and "\n" not in pem.strip():
            pem = pem.replace("\\n", "\n")    # a PEM squeezed onto one line in an env var
        data = pem.strip().encode()
        key_name = "private_key"
    else:
        raise SettingsError("private_key", "required (a PEM string), or set private_key_file")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # Never chain the parser's exception: keep the key material out of every traceback.
        raise SettingsError(key_name, "not a readable unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise SettingsError(key_name, "must be an RSA private key (JaaS signs with RS256)")
    if key.key_size < 2048:
        raise SettingsError(key_name, "RSA key must be at least 2048 bits")
    return key


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    """JaaS error bodies are not documented: accept the common JSON shapes, else the text."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text.strip()[:200]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("code") or ""), str(err.get("message") or "")
        code = body.get("code") or body.get("errorCode") or (err if isinstance(err, str) else "")
        message = (body.get("message") or body.get("error_description") or body.get("detail")
                   or (err if isinstance(err, str) else ""))
        return str(code or ""), str(message or "")
    return "", str(body)[:200]


def raise_provider_error(kind: str, response: httpx.Response) -> None:
    code, message = _error_fields(response)
    try:
        raise_for_http(kind, response, code, message or response.reason_phrase)
    except ProviderError as exc:
        if exc.retry_after is None and response.headers.get("retry-after"):
            # Retry-After may also be an HTTP date.
            try:
                when = parsedate_to_datetime(response.headers["retry-after"])
                exc.retry_after = max(0.0, (when - datetime.now(UTC)).total_seconds())
            except (TypeError, ValueError):
                pass
        raise


class JaasProvider(Provider):
    kind = "jaas"
    capabilities = frozenset({
        Capability.ROOMS, Capability.JOIN, Capability.KICK, Capability.BAN_USER, Capability.BAN_TOKEN,
        Capability.END_ROOM, Capability.DIAL_OUT, Capability.HANG_UP,
    })

    def __init__(self, name: str, settings: Mapping[str, Any], http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        app_id = settings.get("app_id")
        if not isinstance(app_id, str) or not APP_ID_RE.match(app_id):
            raise SettingsError("app_id", "required: the JaaS AppID (letters, digits, '-' and '_')")
        key_id = settings.get("key_id")
        if not isinstance(key_id, str) or not key_id.strip():
            raise SettingsError("key_id", "required: the API key id shown in the JaaS console")
        key_id = key_id.strip()
        if key_id.startswith(app_id + "/"):
            key_id = key_id[len(app_id) + 1:]     # accept the full kid as well
        if not key_id or "/" in key_id:
            raise SettingsError("key_id", "must be the key id alone, or '<app_id>/<key_id>'")
        self.app_id: str = app_id
        self.kid = f"{app_id}/{key_id}"
        self._key = _load_private_key(settings)
        self.api_base = _http_url(settings, "api_base", DEFAULT_API_BASE)
        self.join_base = _http_url(settings, "join_base", DEFAULT_JOIN_BASE)
        self.token_ttl_s = self._positive_int(settings, "token_ttl_s", 3600, maximum=7 * 86400)
        self.admin_token_ttl_s = self._positive_int(settings, "admin_token_ttl_s", 3600, maximum=86400)
        features = settings.get("features", DEFAULT_MODERATOR_FEATURES)
        if not isinstance(features, Mapping) or not all(
                isinstance(k, str) and (isinstance(v, bool) or v in ("true", "false"))
                for k, v in features.items()):
            raise SettingsError("features", "must be a table of feature name = true/false")
        self._features = {k: (v if isinstance(v, str) else _flag(v)) for k, v in features.items()}
        # RS256 JWS = b64url(header) "." b64url(claims) "." b64url(RSASSA-PKCS1-v1_5-SHA256 signature).
        # The header never changes: encode it once (join tokens are minted on the hot path).
        header = {"alg": "RS256", "kid": self.kid, "typ": "JWT"}
        self._header_segment = _b64url(json.dumps(header, separators=(",", ":")).encode())
        self._admin_token: str | None = None
        self._admin_expires = 0.0
        self._commands_url = self.api_base + COMMANDS_PATH
        self._access_url = f"{self.api_base}{ACCESS_PATH}/{_path_segment(self.app_id)}"
        self._join_prefix = f"{self.join_base}/{_path_segment(self.app_id)}/"

    @staticmethod
    def _positive_int(settings: Mapping[str, Any], key: str, default: int, *, maximum: int) -> int:
        value = settings.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise SettingsError(key, "must be a whole number of seconds")
        try:
            number = int(value)
        except ValueError:
            raise SettingsError(key, "must be a whole number of seconds") from None
        if not 60 <= number <= maximum:
            raise SettingsError(key, f"must be between 60 and {maximum} seconds")
        return number

    def __repr__(self) -> str:
        return f"<JaasProvider name={self.name!r} app_id={self.app_id!r} kid={self.kid!r}>"

    # ------------------------------------------------------------------ tokens

    def sign(self, claims: dict[str, Any]) -> str:
        """An RS256 JWT with header {alg, kid, typ} (what PyJWT makes, without re-encoding the header)."""
        signing_input = self._header_segment + b"." + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        signature = self._key.sign(signing_input, _PKCS1V15, _SHA256)
        return (signing_input + b"." + _b64url(signature)).decode()

    def conference_full_name(self, room_name: str) -> str:
        return f"{room_name}@conference.{self.app_id}.8x8.vc"

    def participant_claims(self, room_name: str, user: User, now: int) -> dict[str, Any]:
        moderator = user.is_moderator
        context: dict[str, Any] = {"user": {
            "id": user.id, "name": user.name or user.id, "email": user.email, "avatar": user.avatar,
            "moderator": _flag(moderator),
        }}
        if moderator:
            context["features"] = dict(self._features)
        return {"aud": "jitsi", "iss": "chat", "sub": self.app_id, "room": room_name,
                "nbf": now - NBF_SKEW_S, "exp": now + self.token_ttl_s, "context": context}

    def admin_token(self, *, force: bool = False) -> str:
        """The cached admin JWT; a new one shortly before expiry (or when forced after a 401)."""
        now = time.time()
        if not force and self._admin_token and now < self._admin_expires - ADMIN_REFRESH_MARGIN_S:
            return self._admin_token
        issued = int(now)
        expires = issued + self.admin_token_ttl_s
        # jti: a re-mint after a refusal must differ (RS256 signatures are deterministic).
        claims = {"aud": "jitsi", "iss": "chat", "sub": self.app_id, "admin": True,
                  "nbf": issued - NBF_SKEW_S, "exp": expires, "jti": uuid.uuid4().hex}
        self._admin_token = self.sign(claims)
        self._admin_expires = float(expires)
        return self._admin_token

    # ------------------------------------------------------------------ HTTP

    async def _post(self, url: str, body: Mapping[str, Any] | None, *, absent_ok: bool = False) -> None:
        """POST with the admin token; one re-mint and retry if a cached token is refused (401)."""
        for attempt in range(2):
            cached = self._admin_token is not None and attempt == 0
            token = self.admin_token(force=attempt > 0)
            headers = {"Authorization": f"Bearer {token}", "Accept": "*/*"}
            try:
                response = await self.http.post(url, json=body, headers=headers)
            except httpx.TransportError as exc:
                raise transport_error(self.kind, exc) from exc
            if response.status_code == 401 and cached:
                continue
            if response.is_success:
                return
            if absent_ok and response.status_code == 404:
                return     # the meeting / participant / call is already gone: the job is done
            raise_provider_error(self.kind, response)
        raise AssertionError("unreachable")   # pragma: no cover

    async def _command(self, action: str, room_name: str, **payload: str) -> None:
        body = {"action": action,
                "payload": {"conferenceFullName": self.conference_full_name(room_name), **payload}}
        await self._post(self._commands_url, body, absent_ok=action != "DIAL_OUT_PARTICIPANT")

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
        now = int(time.time())
        claims = self.participant_claims(room.id, user, now)
        token = self.sign(claims)
        url = f"{self._join_prefix}{_path_segment(room.id)}?jwt={token}"
        return JoinGrant(join_url=url, token=token,
                         expires_at=datetime.fromtimestamp(claims["exp"], UTC),
                         role="moderator" if user.is_moderator else "participant")

    async def end_room(self, lesson: Lesson, room: Room) -> None:
        await self._command("DESTROY", room.id)

    async def kick(self, lesson: Lesson, room: Room, user_id: str, participant_id: str | None = None) -> None:
        target = participant_id or user_id
        if not target:
            raise ProviderError("invalid_participant", "no participant to kick", retryable=False)
        await self._command("KICK_PARTICIPANT", room.id, participantId=target)

    async def dial_out(self, lesson: Lesson, room: Room, phone: str) -> None:
        await self._command("DIAL_OUT_PARTICIPANT", room.id, phoneNo=normalise_phone(phone))

    async def hang_up(self, lesson: Lesson, room: Room, phone: str) -> None:
        await self._command("HANG_UP_CALL", room.id, phoneNo=normalise_phone(phone))

    async def ban_user(self, lesson: Lesson, room: Room, user_id: str) -> None:
        if not user_id:
            raise ProviderError("invalid_user", "no user id to ban", retryable=False)
        await self._post(f"{self._access_url}/ban/user/{_path_segment(user_id)}", None)

    async def ban_token(self, lesson: Lesson, room: Room, token: str) -> None:
        if not token or token.count(".") != 2:
            raise ProviderError("invalid_token", "the token to ban is not a JWT", retryable=False)
        await self._post(f"{self._access_url}/ban/jwt", {"jwt": token})
