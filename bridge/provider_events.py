"""What a provider tells the bridge about a room, applied to its lesson: the attendance ledger and the
webhooks the LMS gets (`participant.joined`, `participant.left`, `attendance.report`).

Provider webhooks (JaaS, 100ms) and participant polling (OWT, OpenMeetings) both end here, so a
lesson's attendance reads the same whichever way it was learnt. Webhook ids derive from the event
reference and the provider's own event key, so a job that runs twice sends nothing twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from redis.asyncio import Redis

from bridge import attendance
from bridge.attendance import Ledger, Presence, iso_ms
from bridge.lifecycle import Job, Runtime
from bridge.providers.base import ProviderError
from bridge.schema.provider_events import Fact, RecordingFact
from bridge.schema.webhooks import WebhookType
from bridge.storage import StorageError, StorageUnavailable
from bridge.storage.copy import ProviderLinkFailed, copy_provider_recording
from bridge.store import room_owner_key

PROVIDER_EVENT_TYPE = "provider.event"
UNSAFE_IN_ID = re.compile(r"[^A-Za-z0-9_-]")


async def room_owner(redis: Redis, provider: str, rooms: Iterable[str]) -> tuple[str, str] | None:
    """(source, lesson id) of the room a provider names (by its id or the bridge's room name), in one
    round trip; None for a room the bridge never made."""
    names = [room for room in rooms if room]
    if not names:
        return None
    for owner in await redis.mget([room_owner_key(provider, room) for room in names]):
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


async def presence_changed(job: Job, ledger: Ledger, event_key: str, presence: Presence,
                           in_ledger: bool = False) -> None:
    """Keep one join or leave in the ledger (unless its accept call already did) and tell the LMS."""
    if not in_ledger:
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
    """Close the session; the event that closed it first (or a replay of the session) sends the report.

    Provider webhooks reach the ledger in the accept call itself (provider_intake), so every join and
    leave accepted before the end is in it now, however far behind the queue's participant jobs are."""
    first = await attendance.mark_ended(job.rt.redis, ledger, at_ms, job.ref)
    if first or job.replay_of:
        snapshot = await attendance.load(job.rt.redis, ledger)
        await job.emit(WebhookType.ATTENDANCE_REPORT, snapshot.report(ledger.session_id),
                       discriminator=ledger.session_id)


async def provider_recording_ready(job: Job, recording: RecordingFact) -> None:
    """`recording.ready` for a recording the provider made. With `[storage] copy_provider_recordings` it is
    copied into storage first (streamed, verified) and the link is ours; otherwise the provider's own,
    which dies after 24 h. A failed copy is retried like any provider error; the id becomes one storage
    accepts, and is the id a later `recording.delete` names."""
    rt = job.rt
    data: dict[str, object] = {
        "recording_id": recording.recording_id, "url": recording.url,
        "expires_at": iso_ms(recording.expires_at_ms) if recording.expires_at_ms is not None else None,
        "content_type": recording.content_type, "bytes": recording.bytes, "duration_s": recording.duration_s,
        "origin": "provider",
    }
    if rt.storage is not None and rt.settings.storage.copy_provider_recordings:
        provider = job.event["lesson"]["provider"]
        recording_id = UNSAFE_IN_ID.sub("-", recording.recording_id)[:128]   # receivers prefix the kind
        allow_private = bool(rt.settings.providers[provider].settings.get("allow_private_network", False))
        try:
            stored = await copy_provider_recording(rt.storage, recording_id, recording.url,
                                                   directory=rt.settings.recording.dir,
                                                   allow_private_network=allow_private)
            link = await rt.storage.link(recording_id)
        except ProviderLinkFailed as exc:
            raise ProviderError("provider_link_failed", str(exc), retryable=exc.retryable) from None
        except StorageError as exc:
            raise ProviderError(exc.code, str(exc), retryable=isinstance(exc, StorageUnavailable)) from None
        data.update(recording_id=recording_id, url=link.url, expires_at=iso_ms(link.expires_at * 1000),
                    content_type=stored.content_type, bytes=stored.bytes)
    await job.emit(WebhookType.RECORDING_READY, data, discriminator=recording.recording_id)


async def provider_event(job: Job) -> None:
    """The `provider_event` job: one stored provider webhook (its fact, made by the provider's receiver
    at intake) applied to the lesson its room was made for."""
    fact = Fact.model_validate(job.event["data"]["fact"])
    ledger = Ledger(job.source.name, job.event["lesson"]["id"], fact.session_id)
    if fact.kind == "presence":
        assert fact.presence is not None
        # The accept call wrote it into the ledger with the event; a replay writes it again (the ledger
        # may have expired since).
        await presence_changed(job, ledger, job.event["id"], Presence(**fact.presence),
                               in_ledger=job.replay_of is None)
    elif fact.kind == "session_started":
        await session_started(job, ledger, fact.at_ms)
    elif fact.kind == "session_ended":
        await session_ended(job, ledger, fact.at_ms)
    else:
        assert fact.recording is not None
        await provider_recording_ready(job, fact.recording)
