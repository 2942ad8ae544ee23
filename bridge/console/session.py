"""The console's sign-in session: a signed, expiring cookie, and the CSRF token derived from it.

The signing key is derived from BRIDGE_ADMIN_TOKEN, so rotating the token signs everybody out.
Nothing is stored server-side: the cookie carries its session id, the operator's name and its expiry,
signed with HMAC-SHA256 and compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "lb_console"
COOKIE_PATH = "/console"
SESSION_S = 8 * 3600                 # one working shift
MAX_NAME = 60


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    sid: str
    name: str
    expires_at: float


class SessionSigner:
    def __init__(self, admin_token: str) -> None:
        self._key = hmac.new(admin_token.encode(), b"lesson-bridge console session v1", hashlib.sha256).digest()
        self._token = admin_token.encode()

    def token_matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode(), self._token)

    def _mac(self, message: bytes) -> bytes:
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def issue(self, name: str, *, lifetime_s: float = SESSION_S, now: float | None = None) -> tuple[Session, str]:
        """A new session and its cookie value (a negative lifetime makes an expired one, for tests)."""
        session = Session(secrets.token_urlsafe(12), name.strip()[:MAX_NAME] or "operator",
                          (now or time.time()) + lifetime_s)
        body = _b64(json.dumps({"sid": session.sid, "name": session.name, "exp": session.expires_at}).encode())
        return session, f"{body}.{_b64(self._mac(body.encode()))}"

    def read(self, value: str | None, *, now: float | None = None) -> tuple[Session | None, str]:
        """The session a cookie value holds, or None and why: missing, invalid or expired."""
        if not value:
            return None, "missing"
        body, _, mac = value.partition(".")
        try:
            genuine = hmac.compare_digest(_unb64(mac), self._mac(body.encode()))
            fields = json.loads(_unb64(body)) if genuine else None
            session = Session(str(fields["sid"]), str(fields["name"]), float(fields["exp"])) if fields else None
        except (ValueError, KeyError, TypeError):
            return None, "invalid"
        if session is None:
            return None, "invalid"
        if session.expires_at <= (now or time.time()):
            return None, "expired"
        return session, "ok"

    def csrf_token(self, session: Session) -> str:
        return _b64(self._mac(f"csrf:{session.sid}".encode()))

    def csrf_matches(self, session: Session, offered: str) -> bool:
        return hmac.compare_digest(offered.encode(), self.csrf_token(session).encode())


def came_over_https(request: Request) -> bool:
    """Directly, or through a PaaS router that terminates TLS and says so in X-Forwarded-Proto."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def set_cookie(response: Response, request: Request, value: str, max_age: int = SESSION_S) -> None:
    response.set_cookie(COOKIE, value, max_age=max_age, path=COOKIE_PATH, httponly=True, samesite="strict",
                        secure=came_over_https(request))


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=came_over_https(request))
