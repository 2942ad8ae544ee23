"""Every Redis key the project owns, the accept script, and the Redis clients built from settings.

arq's own keys (`arq:job:*`, queues) are written here too, by the accept script,
so that the dedupe check, the event-log append and the enqueue are one atomic round trip.

Each key's docstring or comment says how long it lives. Every key expires (a TTL set where it is written)
except the families in WITHOUT_TTL, each bounded by something else; tests/test_key_lifetimes.py scans
Redis after real flows and holds the bridge to that. README "Redis sizing" turns it into megabytes.
arq's own keys: `arq:job:<id>` (JOB_EXPIRES_MS, deleted when the job finishes), `arq:in-progress:<id>`
(the job's lease, PX), `arq:retry:<id>` (a day), `arq:result:<id>` (cron, poll-tick and recorder jobs
only: `keep_result`, at most an hour; event and delivery jobs keep none), `<queue>:health-check` (PX).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlparse

import orjson
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from redis.asyncio.connection import parse_url

from bridge.clock import iso_from_ms

PREFIX = "lb:"
EVENT_LOG = f"{PREFIX}events"                          # stream: one entry per accepted event (trimmed: WITHOUT_TTL)
WORKER_QUEUE = "arq:queue"                             # arq's default queue: short jobs (sorted set of job ids)
RECORDER_QUEUE = "arq:queue:recorder"                  # long FFmpeg supervision jobs
JOB_EXPIRES_MS = 30 * 24 * 3600 * 1000                 # a queued job outlives a month-long worker outage


SEEN_PREFIX = f"{PREFIX}seen:"


def seen_key(source: str, event_id: str) -> str:
    """Dedupe marker; its value is the event's log entry id. (The accept script builds it too.)
    Lives `dedupe_window_s` (7 days by default) from acceptance; a replay restores only what is left of it."""
    return f"{SEEN_PREFIX}{source}:{event_id}"


def job_runs_key(ref: str) -> str:
    """Hash for one event execution (ref = source:event_id[:replay]): job function → JSON outcome of
    its last run, and `webhook:<id>` → when (ns) the execution produced that webhook.
    Lives [bridge] record_retention_s (30 days) from its execution's last recorded run."""
    return f"{PREFIX}runs:{ref}"


PRODUCED_FIELD = "webhook:"


def produced_ids(runs: Mapping[Any, Any]) -> list[str]:
    """The webhook ids an execution produced, in order, from its runs hash (raw or decoded)."""
    found = []
    for name, value in runs.items():
        text = name.decode() if isinstance(name, bytes) else name
        if text.startswith(PRODUCED_FIELD):
            found.append((int(value), text[len(PRODUCED_FIELD):]))
    return [msg_id for _, msg_id in sorted(found)]


def replays_key(source: str, event_id: str) -> str:
    """List of JSON {replay, entry, functions, at}: every replay of one event, oldest first.
    Lives max(event_retention_s, record_retention_s) from the event's last replay, as long as the runs it indexes."""
    return f"{PREFIX}replays:{source}:{event_id}"


# A lesson's state outlasts a summer break (a course's activity used again in the autumn keeps its room)
# and the attendance ledger (90 days); a one-off lesson's state leaves half a year after it ended.
LESSON_TTL_S = 180 * 24 * 3600
# A job that finds the lesson's lifetime begun longer ago than this begins it again (one MULTI, at most
# monthly per lesson): a room in use never expires under its users, and joins add no command otherwise.
LESSON_REFRESH_S = 30 * 24 * 3600


def lesson_key(source: str, lesson_id: str) -> str:
    """Hash: provider, room (JSON), status, title, recording id, `touched` (when its lifetime last began).
    Lives LESSON_TTL_S from the lesson's last change, or its last use when that is LESSON_REFRESH_S later
    (bridge/lifecycle.py): a join on a room that exists only reads it."""
    return f"{PREFIX}lesson:{source}:{lesson_id}"


def room_owner_key(provider: str, room: str) -> str:
    """String `<source>\t<lesson id>`: the lesson a provider's room (its id or name) was made for.
    Lives as long as its lesson's state (LESSON_TTL_S, refreshed with it)."""
    return f"{PREFIX}room:{provider}:{room}"


def attendance_key(source: str, lesson_id: str, session_id: str) -> str:
    """Hash for one provider session: `e:<provider event key>` → participant event JSON, plus
    `started_ms`, `ended_ms`, `reported` (the event that sent attendance.report).
    Lives LEDGER_TTL_S (90 days, bridge/attendance.py) from the session's last event."""
    return f"{PREFIX}attendance:{source}:{lesson_id}:{session_id}"


def attendance_sessions_key(source: str, lesson_id: str) -> str:
    """Sorted set: a lesson's provider session ids → the ms they started (the admin view shows the last).
    Lives LEDGER_TTL_S from the lesson's last participant event, as the ledgers it indexes."""
    return f"{PREFIX}attendance-sessions:{source}:{lesson_id}"


def attendance_poll_key(source: str, lesson_id: str) -> str:
    """Hash: the live polling session of a lesson (OWT, OpenMeetings): `session`, `event_id`, `provider`,
    `started_ms`, `over_at_start`, `tick` (the next to run), `met`, `present` (JSON: who the last poll saw).
    Deleted when the session ends; else STATE_TTL_S (2 days, bridge/polling.py) after the last tick."""
    return f"{PREFIX}attendance-poll:{source}:{lesson_id}"


def attendance_roster_key(source: str, lesson_id: str) -> str:
    """Hash: LMS user id → JSON {name, role} the bridge joined them with (polled providers list no names).
    Lives ROSTER_TTL_S (90 days, bridge/polling.py) from the lesson's last join, as the ledger naming them."""
    return f"{PREFIX}attendance-roster:{source}:{lesson_id}"


def lesson_lock_key(source: str, lesson_id: str) -> str:
    """redis-py lock around a room's creation: deleted on release, else lapses after job_timeout_s."""
    return f"{PREFIX}lock:lesson:{source}:{lesson_id}"


def teachers_key(source: str, course: str) -> str:
    """Set of Moodle user ids learnt (from role_assigned events) to teach a course. No TTL: WITHOUT_TTL."""
    return f"{PREFIX}teachers:{source}:{course}"


def moodle_ws_cache_key(source: str, function: str, params_digest: str) -> str:
    """String: a Moodle web-service answer, JSON, for one function and its parameters. Lives 5 min to an
    hour (the *_TTL_S of bridge/moodle/client.py)."""
    return f"{PREFIX}moodle-ws:{source}:{function}:{params_digest}"


def moodle_ws_paused_key(source: str) -> str:
    """Set while Moodle refuses the source's ws_token: no calls until it lapses (PAUSE_S, 60 s)."""
    return f"{PREFIX}moodle-ws-paused:{source}"


def moodle_courses_key(source: str) -> str:
    """Set of `<host>:<course id>`: the Moodle courses the source's events came from (reconciliation).
    No TTL: WITHOUT_TTL."""
    return f"{PREFIX}moodle-courses:{source}"


def moodle_course_lessons_key(source: str, course: str) -> str:
    """Set of lesson ids the bridge has seen in one Moodle course (`<host>:<course id>`). No TTL:
    WITHOUT_TTL (reconciliation forgets a lesson whose state has expired)."""
    return f"{PREFIX}moodle-course-lessons:{source}:{course}"


def moodle_reconcile_lock_key(source: str) -> str:
    """Held for `reconcile_s` (its TTL) by the worker that reconciles the source this interval."""
    return f"{PREFIX}moodle-reconcile:{source}"


def delivery_key(webhook_id: str) -> str:
    """Hash: source, type, status, attempts, next_at, last_status, ref, created_at, and per attempt
    `attempt:<ms>:<number>` → JSON {status, ms, error (if any), answer (capped, if any)}: its time and
    number are in the field's name. Every value short (`hash-max-listpack-value`, 64 B), so Redis keeps
    a delivered webhook's record in its compact encoding (~330 B instead of ~700 B).
    Lives [bridge] record_retention_s (30 days) from the webhook's creation; retries do not extend it.
    (A record written before payloads had their own key also holds `payload`.)"""
    return f"{PREFIX}delivery:{webhook_id}"


def payload_key(webhook_id: str) -> str:
    """A webhook's payload, zlib-compressed (`pack_payload`): most of a webhook's bytes, and a join
    link's token. Lives DELIVERED_PAYLOAD_KEEP_S from its recording, enough for `?wait` and a first
    look: a payload delivered at its first attempt can be made again by replaying its event. One
    whose first attempt did not deliver it is kept as long as its record: its retries send it."""
    return f"{PREFIX}payload:{webhook_id}"


DELIVERED_PAYLOAD_KEEP_S = 60
ATTEMPT_FIELD = "attempt:"


def attempt_field(at_ms: int, number: int) -> str:
    return f"{ATTEMPT_FIELD}{at_ms}:{number}"


def pack_payload(payload: bytes) -> bytes:
    """A webhook payload as its delivery record keeps it: zlib-compressed. A join.ready's link repeats
    its token, so this halves it (1.85 KB -> 0.8 KB for a JaaS join) for ~25 µs of CPU."""
    return zlib.compress(payload)


def unpack_payload(stored: bytes) -> bytes:
    """The payload as sent (a record written before payloads were compressed holds the JSON itself)."""
    return stored if stored[:1] == b"{" else zlib.decompress(stored)


def split_delivery(raw: Mapping[bytes, bytes], payload: bytes | None = None
                   ) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """A delivery hash as read from Redis, with its payload key's value: (its fields, the payload among
    them unpacked when kept; its attempt log, oldest first, each {at, attempt, status, ms, error, answer})."""
    fields, attempts = {}, []
    for name, value in raw.items():
        key = name.decode()
        if key.startswith(ATTEMPT_FIELD):
            _, at_ms, number = key.split(":")
            stored = orjson.loads(value)
            attempts.append((int(at_ms), {
                "at": stored.get("at") or iso_from_ms(int(at_ms)), "attempt": stored.get("attempt", int(number)),
                "status": stored.get("status"), "ms": stored.get("ms"), "error": stored.get("error"),
                "answer": stored.get("answer", "")}))
        else:
            fields[key] = (unpack_payload(value) if key == "payload" else value).decode()
    if payload is not None:
        fields["payload"] = unpack_payload(payload).decode()
    return fields, [entry for _, entry in sorted(attempts, key=lambda item: item[0])]


async def read_deliveries(redis: Any, webhook_ids: list[str]) -> list[tuple[dict[str, str], list[dict[str, Any]]]]:
    """Webhooks' records and payloads (`split_delivery` each), in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for webhook_id in webhook_ids:
            pipe.hgetall(delivery_key(webhook_id))
            pipe.get(payload_key(webhook_id))
        answers = await pipe.execute()
    return [split_delivery(raw, payload) for raw, payload in zip(answers[::2], answers[1::2], strict=True)]


async def read_delivery(redis: Any, webhook_id: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """A webhook's record and payload (`split_delivery`), in one round trip."""
    (delivery,) = await read_deliveries(redis, [webhook_id])
    return delivery


def endpoint_disabled_key(source: str) -> str:
    """Set when the endpoint answered 410 Gone; `bridge endpoints enable` deletes it. No TTL: WITHOUT_TTL."""
    return f"{PREFIX}endpoint-disabled:{source}"


# Sorted sets of webhook ids; members older than record_retention_s (their records are gone) are pruned by the
# event-log trim cron (bridge/eventlog/retention.py).
DEAD_LETTERS = f"{PREFIX}dead"                          # sorted set: webhook id → time it died
FAILED_DELIVERIES = f"{PREFIX}failing"                  # sorted set: webhook id → time of last failure

# Metrics (bridge/metrics.py): every process adds to these; GET /metrics on web renders them.
# Hash fields are JSON arrays of label values; counters never expire (Prometheus counters are monotonic),
# and each hash has as many fields as its labels have combinations (configured sources, job functions, ...).
METRICS_EVENTS = f"{PREFIX}metrics:events"              # hash [source, outcome] → events
METRICS_REJECTED = f"{PREFIX}metrics:rejected"          # hash [source, reason] → refused requests
METRICS_JOBS = f"{PREFIX}metrics:jobs"                  # hash [function, status] → job runs
METRICS_JOB_BUCKETS = f"{PREFIX}metrics:job-seconds"    # hash [function, le] → runs in that bucket only
METRICS_JOB_SUM = f"{PREFIX}metrics:job-seconds-sum"    # hash [function] → total seconds (float)
METRICS_ATTEMPTS = f"{PREFIX}metrics:webhook-attempts"  # hash [status] → outbound delivery attempts
ACTIVE_RECORDINGS = f"{PREFIX}recordings:active"        # sorted set: recording id → time it started (until it ends)
METRICS_MOODLE_WS = f"{PREFIX}metrics:moodle-ws"        # hash [source, function, outcome] → web-service calls


# What became of a recording that is not in storage (failed, never uploaded, deleted) stays a term, as
# the attendance ledger of its lesson does.
RECORDING_TTL_S = 90 * 24 * 3600


def recording_key(recording_id: str) -> str:
    """Hash: lesson, status, owner, job_id, push_url, source_url, recorded_s, part, updated_at; once
    finalized file, sha256, bytes, duration_s; once in storage stored_at, stored_key, content_type,
    lesson_id, provider; deleted_by (the ref of the deletion that sends recording.deleted).
    Lives RECORDING_TTL_S from its last write, except while its file is in storage (status `stored`:
    no TTL, until [storage] retention_days or recording.delete removes the file)."""
    return f"{PREFIX}recording:{recording_id}"


def recording_lease_key(recording_id: str) -> str:
    """Held (short TTL, refreshed) by the recorder process supervising the recording."""
    return f"{PREFIX}recording-lease:{recording_id}"


def recording_stop_key(recording_id: str) -> str:
    """Set by `recording.stop` from any process; the supervising recorder polls it. Lives 7 days."""
    return f"{PREFIX}recording-stop:{recording_id}"


STORED_RECORDINGS = f"{PREFIX}recordings:stored"        # sorted set: recording id → time it was stored (until deleted)
# The random key that signs `local` storage's download links when [storage] link_secret is unset: made
# once (SET NX) by whichever process needs it first, so web and recorder sign and check alike.
STORAGE_LINK_SECRET = f"{PREFIX}storage:link-secret"



def health_check_key(queue: str) -> str:
    """arq refreshes `<queue>:health-check` every health_check_interval with a short TTL."""
    return f"{queue}:health-check"


def key_family(key: str) -> str:
    """The family a key belongs to in footprint reports: its first two `:` parts (lb:delivery, arq:job)."""
    return ":".join(key.split(":")[:2])


# The key families kept without a TTL (glob patterns), each with what bounds it instead. Every other key
# expires; tests/test_key_lifetimes.py fails on a key without a TTL outside these.
WITHOUT_TTL: dict[str, str] = {
    EVENT_LOG: "trimmed every 15 min to event_retention_s (30 days) and event_retention_max (1,000,000) "
               "entries (bridge/eventlog/retention.py)",
    WORKER_QUEUE: "arq's queue: a job id per queued job, removed when the job runs (its job key expires)",
    RECORDER_QUEUE: "arq's recorder queue, as arq:queue",
    f"{PREFIX}metrics:*": "Prometheus counters, monotonic: one hash per metric, a field per label combination "
                          "(configured sources, job functions, statuses): a few KB in all",
    DEAD_LETTERS: "members older than record_retention_s (whose records have expired) pruned by the trim cron",
    FAILED_DELIVERIES: "members older than record_retention_s pruned by the trim cron; a delivered one leaves at once",
    endpoint_disabled_key("*"): "one per configured source, until an operator runs `bridge endpoints enable`",
    teachers_key("*", "*"): "mirrors Moodle's role assignments (members leave with role_unassigned): a set "
                            "per course with teachers; an expiry would quietly demote a teacher to student",
    moodle_courses_key("*"): "one per Moodle source, a member per course its events came from: bounded by "
                             "the LMS's course catalogue (~30 B a course)",
    moodle_course_lessons_key("*", "*"): "one per Moodle course; reconciliation removes a lesson whose state "
                                         "has expired and that Moodle no longer lists",
    recording_key("*"): "while its file is in storage (status stored), as long as the file: until [storage] "
                        "retention_days or recording.delete removes it, then RECORDING_TTL_S",
    ACTIVE_RECORDINGS: "a member per recording running or uploading now, removed when it ends",
    STORED_RECORDINGS: "a member per recording in storage, removed when retention or recording.delete deletes it",
    STORAGE_LINK_SECRET: "one key: the deploy's secret for local storage links; it must outlive every link",
}


# Writes one arq job as arq's own enqueue_job does, skipping an id that is already queued (SET NX:
# one command). arq's enqueue also skips an id that has a result; event jobs keep none (their outcome
# is in the runs hash), so the job key alone says whether one is queued. Shared by the accept and
# replay scripts. Job (and dedupe) keys are built inside the scripts from ids rather than passed as
# KEYS: fewer arguments per event is most of the accept call's client cost, and arq, like this
# bridge, runs on one Redis, never a cluster.
ENQUEUE_JOB_LUA = f"""
local function enqueue_job(job_id, queue, payload, score, expires_ms)
  if redis.call('SET', '{job_key_prefix}' .. job_id, payload, 'NX', 'PX', expires_ms) then
    redis.call('ZADD', queue, score, job_id)
  end
end
"""

# The shebang makes Redis 7+ refuse the whole script up front when out of memory, instead of
# failing at a write half way through (scripts are not rolled back).
ACCEPT_SCRIPT = "#!lua" + ENQUEUE_JOB_LUA + f"""
-- KEYS: [1] event log
-- ARGV: [1] dedupe ttl ms, [2] now ms (each job's score is in meta), [3] job expiry ms, [4] event count;
--       per event: meta JSON [id, source, received_at, jobs json, job id, queue, score, ...], raw,
--       canonical, one arq payload per job, then the number of ledger writes and 7 values per write
--       (hash, field, value, sessions zset, session id, its score, ttl s): LedgerWrite
-- Returns per event: log entry id, 1 if new / 0 if a duplicate (the id is then the original's).
local ttl, expires = ARGV[1], ARGV[3]
local a = 5
local out = {{}}
for _ = 1, tonumber(ARGV[4]) do
  local meta = cjson.decode(ARGV[a])
  local njobs = (#meta - 4) / 3
  local w = a + 3 + njobs
  local nwrites = tonumber(ARGV[w])
  local seen = '{SEEN_PREFIX}' .. meta[2] .. ':' .. meta[1]
  -- Appended first and taken back for a duplicate: a new event (nearly all of them) costs the
  -- append and one SET NX, not a GET before them.
  local entry = redis.call('XADD', KEYS[1], '*', 'id', meta[1], 'source', meta[2],
    'received_at', meta[3], 'raw', ARGV[a + 1], 'canonical', ARGV[a + 2], 'jobs', meta[4])
  if not redis.call('SET', seen, entry, 'NX', 'PX', ttl) then
    redis.call('XDEL', KEYS[1], entry)
    out[#out + 1] = redis.call('GET', seen)
    out[#out + 1] = 0
  else
    for j = 1, njobs do
      enqueue_job(meta[2 + 3 * j], meta[3 + 3 * j], ARGV[a + 2 + j], meta[4 + 3 * j], expires)
    end
    for k = 0, nwrites - 1 do
      local b = w + 1 + 7 * k
      redis.call('HSETNX', ARGV[b], ARGV[b + 1], ARGV[b + 2])
      redis.call('EXPIRE', ARGV[b], ARGV[b + 6])
      redis.call('ZADD', ARGV[b + 3], 'NX', ARGV[b + 5], ARGV[b + 4])
      redis.call('EXPIRE', ARGV[b + 3], ARGV[b + 6])
    end
    out[#out + 1] = entry
    out[#out + 1] = 1
  end
  a = w + 1 + 7 * nwrites
end
return out
"""

# A job that must not wait behind the queue (an attendance report whose ledger is already complete)
# is scored this much earlier than now; arq takes the lowest score first and reads 0 as "no job".
JUMP_AHEAD_MS = 10 * 60 * 1000


class JobSpec(NamedTuple):   # a NamedTuple: built several times per request on the accept path
    queue: str
    function: str
    job_id: str
    envelope: dict[str, Any]
    ahead: bool = False      # ahead of the queue (JUMP_AHEAD_MS)


class LedgerWrite(NamedTuple):
    """One entry of a hash kept with a sorted-set index of the hashes (the attendance ledger), written in
    the same accept call as the event it comes from, so the two are stored together or not at all."""

    key: str
    field: str
    value: str
    index_key: str
    index_member: str
    index_score: int
    ttl_s: int


class EventRecord(NamedTuple):
    source: str
    event_id: str
    received_at: str
    raw: dict[str, Any]
    canonical: dict[str, Any]
    jobs: list[JobSpec]
    ledger: tuple[LedgerWrite, ...] = ()


def serialize_arq(obj: Any) -> bytes:
    """arq's job and result serializer in every process: JSON rather than arq's default pickle, so a
    worker never unpickles what it reads from Redis, and the accept path pays a third of the cost.
    A result that isn't JSON (the exception of a failed run) is kept as its repr."""
    return orjson.dumps(obj, default=repr)


deserialize_arq = orjson.loads


def arq_payload(function: str, args: tuple[Any, ...], enqueue_time_ms: int) -> bytes:
    """The bytes arq's own enqueue_job would store for function(*args)."""
    return serialize_arq({"t": None, "f": function, "a": args, "k": {}, "et": enqueue_time_ms})


def accept_call(events: list[EventRecord], dedupe_ttl_ms: int, now_ms: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for ACCEPT_SCRIPT."""
    args: list[Any] = [dedupe_ttl_ms, now_ms, JOB_EXPIRES_MS, len(events)]
    for record in events:
        meta: list[str] = [record.event_id, record.source, record.received_at,
                           orjson.dumps([job.job_id for job in record.jobs]).decode()]
        for job in record.jobs:
            meta += [job.job_id, job.queue, str(now_ms - JUMP_AHEAD_MS if job.ahead else now_ms)]
        args += [orjson.dumps(meta), orjson.dumps(record.raw), orjson.dumps(record.canonical)]
        args += [arq_payload(job.function, (job.envelope,), now_ms) for job in record.jobs]
        args.append(len(record.ledger))
        for write in record.ledger:
            args += write
    return [EVENT_LOG], args


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


# CLIENT LIST shows whose connections these are.
WEB_CLIENT_NAME = "lesson-bridge-web"
WORKER_CLIENT_NAME = "lesson-bridge-worker"
TOOL_CLIENT_NAME = "lesson-bridge-cli"


class _ResetIsConnectionError:
    """uvloop raises RuntimeError ("the handler is closed", MagicStack/uvloop#506) for a write on a
    connection the peer reset, which redis-py lets through as itself: web answered 500, a worker's
    poll loop died. As an OSError it becomes redis-py's ConnectionError, like any other reset."""

    async def _send_packed_command(self, command: Any) -> None:
        try:
            await super()._send_packed_command(command)  # type: ignore[misc]
        except RuntimeError as exc:
            raise ConnectionResetError(str(exc)) from exc


class _Connection(_ResetIsConnectionError, aioredis.Connection):
    pass


class _SSLConnection(_ResetIsConnectionError, aioredis.SSLConnection):
    pass


class _UnixConnection(_ResetIsConnectionError, aioredis.UnixDomainSocketConnection):
    pass


def _pool_options(url: str) -> dict[str, Any]:
    """What a connection pool is built from: the URL's options, and our connection class for its scheme
    (from_url would put redis-py's own back: the URL's options win over keyword arguments)."""
    options = parse_url(_without_query_option(url, "ssl_cert_reqs"))
    scheme = urlparse(url).scheme
    options["connection_class"] = {"rediss": _SSLConnection, "unix": _UnixConnection}.get(scheme, _Connection)
    return {**options, **_tls_options(url)}


class _ConnectOutsideLockPool(aioredis.ConnectionPool):
    """redis-py 5's pool connects a new connection while holding its pool-wide lock (redis/redis-py#3842,
    fixed after the 5.x line arq needs): against a server that accepts and never answers (paused,
    half-open), every request queued behind one 5-second connect, and web answered its 503s after
    tens of seconds. As the blocking pool already does, take a connection under the lock and
    connect it outside."""

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        async with self._lock:
            connection = self.get_available_connection()
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection


def redis_client(url: str, client_name: str = TOOL_CLIENT_NAME) -> aioredis.Redis:
    """A client that fails fast: intake answers 503 rather than hanging when Redis is away."""
    pool = _ConnectOutsideLockPool(socket_connect_timeout=2, socket_timeout=5, retry_on_timeout=False,
                                   max_connections=200, client_name=client_name, **_pool_options(url))
    return aioredis.Redis.from_pool(pool)
POOL_WAIT_S = 20
# A server that accepts and never answers (paused, half-open after a failover) must fail a command,
# not hang the worker; no command of ours legitimately takes seconds.
WORKER_SOCKET_TIMEOUT_S = 5


def worker_redis(url: str, max_connections: int, queue: str) -> ArqRedis:
    """The arq client of a worker process, with at most `max_connections` connections.

    arq's own pool fails a command outright when it is out of connections; this one makes it wait
    for a free one, so a worker running many jobs stays inside a small Redis plan's client limit.
    """
    pool = aioredis.BlockingConnectionPool(
        max_connections=max_connections, timeout=POOL_WAIT_S, socket_connect_timeout=5,
        socket_timeout=WORKER_SOCKET_TIMEOUT_S,
        client_name=WORKER_CLIENT_NAME, **_pool_options(url))
    return ArqRedis(pool, job_serializer=serialize_arq, job_deserializer=deserialize_arq, default_queue_name=queue)
