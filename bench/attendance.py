"""Provider events in: how fast JaaS webhooks are accepted and folded into the attendance ledger, against
the LMS intake rate measured in the same run, and how soon attendance.report follows a session's end.

One `bridge serve` process, ONE `bridge worker`, an embedded Redis (AOF fsynced on every write), and a
webhook receiver in this process. Bodies are built (and JaaS bodies signed) before the clock starts;
the same raw keep-alive sender posts both kinds, 50 connections.
  LMS intake      canonical user.left events accepted per second (web only: 202s / time)
  provider fold   signed PARTICIPANT_JOINED events per second from the first POST until every one is
                  in the ledger (web accept + one worker's provider_event jobs, each also delivering
                  its participant.joined webhook to the receiver)
  report latency  a 500-participant session (500 joins, 250 leaves, sent at once), then ROOM_DESTROYED:
                  from the 202 of that last event to attendance.report arriving at the receiver

Run: make bench-attendance   (or .venv/bin/python bench/attendance.py --events 4000)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from bridge.embedded import EmbeddedRedis  # noqa: E402
from bridge.processes import die_with_parent, free_port, wait_for_port  # noqa: E402
from bridge.store import WORKER_QUEUE, attendance_key, health_check_key, room_owner_key  # noqa: E402

APP_ID = "vpaas-magic-cookie-bench"
JAAS_SECRET = "bench-jaas-webhook-secret"
HOOK_SECRET = "whsec_" + base64.b64encode(b"attendance-bench-secret-32bytes!").decode()
CONNECTIONS = 50
ROOMS = 8


class Receiver:
    """A minimal HTTP/1.1 webhook endpoint: answers 204 and notes when attendance.report arrives."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, dict]] = []
        self.report_arrived = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line[15:]) for line in head.split(b"\r\n")
                               if line[:15].lower() == b"content-length:"), 0)
                body = await reader.readexactly(length)
                if b'"attendance.report"' in body[:40]:
                    self.reports.append((time.perf_counter(), json.loads(body)))
                    self.report_arrived.set()
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def jaas_request(path: str, event: dict, now: int) -> bytes:
    body = json.dumps(event).encode()
    signature = base64.b64encode(hmac.new(JAAS_SECRET.encode(), f"{now}.".encode() + body, hashlib.sha256).digest())
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"X-Jaas-Signature: t={now},v1={signature.decode()}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def lms_request(path: str, n: int, run: str) -> bytes:
    body = json.dumps({"id": f"{run}-{n}", "type": "user.left", "lesson": {"id": f"lesson-{n % ROOMS}"},
                       "user": {"id": str(n), "name": f"Student {n}"}}).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def jaas_event(event_type: str, room: str, session: str, at_ms: int, data: dict) -> dict:
    return {"idempotencyKey": str(uuid.uuid4()), "customerId": "bench", "appId": APP_ID, "eventType": event_type,
            "sessionId": session, "timestamp": at_ms, "fqn": f"{APP_ID}/{room}", "data": data}


def participant(event_type: str, room: str, session: str, at_ms: int, n: int) -> dict:
    data = {"id": str(n), "name": f"Student {n}", "moderator": "false", "participantId": f"p{n}"}
    if event_type == "PARTICIPANT_LEFT":
        data["disconnectReason"] = "left"
    return jaas_event(event_type, room, session, at_ms, data)


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One request on a keep-alive connection; the answer's status (its body read and dropped)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:"), 0)
    await reader.readexactly(length)
    return int(head[9:12])


async def send_all(port: int, requests: list[bytes]) -> dict[int, int]:
    """POST every request over CONNECTIONS keep-alive connections; the count of each status."""
    statuses: dict[int, int] = {}
    queue = iter(requests)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in queue:
                status = await exchange(reader, writer, request)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return statuses


async def ledger_size(redis: aioredis.Redis, rooms: list[str]) -> int:
    """Participant events in the rooms' ledgers (each ledger also holds started_ms once a session starts)."""
    async with redis.pipeline(transaction=False) as pipe:
        for room in rooms:
            pipe.hlen(attendance_key("default", f"lesson-{room}", f"s-{room}"))
        return sum(await pipe.execute())


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {what}")
        await asyncio.sleep(0.01)


def config(work: Path, hook_url: str) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (work / "jaas.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    path = work / "bridge.toml"
    path.write_text(f"""
[providers.jaas]
kind = "jaas"
app_id = "{APP_ID}"
key_id = "k1"
private_key_file = "{work / 'jaas.pem'}"
webhook_secret = "{JAAS_SECRET}"

[sources.default]
format = "canonical"
provider = "jaas"
webhook_url = "{hook_url}"
webhook_secret = "{HOOK_SECRET}"
allow_private_network = true

[bridge]
data_dir = "{work / 'var'}"
""")
    return path


def start(command: list[str], env: dict[str, str], cwd: Path, log: str) -> subprocess.Popen[bytes]:
    """`bridge <command>` as its own process, its output in `log`."""
    return subprocess.Popen([sys.executable, "-m", "bridge.cli", *command], env=env, cwd=cwd,
                            stdout=open(cwd / log, "wb"), stderr=subprocess.STDOUT, preexec_fn=die_with_parent)


async def own_rooms(redis: aioredis.Redis, rooms: list[str]) -> None:
    for room in rooms:
        await redis.set(room_owner_key("jaas", room), f"default\tlesson-{room}")


class Stack(NamedTuple):
    """What a bench runs the bridge against: a work folder, an embedded Redis, a webhook receiver, and the
    environment `bridge serve` / `bridge worker` start with (the config of `config()`)."""

    work: Path
    server: EmbeddedRedis
    redis: aioredis.Redis
    hook: asyncio.Server
    env: dict[str, str]


async def start_stack(prefix: str, handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                    Awaitable[None]]) -> Stack:
    work = Path(tempfile.mkdtemp(prefix=prefix))
    server = EmbeddedRedis(work / "redis").start()
    hook_port = free_port()
    hook = await asyncio.start_server(handle, "127.0.0.1", hook_port)
    # ONE worker process (bridge worker would start one per core) unless WORKER_CONCURRENCY says otherwise.
    env = {**os.environ, "REDIS_URL": server.url, "PYTHONPATH": str(ROOT), "BRIDGE_LOG_LEVEL": "WARNING",
           "BRIDGE_CONFIG": str(config(work, f"http://127.0.0.1:{hook_port}/hook")),
           "WORKER_CONCURRENCY": os.environ.get("WORKER_CONCURRENCY", "1")}
    return Stack(work, server, aioredis.from_url(server.url), hook, env)


async def stop_stack(stack: Stack, processes: list[subprocess.Popen[bytes]]) -> None:
    """The bridge's processes first (SIGTERM, all at once), then the receiver, the client and Redis."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=30)
    stack.hook.close()
    await stack.redis.aclose()
    stack.server.stop()


async def main_async(args: argparse.Namespace) -> None:
    receiver = Receiver()
    stack = await start_stack("bench-attendance-", receiver.handle)
    work, redis, env = stack.work, stack.redis, stack.env
    port = free_port()
    processes = [start(["serve", "--host", "127.0.0.1"], {**env, "PORT": str(port)}, work, "web.log")]
    try:
        if not wait_for_port(port, 30):
            raise SystemExit("bridge serve did not start")
        rooms = [f"room-{n}" for n in range(ROOMS)]
        await own_rooms(redis, rooms)
        now = int(time.time())
        await send_all(port, [lms_request("/v1/events/default", n, "warm") for n in range(500)])

        lms = [lms_request("/v1/events/default", n, "lms") for n in range(args.events)]
        started = time.perf_counter()
        lms_statuses = await send_all(port, lms)
        lms_rate = args.events / (time.perf_counter() - started)
        await redis.delete(WORKER_QUEUE)          # those jobs are not this bench's: one worker starts on a clean queue

        processes.append(start(["worker"], env, work, "worker.log"))
        await wait_for(lambda: redis.exists(health_check_key(WORKER_QUEUE)), 30, "the worker's start")
        base_ms = now * 1000
        joins = [jaas_request("/v1/providers/jaas/events",
                              participant("PARTICIPANT_JOINED", rooms[n % ROOMS], f"s-{rooms[n % ROOMS]}",
                                          base_ms + n, n), now) for n in range(args.events)]
        started = time.perf_counter()
        provider_statuses = await send_all(port, joins)
        accepted_s = time.perf_counter() - started
        await wait_for(lambda: _at_least(redis, rooms, args.events), 300, "the ledger to hold every event")
        fold_rate = args.events / (time.perf_counter() - started)

        room, session = "room-500", "s-500"
        await own_rooms(redis, [room])
        session_events = [participant("PARTICIPANT_JOINED", room, session, base_ms + n * 10, n) for n in range(500)]
        session_events += [participant("PARTICIPANT_LEFT", room, session, base_ms + 600_000 + n, n)
                           for n in range(250)]
        await send_all(port, [jaas_request("/v1/providers/jaas/events", e, now) for e in session_events])
        end = jaas_event("ROOM_DESTROYED", room, session, base_ms + 3_600_000, {})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(jaas_request("/v1/providers/jaas/events", end, now))
        head = await reader.readuntil(b"\r\n\r\n")
        last_event_at = time.perf_counter()
        writer.close()
        assert head[9:12] == b"202", head
        await asyncio.wait_for(receiver.report_arrived.wait(), 60)
        arrived, report = receiver.reports[0]
        latency_ms = (arrived - last_event_at) * 1000
        people = len(report["data"]["participants"])
    finally:
        await stop_stack(stack, processes)

    print(f"\nProvider events in: one web process, one worker, {CONNECTIONS} connections, {args.events} events each\n")
    print("| measure | value | statuses |")
    print("|---|---|---|")
    print(f"| LMS intake (canonical user.left), events/s accepted | {lms_rate:.0f} | {lms_statuses} |")
    print(f"| JaaS webhooks, events/s accepted (web only) | {args.events / accepted_s:.0f} | {provider_statuses} |")
    print(f"| JaaS webhooks, events/s accepted and folded into the ledger | {fold_rate:.0f} | |")
    print(f"| 500-participant session: ROOM_DESTROYED 202 → attendance.report delivered | {latency_ms:.0f} ms "
          f"| {people} people in the report |")
    print(f"\nratio folded provider events / LMS intake = {fold_rate / lms_rate:.2f} (target >= 0.5); "
          f"report latency {latency_ms:.0f} ms (target <= 1000 ms)")


async def _at_least(redis: aioredis.Redis, rooms: list[str], count: int) -> bool:
    return await ledger_size(redis, rooms) >= count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=4000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
