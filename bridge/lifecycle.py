"""What each canonical event does: provider calls, lesson state, and the webhooks it produces.

Every handler is safe to run twice: lesson state is read before a room is created, under a
per-lesson lock, and webhook ids derive from the event reference.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import httpx
from arq.connections import ArqRedis

from bridge import polling
from bridge.config import Settings, SourceConfig
from bridge.metrics import BufferedCounts
from bridge.providers.base import Capability, Provider, ProviderError, Room
from bridge.recording import RecorderConfig
from bridge.schema.events import Lesson, User
from bridge.schema.webhooks import WebhookType
from bridge.sources.canonical import iso
from bridge.storage import Storage
from bridge.store import (
    LESSON_REFRESH_S,
    LESSON_TTL_S,
    lesson_key,
    lesson_lock_key,
    recording_key,
    recording_stop_key,
    room_owner_key,
    teachers_key,
)
from bridge.webhooks import Outbound, Produced, deliver_outbound, produce, record_run


@dataclass
class Runtime:
    """Per-process state shared by every job: built once at worker start-up."""

    settings: Settings
    redis: ArqRedis
    http: httpx.AsyncClient                      # providers' calls
    webhooks: httpx.AsyncBaseTransport           # webhook deliveries (the same connections as `http`)
    providers: dict[str, Provider]
    recording: RecorderConfig | None = None      # recorder processes only
    storage: Storage | None = None               # where finished recordings go ([storage])
    counts: BufferedCounts = field(default_factory=BufferedCounts)   # job and delivery metrics, flushed each second


@dataclass
class Job:
    rt: Runtime
    source: SourceConfig
    ref: str
    event: dict[str, Any]
    replay_of: str | None
    last_try: bool = False                       # a retryable failure now is final: report it
    produced: list[Produced] = field(default_factory=list)  # webhooks made, not yet recorded
    pending: list[Outbound] = field(default_factory=list)   # webhooks recorded, whose first attempt is ours
    _state: dict[str, str] | None = None

    @cached_property
    def lesson(self) -> Lesson:
        return Lesson.model_validate(self.event["lesson"])

    @property
    def lesson_key(self) -> str:
        return lesson_key(self.source.name, self.event["lesson"]["id"])

    async def state(self, fresh: bool = False) -> dict[str, str]:
        """The lesson's stored state (provider, room, status, recording), read once per job. State whose
        lifetime began more than LESSON_REFRESH_S ago (or never: written before lessons expired) is in use:
        its lifetime begins again."""
        if self._state is None or fresh:
            raw = await self.rt.redis.hgetall(self.lesson_key)
            self._state = {k.decode(): v.decode() for k, v in raw.items()}
            if self._state and time.time() - float(self._state.get("touched") or 0) > LESSON_REFRESH_S:
                await self.save()
        return self._state

    async def save(self, **fields: str) -> None:
        """Write lesson state; its lifetime (LESSON_TTL_S) begins again, and that of the room-owner keys
        leading the room's provider events here, in the same transaction."""
        state = await self.state()
        fields["touched"] = str(int(time.time()))
        provider = fields.get("provider") or state.get("provider")
        room = _room_from(fields.get("room") or state.get("room"))
        async with self.rt.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.lesson_key, mapping=fields)
            pipe.expire(self.lesson_key, LESSON_TTL_S)
            if provider and room:
                for name in {room.id, room.name}:
                    pipe.expire(room_owner_key(provider, name), LESSON_TTL_S)
            await pipe.execute()
        state.update(fields)

    async def forget(self, *fields: str) -> None:
        await self.rt.redis.hdel(self.lesson_key, *fields)
        for name in fields:
            (await self.state()).pop(name, None)

    async def room(self) -> Room | None:
        return _room_from((await self.state()).get("room"))

    async def provider_name(self) -> str:
        return (await self.state()).get("provider") or self.event["lesson"]["provider"]

    async def provider(self) -> Provider:
        return self.rt.providers[await self.provider_name()]

    async def emit(self, webhook_type: WebhookType, extra: dict[str, Any] | None = None,
                   discriminator: str = "") -> str:
        """Make one of this event's webhooks: stored with the run's outcome, or by `record`/`flush` first."""
        data: dict[str, Any] = {
            "event_id": self.event["id"], "source": self.source.name,
            "lesson_id": (self.event.get("lesson") or {}).get("id"),
            "provider": await self.provider_name() if self.event.get("lesson") else None,
        }
        if self.replay_of:
            data["replay_of"] = self.replay_of
        data.update(extra or {})
        produced = produce(self.source, self.ref, webhook_type, data, discriminator)
        self.produced.append(produced)
        return produced.msg_id

    async def record(self, function: str = "", outcome: dict[str, Any] | None = None) -> None:
        """Store the webhooks made so far (and, given a function, the run's outcome) in one call."""
        produced, self.produced = self.produced, []
        self.pending += await record_run(self.rt.redis, self.rt.settings.record_retention_s, self.source.name,
                                         self.ref, produced, function, outcome)

    async def flush(self) -> None:
        """Record the webhooks made so far, then make the first delivery attempt of each."""
        await self.record()
        pending, self.pending = self.pending, []
        rt = self.rt
        await asyncio.gather(*(deliver_outbound(rt.redis, rt.webhooks, rt.settings, rt.counts, self.source,
                                                outbound, 0) for outbound in pending))


STOP_FLAG_TTL_S = 7 * 24 * 3600


def _room_from(raw: str | None) -> Room | None:
    if not raw:
        return None
    data = json.loads(raw)
    return Room(id=data["id"], name=data["name"], extra=data.get("extra", {}))


def _room_json(room: Room) -> str:
    return json.dumps({"id": room.id, "name": room.name, "extra": room.extra})


async def ensure_room(job: Job) -> tuple[Room, bool]:
    """The lesson's room, created on first need. Returns (room, created_now)."""
    redis = job.rt.redis
    existing = await job.room()
    if existing:
        return existing, False
    # A lock left by a killed worker must expire before the job that waits for it times out.
    job_timeout = job.rt.settings.job_timeout_s
    lock = redis.lock(lesson_lock_key(job.source.name, job.event["lesson"]["id"]), timeout=job_timeout,
                      blocking_timeout=job_timeout / 2)
    async with lock:
        await job.state(fresh=True)          # another job may have created it while we waited
        existing = await job.room()
        if existing:
            return existing, False
        provider = await job.provider()
        room = await provider.create_room(job.lesson)
        await job.save(provider=provider.name, room=_room_json(room), status="scheduled", title=job.lesson.title)
        await remember_room_owner(job, provider.name, room)
        return room, True


async def remember_room_owner(job: Job, provider: str, room: Room) -> None:
    """Provider events name a room (by the provider's id, or the name the bridge gave it): find the lesson."""
    owner = f"{job.source.name}\t{job.event['lesson']['id']}"
    async with job.rt.redis.pipeline(transaction=False) as pipe:
        for name in {room.id, room.name}:
            pipe.set(room_owner_key(provider, name), owner, ex=LESSON_TTL_S)
        await pipe.execute()


def _room_webhook_data(job: Job, room: Room) -> dict[str, Any]:
    return {"room_id": room.id, "room_name": room.name, "title": job.lesson.title}


async def lesson_scheduled(job: Job) -> None:
    room, created = await ensure_room(job)
    await job.emit(WebhookType.ROOM_CREATED, {**_room_webhook_data(job, room), "created": created})


async def lesson_updated(job: Job) -> None:
    room, created = await ensure_room(job)
    if not created:
        provider = await job.provider()
        if provider.supports(Capability.ROOMS):
            room = await provider.update_room(job.lesson, room)
        await job.save(room=_room_json(room), title=job.lesson.title)
    await job.emit(WebhookType.ROOM_UPDATED, _room_webhook_data(job, room))


async def lesson_started(job: Job) -> None:
    room, _ = await ensure_room(job)
    await job.save(status="started")
    await job.emit(WebhookType.ROOM_UPDATED, {**_room_webhook_data(job, room), "status": "started"})
    await watch_attendance(job)


async def watch_attendance(job: Job) -> None:
    """The lesson is live: a provider without webhooks has its room polled until the lesson is over
    (bridge.polling). A replay starts nothing: the session it belonged to was polled at the time."""
    provider = polling.polled(await job.provider())
    if job.replay_of or provider is None:
        return
    over = (await job.state()).get("status") in ("ended", "cancelled")
    await polling.start(job.rt.redis, job.source.name, job.lesson.id, await job.provider_name(), job.event["id"],
                        over)


async def _close(job: Job, status: str, webhook_type: WebhookType, operation: Callable[[Provider, Lesson, Room],
                 Awaitable[None]]) -> None:
    room = await job.room()
    provider = await job.provider()
    if room is not None:
        await operation(provider, job.lesson, room)
    await job.save(status=status)
    await job.emit(webhook_type, {"room_id": room.id if room else None, "status": status})


async def lesson_cancelled(job: Job) -> None:
    async def delete(provider: Provider, lesson: Lesson, room: Room) -> None:
        if provider.supports(Capability.ROOMS):
            await provider.delete_room(lesson, room)
    await _close(job, "cancelled", WebhookType.ROOM_DELETED, delete)
    await job.forget("room")


async def lesson_ended(job: Job) -> None:
    async def end(provider: Provider, lesson: Lesson, room: Room) -> None:
        if provider.supports(Capability.END_ROOM):
            await provider.end_room(lesson, room)
    await request_recording_stop(job, None)
    await _close(job, "ended", WebhookType.ROOM_ENDED, end)


async def resolve_role(job: Job) -> User:
    user = User.model_validate(job.event["user"])
    course = job.event.get("data", {}).get("moodle_course")
    if course and not user.is_moderator and await job.rt.redis.sismember(teachers_key(job.source.name, course),
                                                                          user.id):
        return user.model_copy(update={"role": "teacher"})
    return user


async def user_joined(job: Job) -> None:
    user = await resolve_role(job)
    room, _ = await ensure_room(job)
    provider = await job.provider()
    grant = await provider.join(job.lesson, room, user)
    if polling.polled(provider) is not None:     # only polled providers' participant lists lack names
        await polling.remember_attendee(job.rt.redis, job.source.name, job.lesson.id, user.id,
                                        user.name or user.id, "moderator" if user.is_moderator else "guest")
    await job.emit(WebhookType.JOIN_READY, {"user_id": user.id, "role": grant.role, "join_url": grant.join_url,
                                            "token": grant.token, "expires_at": iso(grant.expires_at)})
    await watch_attendance(job)


async def user_left(job: Job) -> None:
    """Nothing to do at the provider: the participant has already gone."""


async def _require_room(job: Job) -> Room:
    room = await job.room()
    if room is None:
        raise ProviderError("no_room", f"lesson {job.event['lesson']['id']} has no room", retryable=False)
    return room


async def user_removed(job: Job) -> None:
    room = await _require_room(job)
    user_id = job.event["user"]["id"]
    await (await job.provider()).kick(job.lesson, room, user_id, job.event["data"].get("participant_id"))
    await job.emit(WebhookType.PARTICIPANT_KICKED, {"user_id": user_id})


async def user_banned(job: Job) -> None:
    room = await _require_room(job)
    provider = await job.provider()
    user_id = job.event["user"]["id"]
    token = job.event["data"].get("token")
    if token:
        await provider.ban_token(job.lesson, room, token)
    else:
        await provider.ban_user(job.lesson, room, user_id)
    await job.emit(WebhookType.PARTICIPANT_BANNED, {"user_id": user_id})


async def call_dial_out(job: Job) -> None:
    """Providers cannot look up a call already placed, so a re-run must not dial again: remember it."""
    room, _ = await ensure_room(job)
    phone = job.event["data"]["phone"]
    dialed = f"dialed:{job.ref}"
    if dialed not in await job.state():
        await (await job.provider()).dial_out(job.lesson, room, phone)
        await job.save(**{dialed: phone})
    await job.emit(WebhookType.CALL_DIALING, {"phone": phone})


async def call_hang_up(job: Job) -> None:
    room = await _require_room(job)
    phone = job.event["data"]["phone"]
    await (await job.provider()).hang_up(job.lesson, room, phone)
    await job.emit(WebhookType.CALL_HUNG_UP, {"phone": phone})


async def role_changed(job: Job) -> None:
    data = job.event["data"]
    if not data.get("teacher"):
        return
    key = teachers_key(job.source.name, data["moodle_course"])
    if job.event["type"] == "role.assigned":
        await job.rt.redis.sadd(key, job.event["user"]["id"])
    else:
        await job.rt.redis.srem(key, job.event["user"]["id"])


async def request_recording_stop(job: Job, recording_id: str | None) -> str | None:
    """Ask whichever recorder holds the recording to stop it; recording.completed comes from there."""
    recording_id = recording_id or (await job.state()).get("recording")
    if not recording_id or not await job.rt.redis.exists(recording_key(recording_id)):
        return None
    await job.rt.redis.set(recording_stop_key(recording_id), "1", ex=STOP_FLAG_TTL_S)
    return recording_id


async def recording_stop(job: Job) -> None:
    wanted = job.event["data"].get("recording_id")
    if await request_recording_stop(job, wanted) is None:
        what = f"no recording {wanted}" if wanted else "the lesson has no active recording"
        raise ProviderError("no_recording", what, retryable=False)


HANDLERS: dict[str, Callable[[Job], Awaitable[None]]] = {
    "lesson_scheduled": lesson_scheduled,
    "lesson_updated": lesson_updated,
    "lesson_cancelled": lesson_cancelled,
    "lesson_started": lesson_started,
    "lesson_ended": lesson_ended,
    "user_joined": user_joined,
    "user_left": user_left,
    "user_removed": user_removed,
    "user_banned": user_banned,
    "call_dial_out": call_dial_out,
    "call_hang_up": call_hang_up,
    "role_changed": role_changed,
    "recording_stop": recording_stop,
}
