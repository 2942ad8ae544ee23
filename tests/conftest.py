"""Shared fixtures: a real Redis server the tests start, the bridge over real HTTP, real workers."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from bridge.app import create_app
from bridge.config import load_settings
from bridge.embedded import EmbeddedRedis
from bridge.http_transport import ConnectionPerRequestTransport
from bridge.processes import free_port, wait_for_port
from bridge.store import WORKER_QUEUE, health_check_key, worker_redis
from tests.fakes.receiver import Receiver
from tests.fakes.server import serve

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
SESSION_TMP_VAR = "LESSON_BRIDGE_TEST_TMP"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"receiver-secret-32-bytes-long!!!").decode()
MOODLE_TOKEN = "moodle-token-7f3a9c"


@pytest.fixture(scope="session", autouse=True)
def test_session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This session's temp root, where every test's recordings are written: `ffmpeg_pids` counts only FFmpeg
    writing under it, not another session's (make test runs two pytest processes, each test file in one)."""
    root = tmp_path_factory.getbasetemp()
    os.environ[SESSION_TMP_VAR] = str(root)
    return root


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def arq_redis(redis_server: EmbeddedRedis, redis: aioredis.Redis) -> AsyncIterator[ArqRedis]:
    """The worker's own kind of client (`redis` flushed the server first)."""
    client = worker_redis(redis_server.url, 4, WORKER_QUEUE)
    yield client
    await client.aclose()


@pytest.fixture
async def transport() -> AsyncIterator[httpx.AsyncBaseTransport]:
    """The workers' transport, as they make their providers' and webhooks' requests."""
    transport = ConnectionPerRequestTransport()
    yield transport
    await transport.aclose()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    hook = Receiver(WEBHOOK_SECRET)
    with serve(hook.app) as base:
        yield hook, f"{base}/hook"


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def lms_source_toml(provider: str, hook_url: str) -> str:
    """`[sources.default]`: canonical, its webhooks to `hook_url` on loopback; `[webhooks]` retrying fast."""
    return f"""
[sources.default]
format = "canonical"
provider = "{provider}"
webhook_url = "{hook_url}"
webhook_secret = "{WEBHOOK_SECRET}"
allow_private_network = true

[webhooks]
retry_schedule = [0.2, 0.4, 0.8]
timeout_s = 2
"""


def default_config(tmp_path: Path, webhook_url: str | None = None, extra: str = "") -> Path:
    hook = ""
    if webhook_url:
        hook = (f'webhook_url = "{webhook_url}"\nwebhook_secret = "{WEBHOOK_SECRET}"\n'
                "allow_private_network = true\n")
    return write_config(tmp_path / "bridge.toml", f"""
[providers.sandbox]
kind = "sandbox"

[sources.default]
format = "canonical"
provider = "sandbox"
{hook}
[sources.moodle]
format = "moodle"
token = "{MOODLE_TOKEN}"
provider = "sandbox"
{hook}
[webhooks]
retry_schedule = [0.2, 0.4, 0.8]
timeout_s = 2

[bridge]
data_dir = "{tmp_path / 'var'}"
{extra}
""")


class Bridge:
    """The web app over real HTTP on loopback plus helpers to start real worker processes."""

    def __init__(self, base_url: str, config: Path, redis_url: str, tmp_path: Path) -> None:
        self.base_url, self.config, self.redis_url, self.tmp_path = base_url, config, redis_url, tmp_path
        self.workers: list[subprocess.Popen[bytes]] = []
        self.extra_env: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        # One `bridge worker` process unless a test asks for more (unset, it starts one per core).
        return {**os.environ, "BRIDGE_CONFIG": str(self.config), "REDIS_URL": self.redis_url,
                "PYTHONPATH": str(ROOT), "WORKER_CONCURRENCY": "1", **self.extra_env}

    def start_worker(self, kind: str = "worker") -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"{kind}-{len(self.workers)}.log", "wb")
        process = subprocess.Popen([sys.executable, "-m", "bridge.cli", kind], env=self.env(), stdout=log,
                                   stderr=subprocess.STDOUT, cwd=self.tmp_path)
        self.workers.append(process)
        return process

    def start_web(self) -> str:
        """A real `bridge serve` process (the in-thread app is for everything else); returns its URL."""
        port = free_port()
        log = open(self.tmp_path / "web.log", "wb")
        process = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--host", "127.0.0.1"],
                                   env={**self.env(), "PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=self.tmp_path)
        self.workers.append(process)
        if not wait_for_port(port, 20):
            raise AssertionError("bridge serve did not start")
        return f"http://127.0.0.1:{port}"

    def stop_all(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.tmp_path.glob("*.log")))


@pytest.fixture
def make_bridge(redis_server: EmbeddedRedis, redis: aioredis.Redis,
                tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    started: list[tuple[Bridge, Any]] = []

    def make(config: Path | None = None, webhook_url: str | None = None, extra: str = "",
             env: dict[str, str] | None = None) -> Bridge:
        """`env`: more environment for the web app (e.g. BRIDGE_ADMIN_TOKEN)."""
        config = config or default_config(tmp_path, webhook_url, extra)
        settings = load_settings({"BRIDGE_CONFIG": str(config), "REDIS_URL": redis_server.url, **(env or {})})
        context = serve(create_app(settings), lifespan=True)
        base = context.__enter__()
        bridge = Bridge(base, config, redis_server.url, tmp_path)
        started.append((bridge, context))
        return bridge

    yield make
    for bridge, context in started:
        bridge.stop_all()
        context.__exit__(None, None, None)


def children(pid: int) -> dict[int, str]:
    """pid → command line of the direct children of `pid`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


async def wait_until(predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.05) -> Any:
    """Poll an (async or sync) predicate until it returns truthy; fail the test on time-out."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def worker_ready(redis: aioredis.Redis, queue: str = WORKER_QUEUE) -> bool:
    return bool(await redis.exists(health_check_key(queue)))


async def hand_back_now(redis: aioredis.Redis, job_id: str) -> None:
    """What happens when a killed worker's in-progress mark lapses (job timeout + 10 s): the job is due again."""
    assert await redis.delete(in_progress_key_prefix + job_id) == 1
    await redis.zadd(WORKER_QUEUE, {job_id: int(time.time() * 1000)}, xx=True)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as http:
        yield http
