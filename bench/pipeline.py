"""End to end: user.joined → join.ready delivered to a local receiver, against the arq ceiling.

One web process, ONE worker process, the sandbox provider, an embedded Redis, and a receiver
in this process. Both throughputs are one worker draining a queue filled before it starts, timed
from the first job's start (arq's own `st` in its result) to the last job's end, so neither is
bounded by how fast this script can enqueue:
  ceiling   the bridge's worker (LeanWorker, the same settings) running no-op jobs, jobs/s
  bridge    events/s, each a job that reads the lesson, joins via the provider, records the
            join.ready webhook and its outcome, and delivers it, signed, over HTTP to the receiver
            (timed to the webhook's arrival there)
plus end-to-end latency p50/p99 (POST → webhook arrival) at a paced rate below saturation.

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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from arq.constants import job_key_prefix, result_key_prefix  # noqa: E402

from bridge.embedded import EmbeddedRedis  # noqa: E402
from bridge.processes import die_with_parent, free_port, wait_for_port  # noqa: E402
from bridge.store import JOB_EXPIRES_MS, WORKER_QUEUE, arq_payload, health_check_key, job_runs_key  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"pipeline-bench-secret-32-bytes!!").decode()
# argv[1] "arq": arq's own Worker (its protocol: 17 Redis commands a job); else the bridge's LeanWorker.
NOOP_WORKER = """
import asyncio, sys
import uvloop
from arq.worker import Worker, func
from workers.settings import worker_settings
from workers.worker import LeanWorker
from bridge.config import load_settings
from bridge.processes import tune_gc_for_service

async def noop(ctx, envelope):
    return "ok"

async def startup(ctx):
    tune_gc_for_service()        # as the bridge worker's start-up does

settings = worker_settings(load_settings())
settings.update(functions=[func(noop, name="noop")], on_startup=startup, on_shutdown=None, cron_jobs=[])
asyncio.set_event_loop(uvloop.new_event_loop())     # the same event loop `bridge worker` runs on
(Worker if sys.argv[1:] == ["arq"] else LeanWorker)(**settings).run()
"""

# The floor under any job that delivers a webhook: one process POSTing join.ready-sized bodies to the
# same receiver the way the worker does (bridge.webhooks.attempt: httpx requests straight through the
# workers' transport), 50 at a time (as many as the worker runs jobs).
POSTER = """
import asyncio, sys, time
import httpx, uvloop
from bridge.http_transport import ConnectionPerRequestTransport

async def main(url, total):
    body = b'{"type":"post.only","timestamp":"2026-11-25T00:00:00Z","data":{"token":"' + b"x" * 400 + b'"}}'
    headers = {"user-agent": "lesson-bridge", "content-type": "application/json", "webhook-id": "msg_x",
               "webhook-timestamp": "1", "webhook-signature": "v1," + "s" * 44}
    timeout = httpx.Timeout(10).as_dict()
    transport = ConnectionPerRequestTransport()

    async def post():
        request = httpx.Request("POST", url, content=body, headers=headers, extensions={"timeout": timeout})
        response = await transport.handle_async_request(request)
        await response.aread()
        await response.aclose()
        assert response.status_code < 300

    await asyncio.gather(*(post() for _ in range(50)))
    started = time.perf_counter()
    for _ in range(total // 50):
        await asyncio.gather(*(post() for _ in range(50)))
    print(total // 50 * 50 / (time.perf_counter() - started))
    await transport.aclose()

uvloop.run(main(sys.argv[1], int(sys.argv[2])))
"""


class Receiver:
    """A minimal HTTP/1.1 server: records when each event's join.ready arrives."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}       # perf_counter, for latency
        self.arrived_at: dict[str, float] = {}    # wall clock, to compare with arq's job start times
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
                    self.arrived_at.setdefault(payload["data"]["event_id"], time.time())
                    if len(self.arrived) >= self.expected:
                        self.event.set()
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


Process = subprocess.Popen[bytes]


def start(command: list[str], env: dict[str, str], cwd: Path, log: str) -> Process:
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=open(cwd / log, "wb"), stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent)


async def wait_worker(redis: aioredis.Redis, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while not await redis.exists(health_check_key(WORKER_QUEUE)):
        if time.monotonic() > deadline:
            raise SystemExit("worker did not start")
        await asyncio.sleep(0.05)


async def post_floor(env: dict[str, str], work: Path, url: str, posts: int) -> float:
    (work / "poster.py").write_text(POSTER)
    process = await asyncio.create_subprocess_exec(sys.executable, str(work / "poster.py"), url, str(posts), env=env,
                                                   cwd=work, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    if process.returncode:
        raise SystemExit("the POST-only run failed")
    return float(out)


async def first_start_ms(redis: aioredis.Redis, job_ids: list[str]) -> float:
    """The earliest start among these no-op jobs, from arq's results (JSON here, like every bridge worker's)."""
    results = await redis.mget([result_key_prefix + job_id for job_id in job_ids])
    return min(orjson.loads(result)["st"] for result in results if result)


async def first_run_start_ms(redis: aioredis.Redis, refs: list[str], function: str) -> float:
    """The earliest start among these events' runs of `function`: each run's outcome (its runs hash)
    has when it ended and how long it took. Event jobs keep no arq result.

    A job's webhook arrives after its outcome is recorded, yet give the last ones a moment."""
    deadline = time.monotonic() + 30
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            for ref in refs:
                pipe.hget(job_runs_key(ref), function)
            outcomes = [orjson.loads(raw) for raw in await pipe.execute() if raw]
        if len(outcomes) == len(refs):
            return min(run["at"] - run["ms"] for run in outcomes)          # "at": epoch ms (workers/jobs.py)
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(outcomes)} of {len(refs)} jobs recorded an outcome")
        await asyncio.sleep(0.05)


async def ceiling(redis: aioredis.Redis, env: dict[str, str], work: Path, jobs: int) -> float:
    (work / "noop_worker.py").write_text(NOOP_WORKER)
    job_ids = [f"noop-{n}" for n in range(jobs)]
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.psetex(job_key_prefix + job_id, JOB_EXPIRES_MS, arq_payload("noop", ({},), now_ms))
            pipe.zadd(WORKER_QUEUE, {job_id: now_ms})
        await pipe.execute()
    worker = start([sys.executable, str(work / "noop_worker.py"), "lean"], env, work, "noop.log")
    try:
        deadline = time.monotonic() + 120
        while await redis.zcard(WORKER_QUEUE) or [k async for k in redis.scan_iter("arq:in-progress:*", count=1000)]:
            if time.monotonic() > deadline:
                raise SystemExit("no-op jobs did not finish")
            await asyncio.sleep(0.005)
        results = await redis.mget([result_key_prefix + job_id for job_id in job_ids])
        finished = max(orjson.loads(result)["ft"] for result in results if result)
        return jobs / ((finished - await first_start_ms(redis, job_ids)) / 1000)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        await redis.flushall()


def event(n: int, run: str) -> dict:
    return {"id": f"{run}-{n}", "type": "user.joined", "lesson": {"id": f"lesson-{n % 50}", "title": "Algebra"},
            "user": {"id": str(n), "name": f"Student {n}", "role": "student"}}


async def post_all(http: httpx.AsyncClient, url: str, events: int, run: str) -> list[str]:
    """POST the events in batches of 100; returns their refs."""
    for first in range(0, events, 100):
        answer = await http.post(url, json=[event(n, run) for n in range(first, min(events, first + 100))])
        answer.raise_for_status()
    return [f"default:{run}-{n}" for n in range(events)]


async def throughput(http: httpx.AsyncClient, redis: aioredis.Redis, url: str, receiver: Receiver, events: int,
                     run: str, start_worker: Callable[[], Process]) -> tuple[float, Process]:
    """Events/s of one worker draining `events` queued user.joined jobs, timed to the last webhook."""
    receiver.arrived.clear()
    receiver.arrived_at.clear()
    receiver.event.clear()
    receiver.expected = events
    refs = await post_all(http, url, events, run)
    worker = start_worker()
    await asyncio.wait_for(receiver.event.wait(), timeout=300)
    last_arrival_ms = max(receiver.arrived_at.values()) * 1000
    return events / ((last_arrival_ms - await first_run_start_ms(redis, refs, "user_joined")) / 1000), worker


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
    env = {**os.environ, "REDIS_URL": redis_server.url, "BRIDGE_CONFIG": str(config), "PYTHONPATH": str(ROOT),
           "WORKER_CONCURRENCY": "1"}      # ONE worker process, as the ceiling's no-op worker is one
    redis = aioredis.from_url(redis_server.url)
    web = worker = None
    try:
        noop_per_s = await ceiling(redis, env, work, args.events)
        posts_per_s = await post_floor(env, work, f"http://127.0.0.1:{hook_port}/hook", args.events)
        port = free_port()
        web = start([sys.executable, "-m", "bridge.cli", "serve", "--host", "127.0.0.1"], {**env, "PORT": str(port)},
                    work, "web.log")
        if not wait_for_port(port, 30):
            raise SystemExit("web did not start")

        def start_worker() -> Process:
            return start([sys.executable, "-m", "bridge.cli", "worker"], env, work, "worker.log")

        url = f"http://127.0.0.1:{port}/v1/events/default"
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as http:
            _, worker = await throughput(http, redis, url, receiver, 200, "warmup", start_worker)
            worker.terminate()
            worker.wait(timeout=30)
            events_per_s, worker = await throughput(http, redis, url, receiver, args.events, "throughput",
                                                    start_worker)
            await wait_worker(redis)
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
    print(f"| arq no-op job ceiling (same worker settings, queue drained) | {noop_per_s:.0f} | | |")
    print(f"| webhook POSTs alone to the same receiver, as the worker sends them | {posts_per_s:.0f} | | |")
    print(f"| user.joined → join.ready delivered (queue drained) | {events_per_s:.0f} | | |")
    print(f"| end-to-end latency at {args.rate:.0f} events/s | | {p50:.1f} | {p99:.1f} |")
    print(f"\nratio bridge events/s / no-op jobs/s = {events_per_s / noop_per_s:.2f}  (target >= 0.5)")
    print(f"a job that only POSTed, at no cost beyond arq's and the POST's, would reach "
          f"{1 / (1 / noop_per_s + 1 / posts_per_s) / noop_per_s:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=100, help="events/s for the latency run")
    parser.add_argument("--seconds", type=float, default=5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
