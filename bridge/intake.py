"""POST /v1/events/{source}: authenticate, validate, and durably accept in one Redis round trip."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from starlette.requests import Request

from bridge.clock import utc_now_iso
from bridge.config import Settings, SourceConfig
from bridge.errors import ApiError
from bridge.redis_link import REDIS_AWAY
from bridge.routing import plan
from bridge.signing import SignatureError, verify
from bridge.sources import FORMATS, InvalidEvent, Parsed
from bridge.store import EventRecord, accept_call, job_runs_key
from bridge.webhooks import produced_payloads

log = structlog.get_logger("bridge.intake")
RETRY_AFTER_S = "5"
PROBE_WAIT_S = 0.25      # a Redis that is back answers a PING in well under this
FSYNC_WAIT_MS = 2000      # everysec fsyncs within ~1 s; past 2 s the disk is in trouble: answer 503
MAX_WAIT_S = 10
FINAL = ("ok", "failed")
MAX_GROUP = 256          # requests per grouped accept call (each holds at most max_batch events)
MAX_IN_FLIGHT = 8        # accept calls at once, each on its own Redis connection (the pool holds 200)


@dataclass
class Outcome:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    jobs: dict[str, list[str]] = field(default_factory=dict)   # event ref → job functions, for ?wait
    webhooks: list[dict[str, Any]] | None = None              # set when ?wait saw every job finish

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"accepted": self.accepted, "duplicates": self.duplicates, "ignored": self.ignored}
        if self.webhooks is not None:
            body["webhooks"] = self.webhooks
        return body

    @property
    def status(self) -> int:
        if self.webhooks is not None:
            return 200
        return 200 if self.duplicates and not self.accepted else 202


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if not (media == "application/json" or (media.startswith("application/") and media.endswith("+json"))):
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json",
                       details={"got": request.headers.get("content-type")})


async def read_body(request: Request, limit: int) -> bytes:
    """Refuse an oversized body before reading it whole: by Content-Length, else while streaming."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"the body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_signature(source: SourceConfig, request: Request, body: bytes) -> None:
    assert source.signing_secret
    try:
        verify(source.signing_secret, request.headers.get("webhook-id"), request.headers.get("webhook-timestamp"),
               request.headers.get("webhook-signature"), body)
    except SignatureError as exc:
        raise ApiError(401, "bad_signature", str(exc)) from None


def _check_body_token(source: SourceConfig, items: list[Any]) -> None:
    assert source.token
    expected = source.token.encode()
    for index, item in enumerate(items):
        offered = item.get("token") if isinstance(item, dict) else None
        if not isinstance(offered, str) or not hmac.compare_digest(offered.encode(), expected):
            where = f"[{index}].token" if len(items) > 1 else "token"
            raise ApiError(401, "bad_token", f"the body field {where} is missing or does not match the source's token")


def _parse_items(source: SourceConfig, body: bytes, max_batch: int) -> tuple[list[Any], bool]:
    try:
        document = orjson.loads(body)
        orjson.dumps(document)    # ~0.3 µs; orjson reads 1024 levels deep but writes only 254 (TypeError)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except TypeError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply (more than 254 levels)") from None
    if isinstance(document, list):
        if not document:
            raise ApiError(400, "empty_batch", "a batch must hold at least one event")
        if len(document) > max_batch:
            raise ApiError(400, "batch_too_large", f"a batch holds at most {max_batch} events, got {len(document)}")
        return document, True
    if isinstance(document, dict):
        return [document], False
    raise ApiError(400, "invalid_body", f"the body must be a JSON object or array, got {type(document).__name__}")


def _parse_events(source: SourceConfig, items: list[Any], batch: bool, providers: Any) -> list[Parsed]:
    parse = FORMATS[source.format]
    parsed = []
    for index, item in enumerate(items):
        try:
            result = parse(source, item)
            provider = (result.event or {}).get("lesson", {}).get("provider") if result.event else None
            if provider is not None and provider not in providers:
                raise InvalidEvent("lesson.provider", f"no provider named {provider!r} is configured")
            parsed.append(result)
        except InvalidEvent as exc:
            path = exc.at(f"[{index}]").path if batch else exc.path
            raise ApiError(400, "invalid_event", f"{path or '<body>'}: {exc.message}",
                           details={"path": path, "index": index if batch else None}) from None
    return parsed


class NotDurable(RedisError):
    """The server took the events but did not confirm its append-only file reached the disk in time."""


class AcceptBatcher:
    """Group commit: requests handled in the same event-loop turn share one accept call.

    Each call is still one atomic script run, so every request stays all-or-nothing and duplicates
    across requests (and across calls in flight together) are still caught; the Redis round trip
    and client overhead are paid once per group instead of once per request. A group does not wait
    for earlier calls to return (every request would queue behind a whole round trip), up to
    MAX_IN_FLIGHT calls; past that, requests wait here and go together in the next call.
    """

    def __init__(self, accept: AcceptCall, dedupe_ttl_ms: int) -> None:
        self.accept, self.dedupe_ttl_ms = accept, dedupe_ttl_ms
        self.waiting: list[tuple[list[EventRecord], asyncio.Future[list[Any]]]] = []
        self.in_flight: set[asyncio.Task[None]] = set()   # also the references that keep the tasks alive
        self.sender_due = False

    async def submit(self, records: list[EventRecord]) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append((records, future))
        self._send_soon()
        return await future

    def _send_soon(self) -> None:
        """Start a call for what waits, unless one is due to start anyway or all are busy. It starts
        next turn, so it carries every request of this turn."""
        if self.waiting and not self.sender_due and len(self.in_flight) < MAX_IN_FLIGHT:
            self.sender_due = True
            task = asyncio.get_running_loop().create_task(self._send())
            self.in_flight.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self._send_soon()

    async def _send(self) -> None:
        self.sender_due = False
        group, self.waiting = self.waiting[:MAX_GROUP], self.waiting[MAX_GROUP:]
        self._send_soon()                          # more than one group waits: the next one goes too
        records = [record for batch, _ in group for record in batch]
        try:
            keys, args = accept_call(records, self.dedupe_ttl_ms, int(time.time() * 1000))
            result = await self.accept(keys, args)
        except Exception as exc:   # Redis → 503; anything else must fail the group, never hang it
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        offset = 0
        for batch, future in group:
            if not future.done():
                future.set_result(result[offset:offset + 2 * len(batch)])
            offset += 2 * len(batch)


AcceptCall = Callable[[list[str], list[Any]], Awaitable[Any]]


class DurableAccept:
    """The accept script, answered only once the event is on the server's disk where it can say so.

    A server that fsyncs before every reply (`appendfsync always`) needs nothing more. On one with
    another policy that has WAITAOF (Redis >= 7.2, Valkey >= 8, append-only file on), the script and
    a `WAITAOF 1 0` travel in one pipeline: a group is answered once the server has fsynced it, so one
    fsync covers the whole group. Without either, durability is the server's own policy (README).
    """

    def __init__(self, redis: Redis, script: AsyncScript, confirm_fsync: bool = True) -> None:
        self.redis, self.script = redis, script
        # Learnt from the server on the first call; `[redis] confirm_fsync = false` trusts its policy.
        self.waits_for_fsync: bool | None = None if confirm_fsync else False
        self.asking_server = asyncio.Lock()
        self.redis_failing = False
        self.probe: asyncio.Future[Any] | None = None

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        # While Redis is failing, a PING finds out when it is back; a call goes ahead only once it has
        # answered, and is refused (503) after PROBE_WAIT_S otherwise, instead of waiting out a
        # connect and a socket timeout of its own with a whole group of requests behind it.
        if self.redis_failing:
            if self.probe is None or self.probe.done():
                self.probe = asyncio.ensure_future(self.redis.ping())
                self.probe.add_done_callback(lambda probe: probe.cancelled() or probe.exception())  # retrieved
            try:
                await asyncio.wait_for(asyncio.shield(self.probe), PROBE_WAIT_S)
            except TimeoutError:
                raise RedisConnectionError("Redis did not answer a PING in time; refused") from None
            self.redis_failing = False
        try:
            if await self._waits_for_fsync():
                return await self._accept_and_wait(keys, args)
            return await self.script(keys=keys, args=args, client=self.redis)
        except REDIS_AWAY:
            self.redis_failing = True
            raise

    async def _waits_for_fsync(self) -> bool:
        if self.waits_for_fsync is not None:
            return self.waits_for_fsync        # known: no lock on the accept path
        async with self.asking_server:
            if self.waits_for_fsync is None:
                self.waits_for_fsync = await needs_waitaof(self.redis)
            return self.waits_for_fsync

    async def _accept_and_wait(self, keys: list[str], args: list[Any]) -> Any:
        for _ in range(2):
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.evalsha(self.script.sha, len(keys), *keys, *args)
                    pipe.execute_command("WAITAOF", 1, 0, FSYNC_WAIT_MS)
                    result, (fsynced_locally, _replicas) = await pipe.execute()
            except NoScriptError:          # a restarted server forgot the script: load it, send again
                await self.redis.script_load(self.script.script)
                continue
            except ResponseError as exc:   # e.g. a failover landed on a server without WAITAOF: ask again
                self.waits_for_fsync = None
                raise NotDurable(f"the server refused to confirm an fsync ({exc})") from exc
            if not fsynced_locally:
                raise NotDurable(f"the server did not fsync its append-only file within {FSYNC_WAIT_MS} ms")
            return result
        raise NotDurable("the accept script could not be loaded")


async def needs_waitaof(redis: Redis) -> bool:
    """Whether a group must wait for WAITAOF to be on disk when answered.

    No, when the server fsyncs before every reply anyway (`appendonly yes`, `appendfsync always`: the
    embedded server): the wait would add a server loop turn and a pipeline to every group (~30 % of
    peak intake, measured) for nothing. Yes, when the server has WAITAOF and another policy. And no,
    with a warning, when it has neither (before Redis 7.2 / Valkey 8, or AOF off): see README.
    """
    try:
        config = await redis.config_get("append*")
    except ResponseError:
        config = {}                       # managed servers often refuse CONFIG: ask WAITAOF itself
    if _text(config.get("appendonly")) == "yes" and _text(config.get("appendfsync")) == "always":
        log.info("redis.durability", mode="appendfsync always: every reply follows an fsync")
        return False
    try:
        await redis.execute_command("WAITAOF", 1, 0, 1)
    except ResponseError as exc:
        log.warning("redis.fsync_not_confirmed", reason=str(exc)[:200],
                    consequence="a 2xx means the server holds the event; the disk has it per its appendfsync policy")
        return False
    log.info("redis.durability", mode="WAITAOF 1 0 after each group commit")
    return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


async def accept(batcher: AcceptBatcher, source: SourceConfig, parsed: list[Parsed]) -> Outcome:
    outcome = Outcome()
    received_at = utc_now_iso()
    records: list[EventRecord] = []
    for item in parsed:
        if item.event is None:
            outcome.ignored.append(item.event_id)
            log.info("event.ignored", source=source.name, event_id=item.event_id, reason=item.ignored_reason)
            continue
        records.append(EventRecord(source.name, item.event_id, received_at, item.raw, item.event,
                                   plan(source.name, item.event)))
    return await store(batcher, source.name, records, outcome)


def store_unavailable(source_name: str, exc: RedisError) -> ApiError:
    log.warning("event.store_unavailable", source=source_name, error=type(exc).__name__)
    return ApiError(503, "store_unavailable", "the event store is unreachable; retry later",
                    headers={"Retry-After": RETRY_AFTER_S})


async def store(batcher: AcceptBatcher, source_name: str, records: list[EventRecord], outcome: Outcome) -> Outcome:
    """Store the records in one accept call (log, dedupe, jobs); each goes to `outcome` as accepted or
    duplicate. Redis away, or not confirming the write to disk, is a 503 (ApiError)."""
    if not records:
        return outcome
    for record in records:
        outcome.jobs[record.jobs[0].envelope["ref"]] = [job.function for job in record.jobs]
    try:
        result = await batcher.submit(records)
    except NotDurable as exc:
        log.warning("event.store_not_durable", source=source_name, error=str(exc))
        raise ApiError(503, "store_not_durable", f"the event store could not confirm a write to disk ({exc}); "
                       "retry later (a retry of the same events is deduplicated)",
                       headers={"Retry-After": RETRY_AFTER_S}) from None
    except RedisError as exc:
        raise store_unavailable(source_name, exc) from None
    for index, record in enumerate(records):
        is_new = int(result[2 * index + 1])
        (outcome.accepted if is_new else outcome.duplicates).append(record.event_id)
    return outcome


def wait_seconds(request: Request) -> float:
    if not request.scope.get("query_string"):
        return 0.0
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "invalid_wait", "wait must be a number of seconds from 0 to 10") from None
    if not 0 <= value <= MAX_WAIT_S:
        raise ApiError(400, "invalid_wait", "wait must be a number of seconds from 0 to 10")
    return value


async def wait_for_webhooks(redis: Redis, outcome: Outcome, seconds: float) -> list[dict[str, Any]] | None:
    """The webhook payloads the events produced, once every job has finished; None on time-out."""
    deadline = time.monotonic() + seconds
    pause = 0.005
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            for ref, functions in outcome.jobs.items():
                pipe.hmget(job_runs_key(ref), functions)
            runs = await pipe.execute()
        finished = all(run and json.loads(run).get("status") in FINAL for per_event in runs for run in per_event)
        if finished:
            payloads: list[dict[str, Any]] = []
            for ref in outcome.jobs:
                payloads += await produced_payloads(redis, ref)
            return payloads
        if time.monotonic() + pause > deadline:
            return None
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)


async def receive(request: Request, settings: Settings, redis: Redis, batcher: AcceptBatcher) -> Outcome:
    name = request.path_params["source"]
    source = settings.sources.get(name)
    if source is None:
        raise ApiError(404, "unknown_source", f"no source named {name!r} is configured",
                       details={"known": sorted(settings.sources)})
    structlog.contextvars.bind_contextvars(source=name)
    require_json(request)
    body = await read_body(request, settings.max_body_bytes)
    if source.signing_secret:
        _check_signature(source, request, body)
    items, batch = _parse_items(source, body, settings.max_batch)
    if not source.signing_secret and source.token:
        _check_body_token(source, items)
    parsed = _parse_events(source, items, batch, settings.providers)
    wait = wait_seconds(request)
    outcome = await accept(batcher, source, parsed)
    structlog.contextvars.bind_contextvars(event_ids=[p.event_id for p in parsed])
    if wait and outcome.jobs:
        try:
            outcome.webhooks = await wait_for_webhooks(redis, outcome, wait)
        except RedisError:
            outcome.webhooks = None   # accepted already: answer 202 and let the webhook go out on its own
    return outcome
