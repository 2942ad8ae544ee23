"""JaaS tokens: RS256 JWTs with header `kid = "<appId>/<keyId>"` and claims `aud = "jitsi"`, `iss = "chat"`,
`sub = appId`, signed by PyJWT with the key object the settings loaded once.

Participant tokens carry `room` and `context.user{id,name,email,avatar,moderator}`; `moderator` and
every `context.features` value are the strings "true"/"false", and features are only given to
moderators (JaaS ignores them for anyone else). The admin token (`admin: true`) authorises the REST
calls; it is minted once and reused until shortly before it expires.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from bridge.providers.base import User

NBF_SKEW_S = 10              # nbf a little in the past: the provider's clock may be behind ours
ADMIN_REFRESH_MARGIN_S = 300  # mint a new admin token this long before the cached one expires


def flag(value: bool) -> str:
    return "true" if value else "false"


class Signer:
    def __init__(self, app_id: str, kid: str, key: RSAPrivateKey, token_ttl_s: int, admin_token_ttl_s: int,
                 moderator_features: dict[str, str]) -> None:
        self.app_id, self.kid, self._key = app_id, kid, key
        self._headers = {"kid": kid}
        self.token_ttl_s, self.admin_token_ttl_s = token_ttl_s, admin_token_ttl_s
        self._features = moderator_features
        self._admin_token: str | None = None
        self._admin_expires = 0.0

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._key, algorithm="RS256", headers=self._headers)

    def participant_claims(self, room_name: str, user: User, now: int) -> dict[str, Any]:
        moderator = user.is_moderator
        context: dict[str, Any] = {"user": {
            "id": user.id, "name": user.name or user.id, "email": user.email, "avatar": user.avatar,
            "moderator": flag(moderator),
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

    @property
    def has_admin_token(self) -> bool:
        return self._admin_token is not None
