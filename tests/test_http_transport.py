"""The workers' transport: one connection per concurrent request, reused per origin, over real sockets."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from bridge import http_transport
from bridge.http_transport import ConnectionPerRequestTransport
from bridge.processes import free_port
from tests.fakes.raw_http import RawHttpServer, raw_http_server


@pytest.fixture
async def server() -> AsyncIterator[tuple[RawHttpServer, str]]:
    async with raw_http_server() as (counting, port):
        yield counting, f"http://127.0.0.1:{port}"


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


async def test_new_connections_share_one_tls_context(server, monkeypatch) -> None:
    """Building a TLS context reads the CA bundle with the event loop stopped (~30 ms): a peer whose
    requests keep failing gets a new connection each time, and must not cost that each time."""
    transport = ConnectionPerRequestTransport()
    bundle_reads = []
    real_load = ssl.SSLContext.load_verify_locations

    def counting_load(context: ssl.SSLContext, *args, **kwargs) -> None:
        bundle_reads.append(args or kwargs)
        real_load(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting_load)
    _, url = server
    async with httpx.AsyncClient(transport=transport) as http:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{free_port()}/")     # each failure drops its connection
        assert all([(await http.get(f"{url}/")).text == "ok" for _ in range(2)])
    assert bundle_reads == []
    assert transport.options["verify"].verify_mode == ssl.CERT_REQUIRED     # certificates still verified


async def test_idle_connections_beyond_the_cap_are_closed(server, monkeypatch) -> None:
    monkeypatch.setattr(http_transport, "IDLE_PER_ORIGIN", 3)
    counting, url = server
    async with httpx.AsyncClient(transport=ConnectionPerRequestTransport()) as http:
        tasks = [asyncio.create_task(http.post(f"{url}/slow", content=b"x")) for _ in range(6)]
        await _until(lambda: counting.open == 6)
        counting.release.set()
        await asyncio.gather(*tasks)
        await _until(lambda: counting.open == 3)


async def test_a_healthy_origin_is_waited_for_while_the_loop_is_too_busy_to_free_a_slot_quickly(server) -> None:
    """A worker saturated by a backlog turns its loop slowly: requests to a healthy LMS free their slots
    later than SLOT_WAIT_S. None is refused as busy (a refused first attempt becomes a retry job)."""
    _, url = server

    async def busy_loop() -> None:              # every turn of the loop takes 20 ms (a saturated worker)
        while True:
            time.sleep(0.02)  # noqa: ASYNC251 - blocking the loop is the point
            await asyncio.sleep(0)

    hog = asyncio.create_task(busy_loop())
    try:
        async with httpx.AsyncClient(transport=ConnectionPerRequestTransport(max_per_origin=2)) as http:
            started = time.monotonic()
            answers = await asyncio.gather(*(http.post(f"{url}/", content=b"x") for _ in range(12)))
            waited = time.monotonic() - started
    finally:
        hog.cancel()
    assert [a.text for a in answers] == ["ok"] * 12
    assert waited > 2 * http_transport.SLOT_WAIT_S          # the slots did free slower than SLOT_WAIT_S


async def test_an_origin_whose_requests_hang_is_refused_as_busy(server) -> None:
    """Its requests in flight grow older than HANG_S: a request past its share waits until the oldest is that
    old, then is refused; once they are, a request is refused after SLOT_WAIT_S."""
    counting, url = server
    hang_s = http_transport.HANG_S
    async with httpx.AsyncClient(transport=ConnectionPerRequestTransport(max_per_origin=2)) as http:
        began = time.monotonic()
        held = [asyncio.create_task(http.post(f"{url}/slow", content=b"x")) for _ in range(2)]
        await _until(lambda: counting.open == 2)
        with pytest.raises(http_transport.OriginBusy):
            await http.post(f"{url}/", content=b"x")
        assert hang_s <= time.monotonic() - began < hang_s + 3
        started = time.monotonic()
        with pytest.raises(http_transport.OriginBusy):
            await http.post(f"{url}/", content=b"x")
        assert time.monotonic() - started < hang_s / 2
        counting.release.set()
        assert [a.text for a in await asyncio.gather(*held)] == ["ok", "ok"]
        assert (await http.post(f"{url}/", content=b"x")).text == "ok"          # free again


async def test_an_origin_whose_last_request_timed_out_is_refused_after_slot_wait(server) -> None:
    """Requests in flight to it are young, but the last one to end ran out of time: it hangs, and a request
    past its share is refused after SLOT_WAIT_S, not HANG_S. An answer clears that."""
    counting, url = server
    async with httpx.AsyncClient(transport=ConnectionPerRequestTransport(max_per_origin=2, deadline_s=0.2)) as http:
        for _ in range(2):
            with pytest.raises(httpx.ReadTimeout):
                await http.post(f"{url}/slow", content=b"x")
        held = [asyncio.create_task(http.post(f"{url}/slow", content=b"x", extensions={"deadline_s": 10}))
                for _ in range(2)]
        await _until(lambda: counting.open >= 2 and len(counting.requests) == 4)
        started = time.monotonic()
        with pytest.raises(http_transport.OriginBusy):
            await http.post(f"{url}/", content=b"x")
        assert time.monotonic() - started < http_transport.HANG_S / 2
        counting.release.set()
        assert [a.text for a in await asyncio.gather(*held)] == ["ok", "ok"]
        assert (await http.post(f"{url}/", content=b"x")).text == "ok"
