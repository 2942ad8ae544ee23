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

from bridge import metrics
from bridge.clock import utc_now_iso
from bridge.config import Settings, SourceConfig
from bridge.http_transport import OriginBusy
from bridge.providers.base import retry_after_seconds
from bridge.schema.webhooks import WebhookType
from bridge.signing import sign
from bridge.store import (
    DEAD_LETTERS,
    FAILED_DELIVERIES,
    JOB_EXPIRES_MS,
    WORKER_QUEUE,
    attempts_key,
    delivery_key,
    endpoint_disabled_key,
    produced_key,
)

log = structlog.get_logger("bridge.webhooks")
ANSWER_LOG_BYTES = 2048
JITTER = 0.2
BUSY_WAIT_CAP_S = 10.0       # a delivery whose endpoint is busy looks again at least this often
RECORD_TTL_S = 30 * 24 * 3600
USER_AGENT = "lesson-bridge"

# Stores the payload once (first writer wins) and appends its id to the event's produced list.
# Returns {status, stored payload, endpoint disabled}: a re-run job learns whether its webhook still
# needs sending, and sends the payload stored the first time.
RECORD_SCRIPT = """
if redis.call('HSETNX', KEYS[1], 'payload', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'source', ARGV[2], 'type', ARGV[3], 'ref', ARGV[4], 'status', ARGV[5],
    'attempts', 0, 'created_at', ARGV[6])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  redis.call('RPUSH', KEYS[2], ARGV[8])
  redis.call('EXPIRE', KEYS[2], ARGV[7])
end
local stored = redis.call('HMGET', KEYS[1], 'status', 'payload')
return {stored[1], stored[2], redis.call('EXISTS', KEYS[3])}
"""

# EVALSHA rather than EVAL: the script text is not sent and hashed again by Redis on every webhook.
# Given as bytes, the script needs no client to compute its hash; each call passes its own.
_record_webhook = AsyncScript(None, RECORD_SCRIPT.encode())  # type: ignore[arg-type]


@dataclass(frozen=True)
class Outbound:
    """A recorded webhook whose first attempt the producing job makes itself."""

    msg_id: str
    payload: bytes
    ref: str
    endpoint_disabled: bool


def webhook_id(ref: str, webhook_type: str, discriminator: str = "") -> str:
    digest = hashlib.sha256(f"{ref}|{webhook_type}|{discriminator}".encode()).hexdigest()
    return f"msg_{digest[:26]}"


def wants(source: SourceConfig, webhook_type: str) -> bool:
    for pattern in source.webhook_events:
        if pattern == "*" or pattern == webhook_type or (pattern.endswith(".*") and
                                                         webhook_type.startswith(pattern[:-1])):
            return True
    return False


async def emit(redis: ArqRedis, source: SourceConfig, ref: str, webhook_type: WebhookType, data: dict[str, Any],
               discriminator: str = "") -> tuple[str, Outbound | None]:
    """Record the webhook an event produced. Safe to repeat.

    Returns the webhook id and, while its first attempt is still to be made, what to send.
    """
    msg_id = webhook_id(ref, webhook_type, discriminator)
    now = utc_now_iso()
    payload = json.dumps({"type": webhook_type, "timestamp": now, "data": data},
                         separators=(",", ":"))
    deliver = bool(source.webhook_url) and wants(source, webhook_type)
    status = "pending" if deliver else "not_sent"
    current, stored, disabled = await _record_webhook(
        keys=[delivery_key(msg_id), produced_key(ref), endpoint_disabled_key(source.name)],
        args=[payload, source.name, webhook_type, ref, status, now, RECORD_TTL_S, msg_id], client=redis)
    if current != b"pending":
        return msg_id, None
    return msg_id, Outbound(msg_id, stored, ref, bool(disabled))


async def produced_payloads(redis: Any, ref: str) -> list[dict[str, Any]]:
    ids = await redis.lrange(produced_key(ref), 0, -1)
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for msg_id in ids:
            pipe.hget(delivery_key(msg_id.decode() if isinstance(msg_id, bytes) else msg_id), "payload")
        payloads = await pipe.execute()
    return [json.loads(p) for p in payloads if p]


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
    answer = response.text[:ANSWER_LOG_BYTES]
    ok = 200 <= response.status_code < 300
    result = AttemptResult(response.status_code, None if ok else f"HTTP {response.status_code}",
                           retry_after_seconds(response.headers.get("retry-after"))
                           if response.status_code in (429, 503) else None)
    return result, answer, time.perf_counter() - started


def _settle(pipe: Any, msg_id: str, status: str) -> None:
    """Queue the commands that file a delivery under its new status (one transaction with the attempt)."""
    now = time.time()
    pipe.hset(delivery_key(msg_id), "status", status)
    if status == "delivered":
        pipe.zrem(FAILED_DELIVERIES, msg_id)
    elif status == "dead":
        pipe.zadd(DEAD_LETTERS, {msg_id: now})
        pipe.zrem(FAILED_DELIVERIES, msg_id)
    else:                                   # failed (a retry is scheduled) or disabled (endpoint gone)
        pipe.zadd(FAILED_DELIVERIES, {msg_id: now})


async def _settle_now(redis: ArqRedis, msg_id: str, status: str) -> str:
    async with redis.pipeline(transaction=True) as pipe:
        _settle(pipe, msg_id, status)
        await pipe.execute()
    return status


async def deliver(redis: ArqRedis, transport: httpx.AsyncBaseTransport, settings: Settings, msg_id: str,
                  number: int, waits: int = 0) -> str:
    """Make attempt `number` (0-based) of one stored delivery; schedule the next or dead-letter it."""
    record = {k.decode(): v.decode() for k, v in (await redis.hgetall(delivery_key(msg_id))).items()}
    if not record:
        return "missing"
    if record.get("status") == "delivered":
        return "delivered"
    source = settings.sources.get(record["source"])
    if source is None or not source.webhook_url:
        return await _settle_now(redis, msg_id, "dead")
    disabled = bool(await redis.exists(endpoint_disabled_key(source.name)))
    outbound = Outbound(msg_id, record["payload"].encode(), record.get("ref", ""), disabled)
    return await deliver_outbound(redis, transport, settings, source, outbound, number, waits)


async def deliver_outbound(redis: ArqRedis, transport: httpx.AsyncBaseTransport, settings: Settings,
                           source: SourceConfig, outbound: Outbound, number: int, waits: int = 0) -> str:
    """Attempt one delivery and file the outcome in one transaction; enqueue the retry if there is one.

    `waits`: how often this attempt already found its endpoint busy (slow or hanging, its share of
    POSTs in flight); such a turn is no attempt: it is made again shortly, with back-off.
    """
    msg_id = outbound.msg_id
    if outbound.endpoint_disabled:
        return await _settle_now(redis, msg_id, "disabled")
    result, answer, seconds = await attempt(transport, settings, source, msg_id, outbound.payload)
    if result.busy:
        delay = min(BUSY_WAIT_CAP_S, 2.0 ** waits) * random.uniform(1 - JITTER, 1 + JITTER)
        await _schedule(redis, f"{msg_id}:{number}:w{waits + 1}", delay, msg_id, number, waits + 1)
        return "waiting"
    entry = {"at": utc_now_iso(), "attempt": number, "status": result.status, "ms": round(seconds * 1000, 1),
             "error": result.error, "answer": answer}
    delay = None
    if result.error is None:
        status = "delivered"
    elif result.status == 410:
        status = "disabled"
    else:
        delay = None if result.permanent else next_delay(settings.webhook_retry_schedule, number, result.retry_after)
        status = "dead" if delay is None else "failed"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.rpush(attempts_key(msg_id), json.dumps(entry))
        pipe.expire(attempts_key(msg_id), RECORD_TTL_S)
        pipe.hincrby(delivery_key(msg_id), "attempts", 1)
        pipe.hset(delivery_key(msg_id), mapping={"last_status": str(result.status or result.error),
                                                 "next_at": str(time.time() + delay) if delay is not None else ""})
        metrics.add_attempt_command(pipe, result.status, result.error)
        _settle(pipe, msg_id, status)
        if status == "disabled":
            pipe.set(endpoint_disabled_key(source.name), utc_now_iso())
        await pipe.execute()
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
