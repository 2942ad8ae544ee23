"""The event log's JSONL form: `bridge export` writes it, `bridge replay --from-file` reads it back.

One JSON object a line: id, source, received_at, raw, canonical, entry_id, jobs (and replay_of,
replay for a replay's entry).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bridge.eventlog.entries import LogEvent
from bridge.eventlog.query import Filters, only_failed, select_from_log


def to_line(event: LogEvent) -> dict[str, Any]:
    line: dict[str, Any] = {"id": event.id, "source": event.source, "received_at": event.received_at,
                            "raw": event.raw, "canonical": event.canonical, "entry_id": event.entry_id,
                            "jobs": event.jobs}
    if event.replay_of:
        line.update(replay_of=event.replay_of, replay=event.replay)
    return line


def from_line(line: Any) -> LogEvent:
    """The event one line of an export describes; ValueError naming what is wrong with the line."""
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
    return LogEvent(id=event_id, source=source, received_at=str(line.get("received_at") or ""),
                    raw=line.get("raw"), canonical=canonical or {}, entry_id=None, jobs=jobs,
                    replay_of=line.get("replay_of") or None, replay=line.get("replay") or None)


def read_jsonl(path: Path | str) -> Iterator[LogEvent | str]:
    """The event of each line of an export, or the problem (naming the line number) of a bad line."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield from_line(json.loads(line))
            except ValueError as exc:       # JSONDecodeError is a ValueError
                yield f"line {number}: {exc}"


async def select_from_file(redis: Redis, path: Path | str, filters: Filters
                           ) -> tuple[list[LogEvent], list[str]]:
    """Matching events of a JSONL export (failed_only looks their state up in Redis), and bad lines."""
    events: list[LogEvent] = []
    problems: list[str] = []
    for item in read_jsonl(path):
        if isinstance(item, str):
            problems.append(item)
        elif filters.matches(item):
            events.append(item)
    if filters.failed_only:
        events = await only_failed(redis, events)
    return events, problems


async def write_jsonl(redis: Redis, filters: Filters, write: Callable[[str], Any],
                      known_sources: Iterable[str] = ()) -> int:
    """Write one JSON line per matching event of the log; returns how many."""
    events = await select_from_log(redis, filters, known_sources)
    for event in events:
        write(json.dumps(to_line(event), separators=(",", ":"), ensure_ascii=False) + "\n")
    return len(events)
