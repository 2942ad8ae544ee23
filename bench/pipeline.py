"""End to end: user.joined → join.ready delivered to a local receiver, against the arq ceiling.

One web process, ONE worker process, the sandbox provider, an embedded Redis, and a receiver
in this process. Measured in the same run:
  ceiling   an arq worker with the same settings running no-op jobs (enqueue → done), jobs/s
  bridge    events/s from POST to the signed join.ready webhook arriving at the receiver
            (one job per event: provider join, webhook recorded, then delivered over HTTP by that job)
and end-to-end latency p50/p99 at a paced rate below saturation.

Run: make bench-pipeline   (or .venv/bin/python bench/pipeline.py --events 3000)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from bridge.embedded import EmbeddedRedis  # noqa: E402
from bridge.processes import die_with_parent, free_port, wait_for_port  # noqa: E402
from bridge.store import WORKER_QUEUE, health_check_key  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"pipeline-bench-secret-32-bytes!!").decode()
NOOP_WORKER = """
import asyncio
import uvloop
from arq.worker import Worker, func
from bridge.store import arq_redis_settings
from workers.settings import worker_settings
from bridge.config import load_settings

async def noop(ctx, envelope):
    return "ok"

settings = worker_settings(load_settings())
settings.update(functions=[func(noop, name="noop")], on_startup=None, on_shutdown=None, cron_jobs=[])
asyncio.set_event_loop(uvloop.new_event_loop())     # the same event loop `bridge worker` runs on
Worker(**settings).run()
"""


class Receiver:
    """A minimal HTTP/1.1 server: records when each event's join.ready arrives."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.event = asyncio.Event()
        self.expected = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                payload = orjson.loads(body)
                if payload["type"] == "join.ready":
                    self.arrived.setdefault(payload["data"]["event_id"], time.perf_counter())
                    if len(self.arrived) >= self.expected:
                        self.event.set()
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def start(command: list[str], env: dict[str, str], cwd: Path, log: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=open(cwd / log, "wb"), stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent)


async def wait_worker(redis: aioredis.Redis, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while not await redis.exists(health_check_key(WORKER_QUEUE)):
        if time.monotonic() > deadline:
            raise SystemExit("worker did not start")
        await asyncio.sleep(0.05)


async def ceiling(redis: aioredis.Redis, env: dict[str, str], work: Path, jobs: int) -> float:
    from arq.connections import ArqRedis
    (work / "noop_worker.py").write_text(NOOP_WORKER)
    worker = start([sys.executable, str(work / "noop_worker.py")], env, work, "noop.log")
    try:
        await wait_worker(redis)
        arq = ArqRedis(connection_pool=redis.connection_pool)
        started = time.perf_counter()
        for n in range(jobs):
            await arq.enqueue_job("noop", {}, _job_id=f"noop-{n}")
        deadline = time.monotonic() + 120
        while await redis.zcard(WORKER_QUEUE) or [k async for k in redis.scan_iter("arq:in-progress:*", count=1000)]:
            if time.monotonic() > deadline:
                raise SystemExit("no-op jobs did not finish")
            await asyncio.sleep(0.01)
        return jobs / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        await redis.flushall()


def event(n: int, run: str) -> dict:
    return {"id": f"{run}-{n}", "type": "user.joined", "lesson": {"id": f"lesson-{n % 50}", "title": "Algebra"},
            "user": {"id": str(n), "name": f"Student {n}", "role": "student"}}


async def throughput(http: httpx.AsyncClient, url: str, receiver: Receiver, events: int, run: str) -> float:
    receiver.arrived.clear()
    receiver.event.clear()
    receiver.expected = events
    started = time.perf_counter()
    batch = 100
    for first in range(0, events, batch):
        answer = await http.post(url, json=[event(n, run) for n in range(first, min(events, first + batch))])
        answer.raise_for_status()
    await asyncio.wait_for(receiver.event.wait(), timeout=300)
    return events / (time.perf_counter() - started)


async def latency(http: httpx.AsyncClient, url: str, receiver: Receiver, rate: float, seconds: float) -> list[float]:
    receiver.arrived.clear()
    receiver.event.clear()
    count = int(rate * seconds)
    receiver.expected = count
    sent: dict[str, float] = {}

    async def send(n: int) -> None:
        item = event(n, "lat")
        sent[item["id"]] = time.perf_counter()
        (await http.post(url, json=item)).raise_for_status()

    tasks = []
    started = time.perf_counter()
    for n in range(count):
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(n)))
    await asyncio.gather(*tasks)
    await asyncio.wait_for(receiver.event.wait(), timeout=120)
    return sorted(receiver.arrived[i] - sent[i] for i in sent)


async def main_async(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    redis_server = EmbeddedRedis(work / "redis").start()
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    hook_port = server.sockets[0].getsockname()[1]
    config = work / "bridge.toml"
    config.write_text(f"""
[providers.sandbox]
kind = "sandbox"
[sources.default]
format = "canonical"
provider = "sandbox"
webhook_url = "http://127.0.0.1:{hook_port}/hook"
webhook_secret = "{SECRET}"
allow_private_network = true
""")
    env = {**os.environ, "REDIS_URL": redis_server.url, "BRIDGE_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    redis = aioredis.from_url(redis_server.url)
    web = worker = None
    try:
        noop_per_s = await ceiling(redis, env, work, args.events)
        port = free_port()
        web = start([sys.executable, "-m", "bridge.cli", "serve", "--host", "127.0.0.1"], {**env, "PORT": str(port)},
                    work, "web.log")
        worker = start([sys.executable, "-m", "bridge.cli", "worker"], env, work, "worker.log")
        if not wait_for_port(port, 30):
            raise SystemExit("web did not start")
        await wait_worker(redis)
        url = f"http://127.0.0.1:{port}/v1/events/default"
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as http:
            await throughput(http, url, receiver, 200, "warmup")
            events_per_s = await throughput(http, url, receiver, args.events, "throughput")
            delays = await latency(http, url, receiver, args.rate, args.seconds)
    finally:
        for process in (web, worker):
            if process:
                process.terminate()
                process.wait(timeout=30)
        server.close()
        await redis.aclose()
        redis_server.stop()

    p50, p99 = delays[len(delays) // 2] * 1000, delays[int(len(delays) * 0.99)] * 1000
    print(f"\nPipeline, one worker process, {args.events} events (one job each: join, record, deliver)\n")
    print("| measurement | per second | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    print(f"| arq no-op job ceiling (same worker settings) | {noop_per_s:.0f} | | |")
    print(f"| user.joined → join.ready delivered | {events_per_s:.0f} | | |")
    print(f"| end-to-end latency at {args.rate:.0f} events/s | | {p50:.1f} | {p99:.1f} |")
    print(f"\nratio bridge events/s / no-op jobs/s = {events_per_s / noop_per_s:.2f}  (target >= 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=100, help="events/s for the latency run")
    parser.add_argument("--seconds", type=float, default=5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
