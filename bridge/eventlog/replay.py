"""Replaying logged events.

A replay takes an event exactly as it was accepted (or, with `reparse`, re-derives the canonical
form from the raw body with today's mapping), gives it a fresh replay id — so its job ids and the
webhook ids its jobs produce are new — and writes, in one script call per batch, a new log entry
carrying `replay_of` plus the new arq jobs. Jobs see `replay_of` in their envelope and put it in
every webhook's `data.replay_of`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.config import Settings
from bridge.eventlog.entries import LogEvent, epoch_ms, new_replay_id, parse_time
from bridge.eventlog.query import job_runs
from bridge.routing import JOBS_BY_TYPE, PROVIDER_SOURCE_PREFIX, event_ref, plan
from bridge.sources import FORMATS, InvalidEvent
from bridge.sources.canonical import iso
from bridge.store import (
    ENQUEUE_JOB_LUA,
    EVENT_LOG,
    JOB_EXPIRES_MS,
    JobSpec,
    arq_payload,
    job_runs_key,
    replays_key,
    seen_key,
)

WRITE_BATCH = 50              # events per replay script call (1 when a rate is set)
FINAL = ("ok", "failed")

# One atomic run per batch: per event, a new log entry carrying replay_of, the dedupe marker restored
# when it is missing and the original's window has not run out (replays into a fresh Redis), the
# event's replay index, and its jobs (skipped if a job with that id exists, like the accept script).
REPLAY_SCRIPT = "#!lua" + ENQUEUE_JOB_LUA + """
-- KEYS: [1] event log; per event: seen key, replays key
-- ARGV: [1] event count, [2] replays index ttl s; per event: id, source, received_at, raw, canonical,
--       jobs json, replay_of, replay id, original entry, replayed_at, seen ttl ms, index item json,
--       job count, then per job: job id, queue, payload, score, expires ms
-- Returns the new log entry id of each event.
local k, a = 2, 3
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local seen, index = KEYS[k], KEYS[k + 1]
  k = k + 2
  local entry = redis.call('XADD', KEYS[1], '*', 'id', ARGV[a], 'source', ARGV[a + 1],
    'received_at', ARGV[a + 2], 'raw', ARGV[a + 3], 'canonical', ARGV[a + 4], 'jobs', ARGV[a + 5],
    'replay_of', ARGV[a + 6], 'replay', ARGV[a + 7], 'original_entry', ARGV[a + 8], 'replayed_at', ARGV[a + 9])
  local ttl = tonumber(ARGV[a + 10])
  if ttl > 0 then
    redis.call('SET', seen, entry, 'PX', ttl, 'NX')
  end
  local item = cjson.decode(ARGV[a + 11])
  item['entry'] = entry
  redis.call('RPUSH', index, cjson.encode(item))
  redis.call('EXPIRE', index, ARGV[2])
  local njobs = tonumber(ARGV[a + 12])
  a = a + 13
  for _ = 1, njobs do
    enqueue_job(ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
    a = a + 5
  end
  out[#out + 1] = entry
end
return out
"""


@dataclass
class PlannedReplay:
    event: LogEvent
    replay_id: str
    canonical: dict[str, Any] | None = None
    jobs: list[JobSpec] = field(default_factory=list)
    error: str | None = None            # could not be planned or enqueued
    entry_id: str | None = None         # the new log entry, once enqueued
    outcome: str | None = None          # with wait: ok | failed | unfinished

    @property
    def ref(self) -> str:
        return event_ref(self.event.source, self.event.id, self.replay_id)

    @property
    def functions(self) -> list[str]:
        return [job.function for job in self.jobs]

    def describe(self) -> dict[str, Any]:
        return {"id": self.event.id, "source": self.event.source, "replay_of": self.event.original_id,
                "type": (self.canonical or self.event.canonical).get("type"), "lesson_id": self.event.lesson_id,
                "original_entry": self.event.entry_id, "replay": self.replay_id, "ref": self.ref,
                "entry_id": self.entry_id, "jobs": [job.job_id for job in self.jobs], "error": self.error,
                "outcome": self.outcome}


def plan_replay(settings: Settings, event: LogEvent, reparse: bool = False) -> PlannedReplay:
    planned = PlannedReplay(event, new_replay_id())
    source = settings.sources.get(event.source)
    from_provider = event.source.startswith(PROVIDER_SOURCE_PREFIX)
    if source is None and not from_provider:
        planned.error = f"source {event.source!r} is no longer configured"
        return planned
    canonical = event.canonical
    # A provider's webhook replays as stored: its receiver read the body once, at intake.
    if source is not None and (reparse or not canonical):
        try:
            parsed = FORMATS[source.format](source, event.raw)
        except InvalidEvent as exc:
            planned.error = f"the raw event no longer parses: {exc}"
            return planned
        if parsed.event is None:
            planned.error = f"the current mapping ignores this event ({parsed.ignored_reason or 'unmapped'})"
            return planned
        canonical = parsed.event
    if canonical.get("type") not in JOBS_BY_TYPE:
        planned.error = f"no jobs for event type {canonical.get('type')!r}"
        return planned
    provider = (canonical.get("lesson") or {}).get("provider")
    if provider is not None and provider not in settings.providers:
        planned.error = f"no provider named {provider!r} is configured"
        return planned
    planned.canonical = canonical
    planned.jobs = plan(event.source, {**canonical, "id": event.id}, replay=planned.replay_id,
                        replay_of=event.original_id)
    return planned


def _seen_ttl_ms(settings: Settings, event: LogEvent, now_ms: int) -> int:
    """What is left of the original's dedupe window (0 when it has run out or is unknown)."""
    try:
        received = epoch_ms(parse_time(event.received_at)) if event.received_at else None
    except ValueError:
        received = None
    if received is None:
        return 0
    return max(0, settings.dedupe_window_s * 1000 - (now_ms - received))


def replay_call(settings: Settings, batch: list[PlannedReplay], now_ms: int) -> tuple[list[str], list[Any]]:
    keys: list[str] = [EVENT_LOG]
    args: list[Any] = [len(batch), max(settings.event_retention_s, settings.record_retention_s)]
    replayed_at = iso(datetime.fromtimestamp(now_ms / 1000, UTC))
    for item in batch:
        event = item.event
        keys += [seen_key(event.source, event.id), replays_key(event.source, event.id)]
        index = {"replay": item.replay_id, "functions": item.functions, "at": replayed_at}
        args += [event.id, event.source, event.received_at, json.dumps(event.raw), json.dumps(item.canonical),
                 json.dumps([job.job_id for job in item.jobs]), event.original_id, item.replay_id,
                 event.entry_id or "", replayed_at, _seen_ttl_ms(settings, event, now_ms), json.dumps(index),
                 len(item.jobs)]
        for job in item.jobs:
            args += [job.job_id, job.queue, arq_payload(job.function, (job.envelope,), now_ms), now_ms, JOB_EXPIRES_MS]
    return keys, args


async def enqueue_replays(redis: Redis, settings: Settings, planned: list[PlannedReplay], *,
                          rate: float | None = None, progress: Callable[[PlannedReplay], Any] | None = None) -> None:
    """Write every plannable replay (atomically per batch); sets entry_id, or error when Redis refused."""
    script = redis.register_script(REPLAY_SCRIPT)
    size = 1 if rate else WRITE_BATCH
    started = time.monotonic()
    done = 0
    pending: list[PlannedReplay] = []

    async def flush() -> None:
        nonlocal done
        if rate:
            delay = started + done / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if pending:
            keys, args = replay_call(settings, pending, int(time.time() * 1000))
            try:
                entries = await script(keys=keys, args=args)
            except RedisError as exc:
                for item in pending:
                    item.error = f"could not be enqueued: {type(exc).__name__}: {exc}"
            else:
                for item, entry in zip(pending, entries, strict=True):
                    item.entry_id = entry.decode() if isinstance(entry, bytes) else str(entry)
            for item in pending:
                done += 1
                if progress:
                    progress(item)
            pending.clear()

    for item in planned:
        if item.error:
            if progress:
                progress(item)
            continue
        pending.append(item)
        if len(pending) >= size:
            await flush()
    await flush()


async def wait_for_jobs(redis: Redis, planned: list[PlannedReplay], timeout_s: float) -> None:
    """Until every enqueued replay's jobs have ended (ok or failed) or time runs out; sets outcome."""
    waiting = [p for p in planned if p.entry_id]
    deadline = time.monotonic() + timeout_s
    pause = 0.05
    while waiting:
        async with redis.pipeline(transaction=False) as pipe:
            for item in waiting:
                pipe.hgetall(job_runs_key(item.ref))
            results = await pipe.execute()
        still = []
        for item, raw in zip(waiting, results, strict=True):
            runs = job_runs(raw)
            statuses = [(runs.get(f) or {}).get("status") for f in item.functions]
            if all(s in FINAL for s in statuses):
                item.outcome = "failed" if "failed" in statuses else "ok"
            else:
                still.append(item)
        waiting = still
        if not waiting:
            return
        if time.monotonic() + pause > deadline:
            for item in waiting:
                item.outcome = "unfinished"
            return
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.25)


@dataclass
class Summary:
    selected: int = 0
    enqueued: int = 0
    failed: int = 0               # could not be planned or enqueued (bad lines of a file included)
    jobs_ok: int = 0
    jobs_failed: int = 0
    unfinished: int = 0
    dry_run: bool = False
    waited: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.jobs_failed or self.unfinished else 0

    def text(self) -> str:
        if self.dry_run:
            line = (f"dry run: {self.selected} selected, {self.selected - self.failed} would be replayed, "
                    f"{self.failed} cannot be; nothing was changed")
            return line
        line = f"replay: {self.selected} selected, {self.enqueued} enqueued, {self.failed} failed"
        if self.waited:
            line += f"; replayed events: {self.jobs_ok} ok, {self.jobs_failed} failed, {self.unfinished} unfinished"
        return line

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()} | {"exit_code": self.exit_code}


def summarize_replays(planned: list[PlannedReplay], problems: Iterable[str] = (), *, dry_run: bool = False,
                      waited: bool = False) -> Summary:
    problems = list(problems)
    summary = Summary(selected=len(planned) + len(problems), dry_run=dry_run, waited=waited)
    summary.failed = len(problems) + sum(1 for p in planned if p.error)
    summary.enqueued = sum(1 for p in planned if p.entry_id)
    summary.jobs_ok = sum(1 for p in planned if p.outcome == "ok")
    summary.jobs_failed = sum(1 for p in planned if p.outcome == "failed")
    summary.unfinished = sum(1 for p in planned if p.outcome == "unfinished")
    return summary
