"""Finding events in the log, and reading what became of them: executions, jobs, webhook deliveries.

Selections are read into memory before anything is written, so a replay never re-reads the
entries it appends to the log.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from arq.constants import job_key_prefix
from redis.asyncio import Redis

from bridge.clock import iso_from_ms
from bridge.deliveries import delivery
from bridge.eventlog.entries import MAX_ID_PART, LogEvent, epoch_ms, parse_entry_id, parse_time
from bridge.routing import JOBS_BY_TYPE, event_ref
from bridge.store import EVENT_LOG, PRODUCED_FIELD, job_runs_key, produced_ids, replays_key, seen_key

SCAN_COUNT = 500              # entries per XRANGE call
STATE_BATCH = 200             # events per pipeline of state look-ups
PAGE_SCAN_LIMIT = 10_000      # entries one page may read past before it hands back a cursor


@dataclass
class RunState:
    """The latest execution of an event (the original, or its most recent replay) and its job results."""

    ref: str
    functions: list[str]
    runs: dict[str, dict[str, Any]]

    @property
    def status(self) -> str:
        return execution_status(self.functions, self.runs)


def execution_status(functions: list[str], runs: Mapping[str, Mapping[str, Any]]) -> str:
    """failed (some job ended failed) > retrying > ok (every job ok) > pending."""
    statuses = [(runs.get(f) or {}).get("status") for f in functions] if functions else \
        [r.get("status") for r in runs.values()]
    if "failed" in statuses:
        return "failed"
    if "retrying" in statuses:
        return "retrying"
    if statuses and all(s == "ok" for s in statuses):
        return "ok"
    return "pending"


def job_runs(raw: Mapping[bytes, bytes]) -> dict[str, dict[str, Any]]:
    """Job function → its last run's outcome, from an execution's runs hash ("at" as ISO 8601)."""
    out = {}
    for key, value in raw.items():
        if key.startswith(PRODUCED_FIELD.encode()):
            continue
        try:
            outcome = json.loads(value)
        except ValueError:
            continue
        if isinstance(outcome.get("at"), int):          # stored in epoch ms (workers/jobs.py)
            outcome["at"] = iso_from_ms(outcome["at"])
        out[key.decode()] = outcome
    return out


async def current_states(redis: Redis, events: list[LogEvent]) -> list[RunState]:
    """For each event, the state of its latest execution (a replay entry stands for itself)."""
    states: list[RunState] = []
    for start in range(0, len(events), STATE_BATCH):
        batch = events[start:start + STATE_BATCH]
        async with redis.pipeline(transaction=False) as pipe:
            for event in batch:
                pipe.lindex(replays_key(event.source, event.id), -1)
            latest = await pipe.execute()
        chosen: list[RunState] = []
        for event, item in zip(batch, latest, strict=True):
            if item and not event.replay:
                data = json.loads(item)
                chosen.append(RunState(event_ref(event.source, event.id, data["replay"]),
                                       list(data.get("functions") or []), {}))
            else:
                chosen.append(RunState(event.ref, event.functions, {}))
        async with redis.pipeline(transaction=False) as pipe:
            for state in chosen:
                pipe.hgetall(job_runs_key(state.ref))
            for state, raw in zip(chosen, await pipe.execute(), strict=True):
                state.runs = job_runs(raw)
        states += chosen
    return states


@dataclass
class Filters:
    since: datetime | None = None
    until: datetime | None = None
    sources: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    lessons: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    failed_only: bool = False
    include_replays: bool = False

    def matches(self, event: LogEvent) -> bool:
        """Everything but failed_only (that needs the job results from Redis)."""
        if event.replay_of and not self.include_replays:
            return False
        if self.sources and event.source not in self.sources:
            return False
        if self.types and event.type not in self.types:
            return False
        if self.lessons and event.lesson_id not in self.lessons:
            return False
        if self.ids and event.id not in self.ids and event.original_id not in self.ids:
            return False
        if self.since or self.until:
            moment = event.when()
            if moment is None:
                return False
            if self.since and moment < self.since:
                return False
            if self.until and moment > self.until:
                return False
        return True

    @classmethod
    def build(cls, *, since: str | None = None, until: str | None = None, sources: Iterable[str] = (),
              types: Iterable[str] = (), lessons: Iterable[str] = (), ids: Iterable[str] = (),
              failed_only: bool = False, include_replays: bool = False) -> Filters:
        """Raises ValueError naming the bad filter."""
        now = datetime.now(UTC)
        parsed = {}
        for name, value in (("since", since), ("until", until)):
            if value:
                try:
                    parsed[name] = parse_time(value, now)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        known = set(JOBS_BY_TYPE)
        types = frozenset(t for t in types if t)
        unknown = sorted(types - known)
        if unknown:
            raise ValueError(f"type: unknown event type(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(since=parsed.get("since"), until=parsed.get("until"), sources=frozenset(s for s in sources if s),
                   types=types, lessons=frozenset(x for x in lessons if x), ids=frozenset(i for i in ids if i),
                   failed_only=failed_only, include_replays=include_replays)


async def scan_batches(redis: Redis, filters: Filters, *, reverse: bool = False, after: str | None = None,
                       count: int = SCAN_COUNT) -> AsyncIterator[list[LogEvent]]:
    """The log in entry order (newest first with `reverse`), within the filters' time bounds, after `after`.

    Raises ValueError for an `after` that is not an entry id.
    """
    since_ms = max(0, epoch_ms(filters.since)) if filters.since else None
    until_ms = min(epoch_ms(filters.until), MAX_ID_PART) if filters.until else None
    position = parse_entry_id(after) if after else None
    if until_ms is not None and until_ms < 0:
        return                                   # before 1970: the log holds nothing that old
    low = str(since_ms) if since_ms is not None else "-"
    high = str(until_ms) if until_ms is not None else "+"
    while True:
        if reverse:
            if position == (0, 0):
                return
            inside = position is not None and (until_ms is None or position[0] <= until_ms)
            rows = await redis.xrevrange(EVENT_LOG, max=f"({after}" if inside else high, min=low, count=count)
        else:
            if position == (MAX_ID_PART, MAX_ID_PART):
                return
            inside = position is not None and (since_ms is None or position[0] >= since_ms)
            rows = await redis.xrange(EVENT_LOG, min=f"({after}" if inside else low, max=high, count=count)
        if not rows:
            return
        batch = []
        for entry_id, fields in rows:
            try:
                batch.append(LogEvent.from_entry(entry_id, fields))
            except (KeyError, ValueError):
                continue           # not an entry this code wrote; never fatal for a scan
        yield batch
        if len(rows) < count:
            return
        after = rows[-1][0].decode()
        position = parse_entry_id(after)


async def find_events(redis: Redis, event_id: str, source: str | None = None,
                      known_sources: Iterable[str] = ()) -> list[LogEvent]:
    """The logged event(s) with this id: through the dedupe marker, else by scanning the log."""
    return (await find_many(redis, [event_id], source, known_sources)).get(event_id, [])


async def find_many(redis: Redis, ids: Iterable[str], source: str | None = None,
                    known_sources: Iterable[str] = ()) -> dict[str, list[LogEvent]]:
    ids = list(dict.fromkeys(ids))
    sources = [source] if source else list(dict.fromkeys(known_sources))
    found: dict[str, list[LogEvent]] = {i: [] for i in ids}
    pairs = [(i, s) for i in ids for s in sources]
    if pairs:
        async with redis.pipeline(transaction=False) as pipe:
            for event_id, src in pairs:
                pipe.get(seen_key(src, event_id))
            entries = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            hits = [(pair, e.decode()) for pair, e in zip(pairs, entries, strict=True) if e]
            for _, entry in hits:
                pipe.xrange(EVENT_LOG, entry, entry)
            for ((event_id, src), _), rows in zip(hits, await pipe.execute(), strict=True):
                for entry_id, fields in rows:
                    event = LogEvent.from_entry(entry_id, fields)
                    if event.original_id == event_id and event.source == src:
                        found[event_id].append(event)
    missing = {i for i, events in found.items() if not events}
    if missing:       # dedupe marker expired (or never written): look through the log
        async for batch in scan_batches(redis, Filters()):
            for event in batch:
                if event.id in missing and not event.replay_of and (not source or event.source == source):
                    found[event.id].append(event)
    return found


async def select_from_log(redis: Redis, filters: Filters, known_sources: Iterable[str] = (),
                          limit: int | None = None) -> list[LogEvent]:
    """Every matching event, oldest first (bounded by now, so entries written meanwhile are not read)."""
    if not filters.until:
        filters = replace(filters, until=datetime.now(UTC))
    if filters.ids:
        by_id = await find_many(redis, sorted(filters.ids), None, filters.sources or known_sources)
        found = [e for events in by_id.values() for e in events]
        if filters.include_replays:
            found += await _replay_entries(redis, [e for e in found if not e.replay_of])
        candidates = sorted((e for e in found if filters.matches(e)), key=lambda e: e.entry_id or "")
        return (await only_failed(redis, candidates) if filters.failed_only else candidates)[:limit]
    selected: list[LogEvent] = []
    async for batch in scan_batches(redis, filters):
        candidates = [e for e in batch if filters.matches(e)]
        selected += await only_failed(redis, candidates) if filters.failed_only else candidates
        if limit is not None and len(selected) >= limit:
            return selected[:limit]
    return selected


async def _replay_entries(redis: Redis, originals: list[LogEvent]) -> list[LogEvent]:
    """The log entries the replays of these events wrote (those not trimmed yet)."""
    async with redis.pipeline(transaction=False) as pipe:
        for event in originals:
            pipe.lrange(replays_key(event.source, event.id), 0, -1)
        entries = [json.loads(item)["entry"] for items in await pipe.execute() for item in items]
    async with redis.pipeline(transaction=False) as pipe:
        for entry in entries:
            pipe.xrange(EVENT_LOG, entry, entry)
        rows = await pipe.execute()
    return [LogEvent.from_entry(entry_id, fields) for found in rows for entry_id, fields in found]


async def only_failed(redis: Redis, events: list[LogEvent]) -> list[LogEvent]:
    states = await current_states(redis, events)
    return [e for e, s in zip(events, states, strict=True) if s.status == "failed"]


async def events_page(redis: Redis, filters: Filters, *, limit: int, cursor: str | None = None,
                      newest_first: bool = True, known_sources: Iterable[str] = ()
                      ) -> tuple[list[tuple[LogEvent, RunState]], str | None]:
    """One page of matching events with their states, and the cursor of the next page (None: no more)."""
    if filters.ids:
        events = await select_from_log(redis, filters, known_sources)
        if newest_first:
            events.reverse()
        return list(zip(events, await current_states(redis, events), strict=True)), None
    out: list[tuple[LogEvent, RunState]] = []
    scanned = 0
    async for batch in scan_batches(redis, filters, reverse=newest_first, after=cursor,
                                    count=min(SCAN_COUNT, max(limit * 4, 50))):
        candidates = [e for e in batch if filters.matches(e)]
        for event, state in zip(candidates, await current_states(redis, candidates), strict=True):
            if filters.failed_only and state.status != "failed":
                continue
            out.append((event, state))
            if len(out) == limit:
                return out, event.entry_id
        scanned += len(batch)
        if batch and scanned >= PAGE_SCAN_LIMIT:
            return out, batch[-1].entry_id
    return out, None


async def event_details(redis: Redis, event: LogEvent) -> dict[str, Any]:
    """The event, its canonical form, and each execution (original, then replays): jobs and deliveries."""
    executions: list[dict[str, Any]] = [{"ref": event.ref, "replay": event.replay, "entry_id": event.entry_id,
                                         "replayed_at": None, "functions": event.functions}]
    if not event.replay:
        for raw in await redis.lrange(replays_key(event.source, event.id), 0, -1):
            item = json.loads(raw)
            executions.append({"ref": event_ref(event.source, event.id, item["replay"]), "replay": item["replay"],
                               "entry_id": item.get("entry"), "replayed_at": item.get("at"),
                               "functions": list(item.get("functions") or [])})
    for execution in executions:
        ref, functions = execution["ref"], execution.pop("functions")
        raw_runs = await redis.hgetall(job_runs_key(ref))
        runs = job_runs(raw_runs)
        functions = functions or sorted(runs)
        async with redis.pipeline(transaction=False) as pipe:
            for function in functions:
                pipe.exists(job_key_prefix + f"{ref}:{function}")
            queued = await pipe.execute()
        jobs = []
        for function, is_queued in zip(functions, queued, strict=True):
            run = runs.get(function) or {}
            jobs.append({"function": function, "job_id": f"{ref}:{function}",
                         "status": run.get("status") or ("queued" if is_queued else "unknown"),
                         "try": run.get("try"), "at": run.get("at"), "ms": run.get("ms"), "error": run.get("error")})
        deliveries = []
        for msg_id in produced_ids(raw_runs):
            info = await delivery(redis, msg_id)
            if info is not None:
                deliveries.append(info)
        execution.update(status=execution_status(functions, runs), jobs=jobs, deliveries=deliveries)
    return {"event": {**event.summary(), "canonical": event.canonical, "raw": event.raw},
            "status": executions[-1]["status"], "executions": executions}
