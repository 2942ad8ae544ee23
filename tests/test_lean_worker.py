"""LeanWorker: the worker queue's jobs claimed a batch per script call, leased, finished in one round trip."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.worker import func

from bridge.embedded import EmbeddedRedis
from bridge.store import WORKER_QUEUE, arq_payload, deserialize_arq, serialize_arq, worker_redis
from workers.worker import LeanWorker, _claim

LEASE_S = 1.0


@pytest.fixture
async def pools(redis_server: EmbeddedRedis, redis: aioredis.Redis) -> AsyncIterator[Callable[[], ArqRedis]]:
    made: list[ArqRedis] = []

    def make() -> ArqRedis:
        made.append(worker_redis(redis_server.url, 4, WORKER_QUEUE))
        return made[-1]

    yield make
    for pool in made:
        await pool.aclose()


def lean_worker(pool: ArqRedis, *functions: Any, max_jobs: int = 10) -> LeanWorker:
    worker = LeanWorker(functions=list(functions), redis_pool=pool, max_jobs=max_jobs, poll_delay=0.01,
                        handle_signals=False, job_serializer=serialize_arq, job_deserializer=deserialize_arq)
    worker.in_progress_timeout_s = LEASE_S      # arq's is the longest job timeout + 10 s
    return worker


async def enqueue(redis: aioredis.Redis, function: str, count: int, prefix: str = "job") -> list[str]:
    now_ms = int(time.time() * 1000)
    ids = [f"{prefix}-{n}" for n in range(count)]
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.set(job_key_prefix + job_id, arq_payload(function, (job_id,), now_ms))
            pipe.zadd(WORKER_QUEUE, {job_id: now_ms})
        await pipe.execute()
    return ids


async def poll_until(workers: list[LeanWorker], done: Callable[[], Any], timeout_s: float = 15) -> None:
    async with asyncio.timeout(timeout_s):
        while not await done():
            for worker in workers:
                await worker._poll_iteration()
            await asyncio.sleep(0.01)


async def test_two_workers_run_each_job_once_and_leave_no_keys(redis: aioredis.Redis, pools) -> None:
    runs: Counter[str] = Counter()

    async def work(ctx: dict[str, Any], job_id: str) -> str:
        runs[job_id] += 1
        await asyncio.sleep(0.01)
        return "ok"

    workers = [lean_worker(pools(), func(work, name="work", keep_result=0)) for _ in range(2)]
    ids = await enqueue(redis, "work", 60)

    async def drained() -> bool:
        return await redis.zcard(WORKER_QUEUE) == 0 and all(not w.tasks for w in workers)

    await poll_until(workers, drained)
    assert runs == Counter(ids)
    left = [k async for k in redis.scan_iter("arq:*") if not k.endswith(b":health-check")]
    assert left == []                                              # no job, try, in-progress or result key
    assert all(w.jobs_complete > 0 for w in workers)               # both took part


async def test_running_jobs_are_leased_so_polls_do_not_probe_them(redis: aioredis.Redis, pools) -> None:
    release = asyncio.Event()

    async def hold(ctx: dict[str, Any], job_id: str) -> str:
        await release.wait()
        return "ok"

    worker = lean_worker(pools(), func(hold, name="hold", keep_result=0), max_jobs=20)
    ids = await enqueue(redis, "hold", 10)
    await worker._poll_iteration()
    assert set(worker.tasks) == set(ids)
    now_ms = time.time() * 1000
    for job_id in ids:
        assert await redis.exists(in_progress_key_prefix + job_id)
        assert await redis.zscore(WORKER_QUEUE, job_id) > now_ms + LEASE_S * 1000 / 2   # its lease, not due
    before = (await redis.info("stats"))["total_commands_processed"]
    for _ in range(5):
        await worker._poll_iteration()
    commands = (await redis.info("stats"))["total_commands_processed"] - before - 1
    # Each poll is one claim script finding nothing due (EVALSHA + ZRANGEBYSCORE); probing the ten
    # running jobs, as arq's own claim does, would be ten or more commands a poll.
    assert commands <= 5 * 2 + 2
    release.set()
    await poll_until([worker], lambda: _empty(redis))


async def _empty(redis: aioredis.Redis) -> bool:
    return await redis.zcard(WORKER_QUEUE) == 0


async def test_a_job_whose_worker_died_runs_again_when_its_lease_lapses(redis: aioredis.Redis, pools) -> None:
    tries: list[int] = []

    async def work(ctx: dict[str, Any], job_id: str) -> str:
        tries.append(ctx["job_try"])
        return "ok"

    (job_id,) = await enqueue(redis, "work", 1)
    now_ms = int(time.time() * 1000)
    # A worker claims the job and dies before running it (its process was killed).
    claimed = await _claim(keys=[WORKER_QUEUE], args=[now_ms, now_ms + int(LEASE_S * 1000), 10, int(LEASE_S * 1000)],
                           client=redis)
    assert claimed[0] == job_id.encode() and int(claimed[3]) == 1
    worker = lean_worker(pools(), func(work, name="work", keep_result=0))
    await worker._poll_iteration()
    assert tries == [] and not worker.tasks                       # leased: nobody else runs it yet
    await poll_until([worker], lambda: _empty(redis), timeout_s=LEASE_S + 10)
    assert tries == [2]                                           # run again, counted as its second try


async def test_retry_defers_the_job_and_the_try_counts_up(redis: aioredis.Redis, pools) -> None:
    tries: list[int] = []

    async def flaky(ctx: dict[str, Any], job_id: str) -> str:
        tries.append(ctx["job_try"])
        if ctx["job_try"] == 1:
            raise Retry(defer=0.3)
        return "ok"

    worker = lean_worker(pools(), func(flaky, name="flaky"))
    (job_id,) = await enqueue(redis, "flaky", 1)
    await worker._poll_iteration()
    await asyncio.gather(*worker.tasks.values())
    score = await redis.zscore(WORKER_QUEUE, job_id)
    assert score > time.time() * 1000 + 100                          # deferred about 0.3 s
    assert not await redis.exists(in_progress_key_prefix + job_id)
    assert await redis.get(retry_key_prefix + job_id) == b"1"
    await poll_until([worker], lambda: _empty(redis))
    assert tries == [1, 2]
    assert await redis.exists(result_key_prefix + job_id)            # this function keeps arq's result


async def test_a_stopping_worker_gives_its_jobs_back_at_once(redis: aioredis.Redis, pools) -> None:
    ran_on: list[str] = []
    started = asyncio.Event()

    def function(name: str) -> Any:
        async def work(ctx: dict[str, Any], job_id: str) -> str:
            started.set()
            await asyncio.sleep(0 if name == "second" else 30)
            ran_on.append(name)
            return "ok"
        return func(work, name="work", keep_result=0)

    first, second = lean_worker(pools(), function("first")), lean_worker(pools(), function("second"))
    (job_id,) = await enqueue(redis, "work", 1)
    score = await redis.zscore(WORKER_QUEUE, job_id)
    await first._poll_iteration()
    await started.wait()
    for task in first.tasks.values():
        task.cancel()                        # what arq does to running jobs when it stops for good
    await asyncio.gather(*first.tasks.values(), return_exceptions=True)
    assert await redis.zscore(WORKER_QUEUE, job_id) == score        # due again, in its place in the queue
    await poll_until([second], lambda: _empty(redis))
    assert ran_on == ["second"]


async def test_a_job_whose_payload_is_gone_is_dropped_from_the_queue(redis: aioredis.Redis, pools) -> None:
    await redis.zadd(WORKER_QUEUE, {"orphan": int(time.time() * 1000)})
    async def work(ctx: dict[str, Any], job_id: str) -> str:
        raise AssertionError("nothing should run")

    worker = lean_worker(pools(), func(work, name="work"))
    await worker._poll_iteration()
    assert await redis.zcard(WORKER_QUEUE) == 0 and not worker.tasks
    assert not await redis.exists(in_progress_key_prefix + "orphan")


async def test_a_job_that_overruns_its_timeout_runs_again_instead_of_being_dropped(redis: aioredis.Redis,
                                                                                   pools) -> None:
    tries: list[int] = []

    async def stalls_once(ctx: dict[str, Any], job_id: str) -> str:
        tries.append(ctx["job_try"])
        if ctx["job_try"] == 1:
            await asyncio.sleep(5)           # e.g. stuck on a Redis that stopped answering
        return "ok"

    worker = lean_worker(pools(), func(stalls_once, name="stalls_once", timeout=0.2, keep_result=0))
    await enqueue(redis, "stalls_once", 1)
    await poll_until([worker], lambda: _empty(redis))
    assert tries == [1, 2] and worker.jobs_complete == 1
