"""The fault suite's harness: its own Redis to stop, kill and pause, the bridge as real processes, a
steady load, and counts of what was sent, acknowledged, completed and doubled.

Every test here starts real processes (`bridge serve`, `bridge worker`, `bridge recorder`, a Redis
server), injects one fault, and checks the same four things: nothing acknowledged is lost, nothing
happens twice, every process is still up, and the bridge is back to normal latency within 10 s of
the fault ending. The counts are printed at the end of the run (`make test` shows them).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from bridge.embedded import EmbeddedRedis
from tests.conftest import WEBHOOK_SECRET, Bridge, default_config, wait_until
from tests.fakes.receiver import Receiver
from tests.fakes.server import serve

RECOVERY_BUDGET_S = 10.0
REPORTS: list[FaultCounts] = []
SLOW_PEER_REPORTS: list[str] = []         # markdown rows: peer, events for it, p50 before/during, peak connections


@dataclass
class FaultCounts:
    fault: str
    sent: int = 0
    acknowledged: int = 0
    refused: int = 0
    completed: int = 0
    doubled: int = 0              # events whose join.ready went out under two webhook ids
    redelivered: int = 0          # the same webhook id received again (at-least-once; receivers dedupe)
    recovery_s: float | None = None
    normal_ms: float | None = None

    def line(self) -> str:
        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.1f}"
        normal = "-" if self.normal_ms is None else f"{self.normal_ms:.0f}"
        return (f"| {self.fault} | {self.sent} | {self.acknowledged} | {self.refused} | {self.completed} | "
                f"{self.doubled} | {self.redelivered} | {normal} | {recovery} |")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTS and not SLOW_PEER_REPORTS:
        return
    terminalreporter.section("fault suite: what each fault did")
    terminalreporter.write_line("| fault | sent | acknowledged | refused (503/conn) | completed | doubled | "
                                "redelivered | normal ms | back to normal after s |")
    terminalreporter.write_line("|---|---|---|---|---|---|---|---|---|")
    for report in REPORTS:
        terminalreporter.write_line(report.line())
    if SLOW_PEER_REPORTS:
        terminalreporter.write_line("")
        terminalreporter.write_line("| hanging peer | events for it | other source's join p50 before ms | during ms | "
                                    "peak connections to it |")
        terminalreporter.write_line("|---|---|---|---|---|")
        for row in SLOW_PEER_REPORTS:
            terminalreporter.write_line(row)


class TimedReceiver(Receiver):
    """The LMS endpoint, noting when each webhook id first arrived."""

    def __init__(self, secret: str) -> None:
        super().__init__(secret)
        self.arrived: dict[str, float] = {}

    async def hook(self, request: Request) -> Response:
        response = await super().hook(request)
        msg_id = request.headers.get("webhook-id", "")
        if response.status_code < 300:
            self.arrived.setdefault(msg_id, time.monotonic())
        return response

    def joins(self) -> dict[str, list[dict[str, Any]]]:
        """event id → the join.ready deliveries it caused."""
        by_event: dict[str, list[dict[str, Any]]] = {}
        for delivery in self.of_type("join.ready"):
            by_event.setdefault(delivery["data"]["event_id"], []).append(delivery)
        return by_event


class FaultRedis:
    """A Redis server on a fixed port and data dir, which the test stops, kills, pauses and restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.server = EmbeddedRedis(data_dir)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def kill(self) -> None:
        assert self.server.process is not None
        self.server.process.kill()
        self.server.process.wait(timeout=10)
        self.server.process = None

    def pause(self) -> None:
        assert self.server.process is not None
        os.kill(self.server.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.server.process is not None
        os.kill(self.server.process.pid, signal.SIGCONT)


@pytest.fixture
def fault_redis(tmp_path: Path) -> Iterator[FaultRedis]:
    redis = FaultRedis(tmp_path / "redis")
    redis.start()
    yield redis
    if redis.server.process is not None:
        redis.resume()
    redis.stop()


@pytest.fixture
def timed_receiver() -> Iterator[tuple[TimedReceiver, str]]:
    hook = TimedReceiver(WEBHOOK_SECRET)
    with serve(hook.app) as base:
        yield hook, f"{base}/hook"


def fault_bridge(tmp_path: Path, redis_url: str, hook_url: str, extra: str = "") -> Bridge:
    """`bridge serve` + workers as real processes; short job timeouts so a job whose in-progress mark
    outlived an outage runs again within seconds."""
    config = default_config(tmp_path, hook_url, "job_timeout_s = 5\njob_retry_base_s = 0.2\n" + extra)
    return Bridge("", config, redis_url, tmp_path)


def join_event(event_id: str, n: int) -> dict[str, Any]:
    return {"id": event_id, "type": "user.joined", "lesson": {"id": f"lesson-{n % 5}", "title": "Algebra"},
            "user": {"id": str(n), "name": f"User {n}"}}


@dataclass
class Load:
    """Events sent at a steady rate, each in its own request, whatever the bridge is going through."""

    url: str
    prefix: str
    rate: float = 40.0
    sent: dict[str, float] = field(default_factory=dict)            # event id → monotonic send time
    acknowledged: set[str] = field(default_factory=set)
    refused: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)              # answers other than 2xx or 503 + Retry-After

    async def send(self, http: httpx.AsyncClient, event_id: str, n: int) -> bool:
        self.sent[event_id] = time.monotonic()
        try:
            answer = await http.post(self.url, json=join_event(event_id, n))
        except httpx.TransportError as exc:
            self.refused[type(exc).__name__] += 1
            return False
        if 200 <= answer.status_code < 300:
            self.acknowledged.add(event_id)
            return True
        if answer.status_code != 503 or not answer.headers.get("retry-after"):   # never a 500: always 503
            self.unexpected.append(f"{answer.status_code} {answer.text[:200]}")
        self.refused[str(answer.status_code)] += 1
        return False

    async def run_for(self, seconds: float) -> None:
        tasks: set[asyncio.Task[bool]] = set()
        async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=100)) as http:
            started = time.monotonic()
            n = len(self.sent)
            while time.monotonic() - started < seconds:
                task = asyncio.create_task(self.send(http, f"{self.prefix}-{n}", n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                await asyncio.sleep(1 / self.rate)
            if tasks:
                await asyncio.wait(tasks, timeout=20)


def latency_ms(hook: TimedReceiver, load: Load, event_ids: list[str]) -> list[float]:
    joins = hook.joins()
    return [(hook.arrived[joins[e][0]["webhook_id"]] - load.sent[e]) * 1000 for e in event_ids if e in joins]


async def back_to_normal_after(load: Load, hook: TimedReceiver, fault_ended: float, normal_ms: float,
                               window_s: float = RECOVERY_BUDGET_S + 4, steady: int = 8) -> float | None:
    """Probe events every 0.25 s from the end of the fault: the time after it from which every probe
    was acknowledged and delivered within 3x the normal latency (+ 50 ms for a loaded 2-core box).
    Stops once `steady` probes in a row were normal, or after `window_s`."""
    bound_s = (3 * normal_ms + 50) / 1000
    probes: list[tuple[float, str]] = []
    tasks: set[asyncio.Task[bool]] = set()

    def normal(event_id: str) -> bool:
        joins = hook.joins()
        if event_id not in joins or event_id not in load.acknowledged:
            return False
        return hook.arrived[joins[event_id][0]["webhook_id"]] - load.sent[event_id] <= bound_s

    def settled() -> list[tuple[float, str]]:      # probes old enough to have been judged
        return [(at, e) for at, e in probes if time.monotonic() - fault_ended - at > bound_s + 0.3]

    async with httpx.AsyncClient(timeout=15) as http:
        n = 1_000_000
        while time.monotonic() - fault_ended < window_s:
            judged = settled()
            if len(judged) >= steady and all(normal(e) for _, e in judged[-steady:]):
                break
            event_id = f"{load.prefix}-probe-{n}"
            probes.append((time.monotonic() - fault_ended, event_id))
            task = asyncio.create_task(load.send(http, event_id, n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(0.25)
        await asyncio.sleep(bound_s + 0.3)
        if tasks:
            await asyncio.wait(tasks, timeout=20)
    recovered: float | None = None
    for at, event_id in probes:
        if not normal(event_id):
            recovered = None
        elif recovered is None:
            recovered = at
    return recovered


async def settle(fault: str, load: Load, hook: TimedReceiver, processes: list[Any], normal_ms: float,
                 recovery_s: float | None, drain_s: float = 60) -> FaultCounts:
    """Wait until every acknowledged event completed, then count, report and check the four promises."""
    async def all_completed() -> bool:
        return load.acknowledged <= set(hook.joins())

    try:
        await wait_until(all_completed, timeout=drain_s, interval=0.2)
    except AssertionError:
        pass                                  # reported below with the counts
    joins = hook.joins()
    counts = FaultCounts(
        fault=fault, sent=len(load.sent), acknowledged=len(load.acknowledged), refused=sum(load.refused.values()),
        completed=len(load.acknowledged & set(joins)),
        doubled=sum(1 for deliveries in joins.values() if len({d["webhook_id"] for d in deliveries}) > 1),
        redelivered=sum(len(deliveries) - len({d["webhook_id"] for d in deliveries}) for deliveries in joins.values()),
        recovery_s=recovery_s, normal_ms=normal_ms)
    REPORTS.append(counts)
    print(counts.line())
    assert not load.unexpected, f"answers other than 2xx / 503 + Retry-After: {load.unexpected[:5]}"
    assert counts.completed == counts.acknowledged, f"acknowledged events lost: {counts}"
    assert counts.doubled == 0, f"a join went out twice under different ids: {counts}"
    dead = [p.args for p in processes if p.poll() is not None]
    assert not dead, f"processes exited: {dead}"
    assert recovery_s is not None and recovery_s <= RECOVERY_BUDGET_S, f"not back to normal in time: {counts}"
    return counts


def median_ms(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
