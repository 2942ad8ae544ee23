"""Polling a room's participants while its lesson is live, for providers without webhooks (OWT,
OpenMeetings): what such a provider offers, and how the polls are scheduled.

A lesson's polling is one chain of short arq jobs, a tick each. A tick's job id names the lesson's
polling session and the tick number, and each tick enqueues the next itself (`_defer_by`). arq
refuses an id it already holds (queued, running, or finished within `keep_result`), and the tick
number in Redis only moves forward by compare-and-set, so however many workers run and however often
a tick re-runs (arq is at-least-once), a lesson has one chain: one poll per interval.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, runtime_checkable

from arq.connections import ArqRedis
from pydantic import AfterValidator, BeforeValidator, Field

from bridge.providers.base import Room
from bridge.store import WORKER_QUEUE, attendance_poll_key, attendance_roster_key

POLL_FUNCTION = "attendance_poll"
STATE_TTL_S = 2 * 24 * 3600          # hygiene only: a live chain refreshes it every tick
ROSTER_TTL_S = 90 * 24 * 3600        # as long as the ledger it names people in
MIN_POLL_S = 0.1


@dataclass(frozen=True)
class Attendee:
    """One participant a provider lists in a room right now."""

    participant_id: str          # one connection where the provider tells them apart, else one person
    user_id: str | None          # the LMS user id the bridge joined them with; None when unknown
    name: str | None             # None when the provider does not say (the bridge's roster may)
    role: str | None             # moderator | guest; None when the provider does not say


@runtime_checkable
class PolledProvider(Protocol):
    """A provider whose attendance the bridge learns by asking (no webhooks)."""

    attendance_poll_s: float

    async def attendees(self, room: Room) -> list[Attendee] | None:
        """Who is in the room now; None when the room is gone."""
        ...


def polled(provider: object) -> PolledProvider | None:
    """The provider, when its lessons are polled (a polled kind, `attendance_poll_s` not 0)."""
    return provider if isinstance(provider, PolledProvider) and provider.attendance_poll_s > 0 else None


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds")
    return value


def _off_or_fast_enough(value: float) -> float:
    if 0 < value < MIN_POLL_S:
        raise ValueError(f"must be 0 (off) or at least {MIN_POLL_S}")
    return value


# The provider setting `attendance_poll_s`: seconds between polls of a live lesson's room; 0 = off.
PollInterval = Annotated[float, BeforeValidator(_not_bool), Field(ge=0, le=3600),
                         AfterValidator(_off_or_fast_enough)]


@dataclass(frozen=True)
class PollState:
    session: str
    event_id: str                # the event that made the lesson live (user.joined or lesson.started)
    provider: str
    started_ms: int
    over_at_start: bool          # the lesson had ended already: a late join reopened it
    tick: int                    # the next tick to run
    met: bool                    # someone was in the room at some poll of this session
    present: dict[str, dict[str, Any]]   # participant id → user_id, name, role, joined_ms, key


def tick_job_id(source: str, session: str, tick: int) -> str:
    return f"attendance-poll:{source}:{session}:{tick}"


async def enqueue_tick(redis: ArqRedis, source: str, lesson_id: str, session: str, tick: int,
                       defer_s: float) -> None:
    """Queue one tick; a no-op when that tick is already queued, running or done."""
    await redis.enqueue_job(POLL_FUNCTION, source, lesson_id, session, tick, _job_id=tick_job_id(source, session, tick),
                            _defer_by=defer_s, _queue_name=WORKER_QUEUE)


def _decoded(raw: dict[bytes, bytes]) -> PollState | None:
    fields = {key.decode(): value.decode() for key, value in raw.items()}
    if "session" not in fields:
        return None
    return PollState(session=fields["session"], event_id=fields["event_id"], provider=fields["provider"],
                     started_ms=int(fields["started_ms"]), over_at_start=fields["over_at_start"] == "1",
                     tick=int(fields["tick"]), met=fields.get("met") == "1",
                     present=json.loads(fields.get("present") or "{}"))


async def load(redis: ArqRedis, source: str, lesson_id: str) -> PollState | None:
    return _decoded(await redis.hgetall(attendance_poll_key(source, lesson_id)))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def start(redis: ArqRedis, source: str, lesson_id: str, provider: str, event_id: str, over: bool) -> PollState:
    """Make the lesson live unless it is already (then nothing changes); safe to repeat.

    The current tick is queued again either way: a no-op for a live chain, the restart of one whose
    job was lost."""
    key = attendance_poll_key(source, lesson_id)
    started_ms = now_ms()
    fresh = {"session": f"poll:{lesson_id}:{started_ms}", "event_id": event_id, "provider": provider,
             "started_ms": started_ms, "over_at_start": int(over), "tick": 0}
    async with redis.pipeline(transaction=True) as pipe:
        for field, value in fresh.items():    # all or nothing: the fields of one session only
            pipe.hsetnx(key, field, value)
        pipe.expire(key, STATE_TTL_S)
        pipe.hgetall(key)
        *_, raw = await pipe.execute()
    state = _decoded(raw)
    assert state is not None
    await enqueue_tick(redis, source, lesson_id, state.session, state.tick, 0)
    return state


# KEYS: [1] poll state. ARGV: session, tick that ran, present JSON, met, ttl s.
_ADVANCE = """
if redis.call('HGET', KEYS[1], 'session') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'tick') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'tick', tonumber(ARGV[2]) + 1, 'present', ARGV[3], 'met', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

_FINISH = """
if redis.call('HGET', KEYS[1], 'session') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


async def advance(redis: ArqRedis, source: str, lesson_id: str, session: str, tick: int,
                  present: dict[str, dict[str, Any]], met: bool) -> bool:
    """Record what tick `tick` saw and make the next tick current; False if another run did already."""
    done = await redis.eval(_ADVANCE, 1, attendance_poll_key(source, lesson_id), session, str(tick),
                            json.dumps(present, sort_keys=True), int(met), STATE_TTL_S)
    return bool(done)


async def finish(redis: ArqRedis, source: str, lesson_id: str, session: str) -> None:
    """The session is over: the next join or lesson.started begins another."""
    await redis.eval(_FINISH, 1, attendance_poll_key(source, lesson_id), session)


async def remember_attendee(redis: ArqRedis, source: str, lesson_id: str, user_id: str, name: str,
                            role: str) -> None:
    """The name and role the bridge joined a user with, for providers whose participant lists lack them."""
    key = attendance_roster_key(source, lesson_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, user_id, json.dumps({"name": name, "role": role}))
        pipe.expire(key, ROSTER_TTL_S)
        await pipe.execute()


async def roster(redis: ArqRedis, source: str, lesson_id: str) -> dict[str, dict[str, str]]:
    raw = await redis.hgetall(attendance_roster_key(source, lesson_id))
    return {user_id.decode(): json.loads(entry) for user_id, entry in raw.items()}
