"""arq's Worker, made to ride out a Redis outage instead of exiting on the first ConnectionError.

arq 0.28 lets a Redis error out of its poll loop (the process exits), leaks a job slot when the
error hits between taking a slot and starting the job, and re-raises a failed `finish_job` from the
job's task into the poll loop. Here each poll that fails waits with capped, jittered back-off and
tries again; a slot is given back; a job whose bookkeeping could not be written stays queued with
its in-progress key, and arq runs it again when that key lapses (every job is safe to run twice).
"""

from __future__ import annotations

import asyncio

from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import WatchError

from bridge.redis_link import LINK, REDIS_AWAY


class ResilientWorker(Worker):
    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except REDIS_AWAY as exc:
            await asyncio.sleep(LINK.failed(exc))
        else:
            LINK.ok()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # One id at a time: when arq's claim of a job fails on Redis, it has already taken a slot
        # (semaphore + counter) for it and no task will give it back.
        for job_id in job_ids:
            try:
                await super().start_jobs([job_id])
            except REDIS_AWAY:
                self._release_sem_dec_counter_on_complete()
                raise
            except WatchError as exc:
                # redis-py reports a connection lost while a WATCH is on as WatchError; arq catches it
                # only around EXEC, not around the EXISTS and ZSCORE it sends while watching.
                self._release_sem_dec_counter_on_complete()
                raise RedisConnectionError(str(exc)) from exc

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except REDIS_AWAY as exc:
            LINK.failed(exc)     # still queued, still marked in progress: it runs again when that mark lapses

    async def close(self) -> None:
        try:
            await super().close()
        except REDIS_AWAY as exc:  # stopping during an outage: nothing left to tidy that Redis won't expire
            LINK.failed(exc)
