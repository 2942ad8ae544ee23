"""Join storms: a class starts and everyone clicks "join" at once (issue #17).

The default process layout (one `bridge serve`, ONE `bridge worker`), the JaaS provider (RS256 tokens
minted locally, no provider call per join), an embedded Redis (AOF fsynced on every write), and in this
process a webhook receiver that verifies every Standard Webhooks signature with the `standardwebhooks`
library. Request bodies are built before the clock starts; raw keep-alive sockets send them.

  burst    N joins (default 2,000) over 10 lessons, all sent at once (100 connections): time from the
           first send to the last join.ready, p50/p99 per join (its send → its join.ready)
  steady   200 joins/s for ~10 s: p50/p99 per join
per case: worker CPU ms per join (the worker process's user+system time, /proc via psutil), Redis
commands per join (INFO stats total_commands_processed), Redis bytes per join once every delivery
has succeeded and every job has finished (INFO memory used_memory), lost and duplicated join.ready.

The floor, measured in the same run: one RS256 signature (PyJWT, loaded key), one signed POST to the
same receiver the way the worker sends it (bridge.webhooks.attempt, in its own process), one
no-op job on the bridge's worker (LeanWorker, the worker's settings) and on arq's own Worker: CPU and Redis
commands per job.

Run: make bench-join   (or .venv/bin/python bench/join_storm.py --joins 500 --steady-s 5 for a short run)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from arq.constants import job_key_prefix  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from standardwebhooks import Webhook  # noqa: E402

from bench.attendance import APP_ID, HOOK_SECRET, exchange, start, start_stack  # noqa: E402
from bench.pipeline import NOOP_WORKER, wait_worker  # noqa: E402
from bench.pipeline import start as start_process  # noqa: E402
from bridge.processes import free_port, wait_for_port  # noqa: E402
from bridge.store import JOB_EXPIRES_MS, WORKER_QUEUE, arq_payload  # noqa: E402

LESSONS = 10
BURST_CONNECTIONS = 100
STEADY_CONNECTIONS = 20
FLOOR_COUNT = 1000
TARGETS = {"burst_s": 3.0, "cpu_ms": 1.3, "commands": 20.0, "steady_p99_ms": 50.0, "bytes": 1536.0}

# The floor's POST: bridge.webhooks.attempt (sign, destination check, one POST straight through the
# workers' transport), as many at a time as the transport lets in flight to one origin; prints CPU ms per POST.
SIGNED_POSTER = """
import asyncio, sys, time
import uvloop
from bridge.config import load_settings
from bridge.http_transport import MAX_PER_ORIGIN as AT_ONCE, ConnectionPerRequestTransport
from bridge.webhooks import attempt

async def main(total):
    settings = load_settings()
    source = settings.sources["default"]
    transport = ConnectionPerRequestTransport()
    body = b'{"type":"post.only","timestamp":"2026-11-25T00:00:00Z","data":{"token":"' + b"x" * 700 + b'"}}'

    async def post(n):
        result, _, _ = await attempt(transport, settings, source, f"msg_floor{n}", body)
        assert result.error is None, result

    await asyncio.gather(*(post(n) for n in range(AT_ONCE)))
    cpu = time.process_time()
    for first in range(0, total, AT_ONCE):
        await asyncio.gather(*(post(n) for n in range(first, first + AT_ONCE)))
    print((time.process_time() - cpu) * 1000 / total)
    await transport.aclose()

uvloop.run(main(int(sys.argv[1])))
"""


class Receiver:
    """The LMS's webhook endpoint: verifies each signature, notes when each event's join.ready arrives."""

    def __init__(self) -> None:
        self.verifier = Webhook(HOOK_SECRET)
        self.arrived: dict[str, float] = {}
        self.duplicates = 0
        self.bad_signatures = 0
        self.expected: set[str] = set()
        self.all_arrived = asyncio.Event()

    def expect(self, event_ids: list[str]) -> None:
        self.expected = set(event_ids)
        self.all_arrived.clear()

    def note(self, head: bytes, body: bytes) -> None:
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        try:
            self.verifier.verify(body, headers)
        except Exception:   # the library raises its own verification error for any mismatch
            self.bad_signatures += 1
            return
        payload = orjson.loads(body)
        if payload["type"] != "join.ready":
            return
        event_id = payload["data"]["event_id"]
        if event_id in self.arrived:
            self.duplicates += 1
            return
        self.arrived[event_id] = time.perf_counter()
        if self.expected and self.expected <= self.arrived.keys():
            self.all_arrived.set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line[15:]) for line in head.split(b"\r\n")
                               if line[:15].lower() == b"content-length:"), 0)
                self.note(head, await reader.readexactly(length))
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def join_request(run: str, n: int) -> tuple[str, bytes]:
    event_id = f"{run}-{n}"
    body = orjson.dumps({"id": event_id, "type": "user.joined", "lesson": {"id": f"storm-{n % LESSONS}"},
                         "user": {"id": f"u{n}", "name": f"Student {n}", "email": f"s{n}@example.edu",
                                  "role": "teacher" if n % 50 == 0 else "student"}})
    return event_id, (b"POST /v1/events/default HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body)) + body


def scheduled_request(n: int) -> bytes:
    body = orjson.dumps({"id": f"schedule-{n}", "type": "lesson.scheduled",
                         "lesson": {"id": f"storm-{n}", "title": f"Lecture {n}"}})
    return (b"POST /v1/events/default HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


async def send(port: int, requests: asyncio.Queue[tuple[str, bytes] | None], sent: dict[str, float],
               statuses: dict[int, int]) -> None:
    """One keep-alive connection: POST what the queue hands out until it hands out None."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (item := await requests.get()) is not None:
            event_id, request = item
            sent[event_id] = time.perf_counter()
            status = await exchange(reader, writer, request)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def post_all(port: int, requests: list[tuple[str, bytes]], connections: int,
                   rate: float | None = None) -> tuple[dict[str, float], dict[int, int]]:
    """POST every request (paced at `rate` per second if given) over `connections` keep-alive sockets."""
    queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
    sent: dict[str, float] = {}
    statuses: dict[int, int] = {}
    senders = [asyncio.create_task(send(port, queue, sent, statuses)) for _ in range(connections)]
    started = time.perf_counter()
    for n, request in enumerate(requests):
        if rate:
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        queue.put_nowait(request)
    for _ in senders:
        queue.put_nowait(None)
    await asyncio.gather(*senders)
    return sent, statuses


@dataclass
class Counters:
    commands: int
    memory: int
    cpu_s: float


async def counters(redis: aioredis.Redis, process: psutil.Process) -> Counters:
    stats, memory = await redis.info("stats"), await redis.info("memory")
    cpu = process.cpu_times()
    return Counters(stats["total_commands_processed"], memory["used_memory"], cpu.user + cpu.system)


async def settled(redis: aioredis.Redis, timeout_s: float = 60) -> None:
    """Every job finished (queue empty, nothing in progress), so the counters hold whole jobs."""
    deadline = time.monotonic() + timeout_s
    while await redis.zcard(WORKER_QUEUE) or [k async for k in redis.scan_iter("arq:in-progress:*", count=1000)]:
        if time.monotonic() > deadline:
            raise SystemExit("jobs did not finish")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)       # the worker's last bookkeeping after its queue emptied


@dataclass
class Case:
    name: str
    joins: int
    wall_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    commands: float
    bytes_per_join: float
    lost: int
    statuses: dict[int, int]


async def run_case(name: str, port: int, redis: aioredis.Redis, worker: psutil.Process, receiver: Receiver,
                   run: str, joins: int, connections: int, rate: float | None) -> Case:
    requests = [join_request(run, n) for n in range(joins)]
    receiver.expect([event_id for event_id, _ in requests])
    before = await counters(redis, worker)
    first_send = time.perf_counter()
    sent, statuses = await post_all(port, requests, connections, rate)
    try:
        await asyncio.wait_for(receiver.all_arrived.wait(), timeout=120 + joins / 50)
    except TimeoutError:
        pass
    arrived = {event_id: receiver.arrived[event_id] for event_id in sent if event_id in receiver.arrived}
    await settled(redis)
    after = await counters(redis, worker)
    delays = sorted((arrived[event_id] - sent[event_id]) * 1000 for event_id in arrived)
    return Case(name, joins, max(arrived.values()) - first_send if arrived else float("nan"),
                delays[len(delays) // 2], delays[min(len(delays) - 1, int(len(delays) * 0.99))],
                (after.cpu_s - before.cpu_s) * 1000 / joins, (after.commands - before.commands) / joins,
                (after.memory - before.memory) / joins, joins - len(arrived), statuses)


def rs256_floor_ms(key: Any) -> float:
    claims = {"aud": "jitsi", "iss": "chat", "sub": APP_ID, "room": "storm-0", "nbf": 0, "exp": 2**31,
              "context": {"user": {"id": "u1", "name": "Student 1", "moderator": "false"}}}
    jwt.encode(claims, key, algorithm="RS256", headers={"kid": f"{APP_ID}/k1"})
    started = time.process_time()
    for _ in range(FLOOR_COUNT):
        jwt.encode(claims, key, algorithm="RS256", headers={"kid": f"{APP_ID}/k1"})
    return (time.process_time() - started) * 1000 / FLOOR_COUNT


async def post_floor_ms(env: dict[str, str], work: Path) -> float:
    (work / "signed_poster.py").write_text(SIGNED_POSTER)
    process = await asyncio.create_subprocess_exec(sys.executable, str(work / "signed_poster.py"), str(FLOOR_COUNT),
                                                   env=env, cwd=work, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    if process.returncode:
        raise SystemExit("the signed-POST floor run failed")
    return float(out)


async def noop_floor(redis: aioredis.Redis, env: dict[str, str], work: Path, protocol: str) -> tuple[float, float]:
    """CPU ms and Redis commands per no-op job, the worker's settings, a queue filled at once; `protocol`
    "arq" runs arq's own Worker, "lean" the bridge's LeanWorker."""
    (work / "noop_worker.py").write_text(NOOP_WORKER)
    process = start_process([sys.executable, str(work / "noop_worker.py"), protocol], env, work, f"noop-{protocol}.log")
    try:
        await wait_worker(redis)
        worker = psutil.Process(process.pid)
        before = await counters(redis, worker)
        now_ms = int(time.time() * 1000)
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(FLOOR_COUNT):
                pipe.psetex(job_key_prefix + f"noop-{n}", JOB_EXPIRES_MS, arq_payload("noop", ({},), now_ms))
                pipe.zadd(WORKER_QUEUE, {f"noop-{n}": now_ms})
            await pipe.execute()
        enqueue_commands = 2 * FLOOR_COUNT + 1
        await settled(redis)
        after = await counters(redis, worker)
        return ((after.cpu_s - before.cpu_s) * 1000 / FLOOR_COUNT,
                (after.commands - before.commands - enqueue_commands) / FLOOR_COUNT)
    finally:
        process.terminate()
        process.wait(timeout=30)
        await redis.flushall()


async def main_async(args: argparse.Namespace) -> tuple[list[Case], dict[str, float]]:
    receiver = Receiver()
    work, server, redis, hook, env = await start_stack("bench-join-storm-", receiver.handle)
    key = serialization.load_pem_private_key((work / "jaas.pem").read_bytes(), None)
    port = free_port()
    processes = []
    try:
        floor = {"rs256_ms": rs256_floor_ms(key), "post_ms": await post_floor_ms(env, work)}
        floor["noop_ms"], floor["noop_commands"] = await noop_floor(redis, env, work, "lean")
        floor["arq_noop_ms"], floor["arq_noop_commands"] = await noop_floor(redis, env, work, "arq")
        processes.append(start(["serve", "--host", "127.0.0.1"], {**env, "PORT": str(port)}, work, "web.log"))
        if args.profile:                   # the worker under cProfile; the stats are written when it stops
            processes.append(start_process([sys.executable, "-m", "cProfile", "-o", args.profile,
                                            "-m", "bridge.cli", "worker"], env, work, "worker.log"))
        else:
            processes.append(start(["worker"], env, work, "worker.log"))
        if not wait_for_port(port, 30):
            raise SystemExit("bridge serve did not start")
        await wait_worker(redis)
        worker = psutil.Process(processes[1].pid)
        # The lessons were scheduled before class; a first round of joins warms both processes up.
        await post_all(port, [(f"schedule-{n}", scheduled_request(n)) for n in range(LESSONS)], 1)
        await run_case("warm-up", port, redis, worker, receiver, "warm", min(500, args.joins), BURST_CONNECTIONS, None)
        cases = [await run_case(f"burst of {args.joins}, all at once", port, redis, worker, receiver, "burst",
                                args.joins, BURST_CONNECTIONS, None),
                 await run_case(f"steady {args.rate:.0f}/s for {args.steady_s:.0f} s", port, redis, worker, receiver,
                                "steady", int(args.rate * args.steady_s), STEADY_CONNECTIONS, args.rate)]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        hook.close()
        await redis.aclose()
        server.stop()
    if receiver.bad_signatures:
        raise SystemExit(f"{receiver.bad_signatures} webhooks failed signature verification")
    report(cases, floor, receiver.duplicates)
    return cases, floor


def report(cases: list[Case], floor: dict[str, float], duplicates: int) -> None:
    print("\nJoin storm: JaaS, one `bridge serve`, ONE `bridge worker`, embedded Redis (AOF always), "
          "signatures verified at the receiver\n")
    print("| case | first send → last join.ready | p50 ms | p99 ms | worker CPU ms/join | Redis commands/join "
          "| Redis bytes/join | lost | intake statuses |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        print(f"| {case.name} | {case.wall_s:.2f} s | {case.p50_ms:.1f} | {case.p99_ms:.1f} | {case.cpu_ms:.2f} "
              f"| {case.commands:.1f} | {case.bytes_per_join:.0f} | {case.lost} | {case.statuses} |")
    parts = floor["rs256_ms"] + floor["post_ms"] + floor["noop_ms"]
    print(f"\nfloor: RS256 signature {floor['rs256_ms']:.2f} ms + signed POST {floor['post_ms']:.2f} ms "
          f"+ no-op job {floor['noop_ms']:.2f} ms = {parts:.2f} ms CPU; a no-op job alone makes "
          f"{floor['noop_commands']:.1f} Redis commands (arq's own Worker: {floor['arq_noop_ms']:.2f} ms, "
          f"{floor['arq_noop_commands']:.1f} commands)")
    burst, steady = cases
    print(f"duplicated join.ready: {duplicates}")
    checks = [("burst delivered", burst.wall_s, TARGETS["burst_s"], "s"),
              ("worker CPU per join (burst)", burst.cpu_ms, TARGETS["cpu_ms"], "ms"),
              ("Redis commands per join (burst)", burst.commands, TARGETS["commands"], ""),
              ("steady p99", steady.p99_ms, TARGETS["steady_p99_ms"], "ms"),
              ("Redis bytes per join (burst, delivered)", burst.bytes_per_join, TARGETS["bytes"], "B")]
    for what, value, target, unit in checks:
        verdict = "ok" if value <= target else "ABOVE TARGET"
        print(f"{what}: {value:.2f} {unit} (target <= {target:g} {unit}: {verdict}); "
              f"ratio to target {value / target:.2f}")
    print(f"worker CPU per join / floor = {burst.cpu_ms / parts:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--joins", type=int, default=2000, help="joins in the burst")
    parser.add_argument("--rate", type=float, default=200, help="joins/s in the steady case")
    parser.add_argument("--steady-s", type=float, default=10, help="seconds of the steady case")
    parser.add_argument("--profile", type=os.path.abspath,
                        help="run the worker under cProfile, writing its stats to this file")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
