"""OwtProvider against the strict OWT MCU simulator over real loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bridge.providers import build_provider
from bridge.providers.base import Capability, Lesson, ProviderError, Room, SettingsError, Unsupported, User
from bridge.providers.owt.adapter import OwtProvider
from bridge.providers.owt.wire import validate_room_options
from tests.fakes.server import Loopback, free_port, silent_listener
from tests.providers.owt.sim import OwtSim

SERVICE_ID = "5f0c1a2b3c4d5e6f7a8b9c0d"
SERVICE_KEY = "s3cr3t-service-key-value"
LESSON = Lesson(id="c12-l7", title="Algebra I")
TEACHER = User(id="7", name="Ada", role="teacher")
STUDENT = User(id="42", name="Bob", role="student")


@pytest.fixture
def sim(loopback: Loopback) -> OwtSim:
    return loopback.swap_in(OwtSim(SERVICE_ID, SERVICE_KEY))


def settings(base_url: str, **extra: object) -> dict[str, object]:
    return {"base_url": base_url, "service_id": SERVICE_ID, "service_key": SERVICE_KEY, **extra}


@pytest.fixture
def provider(sim: OwtSim, base_url: str, http: httpx.AsyncClient) -> OwtProvider:
    return build_provider("owt", "owt", settings(base_url), http)


async def running_room(provider: OwtProvider, sim: OwtSim) -> Room:
    """A created room with someone in it (so its mixed stream exists)."""
    room = await provider.create_room(LESSON)
    sim.add_participant(room.id, "7", "presenter")
    return room


# ---------------------------------------------------------------------------- settings and auth header


def test_registry_builds_owt() -> None:
    provider = build_provider("o", "owt", settings("https://owt.example:3000"), httpx.AsyncClient())
    assert isinstance(provider, OwtProvider)
    assert SERVICE_KEY not in repr(provider)


@pytest.mark.parametrize(("change", "key"), [
    ({"base_url": None}, "base_url"),
    ({"base_url": "owt.example"}, "base_url"),
    ({"service_id": ""}, "service_id"),
    ({"service_id": "a,b"}, "service_id"),
    ({"service_key": None}, "service_key"),
    ({"moderator_role": "pres enter"}, "moderator_role"),
    ({"guest_role": ""}, "guest_role"),
    ({"room_options": {"views": [{"video": {"parameters": {"framerate": 25}}}]}}, "room_options"),
    ({"room_options": {"roles": [{"role": "teacher"}]}}, "moderator_role"),
    ({"recording_container": "avi"}, "recording_container"),
    ({"token_ttl_s": 0}, "token_ttl_s"),
])
def test_settings_errors_name_the_key(change: dict[str, object], key: str) -> None:
    values = {k: v for k, v in {**settings("https://owt.example"), **change}.items() if v is not None}
    with pytest.raises(SettingsError) as info:
        build_provider("o", "owt", values, httpx.AsyncClient())
    assert info.value.key == key
    assert SERVICE_KEY not in str(info.value)


def test_mauth_header_format_and_signature(provider: OwtProvider) -> None:
    header = provider.mauth.header()
    assert header.startswith("MAuth realm=http://webrtc.intel.com,mauth_signature_method=HMAC_SHA256,")
    assert ", " not in header and SERVICE_KEY not in header
    fields = dict(part.split("=", 1) for part in header.removeprefix("MAuth ").split(","))
    assert list(fields) == ["realm", "mauth_signature_method", "mauth_serviceid", "mauth_cnonce",
                            "mauth_timestamp", "mauth_signature"]
    assert fields["mauth_serviceid"] == SERVICE_ID and 0 <= int(fields["mauth_cnonce"]) <= 99999
    assert abs(int(fields["mauth_timestamp"]) - time.time() * 1000) < 5000
    hexdigest = hmac.new(SERVICE_KEY.encode(), f"{fields['mauth_timestamp']},{fields['mauth_cnonce']}".encode(),
                         hashlib.sha256).hexdigest()
    assert fields["mauth_signature"] == base64.b64encode(hexdigest.encode()).decode()

    signed = provider.mauth.header("Zoë 42", "presenter")
    fields = dict(part.split("=", 1) for part in signed.removeprefix("MAuth ").split(","))
    assert list(fields)[2:4] == ["mauth_username", "mauth_role"]
    assert base64.b64decode(fields["mauth_username"]).decode() == "Zoë 42"
    to_sign = f"{fields['mauth_timestamp']},{fields['mauth_cnonce']},{fields['mauth_username']},presenter"
    hexdigest = hmac.new(SERVICE_KEY.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    assert fields["mauth_signature"] == base64.b64encode(hexdigest.encode()).decode()


def test_timestamps_strictly_increase(provider: OwtProvider) -> None:
    stamps = [int(dict(p.split("=", 1) for p in provider.mauth.header().split(","))["mauth_timestamp"])
              for _ in range(50)]
    assert stamps == sorted(set(stamps))


async def test_sim_rejects_bad_auth(sim: OwtSim, base_url: str, http: httpx.AsyncClient) -> None:
    url = base_url + "/v1/rooms"
    now = int(time.time() * 1000)

    def header(ts: int, cnonce: int = 1, *, sep: str = ",", key: str | None = None) -> str:
        return sep.join(["MAuth realm=http://webrtc.intel.com", "mauth_signature_method=HMAC_SHA256",
                         f"mauth_serviceid={SERVICE_ID}", f"mauth_cnonce={cnonce}", f"mauth_timestamp={ts}",
                         f"mauth_signature={sim.sign(ts, cnonce, key=key)}"])

    assert (await http.get(url, headers={"Authorization": header(now)})).status_code == 200
    bad = [header(now), header(now + 1, sep=", "), header(now - 10 * 60_000, 2), header(now + 3, 3, key="nope"),
           header(now + 4).replace("HMAC_SHA256", "HMAC_SHA1"), header(now + 5).replace(SERVICE_ID, "other"), ""]
    for value in bad:
        answer = await http.get(url, headers={"Authorization": value})
        assert answer.status_code == 401, value
        assert answer.json()["error"]["code"] == 1101


# ---------------------------------------------------------------------------- rooms


async def test_create_room_is_idempotent(provider: OwtProvider, sim: OwtSim) -> None:
    first = await provider.create_room(LESSON)
    second = await provider.create_room(LESSON)
    assert first.id == second.id and first.name == "c12-l7"
    assert [r["name"] for r in sim.rooms.values()] == ["c12-l7"]
    posts = [r for r in sim.requests if r["method"] == "POST"]
    assert len(posts) == 1 and json.loads(posts[0]["body"]) == {"name": "c12-l7"}
    assert all(r["query"] == {"page": "1", "per_page": "100"} for r in sim.requests if r["method"] == "GET")


async def test_create_room_reuses_a_room_made_elsewhere_and_pages(provider: OwtProvider, sim: OwtSim) -> None:
    for i in range(150):
        sim.add_room(f"other-{i}")
    existing = sim.add_room("c12-l7")
    room = await provider.create_room(LESSON)
    assert room.id == existing and len(sim.rooms) == 151
    assert [r["query"]["page"] for r in sim.requests] == ["1", "2"]


async def test_create_room_sends_validated_options(sim: OwtSim, base_url, http: httpx.AsyncClient) -> None:
    options = {"participantLimit": 30, "views": [{"label": "common", "video": {
        "format": {"codec": "h264"}, "parameters": {"framerate": 30, "bitrate": "0.8x", "keyFrameInterval": 5},
        "layout": {"fitPolicy": "crop", "templates": {"base": "lecture", "custom": []}}}}]}
    provider = build_provider("owt", "owt", settings(base_url, room_options=options), http)
    room = await provider.create_room(LESSON)
    stored = sim.rooms[room.id]
    assert stored["participantLimit"] == 30
    assert stored["views"][0]["video"]["layout"]["templates"]["base"] == "lecture"


@pytest.mark.parametrize("options", [
    {"views": [{"video": {"format": {"codec": "av1"}}}]},
    {"views": [{"audio": {"format": {"codec": "mp3"}}}]},
    {"views": [{"video": {"parameters": {"bitrate": "x0.8"}}}]},
    {"views": [{"video": {"parameters": {"keyFrameInterval": 10}}}]},
    {"views": [{"video": {"layout": {"templates": {"base": "grid"}}}}]},
    {"views": [{"video": {"layout": {"fitPolicy": "stretch"}}}]},
    {"views": [{"video": {"bgColor": {"r": 256, "g": 0, "b": 0}}}]},
    {"participantLimit": "many"},
    {"mediaOut": {"video": {"parameters": {"keyFrameInterval": [7]}}}},
    {"notifying": {"streamChange": "yes"}},
])
async def test_invalid_room_options_are_permanent_and_never_sent(
        provider: OwtProvider, sim: OwtSim, options: dict) -> None:
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON, options=options)
    assert info.value.code == "invalid_room_options" and not info.value.retryable
    with pytest.raises(ProviderError):
        await provider.update_room(LESSON, Room(id="x", name="c12-l7", extra={"options": options}))
    assert sim.requests == []


def test_room_option_validator_accepts_the_documented_model() -> None:
    options = {
        "name": "x", "participantLimit": -1, "inputLimit": 4,
        "roles": [{"role": "presenter", "publish": {"video": True, "audio": True},
                   "subscribe": {"video": True, "audio": True}}],
        "views": [{"label": "common",
                   "audio": {"format": {"codec": "opus", "sampleRate": 48000, "channelNum": 2}, "vad": True},
                   "video": {"format": {"codec": "vp9"},
                             "parameters": {"resolution": {"width": 1280, "height": 720}, "framerate": 24,
                                            "bitrate": "0.6x", "keyFrameInterval": 100},
                             "maxInput": 16, "bgColor": {"r": 0, "g": 255, "b": 0}, "motionfactor": 0.8,
                             "keepActiveInputPrimay": False,
                             "layout": {"fitPilicy": "letterbox", "templates": {"base": "void", "custom": [
                                 {"primary": "1", "region": [{"id": "1", "shape": "rectangle", "area": {
                                     "left": 0, "top": 0, "width": 1, "height": 1}}]}]}}}}],
        "mediaIn": {"audio": [{"codec": "pcmu"}], "video": [{"codec": "h265"}]},
        "mediaOut": {"audio": [{"codec": "aac"}], "video": {"format": [{"codec": "h264"}], "parameters": {
            "resolution": ["x3/4", "cif"], "framerate": [5, 15], "bitrate": ["x1.6"], "keyFrameInterval": [30]}}},
        "transcoding": {"audio": False, "video": {"format": True, "framerate": False, "bitrate": True,
                                                  "keyFrameInterval": True}},
        "notifying": {"participantActivities": True, "streamChange": False},
        "sip": {"sipServer": "sip.example", "username": "u", "password": "p"},
    }
    assert validate_room_options(options) == []


async def test_update_room_and_recreate_when_missing(provider: OwtProvider, sim: OwtSim) -> None:
    room = await provider.create_room(LESSON)
    updated = await provider.update_room(LESSON, room, options={"participantLimit": 5})
    assert updated.id == room.id and sim.rooms[room.id]["participantLimit"] == 5
    assert sim.rooms[room.id]["name"] == "c12-l7"
    sim.reset()
    again = await provider.update_room(LESSON, room, options={"participantLimit": 6})
    assert again.id != room.id and [r["participantLimit"] for r in sim.rooms.values()] == [6]


async def test_delete_room_twice(provider: OwtProvider, sim: OwtSim) -> None:
    room = await provider.create_room(LESSON)
    await provider.delete_room(LESSON, room)
    await provider.delete_room(LESSON, room)
    assert sim.rooms == {}
    with pytest.raises(ProviderError) as info:       # gone is only "done" for deleting calls
        await provider.join(LESSON, room, STUDENT)
    assert info.value.code == "1003" and info.value.status == 404 and not info.value.retryable


async def test_concurrent_calls_all_authenticate(provider: OwtProvider, sim: OwtSim) -> None:
    lessons = [Lesson(id=f"lesson-{i}") for i in range(8)]
    rooms = await asyncio.gather(*(provider.create_room(lesson) for lesson in lessons))
    assert len({r.id for r in rooms}) == 8 and len(sim.rooms) == 8


# ---------------------------------------------------------------------------- tokens


async def test_join_tokens_and_roles(provider: OwtProvider, sim: OwtSim) -> None:
    room = await provider.create_room(LESSON)
    before = datetime.now(UTC)
    teacher = await provider.join(LESSON, room, TEACHER)
    student = await provider.join(LESSON, room, STUDENT)
    assert (teacher.role, student.role) == ("presenter", "viewer")
    data = json.loads(base64.b64decode(teacher.token))
    assert set(data) >= {"tokenId", "host", "secure", "signature"} and data["host"] == sim.host
    assert sim.tokens[data["tokenId"]]["user"] == "7" and sim.tokens[data["tokenId"]]["role"] == "presenter"
    assert before + timedelta(seconds=170) <= teacher.expires_at <= datetime.now(UTC) + timedelta(seconds=180)
    query = parse_qs(urlsplit(teacher.join_url).query)
    assert query == {"room": [room.id], "token": [teacher.token]}
    token_call = next(r for r in sim.requests if r["path"].endswith("/tokens"))
    assert json.loads(token_call["body"]) == {"preference": {"isp": "isp", "region": "region"},
                                              "user": "7", "role": "presenter"}
    assert "mauth_username=Nw==,mauth_role=presenter" in token_call["auth"]
    pid = sim.redeem(student.token)
    assert sim.participants[room.id][pid]["role"] == "viewer"
    assert sim.participants[room.id][pid]["permission"]["publish"] == {"audio": False, "video": False}


async def test_custom_role_mapping(sim: OwtSim, base_url, http: httpx.AsyncClient) -> None:
    provider = build_provider("owt", "owt", settings(base_url, moderator_role="guest", guest_role="viewer"), http)
    room = await provider.create_room(LESSON)
    assert (await provider.join(LESSON, room, User(id="1", role="admin"))).role == "guest"


async def test_unknown_role_is_permanent(sim: OwtSim, base_url, http: httpx.AsyncClient) -> None:
    provider = build_provider("owt", "owt", settings(base_url, guest_role="audience"), http)
    room = await provider.create_room(LESSON)
    with pytest.raises(ProviderError) as info:
        await provider.join(LESSON, room, STUDENT)
    assert info.value.code == "1301" and not info.value.retryable and "role" in info.value.message


@pytest.mark.parametrize("text", ["not base64!!", base64.b64encode(b"[1, 2]").decode(),
                                  base64.b64encode(b'{"host": "h"}').decode()])
async def test_garbled_token_is_rejected(provider: OwtProvider, sim: OwtSim, text: str) -> None:
    room = await provider.create_room(LESSON)
    sim.inject(200, body=text, path="/tokens")
    with pytest.raises(ProviderError) as info:
        await provider.join(LESSON, room, STUDENT)
    assert info.value.code == "bad_token" and info.value.retryable     # unreadable: base.py says why


# ---------------------------------------------------------------------------- participants


async def test_kick_drops_every_session_of_the_user(provider: OwtProvider, sim: OwtSim) -> None:
    room = await provider.create_room(LESSON)
    a = sim.redeem((await provider.join(LESSON, room, STUDENT)).token)
    sim.redeem((await provider.join(LESSON, room, STUDENT)).token)
    teacher = sim.redeem((await provider.join(LESSON, room, TEACHER)).token)
    await provider.kick(LESSON, room, "42")
    assert set(sim.participants[room.id]) == {teacher}
    await provider.kick(LESSON, room, "42")           # repeat: nobody left to drop, no error
    await provider.kick(LESSON, room, "42", participant_id=teacher)
    await provider.kick(LESSON, room, "42", participant_id=a)     # already gone
    assert sim.participants[room.id] == {}


async def test_end_room_drops_everyone(provider: OwtProvider, sim: OwtSim) -> None:
    room = await provider.create_room(LESSON)
    for user in ("1", "2", "3"):
        sim.add_participant(room.id, user)
    await provider.end_room(LESSON, room)
    await provider.end_room(LESSON, room)
    assert sim.participants[room.id] == {} and room.id in sim.rooms
    await provider.delete_room(LESSON, room)
    await provider.end_room(LESSON, room)             # a deleted room is an ended room


# ---------------------------------------------------------------------------- streams


async def test_stream_out_for_the_recorder(provider: OwtProvider, sim: OwtSim) -> None:
    room = await provider.create_room(LESSON)
    with pytest.raises(ProviderError) as info:       # nobody joined yet: no mixed stream
        await provider.start_stream_out(LESSON, room, "rtmp://127.0.0.1:1935/live/c12")
    assert info.value.code == "no_mixed_stream" and info.value.retryable
    sim.add_participant(room.id, "7", "presenter")
    out = await provider.start_stream_out(LESSON, room, "rtmp://127.0.0.1:1935/live/c12")
    again = await provider.start_stream_out(LESSON, room, "rtmp://127.0.0.1:1935/live/c12")
    assert out == again and list(sim.outs[room.id]) == [out]
    mix = f"{room.id}-common"
    assert sim.outs[room.id][out]["media"] == {"audio": {"from": mix}, "video": {"from": mix}}
    assert [o["id"] for o in await provider.list_stream_outs(room)] == [out]
    await provider.stop_stream_out(LESSON, room, out)
    await provider.stop_stream_out(LESSON, room, out)
    assert sim.outs[room.id] == {}


# ---------------------------------------------------------------------------- errors


async def test_wrong_service_key_is_permanent(sim: OwtSim, base_url, http: httpx.AsyncClient) -> None:
    provider = build_provider("owt", "owt", settings(base_url, service_key="not-the-key"), http)
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.status == 401 and info.value.code == "1101" and not info.value.retryable
    assert "not-the-key" not in str(info.value) and sim.rooms == {}


async def test_5xx_is_retryable(provider: OwtProvider, sim: OwtSim) -> None:
    sim.inject(503, times=2)
    for _ in range(2):
        with pytest.raises(ProviderError) as info:
            await provider.create_room(LESSON)
        assert info.value.retryable and info.value.status == 503
    assert (await provider.create_room(LESSON)).name == "c12-l7"


async def test_500_with_owt_error_body_is_retryable(provider: OwtProvider, sim: OwtSim) -> None:
    sim.inject(500, body={"error": {"code": 1201, "message": "failed to call cluster"}})
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.retryable and info.value.code == "1201" and "cluster" in info.value.message


async def test_429_honours_retry_after(provider: OwtProvider, sim: OwtSim) -> None:
    sim.inject(429, headers={"Retry-After": "12"})
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.retryable and info.value.retry_after == 12.0


async def test_4xx_is_permanent_with_owt_code(provider: OwtProvider, sim: OwtSim) -> None:
    room = await provider.create_room(LESSON)
    sim.inject(403, body={"error": {"code": 1102, "message": "Permission denied"}})
    with pytest.raises(ProviderError) as info:
        await provider.join(LESSON, room, STUDENT)
    assert not info.value.retryable and info.value.code == "1102" and "Permission denied" in info.value.message
    sim.inject(404, body={"error": {"code": 1002, "message": "Service not found"}})
    with pytest.raises(ProviderError) as info:        # not "already gone": a real error
        await provider.delete_room(LESSON, room)
    assert info.value.code == "1002"


async def test_connection_refused_is_retryable(http: httpx.AsyncClient) -> None:
    provider = build_provider("owt", "owt", settings(f"http://127.0.0.1:{free_port()}"), http)
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.retryable and info.value.code == "ConnectError"


async def test_timeout_is_retryable() -> None:
    async with httpx.AsyncClient(timeout=0.3) as client:
        with silent_listener() as url:
            provider = build_provider("owt", "owt", settings(url), client)
            with pytest.raises(ProviderError) as info:
                await provider.create_room(LESSON)
    assert info.value.retryable and info.value.code == "ReadTimeout"


async def test_slow_answer_times_out(sim: OwtSim, base_url) -> None:
    sim.inject(200, body=[], delay=0.6)
    async with httpx.AsyncClient(timeout=0.2) as client:
        provider = build_provider("owt", "owt", settings(base_url), client)
        with pytest.raises(ProviderError) as info:
            await provider.create_room(LESSON)
    assert info.value.retryable


async def test_non_json_success_is_reported(provider: OwtProvider, sim: OwtSim) -> None:
    sim.inject(200, body="<html>maintenance</html>")
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.code == "bad_response"


# ---------------------------------------------------------------------------- unsupported


async def test_unsupported_operations(provider: OwtProvider, sim: OwtSim) -> None:
    room = Room(id="r", name="r")
    for capability in (Capability.BAN_USER, Capability.BAN_TOKEN, Capability.DIAL_OUT, Capability.HANG_UP):
        assert not provider.supports(capability)
    for capability in (Capability.ROOMS, Capability.JOIN, Capability.KICK, Capability.END_ROOM,
                       Capability.STREAM_OUT):
        assert provider.supports(capability)
    for call in (provider.ban_user(LESSON, room, "42"), provider.ban_token(LESSON, room, "t"),
                 provider.dial_out(LESSON, room, "+40747777777"), provider.hang_up(LESSON, room, "+40747777777")):
        with pytest.raises(Unsupported):
            await call
    assert sim.requests == []


# ---------------------------------------------------------------------------- attendance polling


async def test_attendees_are_the_rooms_connections_with_the_lms_user_ids(provider: OwtProvider, sim: OwtSim) -> None:
    room = await provider.create_room(LESSON)
    teacher = sim.add_participant(room.id, "7", "presenter")
    tab1 = sim.add_participant(room.id, "42", "viewer")
    tab2 = sim.add_participant(room.id, "42", "viewer")
    attendees = {a.participant_id: a for a in await provider.attendees(room)}
    assert set(attendees) == {teacher, tab1, tab2}          # two tabs are two connections
    assert (attendees[teacher].user_id, attendees[teacher].role) == ("7", "moderator")
    assert (attendees[tab2].user_id, attendees[tab2].role, attendees[tab2].name) == ("42", "guest", None)
    sim.leave(room.id, tab1)
    assert {a.participant_id for a in await provider.attendees(room)} == {teacher, tab2}


async def test_attendees_of_a_room_that_is_gone_is_none_and_errors_stay_errors(provider: OwtProvider,
                                                                               sim: OwtSim) -> None:
    room = await provider.create_room(LESSON)
    assert await provider.attendees(room) == []
    await provider.delete_room(LESSON, room)
    assert await provider.attendees(room) is None
    sim.inject(503)
    with pytest.raises(ProviderError) as info:
        await provider.attendees(Room(id=sim.add_room("other"), name="other"))
    assert info.value.retryable


def test_attendance_poll_setting() -> None:
    def poll_s(value: object) -> float:
        return build_provider("o", "owt", settings("https://owt.example:3000", attendance_poll_s=value),
                              httpx.AsyncClient()).attendance_poll_s

    assert poll_s(15) == 15.0 and poll_s(0.2) == 0.2 and poll_s(0) == 0.0
    assert build_provider("o", "owt", settings("https://owt.example:3000"), httpx.AsyncClient()).attendance_poll_s == 15
    for bad, problem in ((0.05, "0 (off) or at least 0.1"), (-1, "greater than or equal to 0"),
                         (True, "a number of seconds"), ("fast", "valid number")):
        with pytest.raises(SettingsError) as info:
            poll_s(bad)
        assert info.value.key == "attendance_poll_s" and problem in info.value.problem
