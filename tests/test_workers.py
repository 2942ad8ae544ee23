"""Real worker processes: exactly-once effects, crash recovery, drain on SIGTERM, readiness, log hygiene."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import redis.asyncio as aioredis
from arq.constants import retry_key_prefix

from bridge.store import WORKER_CLIENT_NAME, WORKER_QUEUE, job_runs_key
from tests.conftest import MOODLE_TOKEN, WEBHOOK_SECRET, default_config, wait_until, worker_ready
from tests.test_intake import EVENT, moodle_fixture
from workers.jobs import MAX_TRIES


async def queue_idle(redis: aioredis.Redis) -> bool:
    in_progress = [key async for key in redis.scan_iter("arq:in-progress:*")]
    return await redis.zcard(WORKER_QUEUE) == 0 and not in_progress


def slow_sandbox_config(tmp_path: Path, hook_url: str, extra: str, delay_s: float) -> Path:
    """The default config with [bridge] `extra` and a sandbox that takes `delay_s` per call, so jobs overlap."""
    config = default_config(tmp_path, hook_url, extra=extra)
    config.write_text(config.read_text().replace('kind = "sandbox"', f'kind = "sandbox"\ndelay_s = {delay_s}'))
    return config


async def test_duplicate_event_is_processed_once(make_bridge, client, redis, receiver) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(webhook_url=hook_url)
    url = f"{bridge.base_url}/v1/events/default"
    assert (await client.post(url, json=EVENT)).status_code == 202
    assert (await client.post(url, json=EVENT)).status_code == 200
    bridge.start_worker()
    await wait_until(lambda: hook.of_type("join.ready"))
    assert (await client.post(url, json=EVENT)).status_code == 200
    await wait_until(lambda: queue_idle(redis))
    assert len(hook.of_type("join.ready")) == 1
    run = json.loads(await redis.hget(job_runs_key("default:evt_1"), "user_joined"))
    assert run["status"] == "ok" and run["try"] == 1


async def test_sigkilled_worker_jobs_all_complete_on_a_new_worker(make_bridge, client, redis, receiver,
                                                                  tmp_path) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(slow_sandbox_config(tmp_path, hook_url, "job_timeout_s = 3", delay_s=1.5))
    events = [{**EVENT, "id": f"evt_{n}", "user": {"id": str(n), "name": f"User {n}"}} for n in range(20)]
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=events)).status_code == 202
    first = bridge.start_worker()
    await wait_until(lambda: _in_progress(redis), timeout=20, interval=0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert len(hook.of_type("join.ready")) < 20        # killed with work still in flight
    bridge.start_worker()
    # arq hands a killed worker's jobs out again when their in-progress marker expires (2 x job timeout + 10 s).
    await wait_until(lambda: len({d["data"]["event_id"] for d in hook.of_type("join.ready")}) == 20, timeout=60)
    for n in range(20):
        run = json.loads(await redis.hget(job_runs_key(f"default:evt_{n}"), "user_joined"))
        assert run["status"] == "ok"


async def _in_progress(redis: aioredis.Redis) -> bool:
    return bool([key async for key in redis.scan_iter("arq:in-progress:*")])


async def test_a_job_whose_runs_keep_dying_reports_event_failed(make_bridge, client, redis, receiver) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(webhook_url=hook_url)
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=EVENT)).status_code == 202
    # What MAX_TRIES runs killed mid-job leave behind: arq counts every start in the job's retry key.
    await redis.set(retry_key_prefix + "default:evt_1:user_joined", MAX_TRIES)
    bridge.start_worker()
    await wait_until(lambda: hook.of_type("event.failed"))
    assert hook.of_type("event.failed")[0]["data"]["error"]["code"] == "crashed"
    assert not hook.of_type("join.ready")
    run = json.loads(await redis.hget(job_runs_key("default:evt_1"), "user_joined"))
    assert run["status"] == "failed" and run["try"] == MAX_TRIES + 1


async def test_a_worker_stays_within_its_redis_connection_cap(make_bridge, client, redis, receiver,
                                                             tmp_path) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(slow_sandbox_config(tmp_path, hook_url, "worker_redis_connections = 2", delay_s=0.2))
    events = [{**EVENT, "id": f"evt_cap_{n}", "user": {"id": str(n)}} for n in range(40)]
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=events)).status_code == 202
    bridge.start_worker()
    peak = 0
    for _ in range(3000):                        # jobs run 40 at once, each sleeping in the provider
        clients = await redis.client_list()
        peak = max(peak, sum(c.get("name") == WORKER_CLIENT_NAME for c in clients))
        if len(hook.of_type("join.ready")) == 40:
            break
        await asyncio.sleep(0.01)
    assert len(hook.of_type("join.ready")) == 40
    assert 1 <= peak <= 2


async def test_sigterm_drains_in_flight_jobs(make_bridge, client, redis, receiver, tmp_path) -> None:
    _, hook_url = receiver
    config = default_config(tmp_path, hook_url)
    config.write_text(config.read_text().replace('kind = "sandbox"', 'kind = "sandbox"\ndelay_s = 2'))
    bridge = make_bridge(config)
    events = [{**EVENT, "id": f"evt_{n}"} for n in range(5)]
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=events)).status_code == 202
    worker = bridge.start_worker()
    await wait_until(lambda: _in_progress(redis), interval=0.02)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=25) == 0
    for n in range(5):
        run = json.loads(await redis.hget(job_runs_key(f"default:evt_{n}"), "user_joined") or "{}")
        assert run.get("status") == "ok", n


async def test_readyz_needs_redis_and_a_worker_heartbeat(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    assert (await client.get(f"{bridge.base_url}/healthz")).status_code == 200
    not_ready = await client.get(f"{bridge.base_url}/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["error"]["code"] == "no_worker"
    bridge.start_worker()
    await wait_until(lambda: worker_ready(redis))
    assert (await client.get(f"{bridge.base_url}/readyz")).status_code == 200


async def test_secrets_never_reach_the_logs(make_bridge, client, redis, receiver, tmp_path) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(webhook_url=hook_url)
    web = bridge.start_web()
    bridge.start_worker()
    joined = moodle_fixture("bigbluebuttonbn_meeting_joined")
    assert (await client.post(f"{web}/v1/events/moodle", json={**joined, "token": "wrong-token-x"})).status_code == 401
    assert (await client.post(f"{web}/v1/events/moodle", json=joined)).status_code == 202
    assert (await client.post(f"{web}/v1/events/default", json=EVENT)).status_code == 202
    await wait_until(lambda: len(hook.of_type("join.ready")) == 2)
    bridge.stop_all()
    logs = bridge.logs()
    join_tokens = [d["data"]["token"] for d in hook.of_type("join.ready")]
    assert '"event":"request"' in logs and '"event":"job"' in logs and '"event_id"' in logs
    for secret in [MOODLE_TOKEN, "wrong-token-x", WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"),
                   *join_tokens]:
        assert secret not in logs
