"""A TCP server on 127.0.0.1 with an event loop of its own in a thread: it keeps serving while the
test's loop is busy or blocked, and ends every connection it still holds when it stops."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _end_held_connections() -> None:
    held = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


@contextmanager
def threaded_server(handle: Handler, port: int) -> Iterator[asyncio.AbstractEventLoop]:
    """Serve `handle` on `port` until the block ends; yields the server's loop (for call_soon_threadsafe)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", port))
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError(f"server did not start on port {port}")
    try:
        yield loop
    finally:
        asyncio.run_coroutine_threadsafe(_end_held_connections(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
