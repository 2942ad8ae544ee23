"""`bridge replay` and `bridge export` against a real Redis, real workers and the real CLI process."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bridge.config import load_settings
from bridge.eventlog.entries import LogEvent, parse_time
from bridge.eventlog.query import Filters, job_runs, select_from_log
from bridge.eventlog.replay import enqueue_replays, plan_replay
from bridge.eventlog.retention import trim_event_log
from bridge.routing import event_ref
from bridge.sources.canonical import iso
from bridge.store import EVENT_LOG, WORKER_QUEUE, job_runs_key, replays_key, seen_key
from tests.conftest import Bridge, lms_source_toml, wait_until, write_config
from tests.fakes.server import serve
from tests.providers.owt.sim import OwtSim
from tests.test_intake import moodle_fixture

OWT_SERVICE_ID = "5f0c1a2b3c4d5e6f7a8b9c0d"
OWT_SERVICE_KEY = "replay-test-service-key"


def joined(event_id: str, lesson: str = "c12-l7", user: str = "42") -> dict[str, Any]:
    return {"id": event_id, "type": "user.joined", "lesson": {"id": lesson, "title": "Algebra I"},
            "user": {"id": user, "name": f"User {user}", "role": "teacher"}}


def scheduled(event_id: str, lesson: str) -> dict[str, Any]:
    return {"id": event_id, "type": "lesson.scheduled", "lesson": {"id": lesson, "title": "Geometry"}}


async def cli(bridge: Bridge, *args: str, timeout: float = 40, env: dict[str, str] | None = None
              ) -> tuple[int, str, str]:
    """`python -m bridge.cli ARGS` as a real subprocess with the bridge's BRIDGE_CONFIG / REDIS_URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", *args, env={**bridge.env(), **(env or {})}, cwd=bridge.tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return int(process.returncode or 0), out.decode(), err.decode()


async def snapshot(redis: aioredis.Redis) -> dict[bytes, bytes | None]:
    """Every key and its serialized value (the web process's own metric counters aside)."""
    keys = sorted([k async for k in redis.scan_iter(count=1000) if not k.startswith(b"lb:metrics:")])
    return {key: await redis.dump(key) for key in keys}


async def runs(redis: aioredis.Redis, ref: str) -> dict[str, dict[str, Any]]:
    return job_runs(await redis.hgetall(job_runs_key(ref)))


async def all_final(redis: aioredis.Redis, refs: list[str], status: str) -> bool:
    for ref in refs:
        result = await runs(redis, ref)
        if not result or any(r["status"] != status for r in result.values()):
            return False
    return True


async def latest_replay_refs(redis: aioredis.Redis, source: str, ids: list[str]) -> list[str]:
    refs = []
    for event_id in ids:
        item = await redis.lindex(replays_key(source, event_id), -1)
        assert item, f"{event_id} was not replayed"
        refs.append(event_ref(source, event_id, json.loads(item)["replay"]))
    return refs


# ---------------------------------------------------------------------------------------------- outage

@pytest.fixture
def owt() -> Iterator[tuple[OwtSim, str]]:
    sim = OwtSim(OWT_SERVICE_ID, OWT_SERVICE_KEY)
    with serve(sim.app) as url:
        yield sim, url


def owt_config(tmp_path: Path, owt_url: str, hook_url: str) -> Path:
    return write_config(tmp_path / "bridge.toml", f"""
[providers.owt]
kind = "owt"
base_url = "{owt_url}"
service_id = "{OWT_SERVICE_ID}"
service_key = "{OWT_SERVICE_KEY}"

{lms_source_toml("owt", hook_url)}
[bridge]
data_dir = "{tmp_path / 'var'}"
""")


async def test_failed_only_replay_after_a_provider_outage_makes_everything_succeed(
        make_bridge, client, redis, receiver, owt, tmp_path) -> None:
    hook, hook_url = receiver
    sim, owt_url = owt
    bridge = make_bridge(owt_config(tmp_path, owt_url, hook_url))
    url = f"{bridge.base_url}/v1/events/default"
    failing = ["evt_a", "evt_b", "evt_c"]
    # The outage: the provider refuses each room look-up with a permanent error (400), so every job
    # fails for good on its first call (no retries) and each event produces an event.failed webhook.
    sim.inject(400, times=len(failing), path="/v1/rooms")
    answer = await client.post(url, json=[joined(e, lesson=f"lesson-{e}", user=str(n))
                                          for n, e in enumerate(failing)])
    assert answer.status_code == 202
    bridge.start_worker()
    await wait_until(lambda: all_final(redis, [f"default:{e}" for e in failing], "failed"))
    await wait_until(lambda: len(hook.of_type("event.failed")) == 3)
    assert not hook.of_type("join.ready")
    assert all("replay_of" not in d["data"] for d in hook.of_type("event.failed"))

    # The provider is back: a new event works, and is no candidate for a --failed-only replay.
    assert (await client.post(url, json=joined("evt_ok", lesson="lesson-ok", user="9"))).status_code == 202
    await wait_until(lambda: all_final(redis, ["default:evt_ok"], "ok"))

    code, out, err = await cli(bridge, "replay", "--failed-only", "--wait", "20")
    assert code == 0, out + err
    assert "3 selected, 3 enqueued, 0 failed" in out
    assert "3 ok, 0 failed, 0 unfinished" in out
    assert out.count("replayed default:evt_") == 3          # not a terminal: one plain line per event
    assert not await redis.exists(replays_key("default", "evt_ok"))

    refs = await latest_replay_refs(redis, "default", failing)
    assert await all_final(redis, refs, "ok")
    await wait_until(lambda: len(hook.of_type("join.ready")) == 4)
    ready = {d["data"]["event_id"]: d for d in hook.of_type("join.ready") if d["data"]["event_id"] != "evt_ok"}
    assert set(ready) == set(failing)
    assert all(d["data"]["replay_of"] == event_id for event_id, d in ready.items())
    first_ids = {d["webhook_id"] for d in hook.of_type("event.failed")}
    assert not first_ids & {d["webhook_id"] for d in ready.values()}      # replays get new webhook ids
    # The originals keep their failed runs; the replays are new log entries carrying replay_of.
    assert await all_final(redis, [f"default:{e}" for e in failing], "failed")
    replay_entries = [e for e in await redis.xrange(EVENT_LOG) if b"replay_of" in e[1]]
    assert sorted(e[1][b"replay_of"].decode() for e in replay_entries) == failing

    # Their latest run is ok now: a second --failed-only run finds nothing to do.
    code, out, _ = await cli(bridge, "replay", "--failed-only")
    assert code == 0 and "0 selected, 0 enqueued, 0 failed" in out


# ---------------------------------------------------------------------------------------------- dry run

async def test_dry_run_prints_the_plan_and_changes_nothing(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    events = [joined("evt_1"), joined("evt_2", user="7"), scheduled("evt_3", "c12-l8")]
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=events)).status_code == 202
    before = await snapshot(redis)
    length, queued = await redis.xlen(EVENT_LOG), await redis.zcard(WORKER_QUEUE)
    assert length == 3 and queued == 3

    code, out, err = await cli(bridge, "replay", "--dry-run")
    assert code == 0, err
    assert out.count("would replay default:") == 3
    assert "would replay default:evt_3 (lesson.scheduled, lesson c12-l8" in out
    assert "dry run: 3 selected, 3 would be replayed, 0 cannot be; nothing was changed" in out
    code, out, _ = await cli(bridge, "replay", "--dry-run", "--failed-only", "--type", "user.joined")
    assert code == 0 and "0 selected" in out

    assert await redis.xlen(EVENT_LOG) == length and await redis.zcard(WORKER_QUEUE) == queued
    assert await snapshot(redis) == before


# ---------------------------------------------------------------------------------------------- filters

async def _old_entry(redis: aioredis.Redis, event: dict[str, Any], hours: float) -> str:
    """An entry the bridge accepted `hours` ago, as the accept script writes it."""
    when = datetime.now(UTC) - timedelta(hours=hours)
    entry = f"{int(when.timestamp() * 1000)}-0"
    canonical = {**event, "lesson": {**event["lesson"], "provider": "sandbox"}, "data": {}}
    await redis.xadd(EVENT_LOG, {"id": event["id"], "source": "default", "received_at": iso(when),
                                 "raw": json.dumps(event), "canonical": json.dumps(canonical),
                                 "jobs": json.dumps([f"default:{event['id']}:user_joined"])}, id=entry)
    return entry


async def test_each_filter_selects_what_it_names(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    await _old_entry(redis, joined("evt_old", lesson="old-lesson"), hours=3)
    base = f"{bridge.base_url}/v1/events"
    assert (await client.post(f"{base}/default", json=joined("evt_a", lesson="L1"))).status_code == 202
    await asyncio.sleep(0.02)
    middle = iso(datetime.now(UTC))
    await asyncio.sleep(0.02)
    assert (await client.post(f"{base}/default", json=scheduled("evt_b", "L2"))).status_code == 202
    moodle = moodle_fixture("bigbluebuttonbn_meeting_joined")
    assert (await client.post(f"{base}/moodle", json=moodle)).status_code == 202
    settings = load_settings(bridge.env())

    async def ids(**filters: Any) -> list[str]:
        events = await select_from_log(redis, Filters.build(**filters), settings.sources)
        return [e.id for e in events]

    everything = await ids()
    assert everything[:3] == ["evt_old", "evt_a", "evt_b"] and len(everything) == 4     # oldest first
    moodle_id = everything[3]
    assert await ids(since="2h") == ["evt_a", "evt_b", moodle_id]
    assert await ids(until="2h") == ["evt_old"]
    assert await ids(since=middle) == ["evt_b", moodle_id]
    assert await ids(until=middle, since="1d") == ["evt_old", "evt_a"]
    assert await ids(sources=["moodle"]) == [moodle_id]
    assert await ids(types=["lesson.scheduled"]) == ["evt_b"]
    assert await ids(types=["user.joined"], sources=["default"]) == ["evt_old", "evt_a"]
    assert await ids(lessons=["L1", "old-lesson"]) == ["evt_old", "evt_a"]
    assert await ids(ids=["evt_b"]) == ["evt_b"]
    assert await ids(ids=["evt_old"]) == ["evt_old"]          # no dedupe marker: found by scanning the log
    assert await ids(ids=[moodle_id], sources=["default"]) == []
    with pytest.raises(ValueError, match="type"):
        Filters.build(types=["user.flew"])
    with pytest.raises(ValueError, match="since"):
        Filters.build(since="yesterday-ish")

    # failed_only looks at the latest run: the original's, until a replay supersedes it.
    assert await ids(failed_only=True) == []
    await redis.hset(job_runs_key("default:evt_a"), "user_joined", json.dumps({"status": "failed", "try": 1}))
    await redis.hset(job_runs_key("default:evt_b"), "lesson_scheduled", json.dumps({"status": "ok", "try": 1}))
    assert await ids(failed_only=True) == ["evt_a"]
    planned = [plan_replay(settings, e) for e in
               await select_from_log(redis, Filters.build(failed_only=True), settings.sources)]
    await enqueue_replays(redis, settings, planned)
    assert await ids(failed_only=True) == []                 # the replay is pending, not failed
    assert await ids(ids=["evt_a"]) == ["evt_a"]             # replay entries are left out by default...
    assert await ids(ids=["evt_a"], include_replays=True) == ["evt_a", "evt_a"]      # ...unless asked for
    await redis.hset(job_runs_key(planned[0].ref), "user_joined", json.dumps({"status": "failed", "try": 1}))
    assert await ids(failed_only=True) == ["evt_a"]

    # The CLI maps its options onto the same filters.
    code, out, err = await cli(bridge, "export", "--source", "default", "--type", "user.joined", "--since", "2h")
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["evt_a"]
    code, out, _ = await cli(bridge, "export", "--lesson", "L2", "--lesson", "old-lesson", "--until", middle)
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["evt_old"]
    code, _, err = await cli(bridge, "export", "--since", "soon")
    assert code == 2 and "since" in err


# ---------------------------------------------------------------------------------------------- JSONL

async def test_export_then_replay_from_file_into_a_flushed_redis_processes_the_same_events(
        make_bridge, client, redis, receiver, tmp_path) -> None:
    hook, hook_url = receiver
    bridge = make_bridge(webhook_url=hook_url)
    base = f"{bridge.base_url}/v1/events"
    assert (await client.post(f"{base}/default", json=[joined("evt_1"), joined("evt_2", user="7")])).status_code == 202
    assert (await client.post(f"{base}/moodle", json=moodle_fixture("bigbluebuttonbn_meeting_joined"))
            ).status_code == 202
    export_file = tmp_path / "events.jsonl"
    code, out, err = await cli(bridge, "export", "--out", str(export_file))
    assert code == 0 and "exported 3 events" in err
    lines = [json.loads(line) for line in export_file.read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert {"id", "source", "received_at", "raw", "canonical", "entry_id"} <= set(line)
        assert "token" not in json.dumps(line["raw"])            # the Moodle token never reached the log
    exported = {(line["source"], line["id"]) for line in lines}

    await redis.flushall()
    code, out, err = await cli(bridge, "replay", "--from-file", str(export_file))
    assert code == 0, out + err
    assert "3 selected, 3 enqueued, 0 failed" in out
    bridge.start_worker()
    await wait_until(lambda: len(hook.of_type("join.ready")) == 3)
    processed = {(d["data"]["source"], d["data"]["event_id"]) for d in hook.of_type("join.ready")}
    assert processed == exported
    assert all(d["data"]["replay_of"] == d["data"]["event_id"] for d in hook.of_type("join.ready"))
    for source, event_id in exported:
        assert await all_final(redis, await latest_replay_refs(redis, source, [event_id]), "ok")
        assert await redis.exists(seen_key(source, event_id))    # the dedupe window was restored...
    again = await client.post(f"{base}/default", json=joined("evt_1"))
    assert again.status_code == 200 and again.json()["duplicates"] == ["evt_1"]    # ...so a resend is a duplicate


async def test_unreplayable_lines_and_events_fail_the_run(make_bridge, client, redis, tmp_path) -> None:
    bridge = make_bridge()
    good = {"id": "evt_1", "source": "default", "received_at": iso(datetime.now(UTC)), "raw": joined("evt_1"),
            "canonical": {**joined("evt_1"), "data": {}}}
    gone = {**good, "id": "evt_2", "source": "retired-lms"}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([json.dumps(good), json.dumps(gone), "{not json", ""]) + "\n")
    code, out, err = await cli(bridge, "replay", "--from-file", str(path))
    assert code == 1
    assert "3 selected, 1 enqueued, 2 failed" in out
    assert "retired-lms" in err and "line 3" in err
    assert await redis.xlen(EVENT_LOG) == 1 and await redis.zcard(WORKER_QUEUE) == 1
    code, _, err = await cli(bridge, "replay", "--from-file", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "cannot read" in err


async def test_rate_paces_the_replay_and_wait_reports_unfinished_jobs(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    events = [joined(f"evt_{n}", user=str(n)) for n in range(5)]
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=events)).status_code == 202
    settings = load_settings(bridge.env())
    selected = await select_from_log(redis, Filters(), settings.sources)
    planned = [plan_replay(settings, e) for e in selected]
    started = time.monotonic()
    await enqueue_replays(redis, settings, planned, rate=20)
    assert time.monotonic() - started >= 0.18                  # 5 events at 20/s: 4 gaps of 50 ms
    assert all(p.entry_id for p in planned)
    # No worker runs: with --wait the jobs cannot finish, and the run says so with a non-zero exit.
    code, out, err = await cli(bridge, "replay", "--id", "evt_0", "--wait", "0.3")
    assert code == 1
    assert "1 enqueued, 0 failed; replayed events: 0 ok, 0 failed, 1 unfinished" in out
    assert "unfinished default:evt_0:replay:" in err


# ---------------------------------------------------------------------------------------------- retention

async def test_trim_drops_entries_by_age_and_by_count(make_bridge, redis, tmp_path) -> None:
    bridge = make_bridge(extra="event_retention_s = 86400\nevent_retention_max = 3")
    for hours in (50, 30, 20, 10, 5, 1):
        await _old_entry(redis, joined(f"evt_{hours}h"), hours=hours)
    settings = load_settings(bridge.env())
    assert await trim_event_log(redis, settings, exact=True) == 3           # 50 h, 30 h (age); 20 h (count)
    remaining = [e[1][b"id"].decode() for e in await redis.xrange(EVENT_LOG)]
    assert remaining == ["evt_10h", "evt_5h", "evt_1h"]
    code, out, _ = await cli(bridge, "trim", "--exact")
    assert code == 0 and "trimmed 0 entries" in out and "the log holds 3" in out


def test_relative_and_iso_times() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_time("2h", now) == now - timedelta(hours=2)
    assert parse_time("90s", now) == now - timedelta(seconds=90)
    assert parse_time("30m", now) == now - timedelta(minutes=30)
    assert parse_time("7d", now) == now - timedelta(days=7)
    assert parse_time("1w", now) == now - timedelta(weeks=1)
    assert parse_time("2026-11-22T10:00:00Z") == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert parse_time("2026-11-22T11:00:00+01:00") == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert parse_time("2026-11-22T10:00:00") == datetime(2026, 11, 22, 10, tzinfo=UTC)   # UTC when no zone
    with pytest.raises(ValueError):
        parse_time("2 fortnights")


async def test_reparse_rederives_the_canonical_event_from_the_raw_body(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    moodle = moodle_fixture("bigbluebuttonbn_meeting_joined")
    assert (await client.post(f"{bridge.base_url}/v1/events/moodle", json=moodle)).status_code == 202
    settings = load_settings(bridge.env())
    [event] = await select_from_log(redis, Filters(), settings.sources)
    fresh = plan_replay(settings, event, reparse=True)
    assert fresh.error is None and fresh.canonical == event.canonical
    assert fresh.jobs[0].envelope["replay_of"] == event.id and fresh.ref.startswith(f"moodle:{event.id}:replay:")
    broken = plan_replay(settings, LogEvent(**{**event.__dict__, "raw": {"eventname": 7}}), reparse=True)
    assert broken.error and "no longer parses" in broken.error


async def test_the_worker_trims_the_log_on_a_schedule(make_bridge, redis) -> None:
    from types import SimpleNamespace

    from workers.settings import worker_settings
    bridge = make_bridge(extra="event_retention_s = 3600")
    settings = load_settings(bridge.env())
    [job] = worker_settings(settings)["cron_jobs"]
    assert job.name == "trim_event_log" and job.timeout_s is None     # never lengthens crash recovery
    for n in range(250):                   # older than retention, oldest first; 36 ms apart
        await _old_entry(redis, joined(f"evt_old_{n}"), hours=3 - n * 0.00001)
    await _old_entry(redis, joined("evt_new"), hours=0.5)
    await job.coroutine({"bridge": SimpleNamespace(redis=redis, settings=settings)})
    # Approximate trimming (~) drops whole stream nodes (100 entries each) of old entries only.
    remaining = [e[1][b"id"] for e in await redis.xrange(EVENT_LOG)]
    assert len(remaining) <= 151 and remaining[-1] == b"evt_new"
    await trim_event_log(redis, settings, exact=True)
    assert [e[1][b"id"] for e in await redis.xrange(EVENT_LOG)] == [b"evt_new"]
