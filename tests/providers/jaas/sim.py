"""A strict local JaaS simulator: conference commands and access management, with failure injection.

It checks what the real service checks: the admin JWT is verified with the registered PUBLIC key
(RS256, known ``kid``, ``aud``/``iss``, ``exp``/``nbf``, ``admin: true``, ``sub`` = the AppID), the
``conferenceFullName`` names this AppID, and each command's body is validated per the JaaS doc.

Usage::

    sim = JaasSim("vpaas-magic-cookie-abc")
    sim.add_key("vpaas-magic-cookie-abc/k1", private_key.public_key())
    with serve(sim.app) as base_url: ...          # tests/fakes/server.py
    sim.inject(503, times=2)                       # the next two calls answer 503 (tests/fakes/injection.py)
    sim.join(token)                                # a participant joins with a join token
    sim.outbox.send(http, url)                     # the webhooks so far (signed), in any order, any number of times

Webhooks: with a `webhook_secret`, the simulator keeps what JaaS would send (ROOM_CREATED at a room's
first join, PARTICIPANT_JOINED/LEFT per connection, LEFT `kicked` for a kick, ROOM_DESTROYED,
RECORDING_UPLOADED from `recording_uploaded`) in `outbox`, signed at sending time:
`X-Jaas-Signature: t=<unix s>,v1=base64(HMAC-SHA256(secret, "<t>.<body>"))`.

Injected answers come before any auth check (the call is still logged in `requests`); with no `body`, an
error status gets JaaS's own error shape ``{"status", "error", "message"}`` and a success an empty body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.injection import InjectionMixin
from tests.fakes.provider_webhooks import Outbox

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
CONFERENCE = re.compile(r"^(?P<room>[^@\s]+)@conference\.(?P<app>[A-Za-z0-9_-]+)\.8x8\.vc$")
ACTIONS = {"DESTROY", "KICK_PARTICIPANT", "DIAL_OUT_PARTICIPANT", "HANG_UP_CALL"}


class SimError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class JaasSim(InjectionMixin):
    """State + a Starlette `app`. Thread-safe enough for one test at a time (the app runs in a thread)."""

    def __init__(self, app_id: str, keys: dict[str, Any] | None = None, *, leeway_s: int = 30,
                 webhook_secret: str = "jaas-webhook-secret", webhook_authorization: str | None = None) -> None:
        self.app_id = app_id
        self.keys: dict[str, Any] = dict(keys or {})
        self.leeway_s = leeway_s
        self.webhook_secret, self.webhook_authorization = webhook_secret, webhook_authorization
        self.outbox = Outbox(self.webhook_headers)
        self._init_injection()
        self.reset()
        self.app = Starlette(routes=[
            Route("/v1/_jaas/conference-commands/v1/meeting", self._meeting, methods=["POST"]),
            Route("/v1/_jaas/jaccess/v1/access-management/{app_id}/ban/user/{user_id}",
                  self._ban_user, methods=["POST"]),
            Route("/v1/_jaas/jaccess/v1/access-management/{app_id}/ban/jwt", self._ban_jwt,
                  methods=["POST"]),
        ])

    # ------------------------------------------------------------------ test helpers

    def reset(self) -> None:
        self.clear_injections()
        with self._lock:
            self.calls.clear()
            self.requests: list[dict[str, Any]] = []        # every request seen (method, path, auth, body)
            self.commands: list[dict[str, Any]] = []        # accepted commands
            self.conferences: dict[str, set[str]] = {}      # room -> participant ids present
            self.dialled: dict[str, set[str]] = {}          # room -> phone numbers dialled out
            self.banned_users: set[str] = set()
            self.banned_jwts: set[str] = set()
            self.destroyed: list[str] = []
            self.sessions: dict[str, str] = {}              # room -> its running session id
            self.connections: dict[str, dict[str, dict[str, Any]]] = {}   # room -> participantId -> user
            self.outbox.events.clear()

    def add_key(self, kid: str, public_key: Any) -> None:
        self.keys[kid] = public_key

    def verify(self, token: str, *, admin: bool) -> dict[str, Any]:
        """Verify a JaaS JWT like the service does; raises SimError(401/403)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise SimError(401, "UNAUTHORIZED", "malformed token") from None
        if header.get("alg") != "RS256":
            raise SimError(401, "UNAUTHORIZED", "token must be RS256")
        kid = header.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None or not kid.startswith(self.app_id + "/"):
            raise SimError(401, "UNAUTHORIZED", "unknown kid")
        try:
            claims = jwt.decode(token, key, algorithms=["RS256"], audience="jitsi", issuer="chat",
                                leeway=self.leeway_s, options={"require": ["exp", "nbf", "aud", "iss", "sub"]})
        except jwt.ExpiredSignatureError:
            raise SimError(401, "UNAUTHORIZED", "token expired") from None
        except jwt.PyJWTError as exc:
            raise SimError(401, "UNAUTHORIZED", f"invalid token: {type(exc).__name__}") from None
        if claims.get("sub") != self.app_id:
            raise SimError(403, "FORBIDDEN", "sub is not this AppID")
        if admin and claims.get("admin") is not True:
            raise SimError(403, "FORBIDDEN", "admin claim required")
        return claims

    def verify_participant_token(self, token: str) -> dict[str, Any]:
        claims = self.verify(token, admin=False)
        user = claims.get("context", {}).get("user", {})
        if not isinstance(claims.get("room"), str) or not user.get("id"):
            raise SimError(401, "UNAUTHORIZED", "participant token needs room and context.user.id")
        if user.get("moderator") not in (None, "true", "false", True, False):
            raise SimError(401, "UNAUTHORIZED", "moderator must be 'true' or 'false'")
        return claims

    def join(self, token: str) -> str:
        """A participant joins with its token (each call is one connection: a tab); returns the participant
        id commands use (= context.user.id)."""
        claims = self.verify_participant_token(token)
        user = claims["context"]["user"]
        user_id = str(user["id"])
        if user_id in self.banned_users or token in self.banned_jwts:
            raise SimError(403, "FORBIDDEN", "banned")
        room = claims["room"]
        connection = uuid.uuid4().hex[:8]
        with self._lock:
            self.conferences.setdefault(room, set()).add(user_id)
            if room not in self.sessions:
                self.sessions[room] = str(uuid.uuid4())
                self._webhook("ROOM_CREATED", room, {"conference": self._conference(room), "isBreakout": False})
            self.connections.setdefault(room, {})[connection] = user
            self._webhook("PARTICIPANT_JOINED", room, {
                "moderator": str(user.get("moderator", False)).lower(), "name": user.get("name", ""),
                "email": user.get("email", ""), "id": user_id, "participantJid": f"{user_id}@meet.jitsi/{connection}",
                "participantId": connection, "isBreakout": False})
        return user_id

    def leave(self, room: str, user_id: str) -> None:
        """Every connection of the user leaves the room (closes the tab, loses the network)."""
        with self._lock:
            self._leave(room, user_id, "left")

    def recording_uploaded(self, room: str, link: str, duration_s: int) -> dict[str, Any]:
        with self._lock:
            return self._webhook("RECORDING_UPLOADED", room, {
                "durationSec": duration_s, "preAuthenticatedLink": link, "initiatorId": "sim"})

    def _leave(self, room: str, user_id: str, reason: str) -> None:
        members = self.connections.get(room, {})
        for connection, user in list(members.items()):
            if str(user["id"]) == user_id:
                del members[connection]
                self._webhook("PARTICIPANT_LEFT", room, {
                    "moderator": str(user.get("moderator", False)).lower(), "name": user.get("name", ""),
                    "id": user_id, "participantJid": f"{user_id}@meet.jitsi/{connection}",
                    "participantId": connection, "disconnectReason": reason, "isBreakout": False})
        self.conferences.get(room, set()).discard(user_id)

    def _conference(self, room: str) -> str:
        return f"{room}@conference.{self.app_id}.8x8.vc"

    def _webhook(self, event_type: str, room: str, data: dict[str, Any]) -> dict[str, Any]:
        return self.outbox.add({
            "idempotencyKey": str(uuid.uuid4()), "customerId": self.app_id.rsplit("-", 1)[-1], "appId": self.app_id,
            "eventType": event_type, "sessionId": self.sessions.get(room, ""), "timestamp": self.outbox.now_ms(),
            "fqn": f"{self.app_id}/{room}", "data": data})

    def sign(self, body: bytes, t: int | None = None, secret: str | None = None) -> str:
        """The X-Jaas-Signature header JaaS sends for this body (at time t, by default now)."""
        t = int(time.time()) if t is None else t
        digest = hmac.new((secret or self.webhook_secret).encode(), f"{t}.".encode() + body, hashlib.sha256).digest()
        return f"t={t},v1={base64.b64encode(digest).decode()}"

    def webhook_headers(self, body: bytes) -> dict[str, str]:
        headers = {"X-Jaas-Signature": self.sign(body)}
        if self.webhook_authorization is not None:
            headers["Authorization"] = self.webhook_authorization
        return headers

    # ------------------------------------------------------------------ HTTP plumbing

    @staticmethod
    def _injected_body(status: int) -> dict[str, Any] | None:
        """What an injected answer without a `body` carries: JaaS's error shape, or nothing on success."""
        return {"status": status, "error": "INJECTED", "message": f"injected {status}"} if status >= 400 else None

    @staticmethod
    def _error(exc: SimError) -> JSONResponse:
        return JSONResponse({"status": exc.status, "error": exc.code, "message": exc.message},
                            status_code=exc.status)

    async def _record(self, request: Request) -> None:
        body_bytes = await request.body()
        with self._lock:
            self.requests.append({"method": request.method, "path": request.url.path,
                                  "auth": request.headers.get("authorization", ""),
                                  "body": body_bytes.decode("utf-8", "replace"), "at": time.time()})

    async def _authorised(self, request: Request) -> dict[str, Any]:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise SimError(401, "UNAUTHORIZED", "Bearer token required")
        return self.verify(auth[len("Bearer "):], admin=True)

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise SimError(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json")
        try:
            body = await request.json()
        except ValueError:
            raise SimError(400, "BAD_REQUEST", "body is not JSON") from None
        if not isinstance(body, dict):
            raise SimError(400, "BAD_REQUEST", "body must be a JSON object")
        return body

    async def _handle(self, request: Request, handler: Any) -> Response:
        await self._record(request)
        injected = await self._intercept(request.method, request.url.path, self._injected_body)
        if injected is not None:
            return injected
        try:
            claims = await self._authorised(request)
            return await handler(request, claims)
        except SimError as exc:
            return self._error(exc)

    # ------------------------------------------------------------------ endpoints

    async def _meeting(self, request: Request) -> Response:
        return await self._handle(request, self._do_meeting)

    async def _do_meeting(self, request: Request, claims: dict[str, Any]) -> Response:
        body = await self._json(request)
        action = body.get("action")
        payload = body.get("payload")
        if action not in ACTIONS:
            raise SimError(400, "BAD_REQUEST", f"unknown action (expected one of {sorted(ACTIONS)})")
        if not isinstance(payload, dict):
            raise SimError(400, "BAD_REQUEST", "payload object required")
        full_name = payload.get("conferenceFullName")
        match = CONFERENCE.match(full_name) if isinstance(full_name, str) else None
        if match is None:
            raise SimError(400, "BAD_REQUEST", "conferenceFullName must be <room>@conference.<appId>.8x8.vc")
        if match["app"] != claims["sub"]:
            raise SimError(403, "FORBIDDEN", "conferenceFullName appId differs from the token sub")
        room = match["room"]
        allowed = {"conferenceFullName"}
        if action in ("DIAL_OUT_PARTICIPANT", "HANG_UP_CALL"):
            allowed.add("phoneNo")
            phone = payload.get("phoneNo")
            if not isinstance(phone, str) or not E164.match(phone):
                raise SimError(400, "BAD_REQUEST", "phoneNo must be an E.164 number")
        if action == "KICK_PARTICIPANT":
            allowed.add("participantId")
            if not isinstance(payload.get("participantId"), str) or not payload["participantId"]:
                raise SimError(400, "BAD_REQUEST", "participantId required")
        extra = set(payload) - allowed
        if extra:
            raise SimError(400, "BAD_REQUEST", f"unexpected payload fields {sorted(extra)}")
        with self._lock:
            self.commands.append({"action": action, **payload})
            if action == "DESTROY":
                self.conferences.pop(room, None)
                self.dialled.pop(room, None)
                self.destroyed.append(room)
                if room in self.sessions:     # connections still open get no leave: the room just ends
                    self._webhook("ROOM_DESTROYED", room, {"conference": full_name, "isBreakout": False})
                    del self.sessions[room]
                    self.connections.pop(room, None)
            elif action == "KICK_PARTICIPANT":
                self._leave(room, payload["participantId"], "kicked")
            elif action == "DIAL_OUT_PARTICIPANT":
                self.dialled.setdefault(room, set()).add(payload["phoneNo"])
            else:
                self.dialled.get(room, set()).discard(payload["phoneNo"])
        return Response(status_code=200)

    async def _ban_user(self, request: Request) -> Response:
        return await self._handle(request, self._do_ban_user)

    async def _do_ban_user(self, request: Request, claims: dict[str, Any]) -> Response:
        if request.path_params["app_id"] != claims["sub"]:
            raise SimError(403, "FORBIDDEN", "appId differs from the token sub")
        user_id = request.path_params["user_id"]
        with self._lock:
            self.banned_users.add(user_id)
            for members in self.conferences.values():
                members.discard(user_id)
        return Response(status_code=200)

    async def _ban_jwt(self, request: Request) -> Response:
        return await self._handle(request, self._do_ban_jwt)

    async def _do_ban_jwt(self, request: Request, claims: dict[str, Any]) -> Response:
        if request.path_params["app_id"] != claims["sub"]:
            raise SimError(403, "FORBIDDEN", "appId differs from the token sub")
        body = await self._json(request)
        token = body.get("jwt")
        if not isinstance(token, str) or token.count(".") != 2:
            raise SimError(400, "BAD_REQUEST", "jwt required")
        with self._lock:
            self.banned_jwts.add(token)
        return Response(status_code=200)
