"""Moodle body-token auth over real HTTP against a real Redis: only the exact token of the source passes."""

from __future__ import annotations

from tests.conftest import MOODLE_TOKEN, default_config
from tests.test_intake import moodle_fixture, nothing_stored

OTHER_TOKEN = "other-source-token-41d2"
NEAR_MISSES = {
    "empty": "",
    "first character": MOODLE_TOKEN[:1],
    "all but the last character": MOODLE_TOKEN[:-1],
    "one character more": MOODLE_TOKEN + "x",
    "case changed": MOODLE_TOKEN.upper(),
    "surrounding space": f" {MOODLE_TOKEN} ",
    "another source's token": OTHER_TOKEN,
}


async def test_only_the_exact_token_of_the_source_passes(make_bridge, client, redis, tmp_path) -> None:
    other = f'\n[sources.other]\nformat = "moodle"\ntoken = "{OTHER_TOKEN}"\nprovider = "sandbox"\n'
    bridge = make_bridge(default_config(tmp_path, extra=other))
    url = f"{bridge.base_url}/v1/events/moodle"
    event = moodle_fixture("bigbluebuttonbn_meeting_joined")
    for what, token in NEAR_MISSES.items():
        answer = await client.post(url, json={**event, "token": token})
        assert answer.status_code == 401, what
        assert answer.json()["error"]["code"] == "bad_token", what
    for not_a_string in (None, 0, [MOODLE_TOKEN], {"token": MOODLE_TOKEN}):
        assert (await client.post(url, json={**event, "token": not_a_string})).status_code == 401, not_a_string
    assert await nothing_stored(redis)
    # The other source's own token works there, and the right token here.
    assert (await client.post(f"{bridge.base_url}/v1/events/other", json={**event, "token": OTHER_TOKEN})
            ).status_code == 202
    assert (await client.post(url, json={**event, "token": MOODLE_TOKEN})).status_code == 202


async def test_every_event_of_a_batch_needs_the_exact_token(make_bridge, client, redis) -> None:
    bridge = make_bridge()
    event = moodle_fixture("bigbluebuttonbn_meeting_joined")
    right = {**event, "token": MOODLE_TOKEN}
    for token in ("", MOODLE_TOKEN[:-1]):
        batch = [right, {**event, "objectid": 2, "token": token}]
        answer = await client.post(f"{bridge.base_url}/v1/events/moodle", json=batch)
        assert answer.status_code == 401
        error = answer.json()["error"]
        assert error["code"] == "bad_token" and "[1].token" in error["message"]
    assert await nothing_stored(redis)                  # the good first event was not kept either
