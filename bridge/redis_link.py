"""Living through a Redis outage: which errors mean "Redis is away", one log line per change, back-off.

A managed Redis restarts, fails over or pauses for maintenance; a worker or recorder that exits on the
first ConnectionError turns a 5-second blip into minutes of restarts with growing back-off. Every
long-running loop in a worker process (arq's poll loop, the jobs, a recording's lease, the reclaim
watchdog) reports here instead, and waits with capped, jittered back-off. All of them share one
`LINK` per process, so the log says "unreachable" once when Redis goes and "reachable" once when it
comes back, not once per try.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from redis import exceptions as redis_errors

log = structlog.get_logger("bridge.redis")
T = TypeVar("T")

# Refused, reset mid-command, timed out (a paused server), still loading its AOF after a restart, or a
# demoted primary after a failover: all mean "try again when Redis is back", never "the job failed".
REDIS_AWAY: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError,
)
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 5.0          # a worker is back at most ~5 s after Redis is
OUTAGE_WAIT_S = 300.0        # the outage this process rides out before a job gives up waiting


def backoff_s(failures: int, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> float:
    """Exponential with "equal jitter": between half and all of min(cap, base * 2^(n-1)), so a fleet of
    workers does not reconnect in lock step, and none waits less than half the step."""
    step = min(cap_s, base_s * 2 ** max(0, failures - 1))
    return random.uniform(step / 2, step)


class RedisLink:
    """One process's view of whether Redis answers."""

    def __init__(self) -> None:
        self.down_since: float | None = None        # monotonic time of the first failure of this outage
        self.up_since = time.monotonic()             # monotonic time Redis last became reachable
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException) -> float:
        """Note a failed call; returns how long to wait before the next try."""
        self.failures += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("redis.unreachable", error=type(exc).__name__, detail=str(exc)[:200])
        return backoff_s(self.failures)

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning("redis.reachable", down_s=round(time.monotonic() - self.down_since, 1), tries=self.failures)
            self.down_since = None
            self.up_since = time.monotonic()
        self.failures = 0

    def reachable_for(self) -> float:
        """Seconds Redis has answered this process without a failure in between (0 while it is down)."""
        return 0.0 if self.down else time.monotonic() - self.up_since

    async def wait_until_back(self, redis: Any, give_up_s: float = OUTAGE_WAIT_S) -> None:
        """Ping with back-off until Redis answers; the last error after `give_up_s`."""
        deadline = time.monotonic() + give_up_s
        while True:
            try:
                await redis.ping()
            except REDIS_AWAY as exc:
                delay = self.failed(exc)
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
            else:
                self.ok()
                return

    async def retrying(self, redis: Any, call: Callable[[], Awaitable[T]], give_up_s: float = OUTAGE_WAIT_S) -> T:
        """Run an idempotent Redis call, waiting out an outage of up to `give_up_s` between tries."""
        deadline = time.monotonic() + give_up_s
        while True:
            try:
                result = await call()
            except REDIS_AWAY as exc:
                self.failed(exc)
                await self.wait_until_back(redis, max(0.0, deadline - time.monotonic()))
            else:
                self.ok()
                return result


LINK = RedisLink()
