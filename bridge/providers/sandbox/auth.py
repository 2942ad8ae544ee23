"""Sandbox join tokens: HS256 JWTs naming the room, signed with the sandbox's `secret`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import jwt


def join_token(secret: str, user_id: str, name: str, room: str, role: str, now: datetime, expires_at: datetime) -> str:
    return jwt.encode({"sub": user_id, "name": name, "room": room, "role": role,
                       "iat": now, "nbf": now, "exp": expires_at}, secret, algorithm="HS256")


def verify_join(secret: str, room: str, token: str) -> dict[str, Any]:
    """The claims of a join token minted for `room`; raises jwt.InvalidTokenError."""
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    if claims.get("room") != room:
        raise jwt.InvalidTokenError("the token is for another room")
    return claims
