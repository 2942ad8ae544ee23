"""The workers' transport: one connection per concurrent request, reused per origin, over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from bridge import http_transport
from bridge.http_transport import ConnectionPerRequestTransport
from bridge.processes import free_port


class CountingServer:
    """HTTP/1.1 keep-alive server on loopback that counts the TCP connections it accepted."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.release = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line[15:]) for line in head.split(b"\r\n")
                               if line[:15].lower() == b"content-length:"), 0)
                await reader.readexactly(length)
                if b"/slow" in head.split(b"\r\n", 1)[0]:
                    await asyncio.wait_for(self.release.wait(), timeout=10)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[CountingServer, str]]:
    counting = CountingServer()
    listener = await asyncio.start_server(counting.handle, "127.0.0.1", 0)
    yield counting, f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    listener.close()


async def _until(condition, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_concurrent_requests_each_get_a_connection_which_later_requests_reuse(server) -> None:
    counting, url = server
    async with httpx.AsyncClient(transport=ConnectionPerRequestTransport()) as http:
        for _ in range(3):
            tasks = [asyncio.create_task(http.post(f"{url}/slow", content=b"x")) for _ in range(10)]
            await _until(lambda: counting.open == 10)
            counting.release.set()
            assert [r.text for r in await asyncio.gather(*tasks)] == ["ok"] * 10
            counting.release.clear()
        assert counting.connections == 10          # 30 requests, 10 at a time, over the same 10 sockets
        assert (await http.get(f"{url}/")).text == "ok" and counting.connections == 10
    await _until(lambda: counting.open == 0)       # closing the client closes every kept connection


async def test_a_failed_request_leaves_no_connection_behind(server) -> None:
    transport = ConnectionPerRequestTransport()
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{free_port()}/")     # nothing listens there
        assert all(not idle for idle in transport.idle.values())
        _, url = server
        assert (await http.get(f"{url}/")).text == "ok"


async def test_idle_connections_beyond_the_cap_are_closed(server, monkeypatch) -> None:
    monkeypatch.setattr(http_transport, "IDLE_PER_ORIGIN", 3)
    counting, url = server
    async with httpx.AsyncClient(transport=ConnectionPerRequestTransport()) as http:
        tasks = [asyncio.create_task(http.post(f"{url}/slow", content=b"x")) for _ in range(6)]
        await _until(lambda: counting.open == 6)
        counting.release.set()
        await asyncio.gather(*tasks)
        await _until(lambda: counting.open == 3)
