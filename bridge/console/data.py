"""What the console pages show, read from Redis with bounded work per page.

Nothing here keeps state of its own: the event log, delivery records, metrics hashes, lesson and
recording hashes and the attendance ledger are read as the workers left them. Aggregates that have
no index of their own (per-endpoint latency, recently active lessons) are taken over the newest
SAMPLE_EVENTS entries of the log, and the pages say so.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from bridge import attendance, metrics
from bridge.config import Settings
from bridge.eventlog.entries import LogEvent
from bridge.eventlog.query import Filters, events_page
from bridge.store import (
    EVENT_LOG,
    delivery_key,
    endpoint_disabled_key,
    job_runs_key,
    lesson_key,
    produced_ids,
    read_deliveries,
    recording_key,
)

SAMPLE_EVENTS = 500             # newest log entries the endpoint and lesson views look through
RATE_WINDOW_MIN = 30            # the events/min chart's width
RATE_READ_CAP = 3000            # entries the events/min chart reads at most (older minutes then show as unknown)
LESSON_LIST_MAX = 100
LESSON_EVENTS = 100


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _decode_hash(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def newest_events(redis: Redis, count: int) -> list[LogEvent]:
    events = []
    for entry_id, fields in await redis.xrevrange(EVENT_LOG, count=count):
        try:
            events.append(LogEvent.from_entry(entry_id, fields))
        except (KeyError, ValueError):
            continue
    return events


# ---------------------------------------------------------------------------------------------- overview

@dataclass
class Overview:
    per_minute: list[tuple[int, int | None]]       # (minute start ms, events; None: beyond what was read)
    attempts: dict[str, int]                       # outbound attempts by HTTP status (or timeout, error, refused)
    intake: dict[str, int]                         # events by outcome (accepted, duplicate, ignored)
    latency: list[tuple[str, int]]                 # job-duration histogram: (bucket upper bound, runs)
    queues: dict[str, tuple[int, int]]             # queue → (depth, due now)
    dead: int
    failing: int
    recordings: int
    log_length: int

    @property
    def delivery_success(self) -> float | None:
        total = sum(self.attempts.values())
        ok = sum(n for status, n in self.attempts.items() if status.isdigit() and 200 <= int(status) < 300)
        return ok / total if total else None


def _labelled_sums(values: dict[bytes, bytes], position: int) -> dict[str, int]:
    sums: Counter[str] = Counter()
    for raw_field, value in values.items():
        labels = metrics._labels(raw_field)
        if len(labels) > position:
            sums[labels[position]] += int(float(value))
    return dict(sums)


async def overview(redis: Redis, now_ms: int | None = None) -> Overview:
    now_ms = now_ms or int(time.time() * 1000)
    snapshot = await metrics.Snapshot.read(redis)
    first_minute = (now_ms // 60_000 - RATE_WINDOW_MIN + 1) * 60_000
    rows = await redis.xrevrange(EVENT_LOG, min=str(first_minute), count=RATE_READ_CAP)
    counts: Counter[int] = Counter(int(_text(entry_id).split("-")[0]) // 60_000 * 60_000 for entry_id, _ in rows)
    # When the cap was reached, minutes older than the oldest entry read are unknown, not zero.
    known_from = int(_text(rows[-1][0]).split("-")[0]) // 60_000 * 60_000 if len(rows) == RATE_READ_CAP else 0
    per_minute = [(m, counts.get(m, 0) if m >= known_from else None)
                  for m in range(first_minute, now_ms + 1, 60_000)]
    buckets = _labelled_sums(snapshot.job_buckets, 1)
    bounds = [metrics._le(b) for b in metrics.JOB_BUCKETS] + ["+Inf"]
    return Overview(
        per_minute=per_minute,
        attempts=_labelled_sums(snapshot.attempts, 0),
        intake=_labelled_sums(snapshot.events, 1),
        latency=[(bound, buckets.get(bound, 0)) for bound in bounds],
        queues={name: (snapshot.queue_depth[name], snapshot.queue_due[name]) for name in metrics.QUEUES},
        dead=snapshot.dead, failing=snapshot.failing, recordings=snapshot.recordings,
        log_length=await redis.xlen(EVENT_LOG))


# ---------------------------------------------------------------------------------------------- endpoints

@dataclass
class EndpointStats:
    name: str
    webhook_url: str | None
    disabled_since: str | None = None
    attempts: int = 0
    succeeded: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    last_error: dict[str, Any] | None = None
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.attempts if self.attempts else None

    @property
    def p50(self) -> float | None:
        return percentile(self.latencies_ms, 0.50)

    @property
    def p99(self) -> float | None:
        return percentile(self.latencies_ms, 0.99)


async def webhook_outcomes(redis: Redis, refs: list[str]) -> dict[str, Counter[str]]:
    """For each execution, how many of its webhooks are delivered, failed, dead...: two round trips."""
    async with redis.pipeline(transaction=False) as pipe:
        for ref in refs:
            pipe.hgetall(job_runs_key(ref))
        produced = [produced_ids(runs) for runs in await pipe.execute()]
    async with redis.pipeline(transaction=False) as pipe:
        for ids in produced:
            for msg_id in ids:
                pipe.hget(delivery_key(msg_id), "status")
        statuses = iter(await pipe.execute())
    return {ref: Counter(_text(next(statuses)) or "expired" for _ in ids)
            for ref, ids in zip(refs, produced, strict=True)}


async def deliveries_of(redis: Redis, refs: list[str]) -> list[dict[str, Any]]:
    """Every delivery the executions `refs` produced: its record and its attempts, in two round trips."""
    async with redis.pipeline(transaction=False) as pipe:
        for ref in refs:
            pipe.hgetall(job_runs_key(ref))
        ids = [msg_id for runs in await pipe.execute() for msg_id in produced_ids(runs)]
    out = []
    for msg_id, (record, attempt_log) in zip(ids, await read_deliveries(redis, ids), strict=True):
        if not record:
            continue
        try:
            payload = json.loads(record.get("payload") or "null")
        except ValueError:
            payload = None
        out.append({"webhook_id": msg_id, **record, "payload": payload, "attempt_log": attempt_log})
    return out


async def endpoints(redis: Redis, settings: Settings) -> list[EndpointStats]:
    stats = {name: EndpointStats(name, source.webhook_url) for name, source in settings.sources.items()}
    async with redis.pipeline(transaction=False) as pipe:
        for name in stats:
            pipe.get(endpoint_disabled_key(name))
        for stat, since in zip(stats.values(), await pipe.execute(), strict=True):
            stat.disabled_since = _text(since) or None
    events = await newest_events(redis, SAMPLE_EVENTS)
    for item in await deliveries_of(redis, [e.ref for e in events]):
        stat = stats.get(item.get("source", ""))
        if stat is None:
            continue
        for attempt in item["attempt_log"]:
            stat.attempts += 1
            stat.statuses[str(attempt.get("status") or attempt.get("error") or "error")] += 1
            if attempt.get("ms") is not None:
                stat.latencies_ms.append(float(attempt["ms"]))
            if attempt.get("error") is None:
                stat.succeeded += 1
            elif stat.last_error is None or attempt.get("at", "") > stat.last_error.get("at", ""):
                stat.last_error = {**attempt, "webhook_id": item["webhook_id"]}
    return list(stats.values())


# ---------------------------------------------------------------------------------------------- lessons

async def recent_lessons(redis: Redis) -> list[dict[str, Any]]:
    """Lessons the newest log entries name, most recently active first, with their stored state."""
    seen: dict[tuple[str, str], LogEvent] = {}
    for event in await newest_events(redis, SAMPLE_EVENTS):
        if event.lesson_id and (event.source, event.lesson_id) not in seen:
            seen[(event.source, event.lesson_id)] = event
            if len(seen) >= LESSON_LIST_MAX:
                break
    async with redis.pipeline(transaction=False) as pipe:
        for source, lesson_id in seen:
            pipe.hgetall(lesson_key(source, lesson_id))
        states = await pipe.execute()
    return [{"source": source, "id": lesson_id, "state": _decode_hash(state), "last_event": event}
            for ((source, lesson_id), event), state in zip(seen.items(), states, strict=True)]


@dataclass
class LessonView:
    source: str
    lesson_id: str
    state: dict[str, str]
    room: dict[str, Any] | None
    events: list[tuple[LogEvent, str]]          # newest first, with their status
    recordings: list[dict[str, Any]]
    attendance: dict[str, Any] | None


async def lesson(redis: Redis, settings: Settings, source: str, lesson_id: str) -> LessonView:
    state = _decode_hash(await redis.hgetall(lesson_key(source, lesson_id)))
    try:
        room = json.loads(state["room"]) if state.get("room") else None
    except ValueError:
        room = None
    filters = Filters(sources=frozenset({source}), lessons=frozenset({lesson_id}), include_replays=True)
    rows, _ = await events_page(redis, filters, limit=LESSON_EVENTS, known_sources=settings.sources)
    recordings = await _recordings(redis, [e.ref for e, _ in rows], state.get("recording"))
    session_id = await attendance.latest_session(redis, source, lesson_id)
    report = None
    if session_id:
        snapshot = await attendance.load(redis, attendance.Ledger(source, lesson_id, session_id))
        report = snapshot.report(session_id)
    return LessonView(source, lesson_id, state, room, [(e, s.status) for e, s in rows], recordings, report)


async def _recordings(redis: Redis, refs: list[str], current: str | None) -> list[dict[str, Any]]:
    """The lesson's recordings: the one running now and every one its events' webhooks name, with
    what their hash holds and the link the newest recording.ready gave."""
    ready: dict[str, dict[str, Any]] = {}
    ids: list[str] = [current] if current else []
    for item in await deliveries_of(redis, refs):
        data = (item.get("payload") or {}).get("data") or {}
        recording_id = data.get("recording_id")
        if not recording_id:
            continue
        ids.append(recording_id)
        if item.get("type") == "recording.ready":
            ready.setdefault(recording_id, data)
    ids = list(dict.fromkeys(ids))
    async with redis.pipeline(transaction=False) as pipe:
        for recording_id in ids:
            pipe.hgetall(recording_key(recording_id))
        hashes = await pipe.execute()
    out = []
    for recording_id, raw in zip(ids, hashes, strict=True):
        stored = _decode_hash(raw)
        link = stored.get("url") or (ready.get(recording_id) or {}).get("url")
        out.append({"id": recording_id, "status": stored.get("status") or ("ready" if link else "unknown"),
                    "url": link, "fields": stored, "current": recording_id == current})
    return out
