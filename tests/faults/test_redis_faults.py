"""Redis goes away under a steady load: stopped, killed, paused, or cut off by the network.

web (`bridge serve`) and a worker run as real processes against a Redis server of the test's own;
events arrive at 40/s before, during and after the fault. While Redis is away, web answers 503 +
Retry-After (never a 500, never a 2xx it cannot keep); the worker neither exits nor floods its log;
afterwards every acknowledged event's join.ready reaches the LMS once, and new events are back to
normal latency within 10 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import wait_until, worker_ready
from tests.faults.conftest import (
    FaultRedis,
    Load,
    back_to_normal_after,
    fault_bridge,
    latency_ms,
    median_ms,
    settle,
)
from tests.faults.proxy import CuttingProxy, cutting_proxy

pytestmark = pytest.mark.faults
OUTAGE_S = 4.0
PAUSE_S = 6.5        # longer than every socket timeout of the bridge (5 s)


def _stop_start(redis: FaultRedis, proxy: CuttingProxy) -> Callable[[], None]:
    redis.stop()
    return redis.start


def _kill_start(redis: FaultRedis, proxy: CuttingProxy) -> Callable[[], None]:
    redis.kill()
    return redis.start


def _pause(redis: FaultRedis, proxy: CuttingProxy) -> Callable[[], None]:
    redis.pause()
    return redis.resume


def _network_cut(redis: FaultRedis, proxy: CuttingProxy) -> Callable[[], None]:
    proxy.cut(refuse_s=OUTAGE_S)          # every connection reset mid-command, new ones refused
    return lambda: None


FAULTS = {
    "redis stop + start": (_stop_start, OUTAGE_S),
    "redis kill -9 + start": (_kill_start, OUTAGE_S),
    "redis SIGSTOP 6.5 s": (_pause, PAUSE_S),
    "proxy resets every connection, refuses for 4 s": (_network_cut, OUTAGE_S),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_redis_fault_under_load(fault: str, fault_redis: FaultRedis, timed_receiver, tmp_path: Path) -> None:
    hook, hook_url = timed_receiver
    inject, outage_s = FAULTS[fault]
    with cutting_proxy(fault_redis.port) as proxy:
        # Every bridge process reaches Redis through the proxy, as through a network.
        bridge = fault_bridge(tmp_path, f"redis://127.0.0.1:{proxy.port}/0", hook_url)
        try:
            load = Load(f"{bridge.start_web()}/v1/events/default", prefix="evt")
            bridge.start_worker()
            direct = aioredis.from_url(fault_redis.url)
            try:
                await wait_until(lambda: worker_ready(direct), timeout=30)
            finally:
                await direct.aclose()

            await load.run_for(1.5)
            normal_ms = median_ms(latency_ms(hook, load, sorted(load.acknowledged)))
            end_fault = inject(fault_redis, proxy)
            await load.run_for(outage_s)
            end_fault()
            ended = time.monotonic()
            recovery_s = await back_to_normal_after(load, hook, ended, normal_ms)
            counts = await settle(fault, load, hook, bridge.workers, normal_ms, recovery_s)
        finally:
            bridge.stop_all()
        logs = bridge.logs()
    assert counts.refused > 0, "the fault never reached the bridge"
    # One line when Redis goes and one when it is back, per process: not one per try.
    worker_log = (tmp_path / "worker-1.log").read_text()
    assert 1 <= worker_log.count("redis.unreachable") <= 3, worker_log[-3000:]
    assert "Traceback" not in worker_log, worker_log[-3000:]
    assert "redis.reachable" in logs

