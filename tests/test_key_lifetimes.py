"""Every key the bridge writes expires, unless its family is declared bounded otherwise (bridge.store.WITHOUT_TTL).

Representative flows through real processes (web over HTTP, a real worker, the OWT, JaaS and Moodle
simulators): a polled OWT lesson scheduled, joined, left and ended; a Moodle teacher, activity and join on
JaaS with the provider's participant webhooks; a webhook dead-lettered and an endpoint gone (410); a replay.
Then every key in Redis is scanned.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.config import load_settings
from bridge.eventlog.query import Filters, select_from_log
from bridge.eventlog.replay import enqueue_replays, plan_replay
from bridge.eventlog.retention import prune_delivery_sets
from bridge.store import (
    DEAD_LETTERS,
    FAILED_DELIVERIES,
    LESSON_REFRESH_S,
    LESSON_TTL_S,
    WITHOUT_TTL,
    endpoint_disabled_key,
    key_family,
    lesson_key,
    room_owner_key,
)
from tests.conftest import MOODLE_TOKEN, WEBHOOK_SECRET, lms_source_toml, wait_until, worker_ready, write_config
from tests.fakes.receiver import Receiver
from tests.fakes.server import serve
from tests.moodle.sim import MoodleSim
from tests.providers.jaas.sim import JaasSim
from tests.providers.owt.sim import OwtSim
from tests.test_intake import moodle_fixture

OWT_ID, OWT_KEY = "5f0c1a2b3c4d5e6f7a8b9c0d", "owt-service-key-for-tests"
APP_ID, JAAS_SECRET = "vpaas-magic-cookie-0123456789abcdef", "jaas-webhook-secret"
WS_TOKEN = "ws-token-3b8e1f"
RECORD_RETENTION_S = 7 * 86400          # not the default (30 d): the records follow the setting
LESSON = {"id": "c12-l7", "title": "Algebra I"}
# What the flows below write, so that the scan cannot pass by finding nothing.
FAMILIES = {"lb:events", "lb:seen", "lb:runs", "lb:delivery", "lb:payload", "lb:dead", "lb:endpoint-disabled",
            "lb:lesson", "lb:room", "lb:attendance", "lb:attendance-sessions", "lb:attendance-roster", "lb:replays",
            "lb:teachers", "lb:moodle-courses", "lb:moodle-course-lessons", "lb:moodle-ws", "lb:metrics"}


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[dict[str, Any]]:
    owt = OwtSim(OWT_ID, OWT_KEY)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "jaas.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    jaas = JaasSim(APP_ID, webhook_secret=JAAS_SECRET)
    jaas.add_key(f"{APP_ID}/k1", key.public_key())
    moodle = MoodleSim(WS_TOKEN)
    moodle.add_user(31, "Ada", "Lovelace", "ada@example.edu")
    moodle.add_activity(12, 87, 9, "Algebra I - live lesson", opens=int(time.time()) - 60,
                        closes=int(time.time()) + 7200)
    flaky = Receiver(WEBHOOK_SECRET)
    with serve(owt.app) as owt_url, serve(jaas.app) as jaas_url, serve(moodle.app) as moodle_url, \
            serve(flaky.app) as flaky_url:
        yield {"owt": (owt, owt_url), "jaas": (jaas, jaas_url), "moodle": moodle_url, "flaky": (flaky, flaky_url)}


def config(tmp_path: Path, sims: dict[str, Any], hook_url: str) -> Path:
    hook = f'webhook_secret = "{WEBHOOK_SECRET}"\nallow_private_network = true'
    return write_config(tmp_path / "bridge.toml", f"""
[providers.owt]
kind = "owt"
base_url = "{sims['owt'][1]}"
service_id = "{OWT_ID}"
service_key = "{OWT_KEY}"
attendance_poll_s = 0.2

[providers.jaas]
kind = "jaas"
app_id = "{APP_ID}"
key_id = "k1"
private_key_file = "{tmp_path / 'jaas.pem'}"
api_base = "{sims['jaas'][1]}"
webhook_secret = "{JAAS_SECRET}"

{lms_source_toml("owt", hook_url)}
[sources.flaky]
format = "canonical"
provider = "owt"
webhook_url = "{sims['flaky'][1]}/hook"
{hook}

[sources.moodle]
format = "moodle"
token = "{MOODLE_TOKEN}"
provider = "jaas"
moodle_url = "{sims['moodle']}"
ws_token = "{WS_TOKEN}"
reconcile_s = 1
webhook_url = "{hook_url}"
{hook}

[bridge]
data_dir = "{tmp_path / 'var'}"
job_retry_base_s = 0.1
record_retention_s = {RECORD_RETENTION_S}
""")


async def post(client, bridge, source: str, event: dict[str, Any]) -> dict[str, Any]:
    answer = await client.post(f"{bridge.base_url}/v1/events/{source}?wait=10", json=event)
    assert answer.status_code in (200, 202), answer.text
    return answer.json()


def canonical(event_id: str, kind: str, lesson: dict[str, str] = LESSON, **more: Any) -> dict[str, Any]:
    return {"id": event_id, "type": kind, "lesson": lesson, **more}


async def ttl_of(redis: aioredis.Redis, key: str) -> int:
    return int(await redis.ttl(key))


async def test_every_key_the_flows_write_expires_or_is_bounded_otherwise(
        make_bridge, client, redis, receiver, sims, tmp_path) -> None:
    hook, hook_url = receiver
    owt, _ = sims["owt"]
    jaas, _ = sims["jaas"]
    flaky, _ = sims["flaky"]
    bridge = make_bridge(config(tmp_path, sims, hook_url))
    bridge.start_worker()
    await wait_until(lambda: worker_ready(redis))

    # A webhook its endpoint refuses until it is dead-lettered; then that endpoint is gone (410).
    flaky.answer_next(500, 500, 500, 500)
    await post(client, bridge, "flaky", canonical("f1", "lesson.scheduled", {"id": "f-1"}))
    await wait_until(lambda: redis.zcard(DEAD_LETTERS))
    flaky.answer_next(410)
    await post(client, bridge, "flaky", canonical("f2", "lesson.scheduled", {"id": "f-2"}))
    await wait_until(lambda: redis.exists(endpoint_disabled_key("flaky")))

    # A polled OWT lesson. Its state and the room's owner keys live LESSON_TTL_S from the change.
    await post(client, bridge, "default", canonical("s1", "lesson.scheduled"))
    state = lesson_key("default", LESSON["id"])
    room = json.loads(await redis.hget(state, "room"))
    owners = [room_owner_key("owt", name) for name in {room["id"], room["name"]}]
    for key in (state, *owners):
        assert LESSON_TTL_S - 60 < await ttl_of(redis, key) <= LESSON_TTL_S, key
    # A join on the existing room does not write the lesson's state (no command on the join path) ...
    await redis.expire(state, 1000)
    teacher = await post(client, bridge, "default", canonical("j1", "user.joined",
                                                              user={"id": "7", "name": "Ada", "role": "teacher"}))
    assert await ttl_of(redis, state) <= 1000
    owt.redeem(teacher["webhooks"][0]["data"]["token"])
    await wait_until(lambda: hook.of_type("participant.joined"))
    # ... unless the state's lifetime began over LESSON_REFRESH_S ago: then its use begins it again.
    await redis.hset(state, "touched", int(time.time()) - LESSON_REFRESH_S - 60)
    await post(client, bridge, "default", canonical("j2", "user.joined", user={"id": "42", "name": "Bob"}))
    assert LESSON_TTL_S - 60 < await ttl_of(redis, state) <= LESSON_TTL_S
    assert LESSON_TTL_S - 60 < await ttl_of(redis, owners[0]) <= LESSON_TTL_S
    await post(client, bridge, "default", canonical("e1", "lesson.ended"))
    await wait_until(lambda: hook.of_type("attendance.report"))

    # Moodle: a teacher, an activity and a join on JaaS, then the provider's participant webhooks.
    for name in ("role_assigned_editingteacher", "bigbluebuttonbn_course_module_created"):
        await post(client, bridge, "moodle", moodle_fixture(name))
    joined = await post(client, bridge, "moodle", moodle_fixture("bigbluebuttonbn_meeting_joined"))
    jaas.join(joined["webhooks"][0]["data"]["token"])
    (jaas_room,) = jaas.conferences
    jaas.leave(jaas_room, "31")
    answers = await jaas.outbox.send(client, f"{bridge.base_url}/v1/providers/jaas/events")
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    await wait_until(lambda: [w for w in hook.of_type("participant.left") if w["data"]["source"] == "moodle"])

    # A replay of the teacher's join.
    settings = load_settings({"BRIDGE_CONFIG": str(bridge.config), "REDIS_URL": bridge.redis_url})
    (event,) = await select_from_log(redis, Filters(ids=frozenset({"j1"}), sources=frozenset({"default"})))
    await enqueue_replays(redis, settings, [plan_replay(settings, event)])
    await wait_until(lambda: [w for w in hook.of_type("join.ready") if w["data"].get("replay_of") == "j1"])

    bridge.stop_all()                 # the worker's last writes are in; web's metrics flush each second
    await wait_until(lambda: redis.exists("lb:metrics:jobs"))
    families, unbounded = set(), []
    async for raw in redis.scan_iter(count=1000):
        key = raw.decode()
        families.add(key_family(key))
        if key_family(key) in ("lb:runs", "lb:delivery"):
            assert RECORD_RETENTION_S - 600 < await ttl_of(redis, key) <= RECORD_RETENTION_S, key
        if await ttl_of(redis, key) == -1 and not any(fnmatchcase(key, family) for family in WITHOUT_TTL):
            unbounded.append(key)
    assert unbounded == [], "keys without a TTL outside bridge.store.WITHOUT_TTL"
    assert FAMILIES <= families, FAMILIES - families


async def test_the_trim_cron_prunes_dead_and_failing_webhooks_whose_records_have_expired(redis) -> None:
    settings = load_settings({})
    week = 7 * 86400
    settings = dataclasses.replace(settings, record_retention_s=week)
    now = time.time()
    for key in (DEAD_LETTERS, FAILED_DELIVERIES):
        await redis.zadd(key, {"msg_expired": now - week - 60, "msg_kept": now - week + 60})
    assert await prune_delivery_sets(redis, settings) == 2
    for key in (DEAD_LETTERS, FAILED_DELIVERIES):
        assert await redis.zrange(key, 0, -1) == [b"msg_kept"]
