"""Tests for the survivors of the mutation run that README "### Mutation testing" lists as real gaps.

Each test fails with its mutant applied (checked by hand): signature headers missing one at a time
and a valid signature offered first, a non-object batch item under body-token auth, Moodle event ids
pinned across versions, multicast destinations, the webhook_events filter, and reclaiming several
recordings where the first one is still leased.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix

from bridge.config import SourceConfig, load_settings
from bridge.embedded import EmbeddedRedis
from bridge.recorder import may_reclaim, reclaim_orphans
from bridge.signing import SignatureError, sign, verify
from bridge.sources.moodle import event_id, normalise_id
from bridge.store import ACTIVE_RECORDINGS, recording_key, recording_lease_key
from bridge.webhooks import UnsafeDestination, checked_destination, wants
from tests.conftest import default_config, wait_until
from tests.test_intake import nothing_stored

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
BODY = b'{"type":"join.ready"}'
NOW = 1_000


# 1. signing.verify -------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
@pytest.mark.parametrize("absent", [None, ""], ids=["none", "empty"])
def test_each_signature_header_missing_alone_is_refused(missing: str, absent: str | None) -> None:
    """Kills `not ts and not sig` (a missing signature alone reached `.split()` on None) and
    `not id and not ts` (a missing id was signed as "None": here the signature is made for that)."""
    msg_id: str | None = "msg_1"
    timestamp: str | None = str(NOW)
    if missing == "webhook-id":
        msg_id = absent
        header: str | None = sign([SECRET], str(absent), NOW, BODY)   # what a mutant would expect
    else:
        header = sign([SECRET], "msg_1", NOW, BODY)
    if missing == "webhook-timestamp":
        timestamp = absent
    if missing == "webhook-signature":
        header = absent
    with pytest.raises(SignatureError, match="headers are required"):
        verify(SECRET, msg_id, timestamp, header, BODY, now=NOW)


def test_a_valid_signature_offered_first_still_verifies() -> None:
    """Kills `matched = ...` for `matched |= ...`: only the last offered signature counted."""
    good = sign([SECRET], "msg_1", NOW, BODY)
    wrong = sign([OTHER], "msg_1", NOW, BODY)
    verify(SECRET, "msg_1", str(NOW), f"{good} {wrong}", BODY, now=NOW)
    verify(SECRET, "msg_1", str(NOW), f"{good} v1,AAAA {wrong}", BODY, now=NOW)
    with pytest.raises(SignatureError):
        verify(SECRET, "msg_1", str(NOW), f"{wrong} v1,AAAA", BODY, now=NOW)


# 2. intake._check_body_token -----------------------------------------------------------------------

async def test_a_non_object_batch_item_under_body_token_auth_is_401(make_bridge: Any, client: httpx.AsyncClient,
                                                                    redis: aioredis.Redis) -> None:
    """Kills `isinstance(item, dict) or True`: `[5]` reached `5.get(...)` and answered 500."""
    bridge = make_bridge()
    url = f"{bridge.base_url}/v1/events/moodle"
    for body in ([5], ["token"], [None], [[{"token": "x"}]]):
        answer = await client.post(url, json=body)
        assert answer.status_code == 401, body
        assert answer.json()["error"]["code"] == "bad_token", body
    assert await nothing_stored(redis)


# 3. sources.moodle.normalise_id / event_id -----------------------------------------------------------

MOODLE_EVENT: dict[str, Any] = {
    "host": "lms.example.edu",
    "eventname": "\\mod_bigbluebuttonbn\\event\\meeting_joined",
    "objectid": 7,
    "contextinstanceid": "42",
    "userid": 7.0,
    "relateduserid": None,
    "timecreated": 1700000000,
    "courseid": 3,
}
# Computed once with the code of 2026-12: an id must not change across deploys, or events sent
# before a deploy are not recognised as duplicates after it.
MOODLE_EVENT_ID = "mdl_4df8f97aa170389cfdb6865c44e82813"


def test_a_moodle_event_id_is_stable_across_versions() -> None:
    """Kills the None/bool/float handling and digest-length mutants of normalise_id and event_id."""
    assert event_id(MOODLE_EVENT) == MOODLE_EVENT_ID
    without_related = {k: v for k, v in MOODLE_EVENT.items() if k != "relateduserid"}
    assert event_id(without_related) == MOODLE_EVENT_ID                 # absent and None are one
    assert event_id({**MOODLE_EVENT, "relateduserid": False}) == MOODLE_EVENT_ID   # bools are no id
    assert event_id({**MOODLE_EVENT, "relateduserid": True}) == MOODLE_EVENT_ID
    assert [normalise_id(v) for v in (None, True, False, 7, "7", " 7 ", 7.0, 7.5)] == [
        "", "", "", "7", "7", "7", "7", "7.5"]


def test_numeric_ids_as_int_string_and_float_give_one_event_id() -> None:
    ids = {event_id({**MOODLE_EVENT, "objectid": value, "userid": value}) for value in (7, "7", 7.0, " 7 ")}
    assert ids == {MOODLE_EVENT_ID}
    assert event_id({**MOODLE_EVENT, "objectid": 7.5}) != MOODLE_EVENT_ID


# 4. webhooks.checked_destination -----------------------------------------------------------------

def resolver(address: str) -> Any:
    """getaddrinfo answering every name with `address` (no DNS here), as in test_webhook_destination."""
    async def getaddrinfo(host: str, port: Any, **_: Any) -> list[tuple[Any, ...]]:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port or 443))]
    return getaddrinfo


@pytest.mark.parametrize("address", ["224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1"])
async def test_a_name_resolving_to_a_multicast_address_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                  address: str) -> None:
    """Kills dropping `is_multicast` (or `or`→`and` around it): these are multicast and nothing else."""
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolver(address))
    with pytest.raises(UnsafeDestination, match="a non-public address"):
        await checked_destination("https://lms.example.edu/hook", allow_private=False)


async def test_a_public_address_passes_the_same_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the test above: the refusal comes from the address, not the fake resolver."""
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolver("93.184.215.14"))
    destination = await checked_destination("https://lms.example.edu/hook", allow_private=False)
    assert str(destination.url) == "https://93.184.215.14/hook"


# 5. webhooks.wants -----------------------------------------------------------------------------------

def test_webhook_events_filter_by_exact_type_and_prefix() -> None:
    source = SourceConfig(name="lms", format="canonical", provider="sandbox",
                          webhook_events=("join.ready", "recording.*"))
    for wanted in ("join.ready", "recording.started", "recording.completed"):
        assert wants(source, wanted), wanted
    for unwanted in ("room.created", "recordingX", "recording", "join.readyX", "join", "join.ready.x", ""):
        assert not wants(source, unwanted), unwanted
    nothing = SourceConfig(name="lms", format="canonical", provider="sandbox", webhook_events=())
    for webhook_type in ("join.ready", "recording.started", "room.created"):
        assert not wants(nothing, webhook_type), webhook_type
    everything = SourceConfig(name="lms", format="canonical", provider="sandbox")
    assert wants(everything, "room.created")


# 6. recorder.reclaim_orphans -------------------------------------------------------------------------

async def test_one_call_reclaims_every_lapsed_lease_after_a_held_one(redis: aioredis.Redis,
                                                                     redis_server: EmbeddedRedis,
                                                                     tmp_path: Path) -> None:
    """Kills `zrange(0, +1)` (only the first two looked at) and `break` for `continue` (a held lease
    stopped the round): the first recording is leased, the next two have lapsed."""
    config = default_config(tmp_path, extra="[recording]\nlease_s = 1")
    settings = load_settings({"BRIDGE_CONFIG": str(config), "REDIS_URL": redis_server.url})
    await wait_until(lambda: may_reclaim(redis, 1), timeout=6)
    recordings = ["rec_held", "rec_lapsed_1", "rec_lapsed_2"]
    started = time.time()
    for n, recording_id in enumerate(recordings):
        job_id = f"default:{recording_id}:recording_start"
        await redis.zadd(ACTIVE_RECORDINGS, {recording_id: started + n})     # zrange order: held first
        await redis.hset(recording_key(recording_id), mapping={"job_id": job_id, "status": "recording"})
        await redis.set(in_progress_key_prefix + job_id, "1")
    await redis.set(recording_lease_key("rec_held"), "recorder-a", px=60_000)
    assert sorted(await reclaim_orphans(redis, settings)) == ["rec_lapsed_1", "rec_lapsed_2"]
    assert await redis.exists(in_progress_key_prefix + "default:rec_held:recording_start")
    for recording_id in recordings[1:]:
        assert not await redis.exists(in_progress_key_prefix + f"default:{recording_id}:recording_start")
    assert await redis.get(recording_lease_key("rec_held")) == b"recorder-a"
