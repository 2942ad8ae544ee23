"""Where and how a webhook goes: the SSRF check's approved address is the one connected to (TLS still
verified by name), and no cookie from an earlier answer rides along."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.config import load_settings
from bridge.http_transport import ConnectionPerRequestTransport
from bridge.webhooks import Destination, UnsafeDestination, attempt, checked_destination
from tests.conftest import default_config
from tests.fakes.raw_http import raw_http_server
from tests.fakes.tls import self_signed


def resolver(*answers: str) -> Any:
    """getaddrinfo answering each call with the next answer (addresses joined by ","): a name that
    rebinds between lookups, or one with several addresses."""
    remaining = list(answers)

    async def getaddrinfo(host: str, port: Any, **_: Any) -> list[tuple[Any, ...]]:
        answer = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        return [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (address, port or 443)) for address in answer.split(",")]
    return getaddrinfo


async def test_the_checked_address_is_pinned_with_host_and_sni(monkeypatch) -> None:
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolver("93.184.215.14", "127.0.0.1"))
    destination = await checked_destination("https://lms.example.edu:8443/webhook?x=1", allow_private=False)
    assert str(destination.url) == "https://93.184.215.14:8443/webhook?x=1"     # the second answer never asked
    assert destination.headers == {"host": "lms.example.edu:8443"}
    assert destination.extensions == {"sni_hostname": "lms.example.edu"}


async def test_any_private_answer_refuses_and_allow_private_skips_resolution(monkeypatch) -> None:
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolver("93.184.215.14,169.254.169.254"))
    with pytest.raises(UnsafeDestination, match=r"169\.254\.169\.254, a non-public"):   # not only the first answer
        await checked_destination("http://metadata.example/", allow_private=False)
    allowed = await checked_destination("http://metadata.example/", allow_private=True)
    assert allowed == Destination(httpx.URL("http://metadata.example/"), {}, {})


async def test_a_pinned_address_reaches_the_server_as_the_name_over_verified_tls(tmp_path: Path) -> None:
    server_tls, cert = self_signed(tmp_path, "lms.example.test")
    async with raw_http_server(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n", tls=server_tls) as (
            server, port):
        pinned = Destination(httpx.URL(f"https://127.0.0.1:{port}/hook"), {"host": f"lms.example.test:{port}"},
                             {"sni_hostname": "lms.example.test"})
        transport = ConnectionPerRequestTransport(verify=ssl.create_default_context(cafile=cert))   # the workers'
        async with httpx.AsyncClient(transport=transport) as http:
            answer = await http.post(pinned.url, content=b"{}", headers=pinned.headers, extensions=pinned.extensions)
            assert answer.status_code == 204 and [r["host"] for r in server.requests] == [f"lms.example.test:{port}"]
            # Without the name the certificate does not match, and the verified connection is not reused.
            with pytest.raises(httpx.ConnectError):
                await http.post(pinned.url, content=b"{}", headers=pinned.headers)


async def test_deliveries_carry_no_cookie_an_earlier_answer_set(tmp_path: Path, redis_server) -> None:
    """Moodle answers every request with a session cookie: it must not ride along on later webhooks."""
    moodle_answer = b"HTTP/1.1 200 OK\r\nset-cookie: MoodleSession=abc123; path=/\r\ncontent-length: 2\r\n\r\nok"
    async with raw_http_server(moodle_answer) as (server, port):
        url = f"http://127.0.0.1:{port}/hook"
        settings = load_settings({"BRIDGE_CONFIG": str(default_config(tmp_path, url)), "REDIS_URL": redis_server.url})
        transport = ConnectionPerRequestTransport()
        try:
            for n in range(2):
                result, answer, _ = await attempt(transport, settings, settings.sources["default"], f"msg_{n}",
                                                  b'{"type":"x"}')
                assert result.status == 200 and answer == "ok"
        finally:
            await transport.aclose()
    assert [r.get("cookie") for r in server.requests] == [None, None]
    assert server.requests[1]["user-agent"] == "lesson-bridge" and server.requests[1]["webhook-id"] == "msg_1"
