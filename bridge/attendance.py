"""The attendance ledger: provider participant events → per-person intervals → `attendance.report`.

Providers send joins and leaves out of order and more than once, and a person may be in a room twice
at the same time (two tabs). The ledger keeps every distinct event it was told (deduplicated by the
provider's own key) and the report is a pure fold over them, ordered by the provider's timestamps:
the same set of events gives the same report byte for byte, whatever order they came in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from redis.asyncio import Redis

from bridge.store import LedgerWrite, attendance_key, attendance_sessions_key

Kind = Literal["joined", "left"]
LEAVE_REASONS = frozenset({"left", "kicked", "disconnected", "unknown"})


@dataclass(frozen=True)
class Presence:
    """One participant event, in the provider-neutral form the ledger stores."""

    kind: Kind
    at_ms: int                          # the provider's time of the event, not the time it reached us
    participant_id: str                 # one connection (a second tab is another participant id)
    user_id: str | None                 # the LMS user id the bridge put in the token; None when unknown
    name: str
    role: str                           # moderator | guest
    reason: str | None = None           # leaves only: left | kicked | disconnected | unknown
    joined_at_ms: int | None = None     # leaves only, when the provider says when that connection joined
    precision: str = "exact"            # exact | poll (derived from polling the room's participants)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Presence:
        return cls(**json.loads(raw))

    @property
    def person(self) -> str:
        """Who this is across connections: the LMS user when known, else the name the provider showed."""
        return f"user:{self.user_id}" if self.user_id is not None else f"name:{self.name}"


def iso_ms(at_ms: int) -> str:
    """Attendance times keep the provider's millisecond precision (a join and a leave can be ms apart)."""
    moment = datetime.fromtimestamp(at_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}Z"


def _order(event: Presence) -> tuple[int, int, str]:
    # At the same millisecond a connection's join comes before its leave.
    return (event.at_ms, 0 if event.kind == "joined" else 1, event.participant_id)


def connection_intervals(events: Iterable[Presence], ended_at_ms: int | None) -> list[tuple[Presence, int, int]]:
    """Pair each connection's joins with its leaves: (the join or lone leave, from ms, to ms).

    A join with no leave closes at `ended_at_ms` (still open when that is None: left out); a leave
    whose join never arrived counts from the join time the provider gave with it, else from itself.
    """
    open_joins: dict[str, Presence] = {}
    intervals: list[tuple[Presence, int, int]] = []
    for event in sorted(events, key=_order):
        if event.kind == "joined":
            open_joins.setdefault(event.participant_id, event)
            continue
        joined = open_joins.pop(event.participant_id, None)
        if joined is not None:
            intervals.append((joined, joined.at_ms, event.at_ms))
        else:
            start = event.joined_at_ms if event.joined_at_ms is not None else event.at_ms
            intervals.append((event, min(start, event.at_ms), event.at_ms))
    if ended_at_ms is not None:
        for joined in open_joins.values():
            intervals.append((joined, joined.at_ms, max(joined.at_ms, ended_at_ms)))
    return intervals


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def report(session_id: str, events: Iterable[Presence], started_at_ms: int | None,
           ended_at_ms: int | None) -> dict[str, Any]:
    """The `attendance.report` data for one provider session (without the common webhook fields)."""
    events = list(events)
    people: dict[str, dict[str, Any]] = {}
    spans: dict[str, list[tuple[int, int]]] = {}
    for first, start, end in connection_intervals(events, ended_at_ms):
        spans.setdefault(first.person, []).append((start, end))
    latest: dict[str, Presence] = {}
    polled: set[str] = set()
    for event in sorted(events, key=_order):
        latest[event.person] = event           # the name and role a person had last
        people.setdefault(event.person, {"user_id": event.user_id})
        if event.precision == "poll":
            polled.add(event.person)
    participants = []
    for person, who in people.items():
        merged = _merged(spans.get(person, []))
        last = latest[person]
        participants.append({
            "user_id": who["user_id"],
            "name": last.name,
            "role": last.role,
            "first_joined_at": iso_ms(merged[0][0]) if merged else None,
            "last_left_at": iso_ms(merged[-1][1]) if merged else None,
            "total_s": round(sum(end - start for start, end in merged) / 1000, 3),
            "intervals": [[iso_ms(start), iso_ms(end)] for start, end in merged],
            "precision": "poll" if person in polled else "exact",
        })
    # Sorted by user id; people the provider could not match to an LMS user follow, by name.
    participants.sort(key=lambda p: (p["user_id"] is None, p["user_id"] or "", p["name"]))
    times = [e.at_ms for e in events]
    start_ms = min([*times, started_at_ms] if started_at_ms is not None else times, default=None)
    return {
        "session_id": session_id,
        "started_at": iso_ms(start_ms) if start_ms is not None else None,
        "ended_at": iso_ms(ended_at_ms) if ended_at_ms is not None else None,
        "participants": participants,
    }


def leave_duration_s(leave: Presence, events: Iterable[Presence]) -> float:
    """How long the connection that `leave` ends was in the room, as far as the ledger knows."""
    for first, start, end in connection_intervals([*events, leave], None):
        if first.participant_id == leave.participant_id and end == leave.at_ms:
            return round((end - start) / 1000, 3)
    return 0.0


# ---------------------------------------------------------------------------- the ledger in Redis

LEDGER_TTL_S = 90 * 24 * 3600      # a term's worth: long enough to replay a session and grade it


@dataclass(frozen=True)
class Ledger:
    """Where one provider session of one lesson is kept."""

    source: str
    lesson_id: str
    session_id: str

    @property
    def key(self) -> str:
        return attendance_key(self.source, self.lesson_id, self.session_id)


def presence_write(ledger: Ledger, event_key: str, presence: Presence) -> LedgerWrite:
    """The ledger entry for one participant event; the same whether intake or a job writes it (first wins)."""
    return LedgerWrite(ledger.key, f"e:{event_key}", presence.to_json(),
                       attendance_sessions_key(ledger.source, ledger.lesson_id), ledger.session_id,
                       presence.at_ms, LEDGER_TTL_S)


async def record(redis: Redis, ledger: Ledger, event_key: str, presence: Presence) -> bool:
    """Add one participant event (a repeat of `event_key` changes nothing); True when it was new."""
    write = presence_write(ledger, event_key, presence)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hsetnx(write.key, write.field, write.value)
        pipe.expire(write.key, write.ttl_s)
        pipe.zadd(write.index_key, {write.index_member: write.index_score}, nx=True)
        pipe.expire(write.index_key, write.ttl_s)
        added, *_ = await pipe.execute()
    return bool(added)


async def mark_started(redis: Redis, ledger: Ledger, at_ms: int) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hsetnx(ledger.key, "started_ms", at_ms)
        pipe.expire(ledger.key, LEDGER_TTL_S)
        pipe.zadd(attendance_sessions_key(ledger.source, ledger.lesson_id), {ledger.session_id: at_ms}, nx=True)
        pipe.expire(attendance_sessions_key(ledger.source, ledger.lesson_id), LEDGER_TTL_S)
        await pipe.execute()


async def mark_ended(redis: Redis, ledger: Ledger, at_ms: int, event_ref: str) -> bool:
    """Record the session's end; True for the event that ends it first (and that one only, however
    often it runs): it sends `attendance.report`. Later ends (a duplicate with another key) change nothing."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hsetnx(ledger.key, "ended_ms", at_ms)
        pipe.hsetnx(ledger.key, "reported", event_ref)
        pipe.hget(ledger.key, "reported")
        pipe.expire(ledger.key, LEDGER_TTL_S)
        _, _, reported, _ = await pipe.execute()
    return reported is not None and reported.decode() == event_ref


@dataclass(frozen=True)
class Snapshot:
    events: list[Presence]
    started_ms: int | None
    ended_ms: int | None

    def report(self, session_id: str) -> dict[str, Any]:
        return report(session_id, self.events, self.started_ms, self.ended_ms)

    def so_far(self, session_id: str, now_ms: int) -> dict[str, Any]:
        """The report as it stands: for a session still running, connections still open count up to
        `now_ms` and `ended_at` is null."""
        if self.ended_ms is not None:
            return self.report(session_id)
        return {**report(session_id, self.events, self.started_ms, now_ms), "ended_at": None}


async def load(redis: Redis, ledger: Ledger) -> Snapshot:
    raw = await redis.hgetall(ledger.key)
    events = [Presence.from_json(value) for field, value in raw.items() if field.startswith(b"e:")]
    started, ended = raw.get(b"started_ms"), raw.get(b"ended_ms")
    return Snapshot(events, int(started) if started else None, int(ended) if ended else None)


async def latest_session(redis: Redis, source: str, lesson_id: str) -> str | None:
    newest = await redis.zrange(attendance_sessions_key(source, lesson_id), -1, -1)
    return newest[0].decode() if newest else None
