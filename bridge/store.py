"""Every Redis key the project owns, the accept script, and the Redis clients built from settings.

arq's own keys (`arq:job:*`, `arq:result:*`, queues) are written here too, by the accept script,
so that the dedupe check, the event-log append and the enqueue are one atomic round trip.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlparse

import orjson
import redis.asyncio as aioredis
from arq.connections import RedisSettings
from arq.constants import job_key_prefix, result_key_prefix

PREFIX = "lb:"
EVENT_LOG = f"{PREFIX}events"                          # stream: one entry per accepted event
WORKER_QUEUE = "arq:queue"                             # arq's default queue: short jobs
RECORDER_QUEUE = "arq:queue:recorder"                  # long FFmpeg supervision jobs
JOB_EXPIRES_MS = 30 * 24 * 3600 * 1000                 # a queued job outlives a month-long worker outage


def seen_key(source: str, event_id: str) -> str:
    """Dedupe marker; its value is the event's log entry id."""
    return f"{PREFIX}seen:{source}:{event_id}"


def job_runs_key(ref: str) -> str:
    """Hash: job function → JSON outcome of its last run, for one event (ref = source:event_id[:replay])."""
    return f"{PREFIX}runs:{ref}"


def replays_key(source: str, event_id: str) -> str:
    """List of JSON {replay, entry, functions, at}: every replay of one event, oldest first."""
    return f"{PREFIX}replays:{source}:{event_id}"


def lesson_key(source: str, lesson_id: str) -> str:
    """Hash: provider, room (JSON), status, recording ids."""
    return f"{PREFIX}lesson:{source}:{lesson_id}"


def lesson_lock_key(source: str, lesson_id: str) -> str:
    return f"{PREFIX}lock:lesson:{source}:{lesson_id}"


def teachers_key(source: str, course: str) -> str:
    """Set of Moodle user ids learnt (from role_assigned events) to teach a course."""
    return f"{PREFIX}teachers:{source}:{course}"


def delivery_key(webhook_id: str) -> str:
    """Hash: payload, source, type, status, attempts, next_at, last_status, ref."""
    return f"{PREFIX}delivery:{webhook_id}"


def attempts_key(webhook_id: str) -> str:
    """List of JSON attempt records (time, status, latency, first 2 KB of the answer)."""
    return f"{PREFIX}attempts:{webhook_id}"


def produced_key(ref: str) -> str:
    """List of webhook ids an event produced, in order (for ?wait, `events show`)."""
    return f"{PREFIX}produced:{ref}"


def endpoint_disabled_key(source: str) -> str:
    """Set when the endpoint answered 410 Gone; `bridge endpoints enable` deletes it."""
    return f"{PREFIX}endpoint-disabled:{source}"


DEAD_LETTERS = f"{PREFIX}dead"                          # sorted set: webhook id → time it died
FAILED_DELIVERIES = f"{PREFIX}failing"                  # sorted set: webhook id → time of last failure

# Metrics (bridge/metrics.py): every process adds to these; GET /metrics on web renders them.
# Hash fields are JSON arrays of label values; counters never expire (Prometheus counters are monotonic).
METRICS_EVENTS = f"{PREFIX}metrics:events"              # hash [source, outcome] → events
METRICS_REJECTED = f"{PREFIX}metrics:rejected"          # hash [source, reason] → refused requests
METRICS_JOBS = f"{PREFIX}metrics:jobs"                  # hash [function, status] → job runs
METRICS_JOB_BUCKETS = f"{PREFIX}metrics:job-seconds"    # hash [function, le] → runs in that bucket only
METRICS_JOB_SUM = f"{PREFIX}metrics:job-seconds-sum"    # hash [function] → total seconds (float)
METRICS_ATTEMPTS = f"{PREFIX}metrics:webhook-attempts"  # hash [status] → outbound delivery attempts
ACTIVE_RECORDINGS = f"{PREFIX}recordings:active"        # sorted set: recording id → time it started


def recording_key(recording_id: str) -> str:
    """Hash: lesson, status, owner, job_id, push_url, source_url, recorded_s, part, updated_at."""
    return f"{PREFIX}recording:{recording_id}"


def recording_lease_key(recording_id: str) -> str:
    """Held (short TTL, refreshed) by the recorder process supervising the recording."""
    return f"{PREFIX}recording-lease:{recording_id}"


def recording_stop_key(recording_id: str) -> str:
    """Set by `recording.stop` from any process; the supervising recorder polls it."""
    return f"{PREFIX}recording-stop:{recording_id}"



def health_check_key(queue: str) -> str:
    """arq refreshes `<queue>:health-check` every health_check_interval with a short TTL."""
    return f"{queue}:health-check"


# Writes `njobs` arq jobs as arq's own enqueue_job does, skipping an id that is queued or has a result.
# Reads KEYS[k..] (job key, result key, queue key per job) and ARGV[a..] (job id, payload, score,
# expires ms per job), advancing k and a. Shared by the accept and replay scripts.
ENQUEUE_JOBS_LUA = """
for _ = 1, njobs do
  if redis.call('EXISTS', KEYS[k], KEYS[k + 1]) == 0 then
    redis.call('PSETEX', KEYS[k], ARGV[a + 3], ARGV[a + 1])
    redis.call('ZADD', KEYS[k + 2], ARGV[a + 2], ARGV[a])
  end
  k = k + 3
  a = a + 4
end
"""

# The shebang makes Redis 7+ refuse the whole script up front when out of memory, instead of
# failing at a write half way through (scripts are not rolled back).
ACCEPT_SCRIPT = """#!lua
-- KEYS: [1] event log; per event: seen key, then per job: job key, result key, queue key
-- ARGV: [1] dedupe ttl ms, [2] event count; per event: id, source, received_at, raw, canonical, jobs json,
--       job count, then per job: job id, payload, score, expires ms
-- Returns per event: log entry id, 1 if new / 0 if a duplicate (the id is then the original's).
local ttl = tonumber(ARGV[1])
local k, a = 2, 3
local out = {}
for _ = 1, tonumber(ARGV[2]) do
  local seen = KEYS[k]
  k = k + 1
  local njobs = tonumber(ARGV[a + 6])
  local existing = redis.call('GET', seen)
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 0
    k = k + 3 * njobs
    a = a + 7 + 4 * njobs
  else
    local entry = redis.call('XADD', KEYS[1], '*', 'id', ARGV[a], 'source', ARGV[a + 1],
      'received_at', ARGV[a + 2], 'raw', ARGV[a + 3], 'canonical', ARGV[a + 4], 'jobs', ARGV[a + 5])
    redis.call('SET', seen, entry, 'PX', ttl)
    a = a + 7
""" + ENQUEUE_JOBS_LUA + """
    out[#out + 1] = entry
    out[#out + 1] = 1
  end
end
return out
"""


class JobSpec(NamedTuple):   # a NamedTuple: built several times per request on the accept path
    queue: str
    function: str
    job_id: str
    envelope: dict[str, Any]


@dataclass(frozen=True)
class EventRecord:
    source: str
    event_id: str
    received_at: str
    raw: dict[str, Any]
    canonical: dict[str, Any]
    jobs: list[JobSpec]


def arq_payload(job: JobSpec, enqueue_time_ms: int) -> bytes:
    """The bytes arq's own enqueue_job would store (its default pickle serializer)."""
    return pickle.dumps({"t": None, "f": job.function, "a": (job.envelope,), "k": {}, "et": enqueue_time_ms})


def accept_call(events: list[EventRecord], dedupe_ttl_ms: int, now_ms: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for ACCEPT_SCRIPT."""
    keys: list[str] = [EVENT_LOG]
    args: list[Any] = [dedupe_ttl_ms, len(events)]
    for record in events:
        keys.append(seen_key(record.source, record.event_id))
        args += [record.event_id, record.source, record.received_at, orjson.dumps(record.raw),
                 orjson.dumps(record.canonical), orjson.dumps([j.job_id for j in record.jobs]), len(record.jobs)]
        for job in record.jobs:
            keys += [job_key_prefix + job.job_id, result_key_prefix + job.job_id, job.queue]
            args += [job.job_id, arq_payload(job, now_ms), now_ms, JOB_EXPIRES_MS]
    return keys, args


def _tls_options(url: str) -> dict[str, Any]:
    """Managed Redis add-ons hand out rediss:// URLs with self-signed certificates.

    `?ssl_cert_reqs=none` in the URL (as those add-ons document) turns verification off.
    """
    parsed = urlparse(url)
    if parsed.scheme != "rediss":
        return {}
    reqs = parse_qs(parsed.query).get("ssl_cert_reqs", ["required"])[0].lower()
    return {"ssl_cert_reqs": "none" if reqs in ("none", "cert_none") else "required"}


def _without_query_option(url: str, name: str) -> str:
    parsed = urlparse(url)
    query = "&".join(p for p in parsed.query.split("&") if p and not p.startswith(f"{name}="))
    return parsed._replace(query=query).geturl()


def redis_client(url: str) -> aioredis.Redis:
    """A client that fails fast: intake answers 503 rather than hanging when Redis is away."""
    return aioredis.from_url(
        _without_query_option(url, "ssl_cert_reqs"), socket_connect_timeout=2, socket_timeout=5,
        retry_on_timeout=False, max_connections=200, **_tls_options(url),
    )


def arq_redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(_without_query_option(url, "ssl_cert_reqs"))
    tls = _tls_options(url)
    if tls:
        settings.ssl_cert_reqs = tls["ssl_cert_reqs"]
    settings.conn_retries = 30      # a worker started before Redis waits for it instead of dying
    return settings
