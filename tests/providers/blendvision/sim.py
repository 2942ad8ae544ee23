"""A strict in-memory BlendVision One chatroom API (/bv/chatroom/v1/...).

Like the real service:
- every call but the token refresh needs `Authorization: Bearer <api token>` (else 401, gRPC code 16
  UNAUTHENTICATED) and `x-bv-org-id: <org id>` (else 403, code 7 PERMISSION_DENIED);
- bodies are validated (unknown fields, wrong roles -> 400, code 3 INVALID_ARGUMENT); unknown
  chatrooms are 404, code 5 NOT_FOUND; every error is `{"code", "message", "details"}`;
- chatroom tokens are JWTs (HS256 with `token_secret`, so tests can verify them) with
  `expires_in`, plus a refresh token usable once at `POST /bv/chatroom/v1/chatrooms/tokens:refresh`.

Usage: `sim = BlendVisionSim(); with serve(sim.app) as url: ...` (api_base = url).
Failure injection (shared with the other sims): `sim.inject(503, times=2)`,
`sim.inject(400, body={"code": 3, "message": "bad", "details": []})`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.fakes.injection import InjectionMixin

ROLES = ("ROLE_GUEST", "ROLE_VIEWER", "ROLE_ADMIN")
BASE = "/bv/chatroom/v1/chatrooms"


class GrpcError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class BlendVisionSim(InjectionMixin):
    def __init__(self, api_token: str = "bv-api-token-for-tests", org_id: str = "org-0001",
                 token_secret: str = "bv-chatroom-signing-secret-0123456789",
                 token_ttl_s: int = 604800, refresh_ttl_s: int = 2592000) -> None:
        self._init_injection()
        self.api_token = api_token
        self.org_id = org_id
        self.token_secret = token_secret
        self.token_ttl_s = token_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self.chatrooms: dict[str, dict[str, Any]] = {}
        self.tokens: list[dict[str, Any]] = []             # claims of every token issued
        self.refresh_tokens: dict[str, dict[str, Any]] = {}
        routes = [
            Route(f"{BASE}/tokens:refresh", self.refresh, methods=["POST"]),
            Route(BASE, self.list_chatrooms, methods=["GET"]),
            Route(BASE, self.create_chatroom, methods=["POST"]),
            Route(f"{BASE}/{{cid}}/tokens", self.create_token, methods=["POST"]),
        ]
        router = Starlette(routes=routes)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await self._dispatch(scope, receive, send, router,
                                 lambda status: {"code": 14 if status >= 500 else 3, "message": "injected failure",
                                                 "details": []})

        self.app = app

    # ---- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _error(exc: GrpcError) -> JSONResponse:
        return JSONResponse({"code": exc.code, "message": exc.message, "details": []}, status_code=exc.status)

    def _auth(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or header[7:] != self.api_token:
            raise GrpcError(401, 16, "unauthenticated: invalid or missing authorization")
        if request.headers.get("x-bv-org-id") != self.org_id:
            raise GrpcError(403, 7, "permission denied: unknown organization")

    @staticmethod
    async def _body(request: Request, allowed: set[str]) -> dict[str, Any]:
        if "application/json" not in request.headers.get("content-type", ""):
            raise GrpcError(400, 3, "content type must be application/json")
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise GrpcError(400, 3, "invalid JSON") from None
        if not isinstance(body, dict):
            raise GrpcError(400, 3, "body must be an object")
        unknown = set(body) - allowed
        if unknown:
            raise GrpcError(400, 3, f"unknown field {sorted(unknown)[0]!r}")
        return body

    def _issue(self, chatroom_id: str, role: str, subject: str, name: str, device_id: str) -> dict[str, Any]:
        now = int(time.time())
        claims = {"sub": subject, "role": role, "chatroom_id": chatroom_id, "name": name, "device_id": device_id,
                  "org_id": self.org_id, "iat": now, "exp": now + self.token_ttl_s, "jti": uuid.uuid4().hex}
        with self._lock:
            self.tokens.append(claims)
            refresh = uuid.uuid4().hex
            self.refresh_tokens[refresh] = {**claims, "refresh_exp": now + self.refresh_ttl_s}
        return {"token": jwt.encode(claims, self.token_secret, algorithm="HS256"), "expires_in": self.token_ttl_s,
                "refresh_token": refresh, "refresh_expires_in": self.refresh_ttl_s}

    # ---- routes --------------------------------------------------------------------------------

    async def list_chatrooms(self, request: Request) -> Response:
        try:
            self._auth(request)
            try:
                page = int(request.query_params.get("page", "1"))
                size = int(request.query_params.get("page_size", "20"))
            except ValueError:
                raise GrpcError(400, 3, "page and page_size must be integers") from None
            if page < 1 or not 1 <= size <= 1000:
                raise GrpcError(400, 3, "page must be >= 1, page_size 1-1000")
            items = list(self.chatrooms.values())
            chunk = items[(page - 1) * size: page * size]
            return JSONResponse({"chatrooms": chunk,
                                 "pagination": {"current_page": page, "page_size": size, "total": len(items)}})
        except GrpcError as exc:
            return self._error(exc)

    async def create_chatroom(self, request: Request) -> Response:
        try:
            self._auth(request)
            body = await self._body(request, {"custom_counters"})
            counters = body.get("custom_counters", [])
            if not isinstance(counters, list):
                raise GrpcError(400, 3, "custom_counters must be a list")
            for counter in counters:
                if not isinstance(counter, dict) or set(counter) != {"key"} or \
                        not isinstance(counter["key"], str) or not counter["key"]:
                    raise GrpcError(400, 3, "custom_counters[].key is required")
            chatroom = {"id": str(uuid.uuid4()), "muted": False, "status": "CHAT_STATUS_ACTIVE",
                        "blocked_users": [], "pinned_messages": [],
                        "custom_counters": [{"key": c["key"], "value": "0"} for c in counters]}
            with self._lock:
                self.chatrooms[chatroom["id"]] = chatroom
            return JSONResponse({"chatroom": chatroom})
        except GrpcError as exc:
            return self._error(exc)

    async def create_token(self, request: Request) -> Response:
        try:
            self._auth(request)
            cid = request.path_params["cid"]
            if cid not in self.chatrooms:
                raise GrpcError(404, 5, "chatroom not found")
            body = await self._body(request, {"role", "device_id", "subject", "name"})
            role = body.get("role", "ROLE_GUEST")
            if role not in ROLES:
                raise GrpcError(400, 3, f"invalid role {role!r}")
            for key in ("device_id", "subject", "name"):
                if key in body and not isinstance(body[key], str):
                    raise GrpcError(400, 3, f"{key} must be a string")
            name = body.get("name") or ("Admin" if role == "ROLE_ADMIN" else "Guest")
            return JSONResponse(self._issue(cid, role, body.get("subject") or f"guest-{uuid.uuid4()}", name,
                                            body.get("device_id") or str(uuid.uuid4())))
        except GrpcError as exc:
            return self._error(exc)

    async def refresh(self, request: Request) -> Response:
        try:
            body = await self._body(request, {"refresh_token"})
            with self._lock:
                entry = self.refresh_tokens.pop(str(body.get("refresh_token", "")), None)
            if entry is None or entry["refresh_exp"] < time.time():
                raise GrpcError(401, 16, "invalid refresh token")
            issued = self._issue(entry["chatroom_id"], entry["role"], entry["sub"], entry["name"], entry["device_id"])
            return JSONResponse({"token": issued["token"], "expires_in": issued["expires_in"]})
        except GrpcError as exc:
            return self._error(exc)
