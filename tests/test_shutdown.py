"""SIGTERM under load loses nothing: platforms send SIGTERM, then SIGKILL 30 s later.

web: a real `bridge serve` process (uvicorn, WEB_CONCURRENCY 1 and 2) takes a steady stream of events
when it is told to stop. Every request that got a 2xx is in the event log and its job completes on a
worker; requests refused with a connection error are fine (the sender retries); the process exits
with code 0 within 25 s, and its last second of intake metrics reaches Redis.

worker: a real `bridge worker` (one process, and a pool of two) running slow jobs (sandbox `delay_s`) while
events keep arriving.
Jobs in flight finish (nothing is cut and re-run), jobs not started stay queued for the next worker,
the process exits with code 0 within 25 s, and every event's webhook is delivered exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections import Counter

import httpx
import pytest
import redis.asyncio as aioredis

from bridge.store import EVENT_LOG, METRICS_EVENTS, job_runs_key
from tests.conftest import default_config, wait_until, worker_ready

STOP_BUDGET_S = 25


def event(event_id: str, user: int) -> dict:
    return {"id": event_id, "type": "user.joined", "lesson": {"id": f"lesson-{user % 7}", "title": "Algebra"},
            "user": {"id": str(user), "name": f"User {user}"}}


async def runs(redis: aioredis.Redis, event_ids: list[str]) -> list[dict]:
    async with redis.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.hget(job_runs_key(f"default:{event_id}"), "user_joined")
        return [json.loads(raw) if raw else {} for raw in await pipe.execute()]


async def all_ok(redis: aioredis.Redis, event_ids: list[str]) -> bool:
    return all(run.get("status") == "ok" for run in await runs(redis, event_ids))


async def stop_within_budget(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(process.wait, STOP_BUDGET_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"still running {STOP_BUDGET_S} s after SIGTERM") from None
    return code, time.monotonic() - started


@pytest.mark.parametrize("web_concurrency", ["1", "2"])
async def test_web_sigterm_under_load_loses_nothing(make_bridge, redis, monkeypatch, web_concurrency) -> None:
    bridge = make_bridge()
    monkeypatch.setenv("WEB_CONCURRENCY", web_concurrency)
    url = f"{bridge.start_web()}/v1/events/default"
    web = bridge.workers[-1]
    answered: list[str] = []                 # event ids that got a 2xx
    statuses: Counter[int | str] = Counter()
    stop = asyncio.Event()

    async def sender(n: int) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            for i in range(100_000):
                if stop.is_set():
                    return
                event_id = f"web-{n}-{i}"
                try:
                    answer = await http.post(url, json=event(event_id, i))
                except httpx.TransportError as exc:          # refused or cut: the sender would retry
                    statuses[type(exc).__name__] += 1
                    await asyncio.sleep(0.02)
                    continue
                statuses[answer.status_code] += 1
                if 200 <= answer.status_code < 300:
                    answered.append(event_id)

    senders = [asyncio.create_task(sender(n)) for n in range(12)]
    # A slow request in flight when SIGTERM lands: ?wait=3 holds it for 3 s (no worker runs its job yet).
    async with httpx.AsyncClient(timeout=30) as http:
        slow = asyncio.create_task(http.post(f"{url}?wait=3", json=event("slow-1", 1)))
        try:
            await wait_until(lambda: len(answered) >= 150, timeout=20, interval=0.02)
            code, took = await stop_within_budget(web)
            slow_answer = await slow
            await asyncio.sleep(0.3)             # senders keep trying against the closed port for a moment
        finally:
            stop.set()
            await asyncio.gather(*senders)
    assert code == 0 and took < STOP_BUDGET_S, (code, took, bridge.logs()[-3000:])
    assert slow_answer.status_code == 202 and slow_answer.json()["accepted"] == ["slow-1"]   # finished, not cut
    answered.append("slow-1")
    assert not [s for s in statuses if isinstance(s, int) and s >= 300], statuses

    logged = {fields[b"id"].decode() for _, fields in await redis.xrange(EVENT_LOG)}
    assert set(answered) <= logged, f"{len(set(answered) - logged)} acknowledged events are not in the log"
    # The intake counters flushed on the way out: every stored event is counted, none twice.
    counted = {tuple(json.loads(k)): int(v) for k, v in (await redis.hgetall(METRICS_EVENTS)).items()}
    assert counted == {("default", "accepted"): len(logged)}

    bridge.start_worker()
    await wait_until(lambda: all_ok(redis, answered), timeout=60, interval=0.2)


@pytest.mark.parametrize("worker_concurrency", ["1", "2"])
async def test_worker_sigterm_under_load_finishes_or_hands_back_every_job(make_bridge, client, redis, receiver,
                                                                          tmp_path, worker_concurrency) -> None:
    hook, hook_url = receiver
    config = default_config(tmp_path, hook_url)
    # Attempts get 10 s, not the tests' usual 2: on a loaded machine the receiver (in this process) can
    # answer a POST after 2 s, and the retry of an attempt it did take would count as a second delivery.
    config.write_text(config.read_text().replace('kind = "sandbox"', 'kind = "sandbox"\ndelay_s = 0.4')
                      .replace("timeout_s = 2", "timeout_s = 10"))
    bridge = make_bridge(config)
    bridge.extra_env["WORKER_CONCURRENCY"] = worker_concurrency     # 2: the parent forwards SIGTERM to both
    first = bridge.start_worker()
    await wait_until(lambda: worker_ready(redis))
    posted: list[str] = []

    async def feed() -> None:            # 150 events, 10 per request, over about 1.5 s
        for batch in range(15):
            events = [event(f"wrk-{batch}-{n}", batch * 10 + n) for n in range(10)]
            answer = await client.post(f"{bridge.base_url}/v1/events/default", json=events)
            assert answer.status_code == 202
            posted.extend(e["id"] for e in events)
            await asyncio.sleep(0.1)

    feeder = asyncio.create_task(feed())
    await wait_until(lambda: _in_progress(redis, 10), timeout=20, interval=0.02)
    code, took = await stop_within_budget(first)
    await feeder
    assert code == 0 and took < STOP_BUDGET_S, (code, took)
    finished_by_first = sum(run.get("status") == "ok" for run in await runs(redis, posted))
    assert 0 < finished_by_first < len(posted)          # stopped mid-stream, with work left over

    bridge.start_worker()
    await wait_until(lambda: all_ok(redis, posted), timeout=60, interval=0.2)
    assert all(run["try"] == 1 for run in await runs(redis, posted))   # drained, never cut and re-run
    await wait_until(lambda: len(hook.of_type("join.ready")) >= len(posted), timeout=30)
    per_event = Counter(d["data"]["event_id"] for d in hook.of_type("join.ready"))
    assert set(per_event) == set(posted) and set(per_event.values()) == {1}


async def _in_progress(redis: aioredis.Redis, at_least: int) -> bool:
    return len([key async for key in redis.scan_iter("arq:in-progress:*")]) >= at_least
