"""`bridge events show`, `deliveries list|retry`, `endpoints enable` and the replay progress bar, as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys

import redis.asyncio as aioredis

from tests.conftest import wait_until, worker_ready
from tests.test_replay import all_final, cli, joined


async def _dead(redis: aioredis.Redis, n: int) -> bool:
    return await redis.zcard("lb:dead") == n


async def test_events_show_prints_the_event_its_jobs_and_its_deliveries(make_bridge, client, redis,
                                                                         receiver) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(webhook_url=hook_url)
    hook.answer_next(503)                               # one failed attempt, then delivered
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=joined("evt_1"))).status_code == 202
    bridge.start_worker()
    await wait_until(lambda: hook.of_type("join.ready"))
    code, out, err = await cli(bridge, "replay", "--id", "evt_1", "--wait", "15")
    assert code == 0, out + err
    await wait_until(lambda: len(hook.of_type("join.ready")) == 2)

    code, out, err = await cli(bridge, "events", "show", "evt_1", "--json")
    assert code == 0, err
    details = json.loads(out)
    assert details["event"]["id"] == "evt_1" and details["event"]["canonical"]["user"]["id"] == "42"
    original, replayed = details["executions"]
    assert original["jobs"][0] | {"at": None, "ms": None} == {
        "function": "user_joined", "job_id": "default:evt_1:user_joined", "status": "ok", "try": 1,
        "at": None, "ms": None, "error": None}
    [first] = original["deliveries"]
    assert first["status"] == "delivered" and [a["status"] for a in first["attempt_log"]] == [503, 200]
    assert replayed["status"] == "ok" and replayed["deliveries"][0]["replay_of"] == "evt_1"
    assert replayed["deliveries"][0]["webhook_id"] != first["webhook_id"]

    code, out, _ = await cli(bridge, "events", "show", "evt_1")
    assert code == 0
    assert "event evt_1  source default" in out and '"type": "user.joined"' in out
    assert "job user_joined: ok" in out and f"webhook {first['webhook_id']} join.ready: delivered" in out
    assert "attempt 0" in out and ": 503" in out and "replay " in out
    code, _, err = await cli(bridge, "events", "show", "evt_nope")
    assert code == 1 and "no event" in err


async def test_deliveries_list_and_retry_after_a_receiver_outage(make_bridge, client, redis, receiver) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(webhook_url=hook_url)
    hook.answer_next(*[500] * 8)                        # two webhooks, 4 attempts each: both dead
    events = [joined("evt_1"), joined("evt_2", user="7")]
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=events)).status_code == 202
    bridge.start_worker()
    await wait_until(lambda: _dead(redis, 2))
    assert not hook.delivered

    code, out, err = await cli(bridge, "deliveries", "list", "--status", "dead", "--json")
    assert code == 0, err
    dead = json.loads(out)
    assert sorted(d["event_id"] for d in dead) == ["evt_1", "evt_2"] and all(d["attempts"] == 4 for d in dead)
    code, out, err = await cli(bridge, "deliveries", "list", "--status", "dead")
    assert code == 0 and out.count(" dead ") == 2 and "2 dead deliveries" in err

    first, second = dead[0]["webhook_id"], dead[1]["webhook_id"]
    code, out, err = await cli(bridge, "deliveries", "retry", first)
    assert code == 0, err
    assert f"retrying {first} (attempt 4" in out
    await wait_until(lambda: len(hook.delivered) == 1)
    assert hook.delivered[0]["webhook_id"] == first            # the same webhook-id as the failed attempts

    code, out, err = await cli(bridge, "deliveries", "retry", "--all-dead")
    assert code == 0, err
    assert "1 selected, 1 enqueued, 0 failed" in out
    await wait_until(lambda: len(hook.delivered) == 2)
    assert {d["webhook_id"] for d in hook.delivered} == {first, second}
    await wait_until(lambda: _dead(redis, 0))
    code, _, err = await cli(bridge, "deliveries", "retry", first)
    assert code == 1 and "already_delivered" in err
    code, _, err = await cli(bridge, "deliveries", "retry")
    assert code == 2


async def test_endpoints_enable_after_a_410_makes_held_deliveries_retryable(make_bridge, client, redis,
                                                                           receiver) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(webhook_url=hook_url)
    hook.answer_next(410)
    bridge.start_worker()
    await wait_until(lambda: worker_ready(redis))
    url = f"{bridge.base_url}/v1/events/default"
    assert (await client.post(url, json=joined("evt_1"))).status_code == 202
    await wait_until(lambda: redis.exists("lb:endpoint-disabled:default"))
    assert (await client.post(url, json=joined("evt_2", user="7"))).status_code == 202
    await wait_until(lambda: all_final(redis, ["default:evt_2"], "ok"))

    async def held() -> list[dict]:
        code, out, _ = await cli(bridge, "deliveries", "list", "--status", "disabled", "--json")
        assert code == 0
        return json.loads(out)

    await wait_until(lambda: _n(held, 2), timeout=10, interval=0.2)
    ids = {d["webhook_id"] for d in await held()}
    code, _, err = await cli(bridge, "deliveries", "retry", "--endpoint", "default")
    assert code == 1 and "endpoint_disabled" in err             # still off: nothing is sent
    assert [status for _, status in hook.attempts] == [410]

    code, out, err = await cli(bridge, "endpoints", "enable", "default")
    assert code == 0, err
    assert "endpoint default enabled (was disabled since" in out and "2 deliveries held" in out
    assert "bridge deliveries retry --endpoint default" in out
    assert not await redis.exists("lb:endpoint-disabled:default")
    code, out, err = await cli(bridge, "deliveries", "retry", "--endpoint", "default")
    assert code == 0, err
    await wait_until(lambda: len(hook.delivered) == 2)
    assert {d["webhook_id"] for d in hook.delivered} == ids
    code, _, err = await cli(bridge, "endpoints", "enable", "nope")
    assert code == 1 and "no source" in err


async def _n(fetch, n: int) -> bool:
    return len(await fetch()) == n


async def test_replay_draws_a_progress_bar_on_a_terminal(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    events = [joined(f"evt_{n}", user=str(n)) for n in range(3)]
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=events)).status_code == 202
    main, child = pty.openpty()
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge.cli", "replay", env=bridge.env(),
                                                   cwd=bridge.tmp_path, stdout=child, stderr=subprocess.DEVNULL)
    os.close(child)
    output = b""
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await asyncio.wait_for(loop.run_in_executor(None, os.read, main, 4096), 20)
        except OSError:            # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert await asyncio.wait_for(process.wait(), 20) == 0
    text = output.decode()
    assert "\r[" in text and "] 3/3" in text and "replayed default:" not in text
    assert "3 selected, 3 enqueued, 0 failed" in text
