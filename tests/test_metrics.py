"""GET /metrics: counters move when events flow through the real web app, a real worker and a receiver."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from arq.constants import in_progress_key_prefix
from prometheus_client.parser import text_string_to_metric_families

from bridge import metrics
from bridge.processes import free_port
from bridge.store import METRICS_EVENTS, METRICS_REJECTED, RECORDER_QUEUE
from tests.conftest import MOODLE_TOKEN, WEBHOOK_SECRET, wait_until, write_config
from tests.test_intake import EVENT, moodle_fixture


async def scrape(client: httpx.AsyncClient, base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample as {(name, labels): value}."""
    answer = await client.get(f"{base_url}/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_move_when_events_flow(make_bridge, client, redis, receiver, tmp_path) -> None:
    hook, hook_url = receiver
    # `default` delivers to the receiver; `moodle` to a port where nothing listens, so its deliveries die
    # after one retry (retry_schedule = [0.1]).
    config = write_config(tmp_path / "bridge.toml", f"""
[providers.sandbox]
kind = "sandbox"
[sources.default]
format = "canonical"
webhook_url = "{hook_url}"
webhook_secret = "{WEBHOOK_SECRET}"
allow_private_network = true
[sources.moodle]
format = "moodle"
token = "{MOODLE_TOKEN}"
webhook_url = "http://127.0.0.1:{free_port()}/hook"
webhook_secret = "{WEBHOOK_SECRET}"
allow_private_network = true
[webhooks]
retry_schedule = [0.1]
timeout_s = 2
""")
    bridge = make_bridge(config)
    events_url = f"{bridge.base_url}/v1/events"
    users = [{**EVENT, "id": f"evt_m{n}", "user": {"id": str(n), "name": f"User {n}"}} for n in range(3)]
    assert (await client.post(f"{events_url}/default", json=users)).status_code == 202
    assert (await client.post(f"{events_url}/default", json=users[0])).status_code == 200      # duplicate
    assert (await client.post(f"{events_url}/moodle", json=moodle_fixture("user_loggedin"))).status_code == 202
    assert (await client.post(f"{events_url}/moodle", json={**moodle_fixture("user_loggedin"),
                                                            "token": "wrong"})).status_code == 401
    for name in ("nope", "other-nope"):     # unknown sources share one label: no unbounded cardinality
        assert (await client.post(f"{events_url}/{name}", json=EVENT)).status_code == 404
    assert (await client.post(f"{events_url}/default", content=b"{not json",
                                headers={"content-type": "application/json"})).status_code == 400

    await asyncio.sleep(0.3)                               # the queued jobs age while no worker runs
    before = await scrape(client, bridge.base_url)        # nothing has run yet: the queue holds the jobs
    assert value(before, "bridge_events_total", source="default", outcome="accepted") == 3
    assert value(before, "bridge_events_total", source="default", outcome="duplicate") == 1
    assert value(before, "bridge_events_total", source="moodle", outcome="ignored") == 1
    assert value(before, "bridge_events_rejected_total", source="moodle", reason="bad_token") == 1
    assert value(before, "bridge_events_rejected_total", source="_unknown", reason="unknown_source") == 2
    assert value(before, "bridge_events_rejected_total", source="default", reason="invalid_json") == 1
    assert value(before, "bridge_queue_depth", queue="worker") == 3
    assert value(before, "bridge_queue_due", queue="worker") == 3
    assert 0.3 <= value(before, "bridge_queue_oldest_due_seconds", queue="worker") < 30
    assert value(before, "bridge_jobs_total", function="user_joined", status="ok") == 0

    assert (await client.post(f"{events_url}/moodle",
                              json=moodle_fixture("bigbluebuttonbn_meeting_joined"))).status_code == 202
    hook.answer_next(500)         # the receiver fails one attempt: retried by a deliver_webhook job
    bridge.start_worker()

    async def settled() -> dict[Any, float] | None:
        samples = await scrape(client, bridge.base_url)
        done = (value(samples, "bridge_jobs_total", function="user_joined", status="ok") == 4
                and value(samples, "bridge_queue_depth", queue="worker") == 0
                and value(samples, "bridge_dead_letters") > 0
                and value(samples, "bridge_jobs_total", function="deliver_webhook", status="delivered") == 1)
        return samples if done else None

    after = await wait_until(settled, timeout=30, interval=0.1)
    assert value(after, "bridge_job_duration_seconds_count", function="user_joined") == 4
    assert value(after, "bridge_queue_oldest_due_seconds", queue="worker") == 0
    assert value(after, "bridge_job_duration_seconds_bucket", function="user_joined", le="+Inf") == 4
    assert 0 < value(after, "bridge_job_duration_seconds_sum", function="user_joined") < 30
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in after.items()
                     if name == "bridge_job_duration_seconds_bucket" and dict(labels)["function"] == "user_joined")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)            # cumulative
    assert len(hook.of_type("join.ready")) == 3
    assert value(after, "bridge_webhook_attempts_total", status="500") == 1
    assert value(after, "bridge_webhook_attempts_total", status="200") == len(hook.delivered)
    dead = value(after, "bridge_dead_letters")                 # every delivery the Moodle event produced
    assert value(after, "bridge_webhook_attempts_total", status="error") == 2 * dead     # connection refused
    assert value(after, "bridge_jobs_total", function="deliver_webhook", status="dead") == dead
    assert value(after, "bridge_job_duration_seconds_count", function="deliver_webhook") == dead + 1
    # Counters never go backwards: the intake counts are still there.
    assert value(after, "bridge_events_total", source="default", outcome="accepted") == 3

    # Active recordings: what the recording engine calls when an FFmpeg process starts and ends.
    await metrics.recording_started(redis, "rec-1")
    await metrics.recording_started(redis, "rec-1")            # a job that runs twice counts once
    await metrics.recording_started(redis, "rec-2")
    assert value(await scrape(client, bridge.base_url), "bridge_recordings_active") == 2
    await metrics.recording_finished(redis, "rec-1")
    assert value(await scrape(client, bridge.base_url), "bridge_recordings_active") == 1


async def test_the_oldest_waiting_job_is_found_past_many_running_ones(redis, monkeypatch) -> None:
    """arq's own protocol (the recorder queue) keeps a running job in its queue, due. With hundreds running at
    its head, the age is the first waiting job's, looked for 100 at a time; past RUNNING_SCAN running ones,
    the last one's age, which is no less."""
    seeded = time.time()
    now_ms = int(seeded * 1000)
    await redis.zadd(RECORDER_QUEUE, {f"job-{n}": now_ms - 60_000 + n * 100 for n in range(250)})   # 60 s, 59.9 s...
    await redis.zadd(RECORDER_QUEUE, {"deferred": now_ms + 60_000})                                   # not due

    async def running(jobs: range) -> None:                 # what arq marks a job a process has taken with
        async with redis.pipeline(transaction=False) as pipe:
            for n in jobs:
                pipe.set(in_progress_key_prefix + f"job-{n}", "1")
            await pipe.execute()

    async def oldest_s(age_then: float) -> float:
        """The age read less `age_then` and less how much older the job had grown when the read began (it
        reads the clock after that): 0 up to the read's own duration."""
        began = time.time()
        return (await metrics.Snapshot.read(redis)).queue_oldest_s["recorder"] - (began - seeded) - age_then

    await running(range(150))
    snapshot = await metrics.Snapshot.read(redis)
    assert (snapshot.queue_depth["recorder"], snapshot.queue_due["recorder"]) == (251, 250)
    assert -0.01 < await oldest_s(45.0) < 1                                                  # job-150's age

    await running(range(150, 250))
    assert (await metrics.Snapshot.read(redis)).queue_oldest_s["recorder"] == 0                   # none waits

    monkeypatch.setattr(metrics, "RUNNING_SCAN", 200)
    await redis.delete(*(in_progress_key_prefix + f"job-{n}" for n in range(200, 250)))
    assert -0.01 < await oldest_s(40.1) < 1                                          # job-199's, for job-200


async def test_intake_counts_reach_redis_within_a_second_without_a_scrape(make_bridge, client, redis) -> None:
    """The accept path makes no metrics call of its own: a background task flushes about once a second."""
    bridge = make_bridge()
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=EVENT)).status_code == 202
    joined = moodle_fixture("bigbluebuttonbn_meeting_joined")
    assert (await client.post(f"{bridge.base_url}/v1/events/moodle",
                              json={**joined, "token": MOODLE_TOKEN + "x"})).status_code == 401
    counts = await wait_until(lambda: redis.hgetall(METRICS_EVENTS), timeout=3, interval=0.05)
    assert {tuple(json.loads(k)): int(v) for k, v in counts.items()} == {("default", "accepted"): 1}
    rejected = await redis.hgetall(METRICS_REJECTED)
    assert {tuple(json.loads(k)): int(v) for k, v in rejected.items()} == {("moodle", "bad_token"): 1}


async def test_a_failed_flush_keeps_the_counts_for_the_next(redis_server, redis) -> None:
    from bridge.intake import Outcome
    from bridge.processes import free_port
    from bridge.store import redis_client

    away = redis_client(f"redis://127.0.0.1:{free_port()}/0")        # nothing listens there
    buffer = metrics.IntakeMetrics(away, ["default"])
    buffer.intake("default", Outcome(accepted=["a", "b"], duplicates=["c"]))
    buffer.rejected("default", "invalid_json")
    with pytest.raises(Exception):  # noqa: B017 - a connection error of some kind
        await buffer.flush()
    await away.aclose()
    buffer.redis = redis
    buffer.intake("default", Outcome(accepted=["d"]))
    await buffer.flush()
    counts = {tuple(json.loads(k)): int(v) for k, v in (await redis.hgetall(METRICS_EVENTS)).items()}
    assert counts == {("default", "accepted"): 3, ("default", "duplicate"): 1}
    assert {tuple(json.loads(k)): int(v) for k, v in (await redis.hgetall(METRICS_REJECTED)).items()} == {
        ("default", "invalid_json"): 1}


async def test_metrics_answer_503_when_redis_is_away(client) -> None:
    from bridge.app import create_app
    from bridge.config import load_settings
    from tests.fakes.server import serve

    settings = load_settings({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})     # nothing listens there
    with serve(create_app(settings), lifespan=True) as base_url:
        answer = await client.get(f"{base_url}/metrics")
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "store_unavailable"
    assert answer.headers["retry-after"] == "5"
