"""Job functions: one per canonical type (named in bridge.routing), plus webhook delivery.

Each run records its outcome in the event's runs hash, logs one line carrying the event id,
and turns provider errors into either an arq retry or an `event.failed` webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from arq import Retry
from redis.exceptions import LockError

from bridge import lifecycle, provider_events, recorder, stored_recordings
from bridge.attendance_poll import poll_tick
from bridge.lifecycle import Job, Runtime
from bridge.moodle.enrich import Ignored, prepare
from bridge.providers.base import ProviderError
from bridge.redis_link import LINK, REDIS_AWAY
from bridge.routing import job_source
from bridge.schema.webhooks import WebhookType
from bridge.webhooks import deliver, record_run

log = structlog.get_logger("bridge.jobs")
MAX_TRIES = 8
HANDLERS = {**lifecycle.HANDLERS, **recorder.HANDLERS, **stored_recordings.HANDLERS,
            "provider_event": provider_events.provider_event}


def retry_delay(base_s: float, job_try: int, retry_after: float | None) -> float:
    """Exponential backoff from `base_s`, capped at 5 minutes; a provider's Retry-After wins if longer."""
    return max(retry_after or 0.0, min(base_s * 2.0 ** (job_try - 1), 300.0))


async def _record(rt: Runtime, job: Job | None, ref: str, function: str, outcome: dict[str, Any]) -> None:
    """The run's outcome, with the webhooks it made (one call); counted in the process's metrics."""
    if job is not None:
        await job.record(function, outcome)
    else:
        await record_run(rt.redis, rt.settings.record_retention_s, "", ref, [], function, outcome)
    rt.counts.add_job_run(function, outcome["status"], outcome["ms"] / 1000)


JobFunction = Callable[..., Awaitable[str]]


def rides_out_redis(run: JobFunction, budget_s: float) -> JobFunction:
    """Redis away mid-job is no failure of the event: wait until it answers, then hand the job back to
    arq to run again from the start (jobs are safe to repeat).

    The wait ends inside `budget_s` (the job's deadline, under arq's job timeout): arq's own worker
    (the recorder's) fails a job that overruns its timeout and drops it, without a retry. If Redis is
    still away then, arq cannot file the retry either; the job stays marked in progress and runs again
    when that mark lapses.
    """

    async def wrapped(ctx: dict[str, Any], *args: Any) -> str:
        started = time.monotonic()
        try:
            return await run(ctx, *args)
        except REDIS_AWAY as exc:
            LINK.failed(exc)
            left = budget_s - (time.monotonic() - started) - 0.5
            if left > 0:
                with contextlib.suppress(*REDIS_AWAY):
                    await LINK.wait_until_back(ctx["bridge"].redis, left)
            log.warning("job.rerun_after_redis_outage", job=run.__name__)
            raise Retry(defer=0) from None

    wrapped.__qualname__ = wrapped.__name__ = run.__name__
    return wrapped


def event_job(function: str, deadline_s: float,
              max_tries: int = MAX_TRIES) -> Callable[[dict[str, Any], dict[str, Any]], Awaitable[str]]:
    """The arq function for one handler; `deadline_s` sits inside arq's own job timeout.

    Register it with arq's max_tries = `max_tries` + 1: a run that finishes never needs more than
    `max_tries`, so a higher try means earlier runs died mid-job (a worker killed again and again),
    and this run reports `event.failed` instead of arq dropping the job without a word.
    """
    handler = HANDLERS[function]

    async def run(ctx: dict[str, Any], envelope: dict[str, Any]) -> str:
        rt: Runtime = ctx["bridge"]
        job_try = int(ctx.get("job_try", 1))
        ref, event = envelope["ref"], envelope["event"]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(event_id=event["id"], ref=ref, job=function, job_try=job_try)
        started = time.perf_counter()
        source = rt.settings.sources.get(job_source(envelope))
        job = Job(rt, source, ref, event, envelope.get("replay_of"), job_try >= max_tries) if source else None
        error: ProviderError | None = None
        ignored: str | None = None
        try:
            if job is None:
                raise ProviderError("unknown_source", f"source {job_source(envelope)!r} is no longer configured",
                                    retryable=False)
            if job_try > max_tries:
                raise ProviderError("crashed", f"{function} was started {job_try - 1} times and never finished "
                                    "(its worker was killed or crashed each time)", retryable=False)
            # Our own deadline, inside arq's: a job that overruns is retried, not silently dropped by arq.
            async with asyncio.timeout(deadline_s):
                await prepare(job)          # Moodle sources: calendar twins end here; names, titles, times
                await handler(job)
        except Ignored as exc:
            ignored = exc.reason
        except Retry:
            raise                   # the handler hands the job back itself (a recorder shutting down)
        except TimeoutError:
            error = ProviderError("job_timeout", f"{function} did not finish in time", retryable=True)
        except ProviderError as exc:
            error = exc
        except LockError:
            error = ProviderError("lesson_busy", "another job held the lesson lock too long", retryable=True)
        except REDIS_AWAY:
            raise                   # not the event's fault: rides_out_redis runs the job again
        except Exception as exc:  # a bug: fail visibly (event.failed) so the event can be replayed after a fix
            log.exception("job.crashed")
            error = ProviderError("internal_error", f"{type(exc).__name__}: {exc}"[:300], retryable=False)
        ms = round((time.perf_counter() - started) * 1000, 1)
        # Its time in epoch milliseconds, not ISO text: a success's outcome within 64 B keeps the runs hash
        # in Redis's compact encoding (bridge.eventlog.query.job_runs writes it back as ISO 8601).
        outcome: dict[str, Any] = {"status": "ok", "try": job_try, "at": int(time.time() * 1000), "ms": ms}
        if ignored:
            outcome["ignored"] = ignored
        if error is not None:
            outcome.update(status="failed", error={"code": error.code, "message": error.message})
            if error.retryable and job_try < max_tries:
                outcome["status"] = "retrying"
                await _record(rt, job, ref, function, outcome)
                log.warning("job.retry", code=error.code, ms=ms)
                raise Retry(defer=retry_delay(rt.settings.job_retry_base_s, job_try, error.retry_after))
            if job is not None:
                await job.emit(WebhookType.EVENT_FAILED, {"job": function, "error": outcome["error"]},
                               discriminator=function)
        await _record(rt, job, ref, function, outcome)
        if job is not None:
            await job.flush()       # after the outcome is recorded: ?wait answers without waiting for the LMS
        log.info("job", status=outcome["status"], ms=ms, error=outcome.get("error"), ignored=ignored)
        return outcome["status"]

    run.__qualname__ = run.__name__ = function
    return rides_out_redis(run, deadline_s)


async def deliver_webhook(ctx: dict[str, Any], webhook_id: str, attempt: int, waits: int = 0) -> str:
    rt: Runtime = ctx["bridge"]
    structlog.contextvars.clear_contextvars()
    started = time.perf_counter()
    status = await deliver(rt.redis, rt.webhooks, rt.settings, rt.counts, webhook_id, attempt, waits)
    rt.counts.add_job_run("deliver_webhook", status, time.perf_counter() - started)
    return status


def attendance_poll_job(deadline_s: float, max_tries: int = MAX_TRIES) -> JobFunction:
    """The arq function for one tick of a live lesson's participant polling (bridge.attendance_poll).

    A tick that overruns or crashes is run again (it is safe to repeat); after `max_tries` the chain
    stops, loudly, and the lesson's next join or lesson.started starts it again."""

    async def attendance_poll(ctx: dict[str, Any], source: str, lesson_id: str, session: str, tick: int) -> str:
        rt: Runtime = ctx["bridge"]
        job_try = int(ctx.get("job_try", 1))
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(job="attendance_poll", lesson_id=lesson_id, tick=tick, job_try=job_try)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(deadline_s):
                status = await poll_tick(rt, source, lesson_id, session, tick)
        except REDIS_AWAY:
            raise                   # rides_out_redis runs the tick again
        except Exception as exc:   # a timeout or a bug: the tick is run again, up to max_tries
            log.exception("attendance_poll.failed", error=f"{type(exc).__name__}: {exc}"[:300])
            status = "failed"
            if job_try < max_tries:
                rt.counts.add_job_run("attendance_poll", "retrying", time.perf_counter() - started)
                raise Retry(defer=retry_delay(rt.settings.job_retry_base_s, job_try, None)) from None
        rt.counts.add_job_run("attendance_poll", status, time.perf_counter() - started)
        return status

    return rides_out_redis(attendance_poll, deadline_s)
