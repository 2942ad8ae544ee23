"""Outbound webhooks: record what an event produced, then deliver it, signed, with retries.

A webhook's id is derived from the event reference, its type and a discriminator, so a job that
re-runs after a crash produces the same `webhook-id` and the first stored payload wins.
The first attempt is made by the job that produced the webhook, right after it records its
outcome (no queue hop: a join link reaches the LMS in milliseconds); if that job dies first, arq
runs it again and the still-pending webhook is attempted then. Every retry is its own arq job
(`<webhook id>:<attempt>`), so a delivery survives any restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import random
import socket
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx
import structlog
from arq.connections import ArqRedis
from redis.commands.core import AsyncScript

from bridge.clock import utc_now_iso
from bridge.config import Settings, SourceConfig
from bridge.http_transport import OriginBusy
from bridge.metrics import BufferedCounts
from bridge.providers.base import retry_after_seconds
from bridge.schema.config import RETRY_JITTER as JITTER
from bridge.schema.webhooks import WebhookType
from bridge.signing import sign
from bridge.store import (
    DEAD_LETTERS,
    DELIVERED_PAYLOAD_KEEP_S,
    FAILED_DELIVERIES,
    JOB_EXPIRES_MS,
    PRODUCED_FIELD,
    WORKER_QUEUE,
    attempt_field,
    delivery_key,
    endpoint_disabled_key,
    job_runs_key,
    pack_payload,
    payload_key,
    produced_ids,
    read_delivery,
    unpack_payload,
)

log = structlog.get_logger("bridge.webhooks")
ANSWER_LOG_BYTES = 2048       # of a failed attempt's answer: what the LMS said is wrong
OK_ANSWER_LOG_BYTES = 16      # of a 2xx answer: kept with every delivered webhook (its entry within 64 B)
BUSY_WAIT_CAP_S = 10.0       # a delivery whose endpoint is busy looks again at least this often
USER_AGENT = "lesson-bridge"

# One job run's record in one call: each webhook it produced, recorded once (first writer wins) with
# its metadata and its payload (its own key, DELIVERED_PAYLOAD_KEEP_S: the first attempt that does not
# deliver it keeps it longer), listed in the execution's runs hash, and the run's outcome. Returns per
# webhook its stored status and, when a run before this one recorded it, that run's payload (if still
# kept): a re-run learns whether its webhook still needs sending, and sends what the first run made.
# KEYS: runs hash, then per webhook its delivery hash and payload key. ARGV: ttl s, function ('' = no
# outcome), outcome, source, ref, now, payload keep s; then per webhook id, type, status, order (ns), payload.
RECORD_SCRIPT = f"""
local ttl = ARGV[1]
local runs = {{}}
if ARGV[2] ~= '' then
  runs[1] = ARGV[2]
  runs[2] = ARGV[3]
end
local out = {{}}
for k = 0, (#KEYS - 1) / 2 - 1 do
  local record, payload = KEYS[2 + 2 * k], KEYS[3 + 2 * k]
  local a = 8 + 5 * k
  if redis.call('HSETNX', record, 'created_at', ARGV[6]) == 1 then
    redis.call('HSET', record, 'source', ARGV[4], 'type', ARGV[a + 1], 'ref', ARGV[5], 'status', ARGV[a + 2],
      'attempts', 0)
    redis.call('EXPIRE', record, ttl)
    redis.call('SET', payload, ARGV[a + 4], 'EX', ARGV[7])
    runs[#runs + 1] = '{PRODUCED_FIELD}' .. ARGV[a]
    runs[#runs + 1] = ARGV[a + 3]
    out[#out + 1] = ARGV[a + 2]
    out[#out + 1] = ''
  else
    local stored = redis.call('HMGET', record, 'status', 'payload')
    out[#out + 1] = stored[1] or ''
    out[#out + 1] = redis.call('GET', payload) or stored[2] or ''
  end
end
if #runs > 0 then
  redis.call('HSET', KEYS[1], unpack(runs))
  redis.call('EXPIRE', KEYS[1], ttl)
end
return out
"""

# EVALSHA rather than EVAL: the script text is not sent and hashed again by Redis on every job.
# Given as bytes, the script needs no client to compute its hash; each call passes its own.
_record_run = AsyncScript(None, RECORD_SCRIPT.encode())  # type: ignore[arg-type]


@dataclass(frozen=True)
class Produced:
    """A webhook a job run made, to be recorded with the run's outcome."""

    msg_id: str
    webhook_type: str
    status: str                  # pending (to send) or not_sent (the source doesn't want it)
    order: int                   # time.time_ns() when it was made: the execution's webhooks in order
    payload: bytes


@dataclass(frozen=True)
class Outbound:
    """A recorded webhook whose first attempt the producing job makes itself."""

    msg_id: str
    payload: bytes
    ref: str


def webhook_id(ref: str, webhook_type: str, discriminator: str = "") -> str:
    digest = hashlib.sha256(f"{ref}|{webhook_type}|{discriminator}".encode()).hexdigest()
    return f"msg_{digest[:26]}"


def wants(source: SourceConfig, webhook_type: str) -> bool:
    for pattern in source.webhook_events:
        if pattern == "*" or pattern == webhook_type or (pattern.endswith(".*") and
                                                         webhook_type.startswith(pattern[:-1])):
            return True
    return False


def produce(source: SourceConfig, ref: str, webhook_type: WebhookType, data: dict[str, Any],
            discriminator: str = "") -> Produced:
    """The webhook an event produced, signed and sent once recorded (`record_run`)."""
    payload = json.dumps({"type": webhook_type, "timestamp": utc_now_iso(), "data": data}, separators=(",", ":"))
    deliver = bool(source.webhook_url) and wants(source, webhook_type)
    return Produced(webhook_id(ref, webhook_type, discriminator), webhook_type, "pending" if deliver else "not_sent",
                    time.time_ns(), payload.encode())


async def record_run(redis: ArqRedis, ttl_s: int, source: str, ref: str, produced: list[Produced],
                     function: str = "", outcome: dict[str, Any] | None = None) -> list[Outbound]:
    """Record a run's webhooks and (given a function) its outcome, both kept `ttl_s` ([bridge]
    record_retention_s); safe to repeat. Returns the webhooks whose first attempt is still to be made,
    with the payload to send."""
    if not produced and not function:
        return []
    args: list[Any] = [ttl_s, function, json.dumps(outcome, separators=(",", ":")) if function else "",
                       source, ref, utc_now_iso(), DELIVERED_PAYLOAD_KEEP_S]
    keys = [job_runs_key(ref)]
    for item in produced:
        args += [item.msg_id, item.webhook_type, item.status, item.order, pack_payload(item.payload)]
        keys += [delivery_key(item.msg_id), payload_key(item.msg_id)]
    answer = await _record_run(keys=keys, args=args, client=redis)
    return [Outbound(item.msg_id, unpack_payload(stored) if stored else item.payload, ref)
            for item, status, stored in zip(produced, answer[::2], answer[1::2], strict=True) if status == b"pending"]


async def produced_payloads(redis: Any, ref: str) -> list[dict[str, Any]]:
    ids = produced_ids(await redis.hgetall(job_runs_key(ref)))
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for msg_id in ids:
            pipe.get(payload_key(msg_id))
        payloads = await pipe.execute()
    return [json.loads(unpack_payload(p)) for p in payloads if p]


class EndpointSwitch:
    """Whether a source's endpoint is disabled (it answered 410).

    An enabled endpoint is read at most once a second per process instead of once per webhook: a 410
    met by another process is seen within a second (and meanwhile a POST there meets the 410 itself).
    A disabled one is read every time, so `bridge endpoints enable` and its retries take effect at once.
    """

    def __init__(self, max_age_s: float = 1.0) -> None:
        self.max_age_s = max_age_s
        self.enabled_at: dict[str, float] = {}

    async def disabled(self, redis: ArqRedis, source: str) -> bool:
        now = time.monotonic()
        if now - self.enabled_at.get(source, -self.max_age_s) < self.max_age_s:
            return False
        if await redis.exists(endpoint_disabled_key(source)):
            self.enabled_at.pop(source, None)
            return True
        self.enabled_at[source] = now
        return False

    def disable(self, source: str) -> None:
        self.enabled_at.pop(source, None)


ENDPOINTS = EndpointSwitch()


class UnsafeDestination(Exception):
    pass


class Destination(NamedTuple):
    url: httpx.URL
    headers: dict[str, str]            # Host, when the URL names an address instead
    extensions: dict[str, Any]         # sni_hostname, so TLS still verifies the certificate for the name


async def checked_destination(url: str, allow_private: bool) -> Destination:
    """Where to send a webhook: the address the SSRF check approved, pinned into the URL.

    Resolving once for the check and again on connect would let a name that answers a public
    address first and a private one next (DNS rebinding) slip past the check. Any loopback,
    private, link-local or metadata address among the answers refuses the destination.
    """
    target = httpx.URL(url)
    if allow_private:
        return Destination(target, {}, {})
    host = target.host
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeDestination(f"cannot resolve {host}: {exc.strerror}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if (address.is_loopback or address.is_private or address.is_link_local or address.is_reserved
                or address.is_multicast or address.is_unspecified):
            raise UnsafeDestination(f"{host} resolves to {address}, a non-public address "
                                    "(set allow_private_network = true to allow it)")
    pinned = str(ipaddress.ip_address(infos[0][4][0]))
    if pinned == host:
        return Destination(target, {}, {})
    extensions = {"sni_hostname": host} if target.scheme == "https" else {}
    return Destination(target.copy_with(host=pinned), {"host": target.netloc.decode("ascii")}, extensions)


@dataclass(frozen=True)
class AttemptResult:
    status: int | None          # None: no HTTP answer (connection error, timeout, refused destination)
    error: str | None
    retry_after: float | None
    permanent: bool = False     # retrying cannot help (the destination is refused by the SSRF guard)
    busy: bool = False          # not sent: the endpoint already has its share of POSTs in flight


def next_delay(schedule: tuple[float, ...], attempt: int, retry_after: float | None) -> float | None:
    """Seconds before attempt number `attempt + 1`, or None when the schedule is exhausted."""
    if attempt >= len(schedule):
        return None
    base = schedule[attempt]
    delay = base * random.uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


async def attempt(transport: httpx.AsyncBaseTransport, settings: Settings, source: SourceConfig, msg_id: str,
                  payload: bytes) -> tuple[AttemptResult, str, float]:
    """One signed POST, straight through the transport: no cookie jar carrying an LMS's session cookie
    into later deliveries, no redirects to follow (a 3xx is a failure), and a quarter less CPU than
    the client's layers over the same request."""
    assert source.webhook_url
    started = time.perf_counter()
    timestamp = int(time.time())
    headers = {
        "user-agent": USER_AGENT,
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(source.webhook_secrets, msg_id, timestamp, payload),
    }
    try:
        destination = await checked_destination(source.webhook_url, source.allow_private_network)
        request = httpx.Request("POST", destination.url, content=payload, headers={**headers, **destination.headers},
                                extensions={**destination.extensions,
                                            "timeout": httpx.Timeout(settings.webhook_timeout_s).as_dict(),
                                            "deadline_s": settings.webhook_timeout_s})
        response = await transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
    except UnsafeDestination as exc:
        return AttemptResult(None, f"refused: {exc}", None, permanent=True), "", time.perf_counter() - started
    except OriginBusy:
        return AttemptResult(None, "endpoint_busy", None, busy=True), "", time.perf_counter() - started
    except httpx.HTTPError as exc:
        return AttemptResult(None, type(exc).__name__, None), "", time.perf_counter() - started
    ok = 200 <= response.status_code < 300
    answer = response.text[:OK_ANSWER_LOG_BYTES if ok else ANSWER_LOG_BYTES]
    result = AttemptResult(response.status_code, None if ok else f"HTTP {response.status_code}",
                           retry_after_seconds(response.headers.get("retry-after"))
                           if response.status_code in (429, 503) else None)
    return result, answer, time.perf_counter() - started


def _file(pipe: Any, msg_id: str, status: str) -> None:
    """Queue the commands that put a delivery in the failing / dead sets its new status calls for."""
    now = time.time()
    if status == "delivered":
        pipe.zrem(FAILED_DELIVERIES, msg_id)
    elif status == "dead":
        pipe.zadd(DEAD_LETTERS, {msg_id: now})
        pipe.zrem(FAILED_DELIVERIES, msg_id)
    else:                                   # failed (a retry is scheduled) or disabled (endpoint gone)
        pipe.zadd(FAILED_DELIVERIES, {msg_id: now})


def _keep_payload(pipe: Any, settings: Settings, outbound: Outbound) -> None:
    """A webhook its first attempt did not deliver keeps its payload as long as its record: its retries
    (and `bridge deliveries retry`) send it. Written, not extended: its key may have lapsed meanwhile."""
    pipe.set(payload_key(outbound.msg_id), pack_payload(outbound.payload), ex=settings.record_retention_s)


async def _settle_now(redis: ArqRedis, msg_id: str, status: str, keep: tuple[Settings, Outbound] | None = None) -> str:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(delivery_key(msg_id), "status", status)
        _file(pipe, msg_id, status)
        if keep:
            _keep_payload(pipe, *keep)
        await pipe.execute()
    return status


async def deliver(redis: ArqRedis, transport: httpx.AsyncBaseTransport, settings: Settings, counts: BufferedCounts,
                  msg_id: str, number: int, waits: int = 0) -> str:
    """Make attempt `number` (0-based) of one stored delivery; schedule the next or dead-letter it."""
    record, _ = await read_delivery(redis, msg_id)
    if not record:
        return "missing"
    if record.get("status") == "delivered":
        return "delivered"
    source = settings.sources.get(record["source"])
    if source is None or not source.webhook_url:
        return await _settle_now(redis, msg_id, "dead")
    if "payload" not in record:   # not kept past its first attempt: that one delivered it (or a bug lost it)
        log.warning("webhook.payload_gone", webhook_id=msg_id, status=record.get("status"))
        return await _settle_now(redis, msg_id, "dead")
    outbound = Outbound(msg_id, record["payload"].encode(), record.get("ref", ""))
    return await deliver_outbound(redis, transport, settings, counts, source, outbound, number, waits, first=False)


async def deliver_outbound(redis: ArqRedis, transport: httpx.AsyncBaseTransport, settings: Settings,
                           counts: BufferedCounts, source: SourceConfig, outbound: Outbound, number: int,
                           waits: int = 0, first: bool = True) -> str:
    """Attempt one delivery and file the outcome; enqueue the retry if there is one.

    `first`: the producing job's own attempt of a webhook it has just recorded as pending, so it is in
    no failing set: delivered, it is filed with a single HSET.
    `waits`: how often this attempt already found its endpoint busy (slow or hanging, its share of
    POSTs in flight); such a turn is no attempt: it is made again shortly, with back-off.
    """
    msg_id = outbound.msg_id
    if await ENDPOINTS.disabled(redis, source.name):
        return await _settle_now(redis, msg_id, "disabled", (settings, outbound))
    result, answer, seconds = await attempt(transport, settings, source, msg_id, outbound.payload)
    if result.busy:
        delay = min(BUSY_WAIT_CAP_S, 2.0 ** waits) * random.uniform(1 - JITTER, 1 + JITTER)
        async with redis.pipeline(transaction=False) as pipe:
            _keep_payload(pipe, settings, outbound)
            await pipe.execute()
        await _schedule(redis, f"{msg_id}:{number}:w{waits + 1}", delay, msg_id, number, waits + 1)
        return "waiting"
    now = time.time()
    # Kept short (its time and number are in the field's name), so the record stays in Redis's compact
    # encoding: every value of a hash within 64 B (split_delivery fills the rest back in).
    entry: dict[str, Any] = {"status": result.status, "ms": round(seconds * 1000, 1)}
    if result.error:
        entry["error"] = result.error
    if answer:
        entry["answer"] = answer
    delay = None
    if result.error is None:
        status = "delivered"
    elif result.status == 410:
        status = "disabled"
    else:
        delay = None if result.permanent else next_delay(settings.webhook_retry_schedule, number, result.retry_after)
        status = "dead" if delay is None else "failed"
    fields = {"status": status, "attempts": number + 1, "last_status": str(result.status or result.error),
              attempt_field(int(now * 1000), number): json.dumps(entry, separators=(",", ":"))}
    if delay is not None or not first:          # (a first attempt has no earlier next_at to clear)
        fields["next_at"] = str(now + delay) if delay is not None else ""
    counts.add_attempt(result.status, result.error)
    if status == "delivered" and first:
        await redis.hset(delivery_key(msg_id), mapping=fields)
    else:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(delivery_key(msg_id), mapping=fields)
            _file(pipe, msg_id, status)
            if status == "delivered":           # by a retry: its payload goes the way a first delivery's does
                pipe.expire(payload_key(msg_id), DELIVERED_PAYLOAD_KEEP_S)
            else:
                _keep_payload(pipe, settings, outbound)
            if status == "disabled":
                pipe.set(endpoint_disabled_key(source.name), utc_now_iso())
            await pipe.execute()
        if status == "disabled":
            ENDPOINTS.disable(source.name)
    log.info("webhook.attempt", webhook_id=msg_id, event_ref=outbound.ref, attempt=number,
             status=result.status, error=result.error, ms=entry["ms"], outcome=status)
    if status == "failed":
        assert delay is not None
        await _schedule(redis, f"{msg_id}:{number + 1}", delay, msg_id, number + 1)
    return status


async def _schedule(redis: ArqRedis, job_id: str, delay: float, msg_id: str, number: int, waits: int = 0) -> None:
    """A deliver_webhook job `delay` seconds out. arq's default expiry (the delay + 1 day) would drop a
    delivery queued through a long worker outage."""
    await redis.enqueue_job("deliver_webhook", msg_id, number, waits, _job_id=job_id, _defer_by=delay,
                            _queue_name=WORKER_QUEUE, _expires=delay + JOB_EXPIRES_MS / 1000)
