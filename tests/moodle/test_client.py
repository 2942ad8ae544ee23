"""The Moodle web-service client against the strict simulator over loopback HTTP, with a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import structlog

from bridge.config import SourceConfig
from bridge.moodle.answers import is_activity_entry, module_times
from bridge.moodle.client import MoodleClient, MoodleError, form_fields
from bridge.store import METRICS_MOODLE_WS, moodle_ws_paused_key
from tests.fakes.server import serve
from tests.moodle.sim import MoodleSim

WS_TOKEN = "ws-token-3b8e1f"


@pytest.fixture
def sim() -> Iterator[tuple[MoodleSim, str]]:
    moodle = MoodleSim(WS_TOKEN)
    moodle.add_user(31, "Ada", "Lovelace", "ada@example.edu")
    moodle.add_activity(12, 87, 9, "Algebra I - live lesson", opens=1764064800, closes=1764068400)
    moodle.add_course_event(2210, 12, "Revision session", 1764064800, 3600)
    moodle.add_activity_entry(2211, 87, 1764064800)
    with serve(moodle.app) as url:
        yield moodle, url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def client_for(url: str, http: httpx.AsyncClient, redis, token: str = WS_TOKEN) -> MoodleClient:
    source = SourceConfig(name="moodle", format="moodle", provider="sandbox", token="t", moodle_url=url,
                          ws_token=token)
    return MoodleClient(source, http, redis)


def test_arrays_are_form_encoded_as_moodle_reads_them() -> None:
    assert list(form_fields({"events": {"courseids": [12]}, "options": [{"name": "cmid", "value": True}]})) == [
        ("events[courseids][0]", "12"), ("options[0][name]", "cmid"), ("options[0][value]", "1")]


async def test_answers_are_read_and_cached(sim, http, redis) -> None:
    moodle, url = sim
    client = client_for(url, http, redis)
    for _ in range(2):
        assert (await client.user("31"))["fullname"] == "Ada Lovelace"
        course_event, activity_entry = await client.calendar_event("2210"), await client.calendar_event("2211")
    assert moodle.functions_called() == ["core_user_get_users_by_field", "core_calendar_get_calendar_event_by_id",
                                         "core_calendar_get_calendar_event_by_id"]
    assert not is_activity_entry(course_event) and is_activity_entry(activity_entry)
    assert activity_entry["instance"] == 87 and activity_entry["modulename"] == "bigbluebuttonbn"
    assert course_event["normalisedeventtype"] == activity_entry["normalisedeventtype"] == "course"
    (module,) = await client.course_modules("12", cmid="87")
    assert module_times(module) == (1764064800, 1764068400)
    assert (await client.course_module("87"))["name"] == "Algebra I - live lesson"


async def test_calendar_rows_carry_the_activity_id_and_string_ids(sim, http, redis) -> None:
    _, url = sim
    rows = {row["id"]: row for row in await client_for(url, http, redis).course_calendar("12", 0, 2**31)}
    assert rows["2210"]["modulename"] is None and not is_activity_entry(rows["2210"])
    assert rows["2211"]["instance"] == "9" and is_activity_entry(rows["2211"])


async def test_errors_come_with_http_200_and_are_errors(sim, http, redis) -> None:
    _, url = sim
    client = client_for(url, http, redis)
    with pytest.raises(MoodleError) as gone:
        await client.calendar_event("999")
    assert gone.value.code == "nopermissions"       # what Moodle says for an event that does not exist
    with pytest.raises(MoodleError) as missing:
        await client.course_module("404")
    assert missing.value.code == "invalidrecord"
    with pytest.raises(MoodleError) as unreachable:
        await client_for("http://127.0.0.1:9", http, redis).user("31")
    assert unreachable.value.code == "unreachable"
    assert not await redis.exists(moodle_ws_paused_key("moodle"))


async def test_a_refused_token_pauses_calls_with_one_log_line_and_a_metric(sim, http, redis) -> None:
    moodle, url = sim
    client = client_for(url, http, redis, token="wrong-token-5d1c")
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            with pytest.raises(MoodleError):
                await client.user("31")
    assert moodle.refused == ["core_user_get_users_by_field"]        # one call reached Moodle, not five
    (line,) = [entry for entry in logs if entry["event"] == "moodle.ws_misconfigured"]
    assert line["errorcode"] == "invalidtoken" and "wrong-token-5d1c" not in repr(logs)
    counts = {k.decode(): int(v) for k, v in (await redis.hgetall(METRICS_MOODLE_WS)).items()}
    assert counts == {'["moodle","core_user_get_users_by_field","access_denied"]': 1}


async def test_a_function_missing_from_the_service_is_an_access_error(http, redis) -> None:
    moodle = MoodleSim(WS_TOKEN, functions=frozenset({"core_user_get_users_by_field"}))
    with serve(moodle.app) as url:
        with pytest.raises(MoodleError) as refused:
            await client_for(url, http, redis).calendar_event("2210")
    assert refused.value.code == "accessexception"
    assert await redis.exists(moodle_ws_paused_key("moodle"))
