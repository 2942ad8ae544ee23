"""POST /v1/providers/{provider}/events: a provider's webhook, verified by its receiver and stored like
an LMS event (same event log, same one-round-trip accept, source `provider:<name>`) before the 2xx.

A provider sends everything that happens in its account: a type the bridge does not act on, or a room
the bridge never made, is answered 202 with the id under `"ignored"` and not stored. A repeat of the
provider's idempotency key is a duplicate (200).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping

import orjson
import structlog
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request

from bridge.attendance import Ledger, Presence, iso_ms, presence_write
from bridge.clock import utc_now_iso
from bridge.config import Settings
from bridge.errors import ApiError
from bridge.intake import AcceptBatcher, Outcome, read_body, require_json, store, store_unavailable
from bridge.provider_events import PROVIDER_EVENT_TYPE, room_owner
from bridge.providers import build_receiver
from bridge.providers.receiver import Notice, Receiver, ReceiverAuthError
from bridge.routing import plan, provider_source
from bridge.store import EventRecord, LedgerWrite

log = structlog.get_logger("bridge.provider_intake")


def build_receivers(settings: Settings) -> dict[str, Receiver]:
    """Every configured provider that has webhook settings, by name (built once per web process)."""
    receivers = {}
    for name, cfg in settings.providers.items():
        receiver = build_receiver(name, cfg.kind, cfg.settings)
        if receiver is not None:
            receivers[name] = receiver
    return receivers


OWNER_CACHE_S = 60.0
OWNER_CACHE_MAX = 10_000


class RoomOwners:
    """Which lesson a provider's room belongs to, remembered for a minute: a session's every webhook names
    the same room, and the lookup would otherwise be a second Redis round trip per request. A room is
    made once per lesson, so an answer only goes stale if a room name is reused for another lesson."""

    def __init__(self) -> None:
        self.known: OrderedDict[tuple[str, tuple[str, ...]], tuple[float, tuple[str, str]]] = OrderedDict()

    async def lookup(self, redis: Redis, provider: str, rooms: tuple[str, ...]) -> tuple[str, str] | None:
        now = time.monotonic()
        cached = self.known.get((provider, rooms))
        if cached is not None and now - cached[0] < OWNER_CACHE_S:
            return cached[1]
        owner = await room_owner(redis, provider, rooms)
        if owner is not None:           # an unknown room may become known any moment: never remembered
            self.known[(provider, rooms)] = (now, owner)
            self.known.move_to_end((provider, rooms))
            if len(self.known) > OWNER_CACHE_MAX:
                self.known.popitem(last=False)
        return owner


def _receiver(settings: Settings, receivers: Mapping[str, Receiver], name: str) -> Receiver:
    if name not in settings.providers:
        raise ApiError(404, "unknown_provider", f"no provider named {name!r} is configured",
                       details={"known": sorted(receivers)})
    receiver = receivers.get(name)
    if receiver is None:
        raise ApiError(404, "no_webhook_settings", f"provider {name!r} has no webhook settings "
                       "(jaas: webhook_secret; 100ms: webhook_headers), so it takes no webhooks",
                       details={"known": sorted(receivers)})
    return receiver


def _notice(receiver: Receiver, body: bytes) -> tuple[Notice, dict[str, object]]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ApiError(400, "invalid_body", f"the body must be a JSON object, got {type(document).__name__}")
    try:
        return receiver.notice(document), document
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        path = ".".join(str(part) for part in error["loc"])
        raise ApiError(400, "invalid_event", f"{path or '<body>'}: {error['msg']}", details={"path": path}) from None


async def receive(request: Request, settings: Settings, redis: Redis, batcher: AcceptBatcher,
                  receivers: Mapping[str, Receiver], owners: RoomOwners) -> Outcome:
    name = request.path_params["provider"]
    receiver = _receiver(settings, receivers, name)
    structlog.contextvars.bind_contextvars(source=provider_source(name))
    require_json(request)
    body = await read_body(request, settings.max_body_bytes)
    try:
        receiver.verify(request.headers, body, time.time())
    except ReceiverAuthError as exc:
        raise ApiError(401, exc.code, exc.message) from None
    notice, document = _notice(receiver, body)
    structlog.contextvars.bind_contextvars(event_ids=[notice.event_id])
    outcome = Outcome()
    if notice.fact is None:
        outcome.ignored.append(notice.event_id)
        log.info("event.ignored", event_id=notice.event_id, reason=f"{notice.type} is not acted on")
        return outcome
    try:
        owner = await owners.lookup(redis, name, notice.rooms)
    except RedisError as exc:
        raise store_unavailable(provider_source(name), exc) from None
    if owner is None:
        outcome.ignored.append(notice.event_id)
        log.info("event.ignored", event_id=notice.event_id, reason=f"room {notice.rooms} was not made by the bridge")
        return outcome
    lesson_source, lesson_id = owner
    source = provider_source(name)
    event = {"id": notice.event_id, "type": PROVIDER_EVENT_TYPE, "occurred_at": iso_ms(notice.fact.at_ms),
             "lesson": {"id": lesson_id, "provider": name},
             "data": {"source": lesson_source, "provider_type": notice.type, "fact": notice.fact.model_dump()}}
    jobs = plan(source, event)
    ledger_writes: tuple[LedgerWrite, ...] = ()
    if notice.fact.kind == "presence":
        # Into the ledger with the event itself: the session's report never waits for the participant jobs.
        assert notice.fact.presence is not None
        ledger = Ledger(lesson_source, lesson_id, notice.fact.session_id)
        ledger_writes = (presence_write(ledger, notice.event_id, Presence(**notice.fact.presence)),)
    elif notice.fact.kind == "session_ended":
        jobs = [job._replace(ahead=True) for job in jobs]     # its ledger is complete: report at once
    record = EventRecord(source, notice.event_id, utc_now_iso(), document, event, jobs, ledger_writes)
    return await store(batcher, source, [record], outcome)
