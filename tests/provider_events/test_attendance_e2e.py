"""Attendance end to end through real processes (bridge web in-thread over HTTP, a real worker): a
teacher and three students join with the bridge's tokens, one student drops and rejoins, one is
kicked through the bridge, the lesson ends; the provider's webhooks arrive reversed (every leave
before its join) and twice; the LMS gets the exact attendance.report, and a replay of the session's
events gives the same report."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import httpx

from bridge.schema.webhooks import AttendanceReport, ParticipantJoined, ParticipantLeft, RecordingReady
from bridge.store import room_owner_key
from tests.conftest import ROOT, wait_until
from tests.fakes.server import serve
from tests.provider_events.conftest import providers_config
from tests.storage.test_copy import provider_app

T0 = 1_763_805_600_000                        # 2025-11-22T10:00:00Z
LESSON = {"id": "c12-l7", "title": "Algebra I"}
PEOPLE = {"1": ("Grace Hopper", "teacher"), "2": ("Ada Lovelace", "student"),
          "3": ("Alan Turing", "student"), "4": ("Edsger Dijkstra", "student")}


def at(seconds: int) -> str:
    return datetime.fromtimestamp((T0 + seconds * 1000) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def expected_participants(kicked_role: str = "guest") -> list[dict[str, Any]]:
    """Teacher 1 from 0 s, students at 60/120/180 s; 3 drops at 600 s and is back at 660 s; 4 is kicked at
    1200 s; the room ends at 3000 s (who is still in closes there)."""
    def person(user_id: str, role: str, *spans: tuple[int, int]) -> dict[str, Any]:
        return {"user_id": user_id, "name": PEOPLE[user_id][0], "role": role,
                "first_joined_at": at(spans[0][0]), "last_left_at": at(spans[-1][1]),
                "total_s": float(sum(end - start for start, end in spans)),
                "intervals": [[at(start), at(end)] for start, end in spans], "precision": "exact"}
    return [person("1", "moderator", (0, 3000)), person("2", "guest", (60, 3000)),
            person("3", "guest", (120, 600), (660, 3000)), person("4", kicked_role, (180, 1200))]


async def post(http: httpx.AsyncClient, bridge, event: dict[str, Any]) -> dict[str, Any]:
    answer = await http.post(f"{bridge.base_url}/v1/events/default?wait=10", json={"lesson": LESSON, **event})
    assert answer.status_code in (200, 202), answer.text
    return answer.json()


async def join_token(http: httpx.AsyncClient, bridge, user_id: str) -> str:
    name, role = PEOPLE[user_id]
    answer = await post(http, bridge, {"id": f"join-{user_id}", "type": "user.joined",
                                       "user": {"id": user_id, "name": name, "role": role}})
    (ready,) = answer["webhooks"]
    return str(ready["data"]["token"])


async def deliver_reversed_and_twice(http: httpx.AsyncClient, url: str, outbox, end_type: str, type_key: str) -> None:
    """Everything but the end in reverse (every leave before its join), then the first three again, then
    the end twice: a provider retrying, reordering, repeating."""
    events = [e for e in outbox.events if e[type_key] != end_type]
    ends = [e for e in outbox.events if e[type_key] == end_type]
    answers = await outbox.send(http, url, [*reversed(events), *events[:3], *ends, *ends])
    statuses = [a.status_code for a in answers]
    assert statuses == [202] * len(events) + [200] * 3 + [202, 200], [a.text for a in answers]


async def replay_session(bridge, source: str) -> None:
    """`bridge replay` of every event of the lesson from this provider, as an operator runs it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "replay", "--source", source, "--lesson", LESSON["id"], "--wait", "20",
        env=bridge.env(), cwd=bridge.tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, output.decode()


async def participant_webhooks(hook, joined: int, left: int) -> None:
    """Until every participant.* webhook is in: the report is made from the ledger the accept calls
    filled and jumps the queue, so it can arrive before the participant jobs' webhooks."""
    await wait_until(lambda: (len(hook.of_type("participant.joined")), len(hook.of_type("participant.left")))
                     == (joined, left))


def report_data(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report["data"].items() if k != "replay_of"}


async def test_a_jaas_lesson_gives_the_exact_attendance_report(make_bridge, client, redis, receiver, jaas, hms,
                                                               key, tmp_path) -> None:
    hook, hook_url = receiver
    sim, url = jaas
    bridge = make_bridge(providers_config(tmp_path, key, url, hms[1], hook_url))
    bridge.start_worker()
    sim.outbox.clock_ms = T0
    tokens = {}
    for offset, user_id in ((0, "1"), (60, "2"), (60, "3"), (60, "4")):
        sim.outbox.advance(offset)
        tokens[user_id] = await join_token(client, bridge, user_id)
        sim.join(tokens[user_id])
    sim.outbox.advance(600 - 180)
    sim.leave("c12-l7", "3")
    sim.outbox.advance(60)
    sim.join(tokens["3"])
    sim.outbox.advance(1200 - 660)
    await post(client, bridge, {"id": "kick-4", "type": "user.removed", "user": {"id": "4"}})
    sim.outbox.advance(3000 - 1200)
    await post(client, bridge, {"id": "end", "type": "lesson.ended"})
    assert [e["eventType"] for e in sim.outbox.events].count("PARTICIPANT_LEFT") == 2   # the drop and the kick

    await deliver_reversed_and_twice(client, f"{bridge.base_url}/v1/providers/jaas/events", sim.outbox,
                                     "ROOM_DESTROYED", "eventType")
    (report,) = await wait_until(lambda: hook.of_type("attendance.report"))
    destroyed = sim.outbox.of_type("ROOM_DESTROYED", "eventType")[0]
    assert report["data"] == {
        "event_id": destroyed["idempotencyKey"], "source": "default", "lesson_id": "c12-l7", "provider": "jaas",
        "session_id": destroyed["sessionId"], "started_at": at(0), "ended_at": at(3000),
        "participants": expected_participants()}
    # The kick's leave was sent before its join, and a JaaS leave does not say when that connection joined:
    # participant.left says what the ledger knew when its job ran (0 s if the join was not yet accepted,
    # else the whole 1,020 s); the report above always has the whole interval.
    AttendanceReport.model_validate(report["data"])
    await participant_webhooks(hook, joined=5, left=2)
    for joined in hook.of_type("participant.joined"):
        ParticipantJoined.model_validate(joined["data"])
    kicked = [ParticipantLeft.model_validate(d["data"]).model_dump(exclude_none=True)
              for d in hook.of_type("participant.left") if d["data"]["reason"] == "kicked"]
    assert len(kicked) == 1 and (kicked[0]["joined_at"], kicked[0]["duration_s"]) in {(at(1200), 0.0),
                                                                                       (at(180), 1020.0)}
    assert kicked == [{"event_id": kicked[0]["event_id"], "source": "default", "lesson_id": "c12-l7",
                       "provider": "jaas", "user_id": "4", "name": "Edsger Dijkstra", "role": "guest",
                       "participant_id": kicked[0]["participant_id"], "session_id": destroyed["sessionId"],
                       "joined_at": kicked[0]["joined_at"], "left_at": at(1200),
                       "duration_s": kicked[0]["duration_s"], "reason": "kicked"}]
    assert len(hook.of_type("participant.joined")) == 5

    await replay_session(bridge, "provider:jaas")
    replayed = await wait_until(lambda: [r for r in hook.of_type("attendance.report") if r["data"].get("replay_of")])
    assert report_data(replayed[0]) == report_data(report)
    assert len(hook.of_type("attendance.report")) == 2


async def test_a_100ms_lesson_gives_the_exact_attendance_report(make_bridge, client, redis, receiver, jaas, hms,
                                                                key, tmp_path) -> None:
    hook, hook_url = receiver
    sim, url = hms
    bridge = make_bridge(providers_config(tmp_path, key, jaas[1], url, hook_url, provider="hms"))
    bridge.start_worker()
    sim.outbox.clock_ms = T0
    tokens, peers = {}, {}
    for offset, user_id in ((0, "1"), (60, "2"), (60, "3"), (60, "4")):
        sim.outbox.advance(offset)
        tokens[user_id] = await join_token(client, bridge, user_id)
        peers[user_id] = sim.join_peer(tokens[user_id], PEOPLE[user_id][0])
    (room_id,) = sim.rooms
    assert await redis.get(room_owner_key("hms", room_id)) == b"default\tc12-l7"
    sim.outbox.advance(600 - 180)
    sim.leave_peer(room_id, peers["3"], "network_error")
    sim.outbox.advance(60)
    sim.join_peer(tokens["3"], PEOPLE["3"][0])
    sim.outbox.advance(1200 - 660)
    await post(client, bridge, {"id": "kick-4", "type": "user.removed", "user": {"id": "4"}})
    sim.outbox.advance(3000 - 1200)
    await post(client, bridge, {"id": "end", "type": "lesson.ended"})

    await deliver_reversed_and_twice(client, f"{bridge.base_url}/v1/providers/hms/events", sim.outbox,
                                     "session.close.success", "type")
    (report,) = await wait_until(lambda: hook.of_type("attendance.report"))
    closed = sim.outbox.of_type("session.close.success", "type")[0]
    assert report["data"] == {
        "event_id": closed["id"], "source": "default", "lesson_id": "c12-l7", "provider": "hms",
        "session_id": closed["data"]["session_id"], "started_at": at(0), "ended_at": at(3000),
        "participants": expected_participants()}
    await participant_webhooks(hook, joined=5, left=2)
    # A 100ms leave carries its join time: even before its join arrived, participant.left has the duration.
    left = sorted((d["data"]["reason"], d["data"]["joined_at"], d["data"]["duration_s"])
                  for d in hook.of_type("participant.left"))
    assert left == [("disconnected", at(120), 480.0), ("kicked", at(180), 1020.0)]

    await replay_session(bridge, "provider:hms")
    replayed = await wait_until(lambda: [r for r in hook.of_type("attendance.report") if r["data"].get("replay_of")])
    assert report_data(replayed[0]) == report_data(report)


async def test_admin_shows_the_ledger_of_a_running_session(make_bridge, client, redis, jaas, hms, key,
                                                           tmp_path) -> None:
    sim, url = jaas
    bridge = make_bridge(providers_config(tmp_path, key, url, hms[1], "http://127.0.0.1:9/unused"),
                         env={"BRIDGE_ADMIN_TOKEN": "admin-secret"})
    bridge.start_worker()
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    sim.outbox.clock_ms = now_ms - 120_000
    sim.join(await join_token(client, bridge, "2"))
    await sim.outbox.send(client, f"{bridge.base_url}/v1/providers/jaas/events")
    admin = {"Authorization": "Bearer admin-secret"}
    page = f"{bridge.base_url}/v1/admin/lessons/{LESSON['id']}/attendance"

    async def ledger() -> dict[str, Any] | None:
        answer = await client.get(page, params={"source": "default"}, headers=admin)
        return answer.json() if answer.status_code == 200 else None

    shown = await wait_until(ledger)
    (ada,) = shown["participants"]
    assert shown["ended_at"] is None and shown["started_at"] == ada["first_joined_at"]
    assert ada["user_id"] == "2" and 120 <= ada["total_s"] < 180        # still in: counted up to now
    unknown = await client.get(f"{bridge.base_url}/v1/admin/lessons/other/attendance", headers=admin)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "no_attendance"
    assert (await client.get(page)).status_code == 401
    assert json.loads((await client.get(page, params={"source": "nope"}, headers=admin)).text)["error"]["code"] \
        == "unknown_source"
    assert ROOT.exists()


async def test_provider_recordings_become_recording_ready(make_bridge, client, redis, receiver, jaas, hms, key,
                                                          tmp_path) -> None:
    """JaaS RECORDING_UPLOADED and 100ms recording.success → recording.ready with the provider's link, its
    24 h expiry and origin `provider`, valid against the published data model."""
    hook, hook_url = receiver
    jaas_sim, jaas_url = jaas
    hms_sim, hms_url = hms
    bridge = make_bridge(providers_config(tmp_path, key, jaas_url, hms_url, hook_url, provider="hms",
                                          extra="[storage]\ncopy_provider_recordings = false"))
    bridge.start_worker()
    hms_sim.outbox.clock_ms = jaas_sim.outbox.clock_ms = T0
    hms_sim.join_peer(await join_token(client, bridge, "1"), PEOPLE["1"][0])
    (room_id,) = hms_sim.rooms
    await redis.set(room_owner_key("jaas", "jaas-room"), "default\tjaas-lesson")
    uploaded = jaas_sim.recording_uploaded("jaas-room", "https://recordings.example.com/j.mp4?token=abc", 3540)
    success = hms_sim.recording_success(room_id, "https://recordings.example.com/h.mp4?X-Amz-Signature=x", 3540,
                                        734003200)
    assert [a.status_code for a in await jaas_sim.outbox.send(client, f"{bridge.base_url}/v1/providers/jaas/events",
                                                               [uploaded])] == [202]
    assert [a.status_code for a in await hms_sim.outbox.send(client, f"{bridge.base_url}/v1/providers/hms/events",
                                                              [success])] == [202]
    ready = await wait_until(lambda: len(hook.of_type("recording.ready")) == 2 and hook.of_type("recording.ready"))
    by_provider = {r["data"]["provider"]: r["data"] for r in ready}
    for data in by_provider.values():
        RecordingReady.model_validate(data)
    assert by_provider["jaas"] == {
        "event_id": uploaded["idempotencyKey"], "source": "default", "lesson_id": "jaas-lesson", "provider": "jaas",
        "recording_id": f"jaas-{uploaded['idempotencyKey']}", "url": "https://recordings.example.com/j.mp4?token=abc",
        "expires_at": at(24 * 3600), "content_type": "video/mp4", "bytes": None, "duration_s": 3540.0,
        "origin": "provider"}
    assert by_provider["hms"] == {
        "event_id": success["id"], "source": "default", "lesson_id": "c12-l7", "provider": "hms",
        "recording_id": f"100ms-{success['id']}", "url": "https://recordings.example.com/h.mp4?X-Amz-Signature=x",
        "expires_at": at(24 * 3600), "content_type": "video/mp4", "bytes": 734003200, "duration_s": 3540.0,
        "origin": "provider"}


async def test_a_provider_recording_is_copied_into_storage_and_served_by_the_bridge(
        make_bridge, client, redis, receiver, jaas, hms, key, tmp_path) -> None:
    """copy_provider_recordings (the default): the provider's link is streamed into storage and
    recording.ready points at the bridge's own signed link, which serves the same bytes."""
    hook, hook_url = receiver
    jaas_sim, jaas_url = jaas
    recording = tmp_path / "provider.mp4"
    recording.write_bytes(os.urandom(300_000))
    with serve(provider_app(recording)) as link_base:
        bridge = make_bridge(providers_config(tmp_path, key, jaas_url, hms[1], hook_url,
                                              jaas_extra="allow_private_network = true"))
        bridge.start_worker()
        jaas_sim.outbox.clock_ms = T0
        await redis.set(room_owner_key("jaas", "jaas-room"), "default\tjaas-lesson")
        uploaded = jaas_sim.recording_uploaded("jaas-room", f"{link_base}/link", 12)
        url = f"{bridge.base_url}/v1/providers/jaas/events"
        assert [a.status_code for a in await jaas_sim.outbox.send(client, url, [uploaded])] == [202]
        (ready,) = await wait_until(lambda: hook.of_type("recording.ready"))
    data = RecordingReady.model_validate(ready["data"])
    assert data.recording_id == f"jaas-{uploaded['idempotencyKey']}" and data.origin == "provider"
    # Links start with [bridge] public_url (not set here: http://127.0.0.1:$PORT); this web is elsewhere.
    link = httpx.URL(data.url)
    assert link.path == f"/v1/recordings/{data.recording_id}" and "sig" in link.params
    assert data.bytes == 300_000 and data.expires_at is not None
    fetched = await client.get(f"{bridge.base_url}{link.raw_path.decode()}")
    assert fetched.status_code == 200 and fetched.content == recording.read_bytes()
