"""100ms tokens: HS256 JWTs signed with the app secret, claims {access_key, type, version 2, iat, nbf,
exp, jti}. The management token (type "management") goes in `Authorization: Bearer` on every API call;
an app token (type "app", plus room_id, user_id, role) is a join, minted locally with no call."""

from __future__ import annotations

import time
import uuid

import jwt

MANAGEMENT_MARGIN_S = 300     # a new management token this long before the cached one expires


def _token(secret: bytes, access_key: str, kind: str, ttl_s: int, **claims: str) -> tuple[str, int]:
    issued = int(time.time())
    expires = issued + ttl_s
    token = jwt.encode({"access_key": access_key, **claims, "type": kind, "version": 2, "iat": issued,
                        "nbf": issued, "exp": expires, "jti": str(uuid.uuid4())}, secret, algorithm="HS256")
    return token, expires


class ManagementToken:
    """The cached management token; a new one only when the cached one is near expiry."""

    def __init__(self, secret: bytes, access_key: str, ttl_s: int) -> None:
        self._secret, self._access_key, self._ttl_s = secret, access_key, ttl_s
        self._token: str | None = None
        self._expires = 0.0

    def current(self) -> str:
        if self._token is None or time.time() >= self._expires - MANAGEMENT_MARGIN_S:
            self._token, expires = _token(self._secret, self._access_key, "management", self._ttl_s)
            self._expires = float(expires)
        return self._token


def app_token(secret: bytes, access_key: str, ttl_s: int, room_id: str, user_id: str, role: str) -> tuple[str, int]:
    """A join token and its expiry (unix seconds)."""
    return _token(secret, access_key, "app", ttl_s, room_id=room_id, user_id=user_id, role=role)
