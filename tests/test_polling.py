"""The polling chain's state in a real Redis: one session and one queued tick per live lesson, however
often it is started, and a tick that moves the chain on once."""

from __future__ import annotations

from arq.connections import ArqRedis

from bridge import polling
from bridge.store import WORKER_QUEUE


async def queued(redis: ArqRedis) -> list[str]:
    return [job_id.decode() for job_id in await redis.zrange(WORKER_QUEUE, 0, -1)]


async def test_starting_a_live_lesson_again_changes_nothing(arq_redis: ArqRedis) -> None:
    first = await polling.start(arq_redis, "default", "l1", "owt", "evt_1", over=False)
    again = await polling.start(arq_redis, "default", "l1", "owt", "evt_2", over=True)
    assert again == first and first.tick == 0 and first.event_id == "evt_1" and not first.over_at_start
    assert await queued(arq_redis) == [polling.tick_job_id("default", first.session, 0)]


async def test_a_tick_moves_the_chain_on_once(arq_redis: ArqRedis) -> None:
    state = await polling.start(arq_redis, "default", "l1", "owt", "evt_1", over=False)
    present = {"p1": {"user_id": "7", "name": "Ada", "role": "guest", "joined_ms": 1, "key": "p1@0"}}
    assert await polling.advance(arq_redis, "default", "l1", state.session, 0, present, True)
    assert not await polling.advance(arq_redis, "default", "l1", state.session, 0, {}, False)   # a re-run
    assert not await polling.advance(arq_redis, "default", "l1", "poll:l1:other", 1, {}, False)
    now = await polling.load(arq_redis, "default", "l1")
    assert now is not None and (now.tick, now.met, now.present) == (1, True, present)


async def test_finishing_ends_only_its_own_session(arq_redis: ArqRedis) -> None:
    state = await polling.start(arq_redis, "default", "l1", "owt", "evt_1", over=False)
    await polling.finish(arq_redis, "default", "l1", "poll:l1:someone-else")
    assert await polling.load(arq_redis, "default", "l1") is not None
    await polling.finish(arq_redis, "default", "l1", state.session)
    assert await polling.load(arq_redis, "default", "l1") is None
    later = await polling.start(arq_redis, "default", "l1", "owt", "evt_9", over=True)
    assert later.event_id == "evt_9" and later.over_at_start
