"""A strict in-memory 100ms: management API (v2 rooms, active rooms) and policy API (templates, roles).

It enforces what the real service enforces, so an adapter that passes here talks to 100ms correctly:
- every call needs `Authorization: Bearer <management token>`: an HS256 JWT signed with the app
  secret, with `access_key` = the account's key, `type` = "management", `version` = 2, and valid
  iat/nbf/exp/jti; anything else is 401 `{"code": 401, "message": ..., "details": [...]}`;
- role objects are checked against the documented ranges and options (400 naming the field);
- POST /v2/rooms is create-or-get by name (one room per name).
`join_peer(app_token)` plays a client joining with an app token (checked just as strictly) so kick
and end-room have someone to act on.

Usage: `sim = HmsSim(); with serve(sim.app) as url: ...` (point both api_base and policy_base at url).
Webhooks: what 100ms would send (peer.join.success per joined peer, peer.leave.success for `leave_peer`
and remove-peers (`peer_kicked`), session.close.success at end-room, recording.success from
`recording_success`) waits in `outbox`; `outbox.send` posts it with the configured `webhook_headers`.
Failure injection: `sim.inject(503, times=2)`, `sim.inject(429, headers={"Retry-After": "7"})`,
`sim.inject(400, body={"code": 400, "message": "bad", "details": []})`, `sim.inject(delay=1.0)`.
"""

from __future__ import annotations

import copy
import json
import re
import time
import uuid
from datetime import datetime
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.fakes.injection import InjectionMixin
from tests.fakes.provider_webhooks import Outbox

ROLE_DEFAULTS: dict[str, Any] = {
    "publishParams": {
        "allowed": ["audio", "video"],
        "audio": {"bitRate": 32, "codec": "opus"},
        "video": {"bitRate": 256, "codec": "vp8", "frameRate": 25, "height": 180, "width": 320},
        "screen": {"bitRate": 1024, "codec": "vp8", "frameRate": 10, "height": 720, "width": 1280},
    },
    "subscribeParams": {"subscribeToRoles": [], "maxSubsBitRate": 3200},
    "permissions": {"endRoom": False, "removeOthers": False, "mute": False, "unmute": False, "changeRole": False},
    "priority": 1,
}
RANGES: dict[str, dict[str, tuple[int, int | None]]] = {
    "audio": {"bitRate": (16, 128)},
    "video": {"bitRate": (30, 2000), "frameRate": (1, 30), "height": (50, 1080), "width": (50, 1920)},
    "screen": {"bitRate": (500, None), "frameRate": (1, 30), "height": (270, 1080), "width": (480, 1920)},
}
CODECS = {"audio": "opus", "video": "vp8", "screen": "vp8"}
DEGRADATION = {"packetLossThreshold": (1, 100), "degradeGracePeriodSeconds": (1, 10),
               "recoverGracePeriodSeconds": (1, 10)}
PERMISSIONS = {"endRoom", "removeOthers", "mute", "unmute", "changeRole"}
NAME_RE = re.compile(r"^[A-Za-z0-9.:_-]+$")


class SimError(Exception):
    def __init__(self, status: int, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_role(name: str, role: Any, template_roles: set[str]) -> None:
    base = f"roles.{name}"

    def bad(path: str, problem: str) -> SimError:
        return SimError(400, "invalid role params", [f"{path}: {problem}"])

    def rng(path: str, value: Any, lo: int, hi: int | None) -> None:
        if not _is_int(value) or value < lo or (hi is not None and value > hi):
            raise bad(path, f"must be an integer in range {lo}-{hi if hi is not None else 'inf'}")

    if not isinstance(role, dict):
        raise bad(base, "must be an object")
    for key in role:
        if key not in ("publishParams", "subscribeParams", "permissions", "priority"):
            raise bad(f"{base}.{key}", "unknown field")
    if "priority" in role:
        rng(f"{base}.priority", role["priority"], 1, 10)
    pub = role.get("publishParams", {})
    if not isinstance(pub, dict):
        raise bad(f"{base}.publishParams", "must be an object")
    for key, value in pub.items():
        path = f"{base}.publishParams.{key}"
        if key == "allowed":
            if not isinstance(value, list) or any(v not in ("audio", "video", "screen") for v in value):
                raise bad(path, "must be a subarray of [audio, video, screen]")
        elif key in RANGES:
            if not isinstance(value, dict):
                raise bad(path, "must be an object")
            for k, v in value.items():
                if k == "codec":
                    if v != CODECS[key]:
                        raise bad(f"{path}.codec", f"must be {CODECS[key]}")
                elif k in RANGES[key]:
                    rng(f"{path}.{k}", v, *RANGES[key][k])
                else:
                    raise bad(f"{path}.{k}", "unknown field")
        else:
            raise bad(path, "unknown field")
    sub = role.get("subscribeParams", {})
    if not isinstance(sub, dict):
        raise bad(f"{base}.subscribeParams", "must be an object")
    for key, value in sub.items():
        path = f"{base}.subscribeParams.{key}"
        if key == "maxSubsBitRate":
            rng(path, value, 1, None)
        elif key == "subscribeToRoles":
            if not isinstance(value, list) or any(r not in template_roles for r in value):
                raise bad(path, "must list roles of this template")
        elif key == "subscribeDegradation":
            if not isinstance(value, dict):
                raise bad(path, "must be an object")
            for k, v in value.items():
                if k not in DEGRADATION:
                    raise bad(f"{path}.{k}", "unknown field")
                rng(f"{path}.{k}", v, *DEGRADATION[k])
        else:
            raise bad(path, "unknown field")
    perms = role.get("permissions", {})
    if not isinstance(perms, dict):
        raise bad(f"{base}.permissions", "must be an object")
    for key, value in perms.items():
        if key not in PERMISSIONS or not isinstance(value, bool):
            raise bad(f"{base}.permissions.{key}", "unknown permission or not a boolean")


class HmsSim(InjectionMixin):
    def __init__(self, access_key: str = "hms-access-key",
                 app_secret: str = "hms-app-secret-for-tests-0123456789abcdef",
                 webhook_headers: dict[str, str] | None = None) -> None:
        self._init_injection()
        self.webhook_headers = dict(webhook_headers or {"X-Lesson-Bridge-Secret": "hms-webhook-secret"})
        self.outbox = Outbox(lambda body: dict(self.webhook_headers))
        self.sessions: dict[str, str] = {}                       # room id -> its running session id
        self.access_key = access_key
        self.app_secret = app_secret
        self.templates: dict[str, dict[str, Any]] = {}
        self.rooms: dict[str, dict[str, Any]] = {}
        self.peers: dict[str, dict[str, dict[str, Any]]] = {}   # room id -> peer id -> peer
        self.ended: list[str] = []
        self.removed: list[tuple[str, str]] = []                 # (room id, peer id)
        self.management_jtis: list[str] = []
        routes = [
            Route("/policy/v1/templates", self.templates_get, methods=["GET"]),
            Route("/policy/v1/templates", self.templates_post, methods=["POST"]),
            Route("/policy/v1/templates/{tid}/roles/{role}", self.role_get, methods=["GET"]),
            Route("/policy/v1/templates/{tid}/roles/{role}", self.role_post, methods=["POST"]),
            Route("/policy/v1/templates/{tid}/roles/{role}", self.role_delete, methods=["DELETE"]),
            Route("/policy/v1/templates/{tid}/settings", self.settings_get, methods=["GET"]),
            Route("/policy/v1/templates/{tid}/settings", self.settings_post, methods=["POST"]),
            Route("/v2/rooms", self.rooms_list, methods=["GET"]),
            Route("/v2/rooms", self.rooms_create, methods=["POST"]),
            Route("/v2/rooms/{rid}", self.room_get, methods=["GET"]),
            Route("/v2/rooms/{rid}", self.room_update, methods=["POST"]),
            Route("/v2/active-rooms/{rid}/peers", self.active_peers, methods=["GET"]),
            Route("/v2/active-rooms/{rid}/remove-peers", self.active_remove, methods=["POST"]),
            Route("/v2/active-rooms/{rid}/end-room", self.active_end, methods=["POST"]),
        ]
        router = Starlette(routes=routes)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            # A plain coroutine function, so uvicorn detects ASGI 3 (a bound method is taken for ASGI 2).
            await self._dispatch(scope, receive, send, router,
                                 lambda status: {"code": status, "message": "injected failure", "details": []})

        self.app = app

    # ---- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _error(exc: SimError) -> JSONResponse:
        return JSONResponse({"code": exc.status, "message": exc.message, "details": exc.details},
                            status_code=exc.status)

    def _auth(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise SimError(401, "missing management token")
        try:
            claims = jwt.decode(header[7:], self.app_secret, algorithms=["HS256"], leeway=5,
                                options={"require": ["exp", "iat", "nbf", "jti"]})
        except jwt.PyJWTError as exc:
            raise SimError(401, "invalid management token", [type(exc).__name__]) from None
        if claims.get("type") != "management":
            raise SimError(401, "token type is not management")
        if claims.get("version") != 2:
            raise SimError(401, "unsupported token version")
        if claims.get("access_key") != self.access_key:
            raise SimError(401, "unknown access key")
        with self._lock:
            if claims["jti"] not in self.management_jtis:
                self.management_jtis.append(claims["jti"])

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        if "application/json" not in request.headers.get("content-type", ""):
            raise SimError(400, "Content-Type must be application/json")
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise SimError(400, "invalid JSON body") from None
        if not isinstance(body, dict):
            raise SimError(400, "body must be an object")
        return body

    def _template(self, tid: str) -> dict[str, Any]:
        template = self.templates.get(tid)
        if template is None:
            raise SimError(404, "template not found")
        return template

    def _template_by_name(self, name: str) -> dict[str, Any] | None:
        return next((t for t in self.templates.values() if t["name"] == name), None)

    def _full_roles(self, roles: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(roles, dict):
            raise SimError(400, "roles must be an object")
        names = set(roles)
        out = {}
        for name, role in roles.items():
            if not NAME_RE.match(name):
                raise SimError(400, "invalid role name", [name])
            check_role(name, role, names)
            out[name] = _merge(ROLE_DEFAULTS, role)
        return out

    @staticmethod
    def _settings(settings: Any) -> dict[str, Any]:
        if settings is None:
            return {"region": "auto"}
        if not isinstance(settings, dict) or set(settings) - {"region"}:
            raise SimError(400, "invalid settings")
        if settings.get("region", "auto") not in ("in", "us", "eu", "auto"):
            raise SimError(400, "invalid settings", ["settings.region"])
        return {"region": settings.get("region", "auto")}

    # ---- policy API ----------------------------------------------------------------------------

    async def templates_get(self, request: Request) -> Response:
        try:
            self._auth(request)
            tid, name = request.query_params.get("id"), request.query_params.get("name")
            if tid:
                return JSONResponse(self._template(tid))
            if name:
                template = self._template_by_name(name)
                if template is None:
                    raise SimError(404, "template not found")
                return JSONResponse(template)
            limit = min(int(request.query_params.get("limit", "20")), 20)
            items = sorted(self.templates.values(), key=lambda t: t["id"], reverse=True)[:limit]
            return JSONResponse({"limit": limit, "data": items})
        except SimError as exc:
            return self._error(exc)

    async def templates_post(self, request: Request) -> Response:
        try:
            self._auth(request)
            body = await self._body(request)
            tid, qname = request.query_params.get("id"), request.query_params.get("name")
            existing = None
            if tid:
                existing = self._template(tid)
            elif qname:
                existing = self._template_by_name(qname)
                if existing is None:
                    raise SimError(404, "template not found")
            name = body.get("name") or (existing["name"] if existing else f"template-{uuid.uuid4().hex[:8]}")
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise SimError(400, "invalid template name", ["name"])
            roles = self._full_roles(body.get("roles", {}))
            settings = self._settings(body.get("settings"))
            if existing is None:
                existing = self._template_by_name(name)   # create with an existing name overwrites it
            elif name != existing["name"] and self._template_by_name(name) is not None:
                raise SimError(409, "template name already exists (overwrite error)")
            template = {"id": existing["id"] if existing else uuid.uuid4().hex, "name": name,
                        "default": bool(body.get("default", False)), "roles": roles, "settings": settings}
            self.templates[template["id"]] = template
            return JSONResponse(template)
        except SimError as exc:
            return self._error(exc)

    async def role_get(self, request: Request) -> Response:
        try:
            self._auth(request)
            template = self._template(request.path_params["tid"])
            role = template["roles"].get(request.path_params["role"])
            if role is None:
                raise SimError(404, "role not found")
            return JSONResponse(role)
        except SimError as exc:
            return self._error(exc)

    async def role_post(self, request: Request) -> Response:
        try:
            self._auth(request)
            template = self._template(request.path_params["tid"])
            role_name = request.path_params["role"]
            body = await self._body(request)
            new_name = body.pop("name", None)
            if new_name is not None and new_name in template["roles"]:
                raise SimError(409, "role with the same name already exists (overwrite error)")
            final = new_name or role_name
            if not NAME_RE.match(final):
                raise SimError(400, "invalid role name")
            names = set(template["roles"]) | {final}
            check_role(final, body, names)
            role = _merge(ROLE_DEFAULTS, body)
            if new_name is not None:
                template["roles"].pop(role_name, None)
            template["roles"][final] = role
            return JSONResponse(role)
        except SimError as exc:
            return self._error(exc)

    async def role_delete(self, request: Request) -> Response:
        try:
            self._auth(request)
            template = self._template(request.path_params["tid"])
            if template["roles"].pop(request.path_params["role"], None) is None:
                raise SimError(404, "role not found")
            return JSONResponse({})
        except SimError as exc:
            return self._error(exc)

    async def settings_get(self, request: Request) -> Response:
        try:
            self._auth(request)
            return JSONResponse(self._template(request.path_params["tid"])["settings"])
        except SimError as exc:
            return self._error(exc)

    async def settings_post(self, request: Request) -> Response:
        try:
            self._auth(request)
            template = self._template(request.path_params["tid"])
            template["settings"] = self._settings(await self._body(request))
            return JSONResponse(template["settings"])
        except SimError as exc:
            return self._error(exc)

    # ---- rooms ---------------------------------------------------------------------------------

    def _room(self, rid: str) -> dict[str, Any]:
        room = self.rooms.get(rid)
        if room is None:
            raise SimError(404, "room not found")
        return room

    async def rooms_list(self, request: Request) -> Response:
        try:
            self._auth(request)
            name = request.query_params.get("name")
            data = [r for r in self.rooms.values() if name is None or r["name"] == name]
            return JSONResponse({"limit": 10, "data": data})
        except SimError as exc:
            return self._error(exc)

    async def rooms_create(self, request: Request) -> Response:
        try:
            self._auth(request)
            body = await self._body(request)
            allowed = {"name", "description", "template_id", "template", "region", "recording_info",
                       "large_room", "size", "max_duration_seconds", "webhook"}
            unknown = set(body) - allowed
            if unknown:
                raise SimError(400, "unknown field", sorted(unknown))
            name = body.get("name")
            if name is not None and (not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 100):
                raise SimError(400, "invalid room name", ["name"])
            tid = body.get("template_id")
            if tid is not None:
                self._template(tid)
            if "region" in body and body["region"] not in ("in", "us", "eu", "auto"):
                raise SimError(400, "invalid region", ["region"])
            if "description" in body and not isinstance(body["description"], str):
                raise SimError(400, "description must be a string", ["description"])
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            existing = next((r for r in self.rooms.values() if name is not None and r["name"] == name), None)
            if existing is not None:   # create-or-get by name: update the given properties
                for key in ("description", "template_id", "region"):
                    if key in body:
                        existing[key] = body[key]
                existing["updated_at"] = now
                return JSONResponse(existing)
            room = {"id": uuid.uuid4().hex[:24], "name": name or uuid.uuid4().hex[:12], "enabled": True,
                    "description": body.get("description", ""), "customer_id": "sim-customer",
                    "template_id": tid or self._default_template_id(), "region": body.get("region", "auto"),
                    "created_at": now, "updated_at": now}
            self.rooms[room["id"]] = room
            return JSONResponse(room)
        except SimError as exc:
            return self._error(exc)

    def _default_template_id(self) -> str:
        default = next((t for t in self.templates.values() if t.get("default")), None)
        if default is None:
            default = {"id": uuid.uuid4().hex, "name": "default_videoconf", "default": True,
                       "roles": {"host": _merge(ROLE_DEFAULTS, {}), "guest": _merge(ROLE_DEFAULTS, {})},
                       "settings": {"region": "auto"}}
            self.templates[default["id"]] = default
        return default["id"]

    async def room_get(self, request: Request) -> Response:
        try:
            self._auth(request)
            return JSONResponse(self._room(request.path_params["rid"]))
        except SimError as exc:
            return self._error(exc)

    async def room_update(self, request: Request) -> Response:
        try:
            self._auth(request)
            room = self._room(request.path_params["rid"])
            body = await self._body(request)
            unknown = set(body) - {"name", "description", "enabled", "template_id", "recording_info", "region"}
            if unknown:
                raise SimError(400, "unknown field", sorted(unknown))
            if "enabled" in body and not isinstance(body["enabled"], bool):
                raise SimError(400, "enabled must be a boolean", ["enabled"])
            if "name" in body:
                if not isinstance(body["name"], str) or not NAME_RE.match(body["name"]):
                    raise SimError(400, "invalid room name", ["name"])
                if any(r["name"] == body["name"] and r is not room for r in self.rooms.values()):
                    raise SimError(409, "room name already exists")
            if "template_id" in body:
                self._template(body["template_id"])
            room.update(body)
            if body.get("enabled") is False:
                self.peers.pop(room["id"], None)   # disabling a room ends its session
            return JSONResponse(room)
        except SimError as exc:
            return self._error(exc)

    # ---- active rooms --------------------------------------------------------------------------

    def join_peer(self, app_token: str, name: str = "") -> str:
        """A client joins with an app token: verified like the real service, then listed as a peer."""
        claims = jwt.decode(app_token, self.app_secret, algorithms=["HS256"], leeway=5,
                            options={"require": ["exp", "iat", "nbf", "jti"]})
        if claims.get("type") != "app" or claims.get("version") != 2 or claims.get("access_key") != self.access_key:
            raise PermissionError("bad app token claims")
        room = self.rooms.get(claims["room_id"])
        if room is None or not room["enabled"]:
            raise PermissionError("room missing or disabled")
        if claims["role"] not in self.templates[room["template_id"]]["roles"]:
            raise PermissionError("role not in the room's template")
        peer_id = uuid.uuid4().hex
        with self._lock:
            self.peers.setdefault(room["id"], {})[peer_id] = {
                "id": peer_id, "name": name, "user_id": claims["user_id"], "metadata": "",
                "role": claims["role"], "joined_at": self._iso(self.outbox.now_ms())}
            self.sessions.setdefault(room["id"], uuid.uuid4().hex[:24])
            self._webhook("peer.join.success", room["id"], self._peer_data(room["id"], peer_id))
        return peer_id

    def leave_peer(self, room_id: str, peer_id: str, reason: str = "client_request") -> None:
        """The peer leaves (closes the tab: `client_request`; or another reason 100ms gives)."""
        with self._lock:
            self._leave(room_id, peer_id, reason)
            if not self.peers.get(room_id):
                self.peers.pop(room_id, None)

    def recording_success(self, room_id: str, url: str, duration_s: int, size: int) -> dict[str, Any]:
        with self._lock:
            return self._webhook("recording.success", room_id, {
                "room_id": room_id, "room_name": self.rooms[room_id]["name"], "session_id": self.sessions.get(room_id),
                "recording_presigned_url": url, "duration": duration_s, "size": size})

    @staticmethod
    def _iso(at_ms: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at_ms // 1000)) + f".{at_ms % 1000:03d}000Z"

    def _peer_data(self, room_id: str, peer_id: str) -> dict[str, Any]:
        peer = self.peers[room_id][peer_id]
        return {"room_id": room_id, "room_name": self.rooms[room_id]["name"], "session_id": self.sessions[room_id],
                "peer_id": peer_id, "user_id": peer["user_id"], "user_name": peer["name"], "role": peer["role"],
                "joined_at": peer["joined_at"]}

    def _leave(self, room_id: str, peer_id: str, reason: str) -> None:
        data = self._peer_data(room_id, peer_id)
        del self.peers[room_id][peer_id]
        left_ms = self.outbox.now_ms()
        joined = datetime.fromisoformat(data["joined_at"].replace("Z", "+00:00"))
        self._webhook("peer.leave.success", room_id, {**data, "left_at": self._iso(left_ms), "reason": reason,
                                                       "duration": round(left_ms / 1000 - joined.timestamp())})

    def _webhook(self, event_type: str, room_id: str, data: dict[str, Any]) -> dict[str, Any]:
        return self.outbox.add({"version": "2.0", "id": str(uuid.uuid4()), "account_id": "sim-account",
                                "app_id": "sim-app", "timestamp": self._iso(self.outbox.now_ms()),
                                "type": event_type, "data": data})

    def _active(self, rid: str) -> dict[str, dict[str, Any]]:
        self._room(rid)
        peers = self.peers.get(rid)
        if not peers:
            raise SimError(404, "active room not found")
        return peers

    async def active_peers(self, request: Request) -> Response:
        try:
            self._auth(request)
            return JSONResponse({"peers": self._active(request.path_params["rid"])})
        except SimError as exc:
            return self._error(exc)

    async def active_remove(self, request: Request) -> Response:
        try:
            self._auth(request)
            rid = request.path_params["rid"]
            peers = self._active(rid)
            body = await self._body(request)
            if not body.get("peer_id") and not body.get("role"):
                raise SimError(400, "peer_id or role is required")
            if body.get("peer_id"):
                if body["peer_id"] not in peers:
                    raise SimError(404, "peer not found")
                targets = [body["peer_id"]]
            else:
                targets = [pid for pid, p in peers.items() if p["role"] == body["role"]]
            with self._lock:
                for pid in targets:
                    self._leave(rid, pid, "peer_kicked")
                    self.removed.append((rid, pid))
                if not peers:
                    self.peers.pop(rid, None)
            return JSONResponse({"message": "requested"})
        except SimError as exc:
            return self._error(exc)

    async def active_end(self, request: Request) -> Response:
        try:
            self._auth(request)
            rid = request.path_params["rid"]
            self._active(rid)
            body = await self._body(request)
            if "lock" in body and not isinstance(body["lock"], bool):
                raise SimError(400, "lock must be a boolean")
            with self._lock:
                self.peers.pop(rid, None)      # peers still in the room get no leave: the session just closes
                self.ended.append(rid)
                session = self.sessions.pop(rid, None)
                if session is not None:
                    self._webhook("session.close.success", rid, {
                        "room_id": rid, "room_name": self.rooms[rid]["name"], "session_id": session,
                        "session_stopped_at": self._iso(self.outbox.now_ms())})
                if body.get("lock"):
                    self.rooms[rid]["enabled"] = False
            return JSONResponse({"message": "session termination is in progress"})
        except SimError as exc:
            return self._error(exc)
