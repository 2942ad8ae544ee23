"""The web process: Starlette app factory, routes and lifespan."""

from __future__ import annotations

import html
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge import metrics, openapi
from bridge.admin import admin_routes
from bridge.config import Settings
from bridge.console import console_routes
from bridge.errors import ApiError, error_response
from bridge.intake import AcceptBatcher, DurableAccept, receive
from bridge.provider_intake import RoomOwners, build_receivers
from bridge.provider_intake import receive as receive_provider_event
from bridge.providers.sandbox.adapter import SandboxProvider
from bridge.providers.sandbox.settings import SandboxSettings
from bridge.responses import JSONResponse
from bridge.routing import provider_source
from bridge.storage import recordings_route
from bridge.storage.configured import local_storage_once
from bridge.store import ACCEPT_SCRIPT, WEB_CLIENT_NAME, WORKER_QUEUE, health_check_key, redis_client

log = structlog.get_logger("bridge.web")


class AccessLog:
    """One log line per request, carrying whatever the handler bound (source, event ids).

    uvicorn runs each request in its own task, so what the handler binds lives in that task's copy
    of the context and needs no clearing.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            log.info("request", method=scope["method"], path=scope["path"], status=status,
                     ms=round((time.perf_counter() - started) * 1000, 2))


def create_app(settings: Settings, redis: Redis | None = None) -> Starlette:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis or redis_client(settings.redis_url or "redis://127.0.0.1:6379", WEB_CLIENT_NAME)
        state["redis"] = client
        state["batcher"] = AcceptBatcher(DurableAccept(client, client.register_script(ACCEPT_SCRIPT),
                                                       settings.redis_confirm_fsync),
                                         settings.dedupe_window_s * 1000)
        state["metrics"] = metrics.IntakeMetrics(client, settings.sources).start()
        try:
            yield
        finally:
            await state["metrics"].stop()        # the last second's intake counts reach Redis
            if redis is None:
                await client.aclose()

    async def events(request: Request) -> Response:
        try:
            outcome = await receive(request, settings, state["redis"], state["batcher"])
        except ApiError as exc:
            structlog.contextvars.bind_contextvars(error=exc.code)
            state["metrics"].rejected(request.path_params["source"], exc.code)
            return exc.response()
        state["metrics"].intake(request.path_params["source"], outcome)   # in memory; flushed every second
        return JSONResponse(outcome.body(), status_code=outcome.status)

    receivers = build_receivers(settings)      # checks each provider's webhook settings at start-up
    owners = RoomOwners()

    async def provider_events(request: Request) -> Response:
        source = provider_source(request.path_params["provider"])
        try:
            outcome = await receive_provider_event(request, settings, state["redis"], state["batcher"], receivers,
                                                   owners)
        except ApiError as exc:
            structlog.contextvars.bind_contextvars(error=exc.code)
            state["metrics"].rejected(source, exc.code)
            return exc.response()
        state["metrics"].intake(source, outcome)
        return JSONResponse(outcome.body(), status_code=outcome.status)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        client: Redis = state["redis"]
        try:
            await client.ping()
            worker_seen = bool(await client.exists(health_check_key(WORKER_QUEUE)))
        except RedisError as exc:
            return error_response(503, "store_unavailable", f"Redis is unreachable ({type(exc).__name__})",
                                  headers={"Retry-After": "5"})
        if not worker_seen:
            return error_response(503, "no_worker", "no worker heartbeat in the last 30 seconds")
        return JSONResponse({"status": "ready"})

    # Built once: the providers that sign sandbox join links, whose page is /sandbox/{room}.
    sandboxes = [SandboxProvider(cfg.name, SandboxSettings.parse(cfg.settings), None)  # type: ignore[arg-type]
                 for cfg in settings.providers.values() if cfg.kind == "sandbox"]

    async def sandbox_room(request: Request) -> Response:
        """Where sandbox join links lead: shows who joined which room, so `make run` has a page to open."""
        room, token = request.path_params["room"], request.query_params.get("token", "")
        if not sandboxes:
            return error_response(404, "not_found", "no sandbox provider is configured")
        problem = None
        for sandbox in sandboxes:
            try:
                claims = sandbox.verify_join(room, token)
            except jwt.InvalidTokenError as exc:
                problem = exc
                continue
            return HTMLResponse(f"<!doctype html><title>{html.escape(room)}</title>"
                                f"<h1>Sandbox room {html.escape(room)}</h1>"
                                f"<p>{html.escape(str(claims.get('name') or claims.get('sub')))} joined as "
                                f"<b>{html.escape(str(claims.get('role')))}</b>.</p>")
        return error_response(401, "bad_token", f"the join token is not valid for this room: {problem}")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}",
                              headers=exc.headers)

    routes = [
        Route("/v1/events/{source}", events, methods=["POST"]),
        Route("/v1/providers/{provider}/events", provider_events, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        Route("/openapi.json", openapi.endpoint(settings), methods=["GET"]),
        Route("/sandbox/{room}", sandbox_room, methods=["GET"]),
    ]
    routes += admin_routes(settings)      # /v1/admin/: 404 everywhere unless BRIDGE_ADMIN_TOKEN is set
    routes += console_routes(settings)    # /console: likewise
    if settings.storage.kind == "local":  # signed downloads of recordings stored on this disk
        routes.append(recordings_route(local_storage_once(settings, lambda: state["redis"])))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.add_middleware(AccessLog)
    app.state.bridge = state
    return app
