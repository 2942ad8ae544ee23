"""arq's Worker, made to ride out a Redis outage instead of exiting on the first ConnectionError.

arq 0.28 lets a Redis error out of its poll loop (the process exits), leaks a job slot when the
error hits between taking a slot and starting the job, and re-raises a failed `finish_job` from the
job's task into the poll loop. Here each poll that fails waits with capped, jittered back-off and
tries again; a slot is given back; a job whose bookkeeping could not be written stays queued with
its in-progress key, and arq runs it again when that key lapses (every job is safe to run twice).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.cron import CronJob
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import Function, Retry, RetryJob, Worker
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import WatchError

from bridge.redis_link import LINK, REDIS_AWAY

log = structlog.get_logger("bridge.worker")
RETRY_KEY_TTL_S = 88400          # as arq's own try counter


class ResilientWorker(Worker):
    heart_beats = 0              # rounds of the poll loop that got past claiming

    async def heart_beat(self) -> None:
        self.heart_beats += 1
        await super().heart_beat()

    async def _sleep_until_tasks_complete(self) -> None:
        # On SIGTERM arq waits while job tasks exist, then cancels the poll loop. A claim in flight then
        # has marked its jobs in progress in Redis, with no task yet: cancelled, those jobs would wait
        # out the mark (job timeout + 10 s). The signal stops new claims, so once the loop reaches its
        # heartbeat again every claimed job has its task, waited for with the others.
        heart_beats = self.heart_beats
        while self.tasks or (self.heart_beats == heart_beats and not LINK.down):  # noqa: ASYNC110 (as arq's)
            await asyncio.sleep(0.05)

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except REDIS_AWAY as exc:
            await asyncio.sleep(LINK.failed(exc))
        else:
            LINK.ok()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # One id at a time: when arq's claim of a job fails on Redis, it may have taken a slot
        # (semaphore + counter) for it that no task will give back. Not always: the failure can come
        # from the pipeline's reset on the way out, after arq gave the slot back itself (the job was
        # running elsewhere) or handed it to the job's task; giving it back again raised
        # "BoundedSemaphore released too many times" and ended the process (a paused Redis did it).
        for job_id in job_ids:
            counter = self.job_counter
            try:
                await super().start_jobs([job_id])
            except REDIS_AWAY:
                self._give_back_slot_if_held(counter, job_id)
                raise
            except WatchError as exc:
                # redis-py reports a connection lost while a WATCH is on as WatchError; arq catches it
                # only around EXEC, not around the EXISTS and ZSCORE it sends while watching.
                self._give_back_slot_if_held(counter, job_id)
                raise RedisConnectionError(str(exc)) from exc

    def _give_back_slot_if_held(self, counter_before: int, job_id: bytes) -> None:
        if self.job_counter > counter_before and job_id.decode() not in self.tasks:
            self._release_sem_dec_counter_on_complete()

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


# Claims up to ARGV[3] due jobs in one call. Each claimed job gets arq's in-progress mark, and its
# score moves to the end of that mark (a lease): later polls no longer return it while it runs, so a
# busy queue's running jobs are not probed again and again, and a job whose worker died is due
# again when the mark lapses, as with arq's own protocol. Its payload and try number come back with it.
# The try counter is created by SET NX (one command on a first run) and counted up by INCR after.
# Returns flat [job id, score, payload, try, ...].
CLAIM_SCRIPT = f"""
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local out = {{}}
for i = 1, #due, 2 do
  local id = due[i]
  if redis.call('SET', '{in_progress_key_prefix}' .. id, '1', 'NX', 'PX', ARGV[4]) then
    local payload = redis.call('GET', '{job_key_prefix}' .. id)
    if payload then
      redis.call('ZADD', KEYS[1], 'XX', ARGV[2], id)
      local try = 1
      if not redis.call('SET', '{retry_key_prefix}' .. id, '1', 'NX', 'EX', {RETRY_KEY_TTL_S}) then
        try = redis.call('INCR', '{retry_key_prefix}' .. id)
      end
      out[#out + 1] = id
      out[#out + 1] = due[i + 1]
      out[#out + 1] = payload
      out[#out + 1] = try
    else                                  -- finished elsewhere, or its job key expired: nothing to run
      redis.call('DEL', '{in_progress_key_prefix}' .. id)
      redis.call('ZREM', KEYS[1], id)
    end
  end
end
return out
"""
_claim = AsyncScript(None, CLAIM_SCRIPT.encode())  # type: ignore[arg-type]


class LeanWorker(ResilientWorker):
    """The worker queue's jobs on arq's keys with fewer Redis commands per job (join storms, #17).

    arq 0.28 spends 17 commands on a job that does nothing: per job a WATCH/EXISTS/ZSCORE/MULTI claim,
    a MULTI/GET/INCR/EXPIRE start, a MULTI/SET result/ZREM/ZREM/DEL finish, and every poll probes the
    jobs already running at the head of the queue again. Here one script per poll claims a batch
    (4 commands per job), a finished job costs DEL + ZREM in one round trip, and a result is stored
    only for a function that keeps one (keep_result > 0). Same keys, same meaning: arq's enqueue,
    in-progress mark, try counter and queue, so replay, tests and tools see what they saw.
    The recorder queue keeps arq's own protocol (a handful of long jobs; its lease hand-back relies on it).
    """

    async def _poll_iteration(self) -> None:
        try:
            free = self.max_jobs - self.job_counter
            if self.allow_pick_jobs and free > 0:
                await self._claim_and_start(min(free, self.queue_read_limit))
            for job_id, task in list(self.tasks.items()):
                if task.done():
                    del self.tasks[job_id]
                    task.result()
            await self.heart_beat()
        except REDIS_AWAY as exc:
            await asyncio.sleep(LINK.failed(exc))
        else:
            LINK.ok()

    async def _claim_and_start(self, count: int) -> None:
        now = timestamp_ms()
        lease_ms = int(self.in_progress_timeout_s * 1000)
        claimed = await _claim(keys=[self.queue_name], args=[now, now + lease_ms, count, lease_ms], client=self.pool)
        for n in range(0, len(claimed), 4):
            job_id = claimed[n].decode()
            await self.sem.acquire()        # never waits: no more were claimed than slots are free
            self.job_counter += 1
            task = self.loop.create_task(self._run_claimed(job_id, int(claimed[n + 1]), claimed[n + 2],
                                                           int(claimed[n + 3])))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _run_claimed(self, job_id: str, score: int, payload: bytes, job_try: int) -> None:
        try:
            name, args, kwargs, _, enqueue_time_ms = deserialize_job_raw(payload, deserializer=self.job_deserializer)
        except SerializationError:
            log.exception("job.undecodable", job_id=job_id)
            return await self._finish(job_id, None, None)
        function = self.functions.get(name)
        if function is None:
            log.warning("job.unknown_function", job_id=job_id, function=name)
            return await self._finish(job_id, None, None)
        max_tries = self.max_tries if function.max_tries is None else function.max_tries
        if job_try > max_tries:
            log.warning("job.max_tries_exceeded", job_id=job_id, function=name, tries=max_tries)
            self.jobs_failed += 1
            return await self._finish(job_id, None, None)
        ctx = {**self.ctx, "job_id": job_id, "job_try": job_try, "enqueue_time": ms_to_datetime(enqueue_time_ms),
               "score": score}
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        started_ms = timestamp_ms()
        self.job_tasks[job_id] = task = self.loop.create_task(function.coroutine(ctx, *args, **kwargs))
        try:
            result = await asyncio.wait_for(task, timeout_s)
        except Retry as retry:
            self.jobs_retried += 1
            await asyncio.shield(self._requeue(job_id, timestamp_ms() + (retry.defer_score or 0)))
        except (asyncio.CancelledError, RetryJob):
            self.jobs_retried += 1     # stopping (or the job asked): due again at once, for any worker
            await asyncio.shield(self._requeue(job_id, score))
        except TimeoutError:
            # Unlike arq, which fails and drops a job that overruns its timeout: our jobs keep their own
            # deadlines inside it, so an overrun is a stall outside the handler (a Redis that stopped
            # answering mid-bookkeeping). The job runs again, and max_tries still bounds a job that
            # never finishes (it then reports event.failed, code `crashed`).
            log.warning("job.timed_out", job_id=job_id, function=name, timeout_s=timeout_s, job_try=job_try)
            self.jobs_retried += 1
            await asyncio.shield(self._requeue(job_id, timestamp_ms()))
        except Exception as exc:      # arq's semantics: a job that raises is done, failed
            log.exception("job.raised", job_id=job_id, function=name)
            self.jobs_failed += 1
            await asyncio.shield(self._finish(job_id, function, self._result(
                function, job_id, name, args, kwargs, job_try, enqueue_time_ms, False, exc, started_ms)))
        else:
            self.jobs_complete += 1
            await asyncio.shield(self._finish(job_id, function, self._result(
                function, job_id, name, args, kwargs, job_try, enqueue_time_ms, True, result, started_ms)))
        finally:
            self.job_tasks.pop(job_id, None)

    def _result(self, function: Function | CronJob, job_id: str, name: str, args: tuple[Any, ...],
                kwargs: dict[str, Any], job_try: int, enqueue_time_ms: int, success: bool, result: Any,
                started_ms: int) -> bytes | None:
        if self._keep_result_s(function) <= 0:
            return None
        return serialize_result(name, args, kwargs, job_try, enqueue_time_ms, success, result, started_ms,
                                timestamp_ms(), f"{job_id}:{name}", self.queue_name, job_id=job_id,
                                serializer=self.job_serializer)

    def _keep_result_s(self, function: Function | CronJob) -> float:
        return self.keep_result_s if function.keep_result_s is None else function.keep_result_s

    async def _finish(self, job_id: str, function: Function | CronJob | None, result: bytes | None) -> None:
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.delete(job_key_prefix + job_id, retry_key_prefix + job_id, in_progress_key_prefix + job_id)
            pipe.zrem(self.queue_name, job_id)
            if result is not None and function is not None:
                pipe.set(result_key_prefix + job_id, result, px=int(self._keep_result_s(function) * 1000))
            await self._bookkeeping(pipe)

    async def _requeue(self, job_id: str, score: int) -> None:
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.zadd(self.queue_name, {job_id: score}, xx=True)
            pipe.delete(in_progress_key_prefix + job_id)
            await self._bookkeeping(pipe)

    async def _bookkeeping(self, pipe: Any) -> None:
        try:
            await pipe.execute()
        except REDIS_AWAY as exc:
            LINK.failed(exc)    # still queued, still leased: it runs again when its in-progress mark lapses
