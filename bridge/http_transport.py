"""The workers' httpx transport: a stack of one-connection transports per origin.

httpcore 1.0's connection pool does bookkeeping proportional to connections times waiting requests
on every request (encode/httpcore#1035, still open in 1.0.9). A worker runs up to 50 jobs at once,
each posting to the same LMS endpoint or provider: through one pool (200 connections, 50 kept alive),
50 concurrent POSTs cost ~0.83 ms of CPU each here; through one-connection transports, ~0.36 ms,
the cost of a single request in isolation. So each request takes an idle one-connection transport
for its origin (the most recently used, whose connection is warmest) or makes one, and gives it
back when its response is closed.

It is also where one slow or hanging peer is kept to its share of a worker. An origin (one LMS
endpoint, one provider API) gets at most `max_per_origin` requests in flight: past that a request waits
for one to finish. After SLOT_WAIT_S it is refused with `OriginBusy` if the origin hangs: its last
request to end timed out, or one in flight has taken HANG_S. So jobs for other origins keep the
worker's slots. A healthy origin is waited for: a worker draining a backlog turns its event loop
slowly, and its requests to a healthy LMS then free their slots later than SLOT_WAIT_S; refused, each
would become a retry job behind the whole backlog. And a request's
`deadline_s` covers the whole exchange, body included: httpx's own timeouts are per read, so a peer
answering one byte a second would never trip them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

IDLE_PER_ORIGIN = 50            # idle kept-alive connections per origin, as the shared pool allowed
MAX_PER_ORIGIN = 10             # a worker runs 50 jobs at once: one hanging origin holds at most a fifth
SLOT_WAIT_S = 0.05              # the least a request past the origin's share waits for a slot
HANG_S = 1.0                    # a request in flight this long: its origin hangs (a healthy LMS answers in ms)
NEVER = float("-inf")

# A pinned webhook URL names an address; its TLS name travels as sni_hostname and is part of the key,
# so a connection verified for one name is never reused for another name at the same address.
Origin = tuple[bytes, bytes, int | None, str | None]


class OriginBusy(httpx.TransportError):
    """The origin already has its share of requests in flight (it is slow or hanging): try later."""


class _GiveBackOnClose(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, give_back: Callable[[], Awaitable[None]],
                 deadline: float | None, timed_out: Callable[[], None]) -> None:
        self.stream, self.give_back, self.deadline, self.timed_out = stream, give_back, deadline, timed_out

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self.stream.__aiter__()
        while True:
            try:
                async with asyncio.timeout_at(self.deadline):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                self.timed_out()
                raise httpx.ReadTimeout("the whole response took longer than its deadline") from None
            yield chunk

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        finally:
            await self.give_back()


class ConnectionPerRequestTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_per_origin: int = MAX_PER_ORIGIN, deadline_s: float | None = None,
                 **transport_options: Any) -> None:
        """`deadline_s`: the default whole-exchange limit, unless a request carries its own in
        `extensions["deadline_s"]`; `transport_options` go to each one-connection
        httpx.AsyncHTTPTransport (verify, cert, ...)."""
        self.idle: dict[Origin, list[httpx.AsyncHTTPTransport]] = {}
        self.slots: dict[Origin, asyncio.Semaphore] = {}
        self.in_flight: dict[Origin, dict[object, float]] = {}     # each request's start (loop time)
        self.answered: dict[Origin, float] = {}                    # when a request last had its answer
        self.timed_out: dict[Origin, float] = {}                   # when a request last timed out
        self.max_per_origin, self.deadline_s = max_per_origin, deadline_s
        # One TLS context for all: httpx builds one per transport it makes, reading the CA bundle (~30 ms
        # of CPU with the event loop stopped), and a failed request's connection is replaced by a new
        # transport, so a peer that times out again and again would stall every other job each time.
        verify = transport_options.pop("verify", True)
        if not isinstance(verify, ssl.SSLContext):
            verify = httpx.create_ssl_context(verify=verify)
        self.options = {**transport_options, "verify": verify}
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = (request.url.raw_scheme, request.url.raw_host, request.url.port,
                  request.extensions.get("sni_hostname"))
        slots = self.slots.get(origin) or self.slots.setdefault(origin, asyncio.Semaphore(self.max_per_origin))
        await self._take_slot(origin, slots, request)
        loop = asyncio.get_running_loop()
        token = object()
        self.in_flight.setdefault(origin, {})[token] = loop.time()
        seconds = request.extensions.get("deadline_s", self.deadline_s)
        deadline = None if seconds is None else loop.time() + seconds
        idle = self.idle.setdefault(origin, [])
        transport = idle.pop() if idle else httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1), **self.options)
        try:
            async with asyncio.timeout_at(deadline):
                response = await transport.handle_async_request(request)
        except BaseException as exc:
            self._free_slot(origin, token)
            await transport.aclose()
            if isinstance(exc, TimeoutError | httpx.TimeoutException):
                self._note_timeout(origin)
            if isinstance(exc, TimeoutError):
                raise httpx.ReadTimeout("no answer within the request's deadline", request=request) from None
            raise
        self.answered[origin] = loop.time()
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _GiveBackOnClose(response.stream, lambda: self._give_back(origin, token, transport),
                                           deadline, lambda: self._note_timeout(origin))
        return response

    def _note_timeout(self, origin: Origin) -> None:
        self.timed_out[origin] = asyncio.get_running_loop().time()

    async def _take_slot(self, origin: Origin, slots: asyncio.Semaphore, request: httpx.Request) -> None:
        """At once (no loop turn) while the origin has a free slot; else wait SLOT_WAIT_S, and on for as
        long as the origin does not hang."""
        loop = asyncio.get_running_loop()
        wait_s = SLOT_WAIT_S
        while True:
            try:
                async with asyncio.timeout(wait_s):
                    await slots.acquire()
                return
            except TimeoutError:
                oldest = min(self.in_flight.get(origin, {}).values(), default=loop.time())
                wait_s = oldest + HANG_S - loop.time()
                if wait_s <= 0 or self.timed_out.get(origin, NEVER) > self.answered.get(origin, NEVER):
                    raise OriginBusy(f"{self.max_per_origin} requests to this origin are in flight and it hangs",
                                     request=request) from None
                wait_s = max(wait_s, SLOT_WAIT_S)

    def _free_slot(self, origin: Origin, token: object) -> None:
        del self.in_flight[origin][token]
        self.slots[origin].release()

    async def _give_back(self, origin: Origin, token: object, transport: httpx.AsyncHTTPTransport) -> None:
        self._free_slot(origin, token)
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
