"""rediss:// with a self-signed certificate, as managed Redis add-ons hand it out, over a real TLS
handshake: a loopback TLS terminator (the shipped valkey-server has no TLS) in front of the test Redis.
The web app accepts events through it and a worker process runs their jobs through it."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.embedded import EmbeddedRedis
from bridge.store import job_runs_key, redis_client, worker_redis
from tests.conftest import default_config, wait_until
from tests.fakes.tls import self_signed


@pytest.fixture
def tls_redis_url(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[str]:
    """A rediss:// URL whose TLS ends on loopback and is forwarded to the plain test server."""
    context = self_signed(tmp_path, "redis.addon.example")[0]
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []
    stop = asyncio.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", redis_server.port)
        await asyncio.gather(pipe(client_r, upstream_w), pipe(upstream_r, client_w))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        port.append(server.sockets[0].getsockname()[1])
        started.set()
        await stop.wait()
        server.close()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"rediss://127.0.0.1:{port[0]}/0"
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout=10)
    loop.close()


async def test_self_signed_tls_is_refused_unless_asked_and_works_when_asked(tls_redis_url: str) -> None:
    strict = redis_client(tls_redis_url)
    with pytest.raises(RedisConnectionError):
        await strict.ping()                     # verification is on by default: a self-signed cert fails
    await strict.aclose()
    relaxed = redis_client(f"{tls_redis_url}?ssl_cert_reqs=none")
    assert await relaxed.ping()
    await relaxed.aclose()
    worker = worker_redis(f"{tls_redis_url}?ssl_cert_reqs=none", 5, "arq:queue")
    assert await worker.ping()
    await worker.aclose()


async def test_events_flow_through_tls_with_redis_ssl_cert_reqs(make_bridge, client, redis, tls_redis_url,
                                                                tmp_path: Path) -> None:
    # Web and worker get the URL as Heroku's add-on hands it out, plus the knob that relaxes it.
    bridge = make_bridge(default_config(tmp_path), env={"REDIS_URL": tls_redis_url, "REDIS_SSL_CERT_REQS": "none"})
    bridge.redis_url = tls_redis_url
    bridge.extra_env = {"REDIS_SSL_CERT_REQS": "none"}
    bridge.start_worker()
    event = {"id": "evt_tls", "type": "user.joined", "lesson": {"id": "c1"}, "user": {"id": "1"}}
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=event)).status_code == 202
    run = await wait_until(lambda: redis.hget(job_runs_key("default:evt_tls"), "user_joined"), timeout=30)
    assert json.loads(run)["status"] == "ok"
