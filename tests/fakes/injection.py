"""Failure injection shared by the provider simulators (HMS, OpenMeetings, BlendVision, JaaS, OWT): the
next N matching calls get a canned answer (and/or a delay) before the simulator sees them."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send


@dataclass
class Injection:
    status: int | None                 # None: after `delay`, answer normally
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    path: str | None = None            # only requests whose path contains this
    delay: float = 0.0


class InjectionMixin:
    """Shared failure injection: the next N matching calls get a canned answer (and/or a delay)."""

    def _init_injection(self) -> None:
        self._lock = threading.Lock()
        self._injections: list[Injection] = []
        self.calls: list[tuple[str, str]] = []

    def inject(self, status: int | None = 503, *, times: int = 1, body: Any = None,
               headers: dict[str, str] | None = None, path: str | None = None, delay: float = 0.0) -> None:
        with self._lock:
            self._injections.append(Injection(status, body, dict(headers or {}), times, path, delay))

    def clear_injections(self) -> None:
        with self._lock:
            self._injections.clear()

    def _take_injection(self, path: str) -> Injection | None:
        with self._lock:
            for inj in self._injections:
                if inj.times > 0 and (inj.path is None or inj.path in path):
                    inj.times -= 1
                    if inj.times == 0:
                        self._injections.remove(inj)
                    return inj
        return None

    def calls_to(self, fragment: str, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, p in self.calls if fragment in p and (method is None or m == method))

    async def _intercept(self, method: str, path: str, default_body: Any) -> Response | None:
        """Log the call and play the injection it matches: its canned answer, or None to answer normally.
        With no `body`, the answer carries `default_body(status)`: JSON, text if a str, empty if None."""
        with self._lock:
            self.calls.append((method, path))
        inj = self._take_injection(path)
        if inj is None:
            return None
        if inj.delay:
            await asyncio.sleep(inj.delay)
        if inj.status is None:
            return None
        body = inj.body if inj.body is not None else default_body(inj.status)
        if body is None:
            return Response(status_code=inj.status, headers=inj.headers)
        if isinstance(body, str):
            return Response(body, status_code=inj.status, headers=inj.headers, media_type="text/plain")
        return JSONResponse(body, status_code=inj.status, headers=inj.headers)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, inner: Any,
                        default_body: Any) -> None:
        response = None
        if scope["type"] == "http":
            response = await self._intercept(scope["method"], scope["path"], default_body)
        if response is None:
            await inner(scope, receive, send)
        else:
            await response(scope, receive, send)
