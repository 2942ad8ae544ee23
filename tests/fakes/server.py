"""Run an ASGI app (a provider simulator, a webhook receiver) on a loopback port in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.processes import free_port

__all__ = ["Loopback", "Swappable", "free_port", "serve", "silent_listener"]


class Swappable:
    """One loopback server per test module whose app each test replaces (a fresh simulator per test)."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _Simulator(Protocol):
    app: ASGIApp


S = TypeVar("S", bound=_Simulator)


class Loopback:
    """A `Swappable` being served at `url`; `swap_in(sim)` makes `sim.app` what answers there."""

    def __init__(self, target: Swappable, url: str) -> None:
        self._target = target
        self.url = url

    def swap_in(self, sim: S) -> S:
        self._target.app = sim.app
        return sim


@contextmanager
def serve(app: ASGIApp, port: int | None = None, lifespan: bool = False) -> Iterator[str]:
    """Yield the base URL (http://127.0.0.1:PORT) while `app` serves real HTTP on loopback."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on" if lifespan else "off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"simulator did not start on port {port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def silent_listener() -> Iterator[str]:
    """A loopback port that accepts connections (kernel backlog) and never answers: a read timeout."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
