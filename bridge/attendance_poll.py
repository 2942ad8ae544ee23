"""One poll of a live lesson's room (bridge.polling schedules them): who came and went since the last
poll becomes ledger entries and participant.joined/left webhooks with `"precision": "poll"`; a room
that is gone, or empty once the lesson is over, closes the session and sends `attendance.report`.

A join is timed at the poll that first saw it, a leave at the poll that first missed it. The event
keys name the participant and the tick that saw it join, so a tick that runs twice adds nothing.
A provider error skips that tick only: the next tick asks again (no `event.failed`: nobody sent an
event that failed).
"""

from __future__ import annotations

from typing import Any

import structlog

from bridge import polling, provider_events
from bridge.attendance import Ledger, Presence
from bridge.lifecycle import Job, Runtime
from bridge.polling import Attendee, PollState
from bridge.providers.base import ProviderError

log = structlog.get_logger("bridge.attendance_poll")
OVER = frozenset({"ended", "cancelled"})
# Every chain ends: a session still open after this long (nobody sent lesson.ended) is closed.
MAX_SESSION_MS = 12 * 3600 * 1000


def _seen(attendee: Attendee, roster: dict[str, dict[str, str]]) -> dict[str, str | None]:
    """Who a participant is, filling what the provider does not say from how the bridge joined them."""
    known = roster.get(attendee.user_id or "", {})
    return {"user_id": attendee.user_id,
            "name": attendee.name or known.get("name") or attendee.user_id or attendee.participant_id,
            "role": attendee.role or known.get("role") or "guest"}


async def _record_changes(job: Job, ledger: Ledger, state: PollState, tick: int, now_ms: int,
                          attendees: list[Attendee]) -> dict[str, dict[str, Any]]:
    """Joins and leaves since the last poll, in the ledger and to the LMS; returns who is present now."""
    roster = await polling.roster(job.rt.redis, ledger.source, ledger.lesson_id)
    present: dict[str, dict[str, Any]] = {}
    for attendee in attendees:
        before = state.present.get(attendee.participant_id)
        if before is not None:
            present[attendee.participant_id] = before
            continue
        who = _seen(attendee, roster)
        key = f"{attendee.participant_id}@{tick}"
        await provider_events.presence_changed(job, ledger, f"joined:{key}", Presence(
            "joined", now_ms, attendee.participant_id, who["user_id"], str(who["name"]), str(who["role"]),
            precision="poll"))
        present[attendee.participant_id] = {**who, "joined_ms": now_ms, "key": key}
    for participant_id, was in state.present.items():
        if participant_id not in present:
            await provider_events.presence_changed(job, ledger, f"left:{was['key']}", Presence(
                "left", now_ms, participant_id, was["user_id"], was["name"], was["role"], reason="unknown",
                joined_at_ms=was["joined_ms"], precision="poll"))
    return present


async def poll_tick(rt: Runtime, source: str, lesson_id: str, session: str, tick: int) -> str:
    """Run one tick of a lesson's polling chain; returns what it did (for the job's log line).

    Webhooks are first attempted before the tick is marked done: a run that dies in between is run
    again from the start, and a webhook still pending is attempted then."""
    redis = rt.redis
    state = await polling.load(redis, source, lesson_id)
    if state is None or state.session != session or state.tick > tick + 1:
        return "stale"                      # a late re-run of a tick whose chain moved on or ended
    if state.tick == tick + 1:              # this tick ran before and stopped short of queueing the next
        await _next(rt, source, lesson_id, state, tick + 1)
        return "requeued"
    job = provider_events.lesson_job(rt, source, lesson_id, state.provider, f"{source}:{session}", state.event_id,
                                     None)
    provider = polling.polled(rt.providers.get(state.provider))
    if job is None or provider is None:
        await polling.finish(redis, source, lesson_id, session)    # configuration changed under the chain
        return "stopped"
    ledger = Ledger(source, lesson_id, session)
    if tick == 0:
        await provider_events.session_started(job, ledger, state.started_ms)
    room = await job.room()
    try:
        attendees = await provider.attendees(room) if room is not None else None
    except ProviderError as exc:
        log.warning("attendance_poll.provider_error", lesson_id=lesson_id, code=exc.code, message=exc.message)
        await _advance(rt, source, lesson_id, state, tick, state.present, state.met)
        return "provider_error"
    now_ms = polling.now_ms()
    present = await _record_changes(job, ledger, state, tick, now_ms, attendees or [])
    met = state.met or bool(present)
    over = (await job.state()).get("status") in OVER
    closing = (attendees is None or (not present and over and (met or not state.over_at_start))
               or now_ms - state.started_ms > MAX_SESSION_MS)
    if closing:
        await provider_events.session_ended(job, ledger, now_ms)
    await job.flush()
    if closing:
        await polling.finish(redis, source, lesson_id, session)
        return "closed"
    await _advance(rt, source, lesson_id, state, tick, present, met)
    return "polled"


async def _advance(rt: Runtime, source: str, lesson_id: str, state: PollState, tick: int,
                   present: dict[str, dict[str, Any]], met: bool) -> None:
    if await polling.advance(rt.redis, source, lesson_id, state.session, tick, present, met):
        await _next(rt, source, lesson_id, state, tick + 1)


async def _next(rt: Runtime, source: str, lesson_id: str, state: PollState, tick: int) -> None:
    provider = polling.polled(rt.providers.get(state.provider))
    if provider is not None:
        await polling.enqueue_tick(rt.redis, source, lesson_id, state.session, tick, provider.attendance_poll_s)
