"""HTTP peers that hold a connection: they accept and never answer, answer one byte a second, or
answer 200 only after 30 s. Served from a thread of their own, so the test's loop stays free."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from bridge.processes import free_port

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
MODES = ("silent", "drip", "late")


class SlowPeer:
    def __init__(self, mode: str) -> None:
        assert mode in MODES
        self.mode, self.port = mode, free_port()
        self.requests = 0
        self.open = 0
        self.peak_open = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            if self.mode == "silent":
                await reader.read()                  # until the client gives up
            elif self.mode == "drip":
                for byte in ANSWER:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1)
            else:
                await asyncio.sleep(30)
                writer.write(ANSWER)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def shutdown(self) -> None:
        """End the connections still held, so no handler is left half-run when the loop stops."""
        held = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self.handle, "127.0.0.1", self.port))
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()


@contextmanager
def slow_peer(mode: str) -> Iterator[SlowPeer]:
    peer = SlowPeer(mode)
    thread = threading.Thread(target=peer.run, daemon=True)
    thread.start()
    if not peer.ready.wait(10):
        raise RuntimeError("slow peer did not start")
    try:
        yield peer
    finally:
        asyncio.run_coroutine_threadsafe(peer.shutdown(), peer.loop).result(timeout=10)
        peer.loop.call_soon_threadsafe(peer.loop.stop)
        thread.join(timeout=10)
