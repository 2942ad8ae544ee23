"""`bridge worker` with WORKER_CONCURRENCY > 1: a parent keeping that many real arq worker processes up.

Real processes against the test Redis: both children take jobs, a SIGKILLed child is replaced and the
replacement takes jobs, SIGTERM drains them all and the parent exits 0, a child that keeps failing to
start makes the parent give up, a SIGKILLed parent takes its children with it, bad values exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.worker import func

from bridge.cli import STOP_TIMEOUT_S
from bridge.embedded import EmbeddedRedis
from bridge.processes import available_cores, cpu_quota, free_port
from bridge.store import WORKER_QUEUE, arq_payload, deserialize_arq, serialize_arq, worker_redis
from tests.conftest import ROOT, Bridge, children, wait_until, worker_ready
from tests.fakes.receiver import Receiver
from tests.test_replay import joined
from workers.worker import LeanWorker

pytestmark = pytest.mark.timeout(90)


def pool(parent: subprocess.Popen[bytes]) -> set[int]:
    """The parent's live worker children."""
    return {pid for pid, cmdline in children(parent.pid).items() if "--pool-child" in cmdline and alive(pid)}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")       # a zombie has exited; only its parent's wait is missing


def log_lines(bridge: Bridge) -> list[dict[str, Any]]:
    lines = []
    for text in bridge.logs().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue                     # arq's or Python's own plain lines
        if isinstance(line, dict):
            lines.append(line)
    return lines


def job_pids(bridge: Bridge) -> set[int]:
    return {line["pid"] for line in log_lines(bridge) if line.get("event") == "job" and "pid" in line}


async def wait_for(condition: Callable[[], Any], timeout_s: float = 20) -> Any:
    return await wait_until(condition, timeout=timeout_s, interval=0.1)


async def send_until(client: httpx.AsyncClient, bridge: Bridge, hook: Receiver, sent: list[str],
                     done: Callable[[], bool], most: int = 80) -> None:
    """Events one at a time (each job goes to whichever process polls first), every one completed, until
    `done()`; at most `most` of them."""
    for _ in range(most):
        event_id = f"evt-{len(sent)}"
        answer = await client.post(f"{bridge.base_url}/v1/events/default", json=joined(event_id, user=str(len(sent))))
        assert answer.status_code == 202, answer.text
        sent.append(event_id)
        await wait_for(lambda: len(hook.of_type("join.ready")) >= len(sent))
        await asyncio.sleep(0.05)        # the job's log line follows its webhook
        if done():
            return
    raise AssertionError(f"not done after {most} events; jobs ran in {job_pids(bridge)}")


async def test_two_processes_share_the_jobs_a_killed_one_is_replaced_and_sigterm_drains_all(
        make_bridge, receiver, client: httpx.AsyncClient) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(webhook_url=hook_url)
    bridge.extra_env["WORKER_CONCURRENCY"] = "2"
    parent = bridge.start_worker()
    first = await wait_for(lambda: len(pool(parent)) == 2 and pool(parent))
    sent: list[str] = []
    await send_until(client, bridge, hook, sent, lambda: job_pids(bridge) >= first)
    assert job_pids(bridge) == first, "jobs ran in the parent's two children, and nowhere else"

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    second = await wait_for(lambda: len(pool(parent)) == 2 and victim not in pool(parent) and pool(parent))
    [replacement] = second - first
    exited = [line for line in log_lines(bridge) if line.get("event") == "worker.process_exited"]
    assert [(line["pid"], line["code"], line["restart_in_s"]) for line in exited] == [(victim, -9, 1.0)]
    await send_until(client, bridge, hook, sent, lambda: replacement in job_pids(bridge))
    assert len(hook.of_type("join.ready")) == len(sent)          # every event completed, none lost

    started = time.monotonic()
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=STOP_TIMEOUT_S + 5) == 0
    assert time.monotonic() - started < STOP_TIMEOUT_S
    await wait_for(lambda: not any(alive(pid) for pid in second), 10)
    [stopped] = [line for line in log_lines(bridge) if line.get("event") == "worker.pool_stopped"]
    assert stopped["signal"] == "SIGTERM" and stopped["clean"] is True and set(stopped["codes"].values()) == {0}


async def test_sigterm_while_workers_wait_for_redis_at_start_up_stops_them_at_once(make_bridge) -> None:
    """A stop signal that lands before arq's main loop exists (a deploy or a pool stopping right after a
    start) must not be lost: such a worker used to keep waiting, then run without ever taking a job."""
    bridge = make_bridge()
    bridge.redis_url = f"redis://127.0.0.1:{free_port()}/0"      # nothing listens there
    single = bridge.start_worker()
    bridge.extra_env["WORKER_CONCURRENCY"] = "2"
    parent = bridge.start_worker()
    await wait_for(lambda: sum(line.get("event") == "redis.unreachable" for line in log_lines(bridge)) == 3, 30)
    for process in (single, parent):
        process.send_signal(signal.SIGTERM)
    for process in (single, parent):
        assert await asyncio.to_thread(process.wait, 10) == 0


class SlowReplies:
    """A loopback proxy to Redis that, once armed, holds each reply `delay_s` and notes each claim sent."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self.upstream_port, self.port, self.delay_s = upstream_port, free_port(), delay_s
        self.armed = False
        self.claims_sent = 0

    async def _up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.armed and b"EVAL" in data:
                self.claims_sent += 1
            writer.write(data)

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.armed:
                await asyncio.sleep(self.delay_s)
            writer.write(data)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(self._up(reader, up_writer), self._down(up_reader, writer))
        writer.transport.abort()
        up_writer.transport.abort()


async def test_a_drain_starting_while_a_claim_is_in_flight_runs_the_claimed_jobs(
        redis_server: EmbeddedRedis, redis: aioredis.Redis) -> None:
    """An idle worker of a pool told to stop just as its claim reached Redis: the claimed jobs are marked in
    progress there already, so the worker must run them, not exit and leave them to the mark's lapse
    (the job timeout + 10 s, minutes)."""
    proxy = SlowReplies(int(redis_server.url.rsplit(":", 1)[1].split("/")[0]), delay_s=0.5)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", proxy.port)
    ran: list[str] = []

    async def work(ctx: dict[str, Any], job_id: str) -> str:
        ran.append(job_id)
        return "ok"

    pool = worker_redis(f"redis://127.0.0.1:{proxy.port}/0", 4, WORKER_QUEUE)
    worker = LeanWorker(functions=[func(work, name="work", keep_result=0)], redis_pool=pool, poll_delay=0.01,
                        handle_signals=False, job_completion_wait=10, job_serializer=serialize_arq,
                        job_deserializer=deserialize_arq)
    worker.main_task = asyncio.ensure_future(worker.main())
    try:
        await wait_for(lambda: worker_ready(redis), 10)
        proxy.armed = True
        await asyncio.sleep(0.6)                          # the poll in flight when armed has come back
        now_ms = int(time.time() * 1000)
        await redis.set(job_key_prefix + "claimed-1", arq_payload("work", ("claimed-1",), now_ms))
        await redis.zadd(WORKER_QUEUE, {"claimed-1": now_ms})
        sent = proxy.claims_sent
        await wait_for(lambda: proxy.claims_sent > sent and redis.exists(in_progress_key_prefix + "claimed-1"), 5)
        assert not worker.tasks                           # claimed in Redis, its reply still on the way
        worker.handle_sig_wait_for_completion(signal.SIGTERM)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(worker.main_task, 15)
        assert ran == ["claimed-1"]
        assert not await redis.exists(in_progress_key_prefix + "claimed-1", job_key_prefix + "claimed-1")
    finally:
        proxy.armed = False
        await worker.close()
        server.close()


@pytest.mark.timeout(150)
async def test_a_child_that_keeps_failing_to_start_stops_the_pool_with_exit_1(make_bridge) -> None:
    bridge = make_bridge()
    bridge.extra_env["WORKER_CONCURRENCY"] = "2"
    parent = bridge.start_worker()
    first = await wait_for(lambda: len(pool(parent)) == 2 and pool(parent))
    # The parent has read the file; every restarted child reads it again and refuses it.
    bridge.config.write_text("[bridge]\nworker_slots = 4\n")
    for pid in first:
        os.kill(pid, signal.SIGKILL)
    # Back-off 1 s then 2 s: a few seconds, unless each start takes long on a loaded machine.
    code = await asyncio.to_thread(parent.wait, 100)
    assert code == 1
    [giving_up] = [line for line in log_lines(bridge) if line.get("event") == "worker.pool_giving_up"]
    assert giving_up["code"] == 2 and "3 times in a row" in giving_up["reason"], giving_up
    assert f"configuration error: {bridge.config}: bridge.worker_slots: unknown key" in bridge.logs()
    assert not any(alive(pid) for pid in children(parent.pid))


async def test_one_process_by_default_per_core_in_process_at_1_and_children_die_with_the_parent(
        make_bridge, redis: aioredis.Redis) -> None:
    bridge = make_bridge()
    single = bridge.start_worker()                               # WORKER_CONCURRENCY=1 (conftest)
    await wait_for(lambda: worker_ready(redis))
    assert not children(single.pid), "one process runs the worker itself, as before pools existed"
    single.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(single.wait, STOP_TIMEOUT_S + 5) == 0

    bridge.extra_env["WORKER_CONCURRENCY"] = ""                  # empty counts as unset: one per core
    parent = bridge.start_worker()
    cores = available_cores()
    assert cores == min(len(os.sched_getaffinity(0)), cpu_quota() or cores)
    if cores == 1:
        await wait_for(lambda: worker_ready(redis))
        assert not children(parent.pid)
        return
    started = await wait_for(lambda: len(pool(parent)) == cores and pool(parent))
    parent.kill()
    parent.wait(timeout=10)
    await wait_for(lambda: not any(alive(pid) for pid in started), 10)


def test_cpu_quota_reads_cgroup_v2_and_v1(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cpu_quota(tmp_path) == 1
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    assert cpu_quota(tmp_path) == 4
    assert cpu_quota(tmp_path / "absent") is None


def test_a_bad_worker_concurrency_stops_with_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "REDIS_"))}
    env.update(REDIS_URL="redis://127.0.0.1:9/0", PYTHONPATH=str(ROOT))
    values = ["0", "-1", "1.5"]
    processes = [subprocess.Popen([sys.executable, "-m", "bridge.cli", "worker"], cwd=tmp_path,
                                  env={**env, "WORKER_CONCURRENCY": value}, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for value in values]
    for value, process in zip(values, processes, strict=True):
        out, err = process.communicate(timeout=60)
        assert process.returncode == 2, (value, out, err)
        assert err == "configuration error: <defaults>: WORKER_CONCURRENCY: must be a positive integer\n", value
    assert not list(tmp_path.glob("var")), "nothing may start before the configuration is valid"
