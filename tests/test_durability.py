"""A 2xx means the event is on disk: fsynced by the server before the answer, whatever happens next."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from bridge.app import create_app
from bridge.config import load_settings
from bridge.embedded import EmbeddedRedis
from bridge.processes import free_port, wait_for_port
from bridge.store import EVENT_LOG
from tests.conftest import ROOT, default_config
from tests.fakes.server import serve


def event(n: int) -> dict:
    return {"id": f"durable-{n}", "type": "user.joined", "lesson": {"id": f"lesson-{n % 3}"},
            "user": {"id": str(n), "name": f"User {n}"}}


async def burst(url: str, count: int) -> set[str]:
    """`count` events sent at once; the ids answered 2xx."""
    async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=count)) as http:
        answers = await asyncio.gather(*(http.post(url, json=event(n)) for n in range(count)))
    return {f"durable-{n}" for n, answer in enumerate(answers) if answer.status_code == 202}


def start_serve(env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--host", "127.0.0.1"], env=env,
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_the_embedded_server_fsyncs_every_write(tmp_path: Path) -> None:
    """`bridge serve` with no REDIS_URL starts its own server: `appendfsync always`."""
    port, redis_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PORT": str(port), "BRIDGE_EMBEDDED_REDIS_PORT": str(redis_port)}
    env.pop("REDIS_URL", None)
    env.pop("BRIDGE_CONFIG", None)
    web = start_serve(env, tmp_path)
    try:
        assert wait_for_port(port, 20)
        client = aioredis.from_url(f"redis://127.0.0.1:{redis_port}/0")
        try:
            assert await client.config_get("appendfsync") == {"appendfsync": "always"}
            assert await client.config_get("appendonly") == {"appendonly": "yes"}
        finally:
            await client.aclose()
    finally:
        web.terminate()
        web.wait(timeout=30)


@pytest.fixture
def everysec_server(tmp_path: Path):
    """An 'external' server as a managed plan runs it: AOF on, fsync once a second."""
    server = EmbeddedRedis(tmp_path / "external", appendfsync="everysec").start()
    yield server
    server.stop()


async def accept_burst(redis_url: str, tmp_path: Path, count: int,
                       env: dict[str, str] | None = None) -> tuple[set[str], dict[str, Any]]:
    """The bridge (in-process, real HTTP) takes `count` events at once: the ids answered 202, and the
    server's INFO commandstats for just that burst."""
    client = aioredis.from_url(redis_url)
    settings = load_settings({"BRIDGE_CONFIG": str(default_config(tmp_path)), "REDIS_URL": redis_url, **(env or {})})
    try:
        with serve(create_app(settings), lifespan=True) as base:
            await client.config_resetstat()
            accepted = await burst(f"{base}/v1/events/default", count)
            return accepted, await client.info("commandstats")
    finally:
        await client.aclose()


async def test_one_waitaof_per_group_commit(everysec_server: EmbeddedRedis, tmp_path: Path) -> None:
    accepted, stats = await accept_burst(everysec_server.url, tmp_path, 200)
    assert len(accepted) == 200
    groups = stats["cmdstat_evalsha"]["calls"]
    # The accept script and WAITAOF travel together: as many fsync waits as group commits, and far
    # fewer of each than requests (one fsync covers a whole group), plus the one that probed the server.
    assert stats["cmdstat_waitaof"]["calls"] == groups + 1
    assert groups < 100


async def test_a_server_that_fsyncs_every_write_needs_no_waitaof(tmp_path: Path) -> None:
    """appendfsync always: each reply already follows an fsync, so no group pays for a WAITAOF."""
    server = EmbeddedRedis(tmp_path / "always").start()
    try:
        accepted, stats = await accept_burst(server.url, tmp_path, 100)
    finally:
        server.stop()
    assert len(accepted) == 100
    assert "cmdstat_waitaof" not in stats and stats["cmdstat_evalsha"]["calls"] < 100


async def test_confirm_fsync_off_trusts_the_server_policy(everysec_server: EmbeddedRedis, tmp_path: Path) -> None:
    accepted, stats = await accept_burst(everysec_server.url, tmp_path, 50, {"REDIS_CONFIRM_FSYNC": "false"})
    assert len(accepted) == 50
    assert "cmdstat_waitaof" not in stats


async def test_a_server_without_aof_is_used_and_said_so(tmp_path: Path) -> None:
    """No append-only file: WAITAOF is refused, so the bridge accepts on the server's word and logs why."""
    server = EmbeddedRedis(tmp_path / "no-aof").start()
    client = aioredis.from_url(server.url)
    try:
        await client.config_set("appendonly", "no")
        settings = load_settings({"BRIDGE_CONFIG": str(default_config(tmp_path)), "REDIS_URL": server.url})
        with serve(create_app(settings), lifespan=True) as base:
            assert len(await burst(f"{base}/v1/events/default", 20)) == 20
        assert await client.xlen(EVENT_LOG) == 20
    finally:
        await client.aclose()
        server.stop()


async def test_kill_9_of_redis_right_after_a_burst_loses_nothing(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    settings = load_settings({"BRIDGE_CONFIG": str(default_config(tmp_path)), "REDIS_URL": server.url})
    with serve(create_app(settings), lifespan=True) as base:
        accepted = await burst(f"{base}/v1/events/default", 300)
        assert server.process is not None
        server.process.kill()                        # the instant the last 2xx arrived
        server.process.wait(timeout=10)
    server.process = None
    server.start()
    client = aioredis.from_url(server.url)
    try:
        logged = {fields[b"id"].decode() for _, fields in await client.xrange(EVENT_LOG)}
    finally:
        await client.aclose()
        server.stop()
    assert len(accepted) == 300
    assert accepted <= logged
