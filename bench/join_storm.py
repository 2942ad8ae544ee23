"""Join storms: a class starts and everyone clicks "join" at once (issue #17).

The default process layout (one `bridge serve`, ONE `bridge worker`), the JaaS provider (RS256 tokens
minted locally, no provider call per join), an embedded Redis (AOF fsynced on every write), and in this
process a webhook receiver that verifies every Standard Webhooks signature with the `standardwebhooks`
library. Request bodies are built before the clock starts; raw keep-alive sockets send them.

  burst    N joins (default 2,000) over 10 lessons, all sent at once (100 connections): time from the
           first send to the last join.ready, p50/p99 per join (its send → its join.ready)
  steady   200 joins/s for ~10 s: p50/p99 per join
  backlog  N joins (default 20,000) paced at 1,000/s, the rate intake's p99 target is stated at and
           several times what one worker drains, so a backlog of thousands builds while it drains:
           the 202s' p50/p99, join.ready per second over the draining period (min/median, against the
           steady case's delivered rate), peak RSS of the web and worker processes (every 0.2 s) and
           of Redis (used_memory), and, every 0.5 s from GET /metrics, the worker queue's depth and the
           age of its oldest due job, each checked against what the bench itself saw (sent minus
           delivered; the oldest join sent and not yet delivered). Before it, the floor under intake's
           p99: 5,000 joins at the same rate with the worker paused (SIGSTOP) while they are sent
per case: the 202s' p50/p99 (send → answer on one keep-alive connection), worker CPU ms per join (the
worker's user+system time, its child processes' too, /proc via psutil), Redis commands per join (INFO stats
total_commands_processed), Redis bytes per join once every delivery has succeeded and every job has
finished (INFO memory used_memory) and, for the burst, again once the delivered payloads have lapsed
(DELIVERED_PAYLOAD_KEEP_S: what stays for record_retention_s), lost and duplicated join.ready.

The floor, measured in the same run: one RS256 signature (PyJWT, loaded key), one signed POST to the
same receiver the way the worker sends it (bridge.webhooks.attempt, in its own process), one
no-op job on the bridge's worker (LeanWorker, the worker's settings) and on arq's own Worker: CPU and Redis
commands per job.

Run: make bench-join   (or .venv/bin/python bench/join_storm.py --joins 500 --steady-s 5 --backlog 0 for a
short run)
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import jwt  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from arq.constants import job_key_prefix  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from standardwebhooks import Webhook  # noqa: E402

from bench.attendance import APP_ID, HOOK_SECRET, exchange, start, start_stack, stop_stack  # noqa: E402
from bench.pipeline import NOOP_WORKER, wait_worker  # noqa: E402
from bench.pipeline import start as start_process  # noqa: E402
from bridge.processes import free_port, wait_for_port  # noqa: E402
from bridge.store import (  # noqa: E402
    DELIVERED_PAYLOAD_KEEP_S,
    JOB_EXPIRES_MS,
    WORKER_QUEUE,
    arq_payload,
    job_runs_key,
    payload_key,
)

LESSONS = 10
BURST_CONNECTIONS = 100
STEADY_CONNECTIONS = 20
BACKLOG_CONNECTIONS = 50        # as bench/ingest.py measures intake's p99 at 1,000/s
JOBS_AT_ONCE = 50               # a worker process runs up to 50 jobs at once (max_jobs, workers/settings.py)
RSS_EVERY_S = 0.2
WINDOW_S = 10.0                 # the backlog case's timeline
SCRAPE_EVERY_S = 0.5
MIB = 1024 * 1024
TARGETS = {"burst_s": 3.0, "cpu_ms": 1.3, "commands": 20.0, "steady_p99_ms": 50.0, "bytes": 1536.0,
           "intake_p99_ms": 10.0, "rss_growth_mib": 32.0}
# A process keeping as little as 1.6 KB per queued join would grow 32 MiB over a 20,000-join backlog: a
# process whose peak RSS stays within that of its RSS before the case holds no per-backlog state.
FLOOR_COUNT = 1000
INTAKE_FLOOR_JOINS = 5000      # sent at the backlog's rate with the worker paused

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


@dataclass
class Posted:
    """When each request went out and when its answer came back (perf_counter), and the answers' statuses."""

    sent: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)


async def send(port: int, requests: asyncio.Queue[tuple[str, bytes] | None], posted: Posted) -> None:
    """One keep-alive connection: POST what the queue hands out until it hands out None."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (item := await requests.get()) is not None:
            event_id, request = item
            posted.sent[event_id] = time.perf_counter()
            status = await exchange(reader, writer, request)
            posted.answered[event_id] = time.perf_counter()
            posted.statuses[status] = posted.statuses.get(status, 0) + 1
    finally:
        writer.close()


async def post_all(port: int, requests: list[tuple[str, bytes]], connections: int,
                   rate: float | None = None) -> Posted:
    """POST every request (paced at `rate` per second if given) over `connections` keep-alive sockets."""
    queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
    posted = Posted()
    senders = [asyncio.create_task(send(port, queue, posted)) for _ in range(connections)]
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
    return posted


@dataclass
class Counters:
    commands: int
    memory: int
    cpu_s: float
    by_command: dict[str, int]       # INFO commandstats: calls of each command


async def counters(redis: aioredis.Redis, process: psutil.Process) -> Counters:
    stats, memory, by_command = await redis.info("stats"), await redis.info("memory"), await redis.info("commandstats")
    return Counters(stats["total_commands_processed"], memory["used_memory"], cpu_s(process),
                    {name.removeprefix("cmdstat_"): calls["calls"] for name, calls in by_command.items()})


async def where_time_went(redis: aioredis.Redis, posted: Posted, arrived: dict[str, float]
                          ) -> dict[str, tuple[float, float]]:
    """Each join's send → join.ready split at its 202 and at its job's start and end (from the run's
    recorded outcome: its end in epoch ms and its duration), as p50/p99 ms of each part."""
    wall_minus_perf = time.time() - time.perf_counter()
    event_ids = [event_id for event_id in posted.answered if event_id in arrived]
    async with redis.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.hget(job_runs_key(f"default:{event_id}"), "user_joined")
        outcomes = await pipe.execute()
    parts: dict[str, list[float]] = {"intake (send → 202)": [], "queued (202 → job starts)": [],
                                     "job (start → outcome)": [], "record + POST (outcome → join.ready)": []}
    for event_id, raw in zip(event_ids, outcomes, strict=True):
        if raw is None:
            continue
        outcome = orjson.loads(raw)
        end = outcome["at"] / 1000 - wall_minus_perf          # on the bench's perf_counter clock
        start = end - outcome["ms"] / 1000
        sent, answered = posted.sent[event_id], posted.answered[event_id]
        for name, seconds in zip(parts, (answered - sent, start - answered, end - start, arrived[event_id] - end),
                                 strict=True):
            parts[name].append(seconds * 1000)
    return {name: (percentile(values, 0.5), percentile(values, 0.99)) for name, values in parts.items() if values}


async def payloads_lapsed(redis: aioredis.Redis) -> None:
    """Until every delivered payload's key has expired (DELIVERED_PAYLOAD_KEEP_S after its recording)."""
    deadline = time.monotonic() + DELIVERED_PAYLOAD_KEEP_S + 60
    while [key async for key in redis.scan_iter(payload_key("*"), count=1000)]:
        if time.monotonic() > deadline:
            raise SystemExit("delivered payloads still kept a minute past DELIVERED_PAYLOAD_KEEP_S")
        await asyncio.sleep(1)


async def settled(redis: aioredis.Redis, timeout_s: float = 60) -> None:
    """Every job finished (queue empty, nothing in progress), so the counters hold whole jobs."""
    deadline = time.monotonic() + timeout_s
    # A job leaves its queue only once its in-progress key is gone (arq: one transaction; LeanWorker: DEL,
    # then ZREM, in one pipeline), so an empty queue means none runs. A SCAN for in-progress keys would walk
    # every key (20,000 joins leave ~200,000) on each look, and be counted as the case's commands.
    while await redis.zcard(WORKER_QUEUE):
        if time.monotonic() > deadline:
            raise SystemExit("jobs did not finish")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)       # the worker's last bookkeeping after its queue emptied


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


@dataclass
class Case:
    name: str
    joins: int
    wall_s: float
    p50_ms: float
    p99_ms: float
    intake_p50_ms: float
    intake_p99_ms: float
    cpu_ms: float
    commands: float
    bytes_per_join: float
    kept_bytes_per_join: float       # once the delivered payloads lapsed (NaN: not waited for)
    lost: int
    duplicates: int
    statuses: dict[int, int]
    by_command: dict[str, float]     # Redis calls of each command per join
    parts: dict[str, tuple[float, float]]    # where a join's time went: part → (p50, p99) ms (if asked)
    first_send: float = field(repr=False)
    posted: Posted = field(repr=False)
    arrived: dict[str, float] = field(repr=False)

    @property
    def delivered_per_s(self) -> float:
        """join.ready per second from the first send to the last join.ready."""
        return len(self.arrived) / self.wall_s


def tree_rss(process: psutil.Process) -> int:
    """Bytes resident in a process and its children (a supervisor and the processes it runs are one role)."""
    total = 0
    for member in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return total


def cpu_s(process: psutil.Process, children: bool = True) -> float:
    """User + system CPU seconds of a process, with its children's unless told not to."""
    total = 0.0
    for member in (process, *(process.children(recursive=True) if children else ())):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = member.cpu_times()
            total += times.user + times.system
    return total


@dataclass
class Tick:
    """One look at the machine: cumulative CPU seconds of each watched process, of the whole machine's busy
    time and of the time the hypervisor gave to someone else (steal)."""

    at: float
    cpu: dict[str, float]
    machine: float
    steal: float


@dataclass
class Scrape:
    """One GET /metrics and, right after it, Redis's INFO."""

    at: float                                   # perf_counter when the answer was in
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    used_memory: int
    commands: int

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, have), v in self.samples.items() if n == name and wanted <= have)


def last_before(samples: list[Any], at: float) -> Any:
    """The last of `samples` (ordered by .at) taken at or before `at`, else the first."""
    return samples[max(0, bisect.bisect_right([s.at for s in samples], at) - 1)]


class Watch:
    """What the backlog case looks at while it runs: every RSS_EVERY_S the RSS and CPU time of each process
    (with its children) and of the machine; every SCRAPE_EVERY_S GET /metrics and Redis's INFO. The CPU
    times tell a worker starved by its neighbours on a shared machine from one slowing down by itself."""

    def __init__(self, port: int, redis: aioredis.Redis, processes: dict[str, psutil.Process],
                 neighbours: dict[str, psutil.Process]) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.redis, self.processes = redis, processes
        self.neighbours = neighbours         # each alone: this process's children are the bridge's
        self.rss_before: dict[str, int] = {}
        self.rss_peak: dict[str, int] = {}
        self.ticks: list[Tick] = []
        self.scrapes: list[Scrape] = []
        self.failed = 0                            # scrapes that got no 200
        self.stalls: dict[str, list[int]] = {}     # LATENCY LATEST: event → [latest, max, (sum, count)] ms
        self.http = httpx.AsyncClient(timeout=10)
        self.tasks: list[asyncio.Task[None]] = []

    def look(self) -> None:
        for name, process in self.processes.items():
            self.rss_peak[name] = max(self.rss_peak.get(name, 0), tree_rss(process))
        machine = psutil.cpu_times()
        cpu = {**{name: cpu_s(process) for name, process in self.processes.items()},
               **{name: cpu_s(process, children=False) for name, process in self.neighbours.items()}}
        self.ticks.append(Tick(time.perf_counter(), cpu, machine.user + machine.nice + machine.system + machine.irq
                               + machine.softirq, machine.steal))

    async def scrape(self) -> None:
        try:
            answer = await self.http.get(self.url)
            answer.raise_for_status()
        except httpx.HTTPError:
            self.failed += 1
            return
        at = time.perf_counter()
        info = await self.redis.info()
        self.scrapes.append(Scrape(at, {(s.name, frozenset(s.labels.items())): s.value
                                        for family in text_string_to_metric_families(answer.text)
                                        for s in family.samples},
                                   info["used_memory"], info["total_commands_processed"]))

    async def _every(self, seconds: float, look: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            if asyncio.iscoroutine(outcome := look()):
                await outcome

    async def start(self) -> None:
        # Redis notes every event that blocks its one thread for >= 1 ms: an fsync before each reply
        # (appendfsync always) shows as aof-fsync-always, the time every client waits for.
        await self.redis.config_set("latency-monitor-threshold", 1)
        await self.redis.execute_command("LATENCY", "RESET")
        self.rss_before = {name: tree_rss(process) for name, process in self.processes.items()}
        self.look()
        await self.scrape()
        self.tasks = [asyncio.create_task(self._every(RSS_EVERY_S, self.look)),
                      asyncio.create_task(self._every(SCRAPE_EVERY_S, self.scrape))]

    async def stop(self) -> None:
        """After the case has settled: one last look, so the counters hold every job the case ran."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.look()
        await self.scrape()
        await self.http.aclose()
        self.stalls = {row[0].decode(): [int(v) for v in row[2:]]
                       for row in await self.redis.execute_command("LATENCY", "LATEST")}
        await self.redis.config_set("latency-monitor-threshold", 0)

    def cpu_s(self, name: str) -> float:
        return self.ticks[-1].cpu[name] - self.ticks[0].cpu[name]

    @property
    def redis_peak(self) -> int:
        return max(s.used_memory for s in self.scrapes)


async def run_case(name: str, port: int, redis: aioredis.Redis, worker: psutil.Process, receiver: Receiver,
                   run: str, joins: int, connections: int, rate: float | None, watch: Watch | None = None,
                   worker_paused_while_sending: bool = False, kept_bytes: bool = False,
                   latency_parts: bool = False) -> Case:
    requests = [join_request(run, n) for n in range(joins)]
    receiver.expect([event_id for event_id, _ in requests])
    duplicates = receiver.duplicates
    before = await counters(redis, worker)
    if watch:
        await watch.start()
    paused = [worker, *worker.children(recursive=True)] if worker_paused_while_sending else []
    for process in paused:
        process.suspend()
    first_send = time.perf_counter()
    try:
        posted = await post_all(port, requests, connections, rate)
    finally:
        for process in paused:
            process.resume()
    try:
        await asyncio.wait_for(receiver.all_arrived.wait(), timeout=120 + joins / 50)
    except TimeoutError:
        pass
    sent = posted.sent
    arrived = {event_id: receiver.arrived[event_id] for event_id in sent if event_id in receiver.arrived}
    await settled(redis)
    if watch:
        await watch.stop()
    after = await counters(redis, worker)
    kept_memory = math.nan
    if kept_bytes:
        await payloads_lapsed(redis)
        kept_memory = (await redis.info("memory"))["used_memory"]
    parts = await where_time_went(redis, posted, arrived) if latency_parts else {}
    delays = [(arrived[event_id] - sent[event_id]) * 1000 for event_id in arrived]
    intake = [(answered - sent[event_id]) * 1000 for event_id, answered in posted.answered.items()]
    return Case(name, joins, max(arrived.values()) - first_send if arrived else float("nan"),
                percentile(delays, 0.5), percentile(delays, 0.99), percentile(intake, 0.5), percentile(intake, 0.99),
                (after.cpu_s - before.cpu_s) * 1000 / joins, (after.commands - before.commands) / joins,
                (after.memory - before.memory) / joins, (kept_memory - before.memory) / joins, joins - len(arrived),
                receiver.duplicates - duplicates,
                posted.statuses, {name: (calls - before.by_command.get(name, 0)) / joins
                                  for name, calls in after.by_command.items()}, parts, first_send, posted, arrived)


class Window(NamedTuple):
    """Ten seconds of the backlog case (the last one may be shorter)."""

    begin_s: float               # from the first send
    delivered_per_s: float       # join.ready
    worker_cores: float          # the worker's CPU time over the window's length
    worker_ms_per_join: float
    commands_per_join: float     # every Redis command (intake's too while joins are sent), per join.ready
    depth: float                 # bridge_queue_depth{queue="worker"} at the window's end
    others_cores: float          # the machine's busy time less this bench's processes: other work sharing it
    steal_cores: float           # time the hypervisor gave to other machines


@dataclass
class Backlog:
    """The backlog case's own measures, from its Case and what its Watch saw."""

    case: Case
    send_rate: float                 # requests per second the sender achieved (paced at the asked rate)
    send_s: float                    # first send to last send
    per_second: list[int]            # join.ready per full second of the draining period, from second 1
    watch: Watch
    max_depth: float                 # bridge_queue_depth{queue="worker"}, highest scraped
    max_due: float
    max_depth_seen: int              # the bench's own view: joins answered minus join.ready arrived
    max_oldest_s: float              # bridge_queue_oldest_due_seconds{queue="worker"}, highest scraped
    max_oldest_seen_s: float         # the bench's own view: the oldest join sent and not yet delivered
    oldest_off_s: float              # the largest gap between the two over the scrapes
    oldest_off: str                  # where it was: the scrape's offset, both values, the join that waited
    deliver_jobs: int                # deliver_webhook jobs run during the case (a busy endpoint's waits)
    deliver_waiting: int             # of which found the endpoint busy again
    intake_floor: Case               # the same rate with the worker paused while sending

    @classmethod
    def of(cls, case: Case, watch: Watch, intake_floor: Case) -> Backlog:
        start, sent, answered, arrived = case.first_send, case.posted.sent, case.posted.answered, case.arrived
        offsets = sorted(t - start for t in arrived.values())
        # Second 0 holds the backlog's first moments and the last second is partial: both left out.
        buckets = [0] * int(offsets[-1]) if offsets else []
        for offset in offsets:
            if 1 <= offset < len(buckets):
                buckets[int(offset)] += 1
        by_send = sorted(sent, key=sent.__getitem__)
        answers, arrivals = sorted(answered.values()), sorted(arrived.values())
        oldest_seen, oldest_off, depth_seen, first_waiting, where = [], 0.0, [], 0, ""
        for scrape in watch.scrapes:      # in time order: a join delivered by one scrape is by the next
            while first_waiting < len(by_send) and arrived.get(by_send[first_waiting], math.inf) <= scrape.at:
                first_waiting += 1
            waiting = by_send[first_waiting] if first_waiting < len(by_send) else None
            seen = scrape.at - sent[waiting] if waiting and sent[waiting] <= scrape.at else 0.0
            oldest_seen.append(seen)
            metric = scrape.value("bridge_queue_oldest_due_seconds", queue="worker")
            depth_seen.append(bisect.bisect_right(answers, scrape.at) - bisect.bisect_right(arrivals, scrape.at))
            # The two agree only while some join must be waiting: with no more undelivered than the worker
            # runs at once, /metrics rightly says none waits, and the bench still counts the running ones.
            if depth_seen[-1] > JOBS_AT_ONCE * int(os.environ.get("WORKER_CONCURRENCY", "1")) \
                    and abs(metric - seen) > oldest_off:
                oldest_off = abs(metric - seen)
                where = (f"at {scrape.at - start:.1f} s: /metrics {metric:.2f} s, the bench {seen:.2f} s"
                         + (f" ({waiting}, delivered at {arrived.get(waiting, math.nan) - start:.1f} s)"
                            if waiting and seen else ""))
        first, last = watch.scrapes[0], watch.scrapes[-1]

        def runs(**status: str) -> int:
            return int(last.total("bridge_jobs_total", function="deliver_webhook", **status)
                       - first.total("bridge_jobs_total", function="deliver_webhook", **status))

        send_s = max(sent.values()) - start
        return cls(case, len(sent) / send_s, send_s, buckets[1:], watch,
                   max(s.value("bridge_queue_depth", queue="worker") for s in watch.scrapes),
                   max(s.value("bridge_queue_due", queue="worker") for s in watch.scrapes),
                   max(depth_seen), max(s.value("bridge_queue_oldest_due_seconds", queue="worker")
                                        for s in watch.scrapes),
                   max(oldest_seen), oldest_off, where, runs(), runs(status="waiting"), intake_floor)

    def window(self, begin: float, end: float) -> Window:
        """From `begin` to `end` seconds after the first send."""
        case, ticks, scrapes = self.case, self.watch.ticks, self.watch.scrapes
        arrivals = sorted(t - case.first_send for t in case.arrived.values())
        joins = max(1, bisect.bisect_right(arrivals, end) - bisect.bisect_right(arrivals, begin))
        t0, t1 = last_before(ticks, case.first_send + begin), last_before(ticks, case.first_send + end)
        s0, s1 = last_before(scrapes, case.first_send + begin), last_before(scrapes, case.first_send + end)
        span = max(t1.at - t0.at, RSS_EVERY_S)
        worker = t1.cpu["worker"] - t0.cpu["worker"]
        ours = sum(t1.cpu.values()) - sum(t0.cpu.values())
        return Window(begin, joins / (end - begin), worker / span, worker * 1000 / joins,
                      (s1.commands - s0.commands) / joins, s1.value("bridge_queue_depth", queue="worker"),
                      (t1.machine - t0.machine - ours) / span, (t1.steal - t0.steal) / span)

    def timeline(self, window_s: float = WINDOW_S) -> list[Window]:
        windows, begin, wall_s = [], 0.0, self.case.wall_s
        while begin < wall_s:
            # A last stretch shorter than half a window joins the one before it.
            end = wall_s if wall_s - begin < 1.5 * window_s else begin + window_s
            windows.append(self.window(begin, end))
            begin = end
        return windows

    def drain_halves(self) -> tuple[Window, Window]:
        """After the last send (the worker alone drains), the first half against the second: a per-join cost
        that grew with the queue's depth shows as a first half dearer than the second."""
        middle = (self.send_s + self.case.wall_s) / 2
        return self.window(self.send_s, middle), self.window(middle, self.case.wall_s)


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


async def main_async(args: argparse.Namespace) -> tuple[list[Case], Backlog | None, dict[str, float]]:
    receiver = Receiver()
    stack = await start_stack("bench-join-storm-", receiver.handle)
    work, server, redis, env = stack.work, stack.server, stack.redis, stack.env
    # ONE worker process, as the bench has always measured (bridge worker now starts one per core unless told).
    env = {**env, "WORKER_CONCURRENCY": os.environ.get("WORKER_CONCURRENCY", "1")}
    key = serialization.load_pem_private_key((work / "jaas.pem").read_bytes(), None)
    port = free_port()
    processes = []
    backlog = None
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
        web, worker = (psutil.Process(process.pid) for process in processes)
        for process in (worker, *worker.children(recursive=True)):
            process.nice(args.worker_nice)
        # The lessons were scheduled before class; a first round of joins warms both processes up.
        await post_all(port, [(f"schedule-{n}", scheduled_request(n)) for n in range(LESSONS)], 1)
        await run_case("warm-up", port, redis, worker, receiver, "warm", min(500, args.joins), BURST_CONNECTIONS, None)
        await payloads_lapsed(redis)
        cases = [await run_case(f"burst of {args.joins}, all at once", port, redis, worker, receiver, "burst",
                                args.joins, BURST_CONNECTIONS, None, kept_bytes=True),
                 await run_case(f"steady {args.rate:.0f}/s for {args.steady_s:.0f} s", port, redis, worker, receiver,
                                "steady", int(args.rate * args.steady_s), STEADY_CONNECTIONS, args.rate,
                                latency_parts=True)]
        if args.backlog:
            # The floor under intake's p99 at this rate: the same sender with the worker stopped (SIGSTOP),
            # so intake shares the cores and Redis with nothing but the bench and the receiver.
            intake_floor = await run_case("intake floor", port, redis, worker, receiver, "intake-floor",
                                          min(args.backlog, INTAKE_FLOOR_JOINS), BACKLOG_CONNECTIONS,
                                          args.backlog_rate, worker_paused_while_sending=True)
            redis_server = psutil.Process(server.process.pid) if server.process else psutil.Process()
            watch = Watch(port, redis, {"web": web, "worker": worker},
                          {"redis": redis_server, "bench": psutil.Process()})
            case = await run_case(f"backlog of {args.backlog}, sent at {args.backlog_rate:.0f}/s", port, redis, worker,
                                  receiver, "backlog", args.backlog, BACKLOG_CONNECTIONS, args.backlog_rate, watch)
            cases.append(case)
            backlog = Backlog.of(case, watch, intake_floor)
    finally:
        await stop_stack(stack, processes)
    if receiver.bad_signatures:
        raise SystemExit(f"{receiver.bad_signatures} webhooks failed signature verification")
    report(cases, backlog, floor, receiver.duplicates)
    return cases, backlog, floor


def verdicts(checks: list[tuple[str, float, float, str, bool]]) -> None:
    """One line per target: (what, value, target, unit, whether the target is a floor rather than a ceiling)."""
    for what, value, target, unit, at_least in checks:
        met = value >= target if at_least else value <= target
        verdict = "ok" if met else ("BELOW TARGET" if at_least else "ABOVE TARGET")
        print(f"{what}: {value:.2f} {unit} (target {'>=' if at_least else '<='} {target:g} {unit}: {verdict}); "
              f"ratio to target {value / target:.2f}")


def report(cases: list[Case], backlog: Backlog | None, floor: dict[str, float], duplicates: int) -> None:
    workers = os.environ.get("WORKER_CONCURRENCY", "1")
    print(f"\nJoin storm: JaaS, one `bridge serve`, `bridge worker` with WORKER_CONCURRENCY={workers} (ONE worker "
          "process unless set), embedded Redis (AOF always), signatures verified at the receiver\n")
    print("| case | first send → last join.ready | p50 ms | p99 ms | 202 p50 / p99 ms | worker CPU ms/join "
          "| Redis commands/join | Redis bytes/join | lost / duplicated | intake statuses |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        print(f"| {case.name} | {case.wall_s:.2f} s | {case.p50_ms:.1f} | {case.p99_ms:.1f} "
              f"| {case.intake_p50_ms:.2f} / {case.intake_p99_ms:.2f} | {case.cpu_ms:.2f} | {case.commands:.1f} "
              f"| {case.bytes_per_join:.0f} | {case.lost} / {case.duplicates} | {case.statuses} |")
    parts = floor["rs256_ms"] + floor["post_ms"] + floor["noop_ms"]
    print(f"\nfloor: RS256 signature {floor['rs256_ms']:.2f} ms + signed POST {floor['post_ms']:.2f} ms "
          f"+ no-op job {floor['noop_ms']:.2f} ms = {parts:.2f} ms CPU; a no-op job alone makes "
          f"{floor['noop_commands']:.1f} Redis commands (arq's own Worker: {floor['arq_noop_ms']:.2f} ms, "
          f"{floor['arq_noop_commands']:.1f} commands)")
    burst, steady = cases[:2]
    print(f"duplicated join.ready: {duplicates}")
    checks = [("burst delivered", burst.wall_s, TARGETS["burst_s"], "s", False),
              ("worker CPU per join (burst)", burst.cpu_ms, TARGETS["cpu_ms"], "ms", False),
              ("Redis commands per join (burst)", burst.commands, TARGETS["commands"], "", False),
              ("steady p99", steady.p99_ms, TARGETS["steady_p99_ms"], "ms", False),
              ("Redis bytes per join (burst, delivered, payloads lapsed)", burst.kept_bytes_per_join, TARGETS["bytes"],
               "B", False)]
    verdicts(checks)
    print("steady case, where a join's time went (p50 / p99 ms of each part; clocks: the bench's and the worker's "
          "wall clock): " + "; ".join(f"{name} {p50:.1f} / {p99:.1f}" for name, (p50, p99) in steady.parts.items()))
    print(f"worker CPU per join / floor = {burst.cpu_ms / parts:.2f}")
    print(f"Redis bytes per join of the burst: {burst.bytes_per_join:.0f} B when the last join.ready arrived, "
          f"{burst.kept_bytes_per_join:.0f} B once the delivered payloads lapsed ({DELIVERED_PAYLOAD_KEEP_S} s)")
    if backlog:
        report_backlog(backlog, burst, steady)


def report_backlog(backlog: Backlog, burst: Case, steady: Case) -> None:
    case, watch, rates = backlog.case, backlog.watch, backlog.per_second
    print(f"\nbacklog: {case.joins} joins sent at {backlog.send_rate:.0f}/s over {backlog.send_s:.1f} s, last "
          f"join.ready after {case.wall_s:.1f} s; 202 p50 {case.intake_p50_ms:.2f} ms, p99 {case.intake_p99_ms:.2f} ms")
    # Seconds 1, 2, ... : second k ends k + 1 s after the first send; those ending by the last send shared
    # the machine's cores with intake at full rate.
    sending = rates[:max(0, int(backlog.send_s) - 1)]
    for what, part in (("while draining", rates), ("  while the joins were still being sent", sending),
                       ("  after the last send", rates[len(sending):])):
        if part:
            print(f"join.ready per second {what} ({len(part)} full seconds): min {min(part)}, "
                  f"median {statistics.median(part):.0f}, max {max(part)}")
    print(f"steady case delivered {steady.delivered_per_s:.0f}/s, the burst drained at {burst.delivered_per_s:.0f}/s")
    print("  per second: " + " ".join(str(rate) for rate in rates))
    print(f"CPU over the case ({case.wall_s:.0f} s), in cores: " + ", ".join(
        f"{name} {watch.cpu_s(name) / case.wall_s:.2f}" for name in watch.ticks[0].cpu))
    print(f"\n| from s | join.ready/s | worker cores | worker CPU ms/join | Redis commands/join | queue depth "
          f"at end | other work on the machine, cores | steal, cores |\n|{'---|' * 8}")
    for w in backlog.timeline():
        print(f"| {w.begin_s:.0f} | {w.delivered_per_s:.0f} | {w.worker_cores:.2f} | {w.worker_ms_per_join:.2f} "
              f"| {w.commands_per_join:.1f} | {w.depth:.0f} | {w.others_cores:.2f} | {w.steal_cores:.2f} |")
    deep, shallow = backlog.drain_halves()
    print(f"\nafter the last send, per join.ready: worker CPU {deep.worker_ms_per_join:.2f} ms and "
          f"{deep.commands_per_join:.1f} Redis commands while the queue was deepest (first half of the drain), "
          f"{shallow.worker_ms_per_join:.2f} ms and {shallow.commands_per_join:.1f} in the second half; the burst "
          f"of {burst.joins}: {burst.cpu_ms:.2f} ms and {burst.commands:.1f} (intake's accept call included)")
    redis_before, redis_after = watch.scrapes[0].used_memory, watch.scrapes[-1].used_memory
    print("\nRSS before → peak (MiB): " + ", ".join(
        f"{name} {watch.rss_before[name] / MIB:.1f} → {watch.rss_peak[name] / MIB:.1f}" for name in watch.processes)
        + f"; Redis used_memory {redis_before / MIB:.1f} → peak {watch.redis_peak / MIB:.1f} → after "
        f"{redis_after / MIB:.1f} MiB ({(watch.redis_peak - redis_before) / max(1, backlog.max_depth):.0f} "
        f"B per job at the deepest queue)")
    print("Redis thread blocked >= 1 ms during the case (LATENCY LATEST: max ms, and Valkey's count and total): "
          + ", ".join(f"{event} max {values[1]}" + (f", {values[3]} times, {values[2] / 1000:.1f} s in all"
                                                     if len(values) >= 4 else "")
                      for event, values in sorted(watch.stalls.items())))
    print(f"/metrics every {SCRAPE_EVERY_S} s ({len(watch.scrapes)} scrapes): bridge_queue_depth{{worker}} max "
          f"{backlog.max_depth:.0f} (due {backlog.max_due:.0f}; the bench's own count, answered minus delivered: "
          f"{backlog.max_depth_seen}); bridge_queue_oldest_due_seconds{{worker}} max {backlog.max_oldest_s:.2f} s "
          f"(the oldest join sent and not yet delivered, running ones included: {backlog.max_oldest_seen_s:.2f} s; "
          f"largest gap between the two at one scrape while more than the worker runs at once were undelivered "
          f"{backlog.oldest_off_s:.2f} s, {backlog.oldest_off}; "
          f"{watch.failed} scrapes failed)")
    changed = {name: (burst.by_command.get(name, 0.0), per_join) for name, per_join in case.by_command.items()
               if abs(per_join - burst.by_command.get(name, 0.0)) >= 0.1}
    print("Redis commands per join that differ from the burst (burst → backlog): " + ", ".join(
        f"{name} {was:.2f} → {now:.2f}" for name, (was, now) in sorted(changed.items())))
    print(f"deliver_webhook jobs run during the case: {backlog.deliver_jobs} (each a first attempt that found the "
          f"endpoint busy, {backlog.deliver_waiting} of them busy again)")
    intake_floor = backlog.intake_floor
    print(f"intake floor, {intake_floor.joins} joins at the same rate with the worker paused (SIGSTOP) while they "
          f"were sent: 202 p50 {intake_floor.intake_p50_ms:.2f} ms, p99 {intake_floor.intake_p99_ms:.2f} ms; "
          f"backlog p99 / floor p99 = {case.intake_p99_ms / intake_floor.intake_p99_ms:.2f}")
    verdicts([("202 p99 during the backlog", case.intake_p99_ms, TARGETS["intake_p99_ms"], "ms", False),
              ("join.ready per second while draining, lowest second", min(rates, default=0),
               steady.delivered_per_s, "/s", True),
              *((f"{name} RSS growth, peak over before", (watch.rss_peak[name] - watch.rss_before[name]) / MIB,
                 TARGETS["rss_growth_mib"], "MiB", False) for name in watch.processes)])
    print(f"lost / duplicated join.ready (backlog): {case.lost} / {case.duplicates} "
          f"(target 0 / 0: {'ok' if case.lost == case.duplicates == 0 else 'MISSED'})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--joins", type=int, default=2000, help="joins in the burst")
    parser.add_argument("--rate", type=float, default=200, help="joins/s in the steady case")
    parser.add_argument("--steady-s", type=float, default=10, help="seconds of the steady case")
    parser.add_argument("--backlog", type=int, default=20000, help="joins in the backlog case (0 skips it)")
    parser.add_argument("--backlog-rate", type=float, default=1000, help="joins/s the backlog case sends")
    parser.add_argument("--worker-nice", type=int, default=0,
                        help="run the worker processes at this nice value (19: the web process comes first for "
                             "the CPU, as on separate dynos; Redis is still shared)")
    parser.add_argument("--profile", type=os.path.abspath,
                        help="run the worker under cProfile, writing its stats to this file")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
