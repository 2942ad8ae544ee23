"""The event log as an operator sees it: find events, export them, replay them, trim the log.

A replay takes an event exactly as it was accepted (or, with `reparse`, re-derives the canonical
form from the raw body with today's mapping), gives it a fresh replay id — so its job ids and the
webhook ids its jobs produce are new — and writes, in one script call per batch, a new log entry
carrying `replay_of` plus the new arq jobs. Jobs see `replay_of` in their envelope and put it in
every webhook's `data.replay_of`.

Selections are read into memory before anything is written, so a replay never re-reads the
entries it appends to the log.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.config import Settings
from bridge.routing import JOBS_BY_TYPE, event_ref, plan
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

SCAN_COUNT = 500              # entries per XRANGE call
STATE_BATCH = 200             # events per pipeline of state look-ups
WRITE_BATCH = 50              # events per replay script call (1 when a rate is set)
FINAL = ("ok", "failed")
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

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


# ---------------------------------------------------------------------------------------------- times

def parse_time(value: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (UTC when no zone is given) or a relative one such as `2h`, `30m`, `7d`."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(value)
    if relative:
        try:
            return now - timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2).lower()])
        except (OverflowError, ValueError):
            raise ValueError(f"{value!r} reaches back before the year 1") from None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is neither an ISO 8601 time (2026-11-22T10:00:00Z) "
                         "nor a relative one (90s, 30m, 2h, 7d, 1w)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def entry_time(entry_id: str) -> datetime:
    return datetime.fromtimestamp(int(entry_id.split("-", 1)[0]) / 1000, UTC)


MAX_ID_PART = 2**64 - 1
_ENTRY_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")


def parse_entry_id(value: str) -> tuple[int, int]:
    """A stream entry id `<ms>-<seq>` as Redis accepts it; ValueError otherwise."""
    match = _ENTRY_ID.match(value)
    if not match or int(match.group(1)) > MAX_ID_PART or int(match.group(2)) > MAX_ID_PART:
        raise ValueError(f"{value!r} is not a log entry id (<ms>-<seq>)")
    return int(match.group(1)), int(match.group(2))


def new_replay_id() -> str:
    """Time-ordered and unique: `<ms hex><random hex>`."""
    return f"{int(time.time() * 1000):x}{secrets.token_hex(4)}"


# ---------------------------------------------------------------------------------------------- events

@dataclass
class LogEvent:
    """One event-log entry (or one line of an export)."""

    id: str
    source: str
    received_at: str
    raw: Any
    canonical: dict[str, Any]
    entry_id: str | None = None
    jobs: list[str] = field(default_factory=list)
    replay_of: str | None = None
    replay: str | None = None

    @property
    def ref(self) -> str:
        return event_ref(self.source, self.id, self.replay)

    @property
    def type(self) -> str | None:
        return self.canonical.get("type")

    @property
    def lesson_id(self) -> str | None:
        return (self.canonical.get("lesson") or {}).get("id")

    @property
    def original_id(self) -> str:
        return self.replay_of or self.id

    @property
    def functions(self) -> list[str]:
        prefix = f"{self.ref}:"
        return [job[len(prefix):] if job.startswith(prefix) else job for job in self.jobs]

    def when(self) -> datetime | None:
        """When the bridge received it: the log entry's time, else the recorded received_at."""
        if self.entry_id:
            return entry_time(self.entry_id)
        try:
            return parse_time(self.received_at)
        except (ValueError, AttributeError):
            return None

    @classmethod
    def from_entry(cls, entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> LogEvent:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        return cls(id=f["id"], source=f["source"], received_at=f.get("received_at", ""),
                   raw=json.loads(f.get("raw") or "null"), canonical=json.loads(f.get("canonical") or "{}"),
                   entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                   jobs=json.loads(f.get("jobs") or "[]"), replay_of=f.get("replay_of") or None,
                   replay=f.get("replay") or None)

    @classmethod
    def from_export(cls, line: Any) -> LogEvent:
        if not isinstance(line, dict):
            raise ValueError("a line must be a JSON object")
        source, canonical = line.get("source"), line.get("canonical")
        if not isinstance(source, str) or not source:
            raise ValueError("'source' must be a non-empty string")
        if canonical is not None and not isinstance(canonical, dict):
            raise ValueError("'canonical' must be an object")
        event_id = line.get("id") or (canonical or {}).get("id")
        if not isinstance(event_id, str) or not event_id:
            raise ValueError("'id' must be a non-empty string")
        if canonical is None and line.get("raw") is None:
            raise ValueError("a line needs 'canonical' or 'raw'")
        jobs = line.get("jobs") if isinstance(line.get("jobs"), list) else []
        return cls(id=event_id, source=source, received_at=str(line.get("received_at") or ""),
                   raw=line.get("raw"), canonical=canonical or {}, entry_id=None, jobs=jobs,
                   replay_of=line.get("replay_of") or None, replay=line.get("replay") or None)

    def export(self) -> dict[str, Any]:
        line: dict[str, Any] = {"id": self.id, "source": self.source, "received_at": self.received_at,
                                "raw": self.raw, "canonical": self.canonical, "entry_id": self.entry_id,
                                "jobs": self.jobs}
        if self.replay_of:
            line.update(replay_of=self.replay_of, replay=self.replay)
        return line

    def summary(self) -> dict[str, Any]:
        return {"entry_id": self.entry_id, "id": self.id, "source": self.source, "type": self.type,
                "lesson_id": self.lesson_id, "received_at": self.received_at, "replay_of": self.replay_of,
                "replay": self.replay}


# ---------------------------------------------------------------------------------------------- state

@dataclass
class RunState:
    """The latest execution of an event (the original, or its most recent replay) and its job results."""

    ref: str
    replay: str | None
    functions: list[str]
    runs: dict[str, dict[str, Any]]

    @property
    def status(self) -> str:
        return summarize(self.functions, self.runs)


def summarize(functions: list[str], runs: Mapping[str, Mapping[str, Any]]) -> str:
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


def _runs(raw: Mapping[bytes, bytes]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, value in raw.items():
        try:
            out[key.decode()] = json.loads(value)
        except ValueError:
            continue
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
                chosen.append(RunState(event_ref(event.source, event.id, data["replay"]), data["replay"],
                                       list(data.get("functions") or []), {}))
            else:
                chosen.append(RunState(event.ref, event.replay, event.functions, {}))
        async with redis.pipeline(transaction=False) as pipe:
            for state in chosen:
                pipe.hgetall(job_runs_key(state.ref))
            for state, raw in zip(chosen, await pipe.execute(), strict=True):
                state.runs = _runs(raw)
        states += chosen
    return states


# ---------------------------------------------------------------------------------------------- filters

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
              failed_only: bool = False, include_replays: bool = False, now: datetime | None = None) -> Filters:
        """Raises ValueError naming the bad filter."""
        now = now or datetime.now(UTC)
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


# ---------------------------------------------------------------------------------------------- reading

async def scan_batches(redis: Redis, filters: Filters, *, reverse: bool = False, after: str | None = None,
                       count: int = SCAN_COUNT) -> AsyncIterator[list[LogEvent]]:
    """The log in entry order (newest first with `reverse`), within the filters' time bounds, after `after`.

    Raises ValueError for an `after` that is not an entry id.
    """
    since_ms = max(0, _ms(filters.since)) if filters.since else None
    until_ms = min(_ms(filters.until), MAX_ID_PART) if filters.until else None
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
        return (await _only_failed(redis, candidates) if filters.failed_only else candidates)[:limit]
    selected: list[LogEvent] = []
    async for batch in scan_batches(redis, filters):
        candidates = [e for e in batch if filters.matches(e)]
        selected += await _only_failed(redis, candidates) if filters.failed_only else candidates
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


async def _only_failed(redis: Redis, events: list[LogEvent]) -> list[LogEvent]:
    states = await current_states(redis, events)
    return [e for e, s in zip(events, states, strict=True) if s.status == "failed"]


async def page(redis: Redis, filters: Filters, *, limit: int, cursor: str | None = None, newest_first: bool = True,
               known_sources: Iterable[str] = (), max_scan: int = 10_000
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
        if batch and scanned >= max_scan:
            return out, batch[-1].entry_id
    return out, None


def read_jsonl(path: Path | str) -> Iterator[tuple[int, LogEvent | str]]:
    """(line number, event) for each line of an export, or (line number, problem) for a bad line."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, LogEvent.from_export(json.loads(line))
            except ValueError as exc:       # JSONDecodeError is a ValueError
                yield number, f"line {number}: {exc}"


async def select_from_file(redis: Redis, path: Path | str, filters: Filters
                           ) -> tuple[list[LogEvent], list[str]]:
    """Matching events of a JSONL export (failed_only looks their state up in Redis), and bad lines."""
    events: list[LogEvent] = []
    problems: list[str] = []
    for _, item in read_jsonl(path):
        if isinstance(item, str):
            problems.append(item)
        elif filters.matches(item):
            events.append(item)
    if filters.failed_only:
        events = await _only_failed(redis, events)
    return events, problems


async def export(redis: Redis, filters: Filters, write: Callable[[str], Any],
                 known_sources: Iterable[str] = ()) -> int:
    """Write one JSON line per matching event; returns how many."""
    events = await select_from_log(redis, filters, known_sources)
    for event in events:
        write(json.dumps(event.export(), separators=(",", ":"), ensure_ascii=False) + "\n")
    return len(events)


# ---------------------------------------------------------------------------------------------- replay

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
    if source is None:
        planned.error = f"source {event.source!r} is no longer configured"
        return planned
    canonical = event.canonical
    if reparse or not canonical:
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
        received = _ms(parse_time(event.received_at)) if event.received_at else None
    except ValueError:
        received = None
    if received is None:
        return 0
    return max(0, settings.dedupe_window_s * 1000 - (now_ms - received))


def replay_call(settings: Settings, batch: list[PlannedReplay], now_ms: int) -> tuple[list[str], list[Any]]:
    keys: list[str] = [EVENT_LOG]
    args: list[Any] = [len(batch), max(settings.event_retention_s, 30 * 24 * 3600)]
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


async def enqueue(redis: Redis, settings: Settings, planned: list[PlannedReplay], *, rate: float | None = None,
                  progress: Callable[[PlannedReplay], Any] | None = None) -> None:
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
            runs = _runs(raw)
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


# ---------------------------------------------------------------------------------------------- retention

async def trim_event_log(redis: Redis, settings: Settings, *, exact: bool = False, now: float | None = None) -> int:
    """Drop entries older than event_retention_s (MINID), then beyond event_retention_max (MAXLEN).

    Approximate by default (`~`: whole radix-tree nodes, nearly free); `exact` trims to the entry.
    """
    min_id = int((now if now is not None else time.time()) * 1000) - settings.event_retention_s * 1000
    removed = int(await redis.xtrim(EVENT_LOG, minid=max(0, min_id), approximate=not exact))
    removed += int(await redis.xtrim(EVENT_LOG, maxlen=settings.event_retention_max, approximate=not exact))
    return removed


async def trim_job(ctx: dict[str, Any]) -> int:
    """The worker's periodic trim (an arq cron job registered in workers/settings.py)."""
    runtime = ctx["bridge"]
    return await trim_event_log(runtime.redis, runtime.settings)
