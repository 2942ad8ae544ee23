"""The ledger's fold: out of order, twice, two tabs, a join with no leave, a person nobody knows."""

from __future__ import annotations

import itertools
import json

from bridge.attendance import Presence, iso_ms, leave_duration_s, report

T0 = 1_790_000_000_000          # ms


def joined(pid: str, at_s: float, user: str | None = "42", name: str = "Ada", role: str = "guest") -> Presence:
    return Presence("joined", T0 + int(at_s * 1000), pid, user, name, role)


def left(pid: str, at_s: float, user: str | None = "42", name: str = "Ada", reason: str = "left",
         joined_at_s: float | None = None) -> Presence:
    return Presence("left", T0 + int(at_s * 1000), pid, user, name, "guest", reason,
                    None if joined_at_s is None else T0 + int(joined_at_s * 1000))


def test_the_report_does_not_depend_on_arrival_order_or_repeats() -> None:
    events = [joined("p1", 0), left("p1", 60), joined("p2", 90), left("p2", 120),
              joined("t1", 0, user="7", name="Teacher", role="moderator")]
    expected = report("s1", events, None, T0 + 300_000)
    for order in itertools.permutations(events):
        assert report("s1", [*order, order[0]], None, T0 + 300_000) == expected
    ada, teacher = expected["participants"]
    assert (ada["user_id"], teacher["user_id"]) == ("42", "7")
    assert ada["intervals"] == [[iso_ms(T0), iso_ms(T0 + 60_000)], [iso_ms(T0 + 90_000), iso_ms(T0 + 120_000)]]
    assert ada["total_s"] == 90.0
    # The teacher never left: closed at the session's end.
    assert teacher["total_s"] == 300.0 and teacher["last_left_at"] == iso_ms(T0 + 300_000)
    assert teacher["role"] == "moderator"


def test_two_tabs_are_counted_once() -> None:
    events = [joined("tab1", 0), joined("tab2", 30), left("tab1", 60), left("tab2", 100)]
    [ada] = report("s", events, None, T0 + 200_000)["participants"]
    assert ada["intervals"] == [[iso_ms(T0), iso_ms(T0 + 100_000)]] and ada["total_s"] == 100.0


def test_a_leave_whose_join_never_came_counts_from_the_join_time_it_carries() -> None:
    [ada] = report("s", [left("p1", 50, joined_at_s=20)], None, T0 + 100_000)["participants"]
    assert ada["total_s"] == 30.0 and ada["first_joined_at"] == iso_ms(T0 + 20_000)
    [bob] = report("s", [left("p9", 50, name="Bob", user=None)], None, T0 + 100_000)["participants"]
    assert bob["total_s"] == 0.0 and bob["user_id"] is None and bob["name"] == "Bob"


def test_people_the_bridge_cannot_match_are_reported_by_name_after_known_users() -> None:
    events = [joined("g1", 0, user=None, name="Guest"), joined("p1", 1, user="3"), joined("p2", 2, user="10")]
    data = report("s", events, None, T0 + 10_000)
    assert [(p["user_id"], p["name"]) for p in data["participants"]] == [("10", "Ada"), ("3", "Ada"),
                                                                         (None, "Guest")]
    assert data["started_at"] == iso_ms(T0) and data["ended_at"] == iso_ms(T0 + 10_000)


def test_an_open_session_leaves_open_connections_out_and_times_keep_milliseconds() -> None:
    data = report("s", [joined("p1", 0.25)], None, None)
    assert data["participants"][0]["intervals"] == [] and data["ended_at"] is None
    assert iso_ms(T0 + 250) .endswith(".250Z")


def test_leave_duration_is_that_connections_own() -> None:
    ledger = [joined("tab1", 0), joined("tab2", 30)]
    assert leave_duration_s(left("tab2", 45), ledger) == 15.0
    assert leave_duration_s(left("tab9", 45, joined_at_s=40), ledger) == 5.0


def test_presence_survives_its_json_form() -> None:
    event = left("p1", 3, reason="kicked", joined_at_s=1)
    assert Presence.from_json(event.to_json()) == event
    assert json.loads(event.to_json())["reason"] == "kicked"


async def test_the_ledger_in_redis_keeps_each_event_once_and_one_end(redis) -> None:
    from bridge.attendance import Ledger, latest_session, load, mark_ended, mark_started, record

    ledger = Ledger("default", "lesson-a", "sess-1")
    await redis.delete(ledger.key)
    await mark_started(redis, ledger, T0)
    assert await record(redis, ledger, "k1", joined("p1", 10))
    assert not await record(redis, ledger, "k1", joined("p1", 10))        # the provider sent it twice
    assert await record(redis, ledger, "k2", left("p1", 70))
    assert await mark_ended(redis, ledger, T0 + 100_000, "ref-end-1")
    assert await mark_ended(redis, ledger, T0 + 100_000, "ref-end-1")      # the same job run again
    assert not await mark_ended(redis, ledger, T0 + 200_000, "ref-end-2")  # a second end changes nothing
    snapshot = await load(redis, ledger)
    assert (snapshot.started_ms, snapshot.ended_ms) == (T0, T0 + 100_000)
    [ada] = snapshot.report("sess-1")["participants"]
    assert ada["total_s"] == 60.0
    assert await latest_session(redis, "default", "lesson-a") == "sess-1"
    assert 0 < await redis.ttl(ledger.key) <= 90 * 24 * 3600
