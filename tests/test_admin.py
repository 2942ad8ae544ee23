"""The admin API over real HTTP: off (404) without a token, 401 without the right one, and its tools."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import Bridge, wait_until, worker_ready
from tests.test_replay import all_final, joined, scheduled

TOKEN = "admin-token-5b1e0c2f9d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_PATHS = [
    ("GET", "/v1/admin/events"), ("GET", "/v1/admin/events/evt_1"), ("POST", "/v1/admin/events/evt_1/replay"),
    ("POST", "/v1/admin/replays"), ("GET", "/v1/admin/deliveries?status=dead"),
    ("GET", "/v1/admin/deliveries/msg_1"), ("POST", "/v1/admin/deliveries/msg_1/retry"),
    ("POST", "/v1/admin/deliveries/retry"), ("POST", "/v1/admin/endpoints/default/enable"),
    ("GET", "/v1/admin"), ("GET", "/v1/admin/nothing/here"), ("DELETE", "/v1/admin/events"),
]


@pytest.fixture
def admin_bridge(make_bridge: Callable[..., Bridge]) -> Callable[..., Bridge]:
    """make_bridge with BRIDGE_ADMIN_TOKEN set for the web app."""
    return lambda webhook_url=None: make_bridge(webhook_url=webhook_url, env={"BRIDGE_ADMIN_TOKEN": TOKEN})


def assert_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["message"] and "details" in error
    return error


async def test_the_admin_api_is_off_everywhere_without_a_token(make_bridge, client) -> None:
    bridge = make_bridge()
    unknown = await client.get(f"{bridge.base_url}/no/such/path")
    for method, path in ADMIN_PATHS:
        for headers in ({}, {"Authorization": "Bearer x"}, {"Authorization": f"Bearer {TOKEN}"}):
            answer = await client.request(method, f"{bridge.base_url}{path}", headers=headers)
            assert_error(answer, 404, "not_found")
            assert answer.json()["error"].keys() == unknown.json()["error"].keys()


async def test_the_admin_api_refuses_a_missing_or_wrong_token(admin_bridge, client) -> None:
    bridge = admin_bridge()
    for method, path in ADMIN_PATHS:
        url = f"{bridge.base_url}{path}"
        missing = await client.request(method, url)
        assert_error(missing, 401, "missing_token")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        for header in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", f"Basic {TOKEN}", TOKEN):
            assert_error(await client.request(method, url, headers={"Authorization": header}), 401, "bad_token")
    ok = await client.get(f"{bridge.base_url}/v1/admin/events", headers=AUTH)
    assert ok.status_code == 200 and ok.json() == {"events": [], "next_cursor": None}
    assert_error(await client.get(f"{bridge.base_url}/v1/admin/nothing", headers=AUTH), 404, "not_found")
    assert_error(await client.delete(f"{bridge.base_url}/v1/admin/events", headers=AUTH), 405,
                 "method_not_allowed")


async def test_events_are_listed_with_filters_and_a_cursor(admin_bridge, client, redis) -> None:
    bridge = admin_bridge()
    events = [joined(f"evt_{n}", user=str(n)) for n in range(4)] + [scheduled("evt_4", "L2")]
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=events)).status_code == 202
    url = f"{bridge.base_url}/v1/admin/events"
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get(url, params=params, headers=AUTH)).json()
        assert len(page["events"]) <= 2
        seen += [e["id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"evt_{n}" for n in range(4, -1, -1)]                 # newest first, each once
    oldest = (await client.get(url, params={"order": "asc", "limit": "1"}, headers=AUTH)).json()
    assert oldest["events"][0]["id"] == "evt_0" and oldest["events"][0]["status"] == "pending"
    assert oldest["events"][0]["type"] == "user.joined" and oldest["events"][0]["entry_id"]
    only = (await client.get(url, params={"type": "lesson.scheduled"}, headers=AUTH)).json()
    assert [e["id"] for e in only["events"]] == ["evt_4"]
    several = (await client.get(url, params=[("id", "evt_1"), ("id", "evt_3")], headers=AUTH)).json()
    assert [e["id"] for e in several["events"]] == ["evt_3", "evt_1"]
    assert (await client.get(url, params={"source": "moodle"}, headers=AUTH)).json()["events"] == []
    async def ids(**params: str) -> list[str]:
        return [e["id"] for e in (await client.get(url, params=params, headers=AUTH)).json()["events"]]
    assert await ids(since="1h", lesson="L2") == ["evt_4"]
    assert await ids(lesson=events[0]["lesson"]["id"]) == ["evt_3", "evt_2", "evt_1", "evt_0"]
    assert await ids(until="1h") == []                                    # all five arrived just now
    assert (await client.get(url, params={"failed_only": "true"}, headers=AUTH)).json()["events"] == []
    assert_error(await client.get(url, params={"since": "whenever"}, headers=AUTH), 400, "invalid_filter")
    assert_error(await client.get(url, params={"cursor": "abc"}, headers=AUTH), 400, "invalid_cursor")
    assert_error(await client.get(url, params={"cursor": f"{2**64}-0"}, headers=AUTH), 400, "invalid_cursor")
    assert_error(await client.get(url, params={"since": "9999999w"}, headers=AUTH), 400, "invalid_filter")
    for edge in ({"cursor": "0-0"}, {"since": "0001-01-01T00:00:00Z"}, {"until": "0001-01-01T00:00:00+01:00"},
                 {"until": "9999-12-31T23:59:59-01:00", "order": "asc"}):
        assert (await client.get(url, params=edge, headers=AUTH)).status_code == 200, edge
    assert_error(await client.get(url, params={"limit": "0"}, headers=AUTH), 400, "invalid_parameter")
    assert_error(await client.get(url, params={"failed_only": "maybe"}, headers=AUTH), 400, "invalid_parameter")

    plan = await client.post(f"{bridge.base_url}/v1/admin/replays", json={"type": "user.joined", "dry_run": True},
                             headers=AUTH)
    assert plan.status_code == 200
    assert plan.json()["summary"]["selected"] == 4 and len(plan.json()["replays"]) == 4
    assert await redis.xlen("lb:events") == 5                       # a dry run writes nothing


async def test_show_and_replay_an_event(admin_bridge, client, redis, receiver) -> None:
    hook, hook_url = receiver
    bridge = admin_bridge(webhook_url=hook_url)
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=joined("evt_1"))).status_code == 202
    bridge.start_worker()
    await wait_until(lambda: hook.of_type("join.ready"))
    url = f"{bridge.base_url}/v1/admin/events/evt_1"
    await wait_until(lambda: _delivered(client, url))
    details = (await client.get(url, headers=AUTH)).json()
    assert details["event"]["canonical"]["type"] == "user.joined" and details["status"] == "ok"
    [original] = details["executions"]
    assert original["replay"] is None and original["jobs"][0]["function"] == "user_joined"
    assert original["jobs"][0]["status"] == "ok" and original["jobs"][0]["try"] == 1
    [delivery] = original["deliveries"]
    assert delivery["type"] == "join.ready" and delivery["attempts"] == 1
    assert delivery["attempt_log"][0]["status"] == 200

    answer = await client.post(f"{url}/replay", headers=AUTH)
    assert answer.status_code == 202
    replay = answer.json()["replay"]
    assert replay["replay_of"] == "evt_1" and replay["ref"].startswith("default:evt_1:replay:")
    assert replay["jobs"] == [f"{replay['ref']}:user_joined"] and replay["entry_id"]
    await wait_until(lambda: len(hook.of_type("join.ready")) == 2)
    second = hook.of_type("join.ready")[1]
    assert second["data"]["replay_of"] == "evt_1"
    assert second["webhook_id"] != hook.of_type("join.ready")[0]["webhook_id"]
    await wait_until(lambda: all_final(redis, [replay["ref"]], "ok"))
    details = (await client.get(url, headers=AUTH)).json()
    assert [e["replay"] for e in details["executions"]] == [None, replay["replay"]]
    assert details["executions"][1]["deliveries"][0]["replay_of"] == "evt_1"

    assert_error(await client.get(f"{bridge.base_url}/v1/admin/events/nope", headers=AUTH), 404, "event_not_found")
    assert_error(await client.post(f"{bridge.base_url}/v1/admin/events/nope/replay", headers=AUTH), 404,
                 "event_not_found")
    assert_error(await client.post(f"{url}/replay", content=b"[1", headers=AUTH), 400, "invalid_json")


async def _delivered(client: httpx.AsyncClient, url: str) -> bool:
    details = (await client.get(url, headers=AUTH)).json()
    return all(d["status"] == "delivered" for e in details["executions"] for d in e["deliveries"]) and \
        bool(details["executions"][0]["deliveries"])


async def test_retry_a_dead_delivery_after_a_receiver_outage_keeps_its_webhook_id(
        admin_bridge, client, redis, receiver) -> None:
    hook, hook_url = receiver
    bridge = admin_bridge(webhook_url=hook_url)
    hook.answer_next(500, 500, 500, 500)           # retry_schedule [0.2, 0.4, 0.8]: 4 attempts, then dead
    assert (await client.post(f"{bridge.base_url}/v1/events/default", json=joined("evt_1"))).status_code == 202
    bridge.start_worker()
    deliveries = f"{bridge.base_url}/v1/admin/deliveries"

    async def dead() -> list[dict[str, Any]]:
        return (await client.get(deliveries, params={"status": "dead"}, headers=AUTH)).json()["deliveries"]

    [record] = await wait_until(dead)
    assert record["type"] == "join.ready" and record["attempts"] == 4 and record["event_id"] == "evt_1"
    assert not hook.delivered
    msg_id = record["webhook_id"]
    one = (await client.get(f"{deliveries}/{msg_id}", headers=AUTH)).json()
    assert [a["status"] for a in one["attempt_log"]] == [500, 500, 500, 500]

    answer = await client.post(f"{deliveries}/{msg_id}/retry", headers=AUTH)
    assert answer.status_code == 202 and answer.json()["attempt"] == 4
    assert answer.json()["job_id"].startswith(f"{msg_id}:retry:")
    await wait_until(lambda: hook.delivered)
    assert [d["webhook_id"] for d in hook.delivered] == [msg_id]
    await wait_until(lambda: _status(client, f"{deliveries}/{msg_id}", "delivered"))
    assert await dead() == []
    assert_error(await client.post(f"{deliveries}/{msg_id}/retry", headers=AUTH), 409, "already_delivered")
    assert_error(await client.post(f"{deliveries}/msg_nope/retry", headers=AUTH), 404, "not_found")
    assert_error(await client.get(deliveries, params={"status": "lost"}, headers=AUTH), 400, "invalid_parameter")
    assert_error(await client.post(f"{deliveries}/retry", json={}, headers=AUTH), 400, "nothing_selected")


async def _status(client: httpx.AsyncClient, url: str, status: str) -> bool:
    return (await client.get(url, headers=AUTH)).json()["status"] == status


async def test_enable_an_endpoint_after_a_410_and_redeliver_what_was_held(
        admin_bridge, client, redis, receiver) -> None:
    hook, hook_url = receiver
    bridge = admin_bridge(webhook_url=hook_url)
    hook.answer_next(410)
    bridge.start_worker()
    await wait_until(lambda: worker_ready(redis))
    events = f"{bridge.base_url}/v1/events/default"
    assert (await client.post(events, json=joined("evt_1"))).status_code == 202
    deliveries = f"{bridge.base_url}/v1/admin/deliveries"

    async def held() -> list[dict[str, Any]]:
        return (await client.get(deliveries, params={"status": "disabled"}, headers=AUTH)).json()["deliveries"]

    await wait_until(lambda: _count(held, 1))
    assert (await client.post(events, json=joined("evt_2", user="7"))).status_code == 202
    await wait_until(lambda: _count(held, 2))                    # held without an attempt: the endpoint is off
    ids = {d["webhook_id"] for d in await held()}
    assert hook.attempts and len(hook.attempts) == 1 and hook.attempts[0][1] == 410
    first = next(iter(ids))
    assert_error(await client.post(f"{deliveries}/{first}/retry", headers=AUTH), 409, "endpoint_disabled")

    assert_error(await client.post(f"{bridge.base_url}/v1/admin/endpoints/nope/enable", headers=AUTH), 404,
                 "unknown_endpoint")
    answer = await client.post(f"{bridge.base_url}/v1/admin/endpoints/default/enable", json={"retry": True},
                               headers=AUTH)
    assert answer.status_code == 200
    result = answer.json()
    assert result["was_disabled"] and set(result["held"]) == ids and all(r["ok"] for r in result["retried"])
    await wait_until(lambda: len(hook.delivered) == 2)
    assert {d["webhook_id"] for d in hook.delivered} == ids
    assert await held() == []
    await wait_until(lambda: all_final(redis, ["default:evt_1", "default:evt_2"], "ok"))


async def _count(fetch: Callable[[], Any], n: int) -> bool:
    return len(await fetch()) == n
