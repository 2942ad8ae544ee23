"""A keep-alive HTTP/1.1 server at the socket level, for tests about connections themselves: it counts
the connections it accepted and records every request's headers (names lower-cased) and body."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class RawHttpServer:
    def __init__(self, answer: bytes) -> None:
        self.answer = answer                      # the whole response, sent for every request...
        self.answers: list[bytes] = []            # ...except these, one each, to the first requests in turn
        self.connections = 0
        self.open = 0
        self.requests: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        self.release = asyncio.Event()            # requests to a path under /slow wait for it

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                fields = {name.strip().lower(): value.strip()
                          for name, _, value in (line.partition(":") for line in head[1:] if line)}
                self.bodies.append(await reader.readexactly(int(fields.get("content-length", 0))))
                self.requests.append(fields)
                answer = self.answers.pop(0) if self.answers else self.answer
                if head[0].split(" ")[1].startswith("/slow"):
                    await asyncio.wait_for(self.release.wait(), timeout=10)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self.open -= 1
            writer.close()


@asynccontextmanager
async def raw_http_server(answer: bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                          tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[RawHttpServer, int]]:
    """(server, port) while it listens on 127.0.0.1."""
    server = RawHttpServer(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield server, listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
