"""HTTP peers that hold a connection: they accept and never answer, answer one byte a second, or
answer 200 only after 30 s."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from bridge.processes import free_port
from tests.fakes.threaded_server import threaded_server

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
MODES = ("silent", "drip", "late")


class SlowPeer:
    def __init__(self, mode: str) -> None:
        assert mode in MODES
        self.mode, self.port = mode, free_port()
        self.requests = 0
        self.open = 0
        self.peak_open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            # Counted open until the client closes: a write to a closed socket may not fail for a while
            # (a byte a second, or once after 30 s), but the pending read sees the close at once.
            answering = asyncio.ensure_future(self.answer(writer))
            closed = asyncio.ensure_future(reader.read())
            _, pending = await asyncio.wait({answering, closed}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(answering, closed, return_exceptions=True)
        except (ConnectionError, asyncio.IncompleteReadError, OSError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def answer(self, writer: asyncio.StreamWriter) -> None:
        if self.mode == "silent":
            await asyncio.Event().wait()             # until the client gives up
        elif self.mode == "drip":
            for byte in ANSWER:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1)
        else:
            await asyncio.sleep(30)
            writer.write(ANSWER)
            await writer.drain()


@contextmanager
def slow_peer(mode: str) -> Iterator[SlowPeer]:
    peer = SlowPeer(mode)
    with threaded_server(peer.handle, peer.port):
        yield peer
