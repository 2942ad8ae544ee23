"""Prometheus metrics kept in Redis, so that every process counts and the web process shows it all.

On a PaaS the web, worker and recorder processes are separate dynos and Prometheus scrapes only the
web one (through the router, reaching any one of its processes). So nothing is kept per process:
counters and histogram buckets are Redis hashes (keys in bridge/store.py) that every process adds to
with HINCRBY / HINCRBYFLOAT, gauges are read from the data they describe (ZCARD of the dead-letter
set, of the queues, of the active-recordings set), and `GET /metrics` renders one consistent view
with the standard `prometheus_client` library.

The intake path stays at one Redis round trip per group of requests: the web process counts
accepted / duplicate / ignored / rejected events in memory and `IntakeMetrics` flushes the sums to
Redis at most once a second (and on shutdown); each worker process does the same with its job runs
and delivery attempts (`BufferedCounts`).

Writing a metric is best effort: a Redis error is logged and swallowed, never failing a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Self

import structlog
from arq.constants import in_progress_key_prefix
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from bridge.errors import error_response
from bridge.store import (
    ACTIVE_RECORDINGS,
    DEAD_LETTERS,
    FAILED_DELIVERIES,
    JUMP_AHEAD_MS,
    METRICS_ATTEMPTS,
    METRICS_EVENTS,
    METRICS_JOB_BUCKETS,
    METRICS_JOB_SUM,
    METRICS_JOBS,
    METRICS_MOODLE_WS,
    METRICS_REJECTED,
    RECORDER_QUEUE,
    WORKER_QUEUE,
)

log = structlog.get_logger("bridge.metrics")

# Job durations: short provider calls up to recording supervision jobs that last hours.
JOB_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                                  900, 3600, 4 * 3600, 12 * 3600)
FLUSH_INTERVAL_S = 1.0
UNKNOWN_SOURCE = "_unknown"       # the label for requests naming no configured source (bounded cardinality)
QUEUES = {"worker": WORKER_QUEUE, "recorder": RECORDER_QUEUE}
RUNNING_SCAN = 1000               # due jobs looked at for one not running: 16 recorders' 60 slots, and more

# arq's own protocol (the recorder queue) keeps a running job in its queue, due, with an in-progress key;
# the worker queue's LeanWorker moves a running job's score past now (its lease), so there the first due
# job is a waiting one. For each queue (KEYS), the score of the first due job that no process runs, ''
# when every due job runs; past RUNNING_SCAN running ones, the last one's score (the waiting job is no older).
OLDEST_WAITING_SCRIPT = """#!lua flags=no-writes
local now, prefix, scan = ARGV[1], ARGV[2], tonumber(ARGV[3])
local found = {}
for q, queue in ipairs(KEYS) do
  local offset, last = 0, ''
  found[q] = ''
  while offset < scan do
    local batch = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'WITHSCORES', 'LIMIT', offset, 100)
    for i = 1, #batch, 2 do
      if redis.call('EXISTS', prefix .. batch[i]) == 0 then found[q] = batch[i + 1] break end
      last = batch[i + 1]
    end
    if found[q] ~= '' or #batch < 200 then break end
    offset = offset + 100
  end
  if found[q] == '' and offset >= scan then found[q] = last end
end
return found
"""


def _field(*labels: str) -> str:
    return json.dumps(labels, separators=(",", ":"))


def _labels(field: bytes | str) -> list[str]:
    try:
        values = json.loads(field)
    except ValueError:
        return []
    return [str(v) for v in values] if isinstance(values, list) else []


def _bucket_label(seconds: float) -> str:
    for bound in JOB_BUCKETS:
        if seconds <= bound:
            return _le(bound)
    return "+Inf"


def _le(bound: float) -> str:
    return repr(float(bound))


def attempt_label(status: int | None, error: str | None) -> str:
    """An outbound attempt's status label: the HTTP status, else timeout / refused / error."""
    if status is not None:
        return str(status)
    if error and error.startswith("refused"):
        return "refused"
    if error and "Timeout" in error:
        return "timeout"
    return "error"


# ---------------------------------------------------------------------------- writers (any process)


async def _best_effort(what: str, pipe: Any) -> None:
    try:
        await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("metrics.write_failed", metric=what, error=type(exc).__name__)


async def moodle_ws_call(redis: Any, source: str, function: str, outcome: str) -> None:
    """bridge_moodle_ws_calls_total{source,function,outcome}: outcome ok, error, access_denied or unreachable."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hincrby(METRICS_MOODLE_WS, _field(source, function, outcome), 1)
        await _best_effort("moodle_ws", pipe)


async def recording_started(redis: Any, recording_id: str) -> None:
    """bridge_recordings_active counts members of a set, so a job that runs twice counts once."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(ACTIVE_RECORDINGS, {recording_id: time.time()})
        await _best_effort("recordings", pipe)


async def recording_finished(redis: Any, recording_id: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(ACTIVE_RECORDINGS, recording_id)
        await _best_effort("recordings", pipe)


# ---------------------------------------------------------------------------- the web process's buffer


class BufferedCounts:
    """Counter and histogram increments summed in this process and added to Redis at most every
    FLUSH_INTERVAL_S in one pipelined call (and on shutdown), so counting costs no Redis command per
    request or job. A failed flush keeps the sums for the next.
    """

    def __init__(self, redis: Any = None, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.redis, self.interval_s = redis, interval_s
        self.sums: Counter[tuple[str, str]] = Counter()     # (hash, field) → increment; a float sums by float
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def add(self, key: str, field: str, amount: float = 1) -> None:
        self.sums[(key, field)] += amount

    def add_job_run(self, function: str, status: str, seconds: float) -> None:
        """bridge_jobs_total{function,status} and bridge_job_duration_seconds{function}."""
        self.add(METRICS_JOBS, _field(function, status))
        self.add(METRICS_JOB_BUCKETS, _field(function, _bucket_label(seconds)))
        self.add(METRICS_JOB_SUM, _field(function), seconds)

    def add_attempt(self, status: int | None, error: str | None = None) -> None:
        """bridge_webhook_attempts_total{status}: one outbound delivery attempt."""
        self.add(METRICS_ATTEMPTS, _field(attempt_label(status, error)))

    async def flush(self) -> None:
        async with self._lock:
            sums = self.sums
            if not sums:
                return
            self.sums = Counter()
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for (key, field), amount in sums.items():
                        if isinstance(amount, float):
                            pipe.hincrbyfloat(key, field, amount)
                        else:
                            pipe.hincrby(key, field, amount)
                    await pipe.execute()
            except BaseException:
                self.sums.update(sums)       # keep them for the next flush
                raise

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                log.warning("metrics.flush_failed", error=type(exc).__name__)

    def start(self) -> Self:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self, timeout_s: float = 2.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            async with asyncio.timeout(timeout_s):
                await self.flush()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("metrics.final_flush_failed", error=type(exc).__name__)


class IntakeMetrics(BufferedCounts):
    """The web process's intake outcomes: plain dict updates on the request path."""

    def __init__(self, redis: Any, sources: Iterable[str], interval_s: float = FLUSH_INTERVAL_S) -> None:
        super().__init__(redis, interval_s)
        self.sources = frozenset(sources)

    def label(self, source: str) -> str:
        return source if source in self.sources else UNKNOWN_SOURCE

    def intake(self, source: str, outcome: Any) -> None:
        for name, ids in (("accepted", outcome.accepted), ("duplicate", outcome.duplicates),
                          ("ignored", outcome.ignored)):
            if ids:
                self.add(METRICS_EVENTS, _field(source, name), len(ids))

    def rejected(self, source: str, reason: str) -> None:
        self.add(METRICS_REJECTED, _field(self.label(source), reason))


# ---------------------------------------------------------------------------- rendering (web)


class Snapshot:
    """Everything /metrics shows, read from Redis in one pipelined round trip."""

    def __init__(self, values: list[Any], now_ms: int) -> None:
        (self.events, self.rejected, self.jobs, self.job_buckets, self.job_sums, self.attempts, self.moodle_ws,
         self.dead, self.failing, self.recordings, *queues) = values
        count = len(QUEUES)
        self.queue_depth = dict(zip(QUEUES, queues[:count], strict=True))
        self.queue_due = dict(zip(QUEUES, queues[count:2 * count], strict=True))
        # The oldest waiting job's score is when it could first run: how long it has waited for a worker.
        self.queue_oldest_s = {queue: max(0.0, (now_ms - float(oldest)) / 1000) if oldest else 0.0
                               for queue, oldest in zip(QUEUES, queues[2 * count], strict=True)}

    @classmethod
    async def read(cls, redis: Any) -> Snapshot:
        now_ms = int(time.time() * 1000)
        async with redis.pipeline(transaction=False) as pipe:
            for key in (METRICS_EVENTS, METRICS_REJECTED, METRICS_JOBS, METRICS_JOB_BUCKETS, METRICS_JOB_SUM,
                        METRICS_ATTEMPTS, METRICS_MOODLE_WS):
                pipe.hgetall(key)
            for key in (DEAD_LETTERS, FAILED_DELIVERIES, ACTIVE_RECORDINGS, *QUEUES.values()):
                pipe.zcard(key)
            for key in QUEUES.values():
                pipe.zcount(key, "-inf", now_ms)     # arq scores a job by the time it may run
            pipe.eval(OLDEST_WAITING_SCRIPT, len(QUEUES), *QUEUES.values(), now_ms, in_progress_key_prefix,
                      RUNNING_SCAN)
            return cls(await pipe.execute(), now_ms)


def _counter(name: str, doc: str, labels: list[str], values: Mapping[bytes, bytes]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for field, value in sorted(values.items()):
        label_values = _labels(field)
        if len(label_values) == len(labels):
            family.add_metric(label_values, float(value))
    return family


def _histogram(snapshot: Snapshot) -> HistogramMetricFamily:
    family = HistogramMetricFamily("bridge_job_duration_seconds", "How long job runs took, by job function.",
                                   labels=["function"])
    per_function: dict[str, dict[str, float]] = {}
    for field, value in snapshot.job_buckets.items():
        labels = _labels(field)
        if len(labels) == 2:
            per_function.setdefault(labels[0], {})[labels[1]] = float(value)
    sums = {(_labels(f) or [""])[0]: float(v) for f, v in snapshot.job_sums.items()}
    for function in sorted(per_function):
        counts = per_function[function]
        cumulative, buckets = 0.0, []
        for bound in (*JOB_BUCKETS, math.inf):
            label = "+Inf" if bound == math.inf else _le(bound)
            cumulative += counts.get(label, 0.0)
            buckets.append((label, cumulative))
        family.add_metric([function], buckets, sum_value=sums.get(function, 0.0))
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class SnapshotCollector:
    """A prometheus_client collector yielding the families of one Snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        yield _counter("bridge_events", "Inbound events by source and outcome (accepted, duplicate, ignored).",
                       ["source", "outcome"], s.events)
        yield _counter("bridge_events_rejected", "Inbound requests refused, by source and error code.",
                       ["source", "reason"], s.rejected)
        yield _counter("bridge_jobs", "Job runs by function and status (ok, failed, retrying; delivery outcomes).",
                       ["function", "status"], s.jobs)
        yield _histogram(s)
        yield _counter("bridge_webhook_attempts", "Outbound webhook attempts by HTTP status "
                       "(or timeout, error, refused).", ["status"], s.attempts)
        yield _counter("bridge_moodle_ws_calls", "Moodle web-service calls by source, function and outcome "
                       "(ok, error, access_denied: the token is refused, unreachable).",
                       ["source", "function", "outcome"], s.moodle_ws)
        yield _gauge("bridge_dead_letters", "Webhook deliveries that exhausted their retries.", s.dead)
        yield _gauge("bridge_failing_deliveries", "Webhook deliveries whose last attempt failed.", s.failing)
        yield _gauge("bridge_recordings_active", "Recordings in progress.", s.recordings)
        depth = GaugeMetricFamily("bridge_queue_depth", "Jobs in a queue, including deferred retries.",
                                  labels=["queue"])
        due = GaugeMetricFamily("bridge_queue_due", "Jobs due now: waiting, or running in the recorder queue "
                                "(the worker queue leases a running job past now; retries not yet due excluded); "
                                "a value that keeps growing means add processes of that kind.", labels=["queue"])
        oldest = GaugeMetricFamily("bridge_queue_oldest_due_seconds", "How long the oldest job due now that no "
                                   "worker has taken yet has waited (0 when none waits; running jobs are left "
                                   "out); seconds that keep growing during a storm mean add worker processes. An "
                                   f"attendance report queued ahead of the queue counts {JUMP_AHEAD_MS // 1000} s "
                                   "older than it is.", labels=["queue"])
        for queue in QUEUES:
            depth.add_metric([queue], s.queue_depth[queue])
            due.add_metric([queue], s.queue_due[queue])
            oldest.add_metric([queue], s.queue_oldest_s[queue])
        yield depth
        yield due
        yield oldest


def render(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))  # type: ignore[arg-type]
    return generate_latest(registry)


async def endpoint(request: Request) -> Response:
    """GET /metrics on the web process."""
    state = request.app.state.bridge
    redis = state["redis"]
    try:
        buffered: IntakeMetrics | None = state.get("metrics")
        if buffered is not None:
            await buffered.flush()           # this process's last second, so a scrape is current
        snapshot = await Snapshot.read(redis)
    except (RedisError, OSError) as exc:
        return error_response(503, "store_unavailable", f"Redis is unreachable ({type(exc).__name__})",
                              headers={"Retry-After": "5"})
    return Response(render(snapshot), media_type=CONTENT_TYPE_PLAIN_0_0_4)
