"""What a provider tells the bridge about a room, applied to its lesson: the attendance ledger and the
webhooks the LMS gets (`participant.joined`, `participant.left`, `attendance.report`).

Provider webhooks (JaaS, 100ms) and participant polling (OWT, OpenMeetings) both end here, so a
lesson's attendance reads the same whichever way it was learnt. Webhook ids derive from the event
reference and the provider's own event key, so a job that runs twice sends nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable

from bridge import attendance
from bridge.attendance import Ledger, Presence, iso_ms
from bridge.lifecycle import Job, Runtime
from bridge.schema.webhooks import WebhookType
from bridge.store import room_owner_key

PROVIDER_EVENT_TYPE = "provider.event"


async def lesson_of(rt: Runtime, provider: str, rooms: Iterable[str]) -> tuple[str, str] | None:
    """(source, lesson id) of the room a provider names (by its id or the bridge's room name)."""
    for room in rooms:
        if room:
            owner = await rt.redis.get(room_owner_key(provider, room))
            if owner is not None:
                source, _, lesson_id = owner.decode().partition("\t")
                return source, lesson_id
    return None


def lesson_job(rt: Runtime, source: str, lesson_id: str, provider: str, ref: str, event_id: str,
               replay_of: str | None) -> Job | None:
    """A job on the lesson's source, so its webhooks go where the lesson's other webhooks go."""
    config = rt.settings.sources.get(source)
    if config is None:
        return None
    event = {"id": event_id, "type": PROVIDER_EVENT_TYPE, "lesson": {"id": lesson_id, "provider": provider}}
    return Job(rt, config, ref, event, replay_of)


def _participant(presence: Presence, session_id: str) -> dict[str, object]:
    data: dict[str, object] = {"user_id": presence.user_id, "name": presence.name, "role": presence.role,
                               "participant_id": presence.participant_id, "session_id": session_id}
    if presence.precision == "poll":
        data["precision"] = "poll"
    return data


async def presence_changed(job: Job, ledger: Ledger, event_key: str, presence: Presence) -> None:
    """Keep one join or leave in the ledger and tell the LMS."""
    await attendance.record(job.rt.redis, ledger, event_key, presence)
    data = _participant(presence, ledger.session_id)
    if presence.kind == "joined":
        await job.emit(WebhookType.PARTICIPANT_JOINED, {**data, "joined_at": iso_ms(presence.at_ms)},
                       discriminator=event_key)
        return
    snapshot = await attendance.load(job.rt.redis, ledger)
    others = [event for event in snapshot.events if event != presence]
    duration_s = attendance.leave_duration_s(presence, others)
    await job.emit(WebhookType.PARTICIPANT_LEFT, {
        **data, "joined_at": iso_ms(presence.at_ms - round(duration_s * 1000)),
        "left_at": iso_ms(presence.at_ms), "duration_s": duration_s, "reason": presence.reason or "unknown",
    }, discriminator=event_key)


async def session_started(job: Job, ledger: Ledger, at_ms: int) -> None:
    await attendance.mark_started(job.rt.redis, ledger, at_ms)


async def session_ended(job: Job, ledger: Ledger, at_ms: int) -> None:
    """Close the session; the event that closed it first (or a replay of the session) sends the report."""
    first = await attendance.mark_ended(job.rt.redis, ledger, at_ms, job.ref)
    if first or job.replay_of:
        snapshot = await attendance.load(job.rt.redis, ledger)
        await job.emit(WebhookType.ATTENDANCE_REPORT, snapshot.report(ledger.session_id),
                       discriminator=ledger.session_id)
