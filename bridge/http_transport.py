"""The workers' httpx transport: a stack of one-connection transports per origin.

httpcore 1.0's connection pool does bookkeeping proportional to connections times waiting requests
on every request (encode/httpcore#1035, still open in 1.0.9). A worker runs up to 50 jobs at once,
each posting to the same LMS endpoint or provider: through one pool (200 connections, 50 kept alive),
50 concurrent POSTs cost ~0.83 ms of CPU each here; through one-connection transports, ~0.36 ms,
the cost of a single request in isolation. So each request takes an idle one-connection transport
for its origin (the most recently used, whose connection is warmest) or makes one, and gives it
back when its response is closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

IDLE_PER_ORIGIN = 50            # idle kept-alive connections per origin, as the shared pool allowed

# A pinned webhook URL names an address; its TLS name travels as sni_hostname and is part of the key,
# so a connection verified for one name is never reused for another name at the same address.
Origin = tuple[bytes, bytes, int | None, str | None]


class _GiveBackOnClose(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, give_back: Callable[[], Awaitable[None]]) -> None:
        self.stream, self.give_back = stream, give_back

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        finally:
            await self.give_back()


class ConnectionPerRequestTransport(httpx.AsyncBaseTransport):
    def __init__(self, **transport_options: Any) -> None:
        """`transport_options` go to each one-connection httpx.AsyncHTTPTransport (verify, cert, ...)."""
        self.idle: dict[Origin, list[httpx.AsyncHTTPTransport]] = {}
        self.options = transport_options
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = (request.url.raw_scheme, request.url.raw_host, request.url.port,
                  request.extensions.get("sni_hostname"))
        idle = self.idle.setdefault(origin, [])
        transport = idle.pop() if idle else httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1), **self.options)
        try:
            response = await transport.handle_async_request(request)
        except BaseException:
            await transport.aclose()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _GiveBackOnClose(response.stream, lambda: self._give_back(origin, transport))
        return response

    async def _give_back(self, origin: Origin, transport: httpx.AsyncHTTPTransport) -> None:
        idle = self.idle.setdefault(origin, [])
        if self.closed or len(idle) >= IDLE_PER_ORIGIN:
            await transport.aclose()
        else:
            idle.append(transport)

    async def aclose(self) -> None:
        self.closed = True
        idle, self.idle = self.idle, {}
        for transports in idle.values():
            for transport in transports:
                await transport.aclose()
