"""OpenMeetingsProvider against the strict OpenMeetings simulator, over real HTTP on loopback."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bridge.providers import build_provider
from bridge.providers.base import Capability, Lesson, ProviderError, SettingsError, Unsupported, User
from bridge.providers.openmeetings.adapter import OpenMeetingsProvider
from tests.fakes.server import Loopback, free_port
from tests.providers.openmeetings.sim import OpenMeetingsSim

PASSWORD = "!HansHans1-for-tests"
LESSON = Lesson(id="moodle:lms.example.edu:77", title="Algebra I")
TEACHER = User(id="42", name="Ada Lovelace", email="ada@example.edu", role="teacher")
STUDENT = User(id="7", name="Bob", role="student")


@pytest.fixture
def base_url(loopback: Loopback) -> str:
    return f"{loopback.url}/openmeetings"


@pytest.fixture
def sim(loopback: Loopback) -> OpenMeetingsSim:
    return loopback.swap_in(OpenMeetingsSim(password=PASSWORD))


def settings(base_url: str, **extra: object) -> dict[str, object]:
    return {"base_url": base_url, "user": "soapuser", "password": PASSWORD, **extra}


@pytest.fixture
def provider(base_url: str, sim: OpenMeetingsSim, http: httpx.AsyncClient) -> OpenMeetingsProvider:
    return build_provider("om", "openmeetings", settings(base_url), http)


# ---- success paths -----------------------------------------------------------------------------

async def test_registry_builds_the_adapter(base_url: str, http: httpx.AsyncClient) -> None:
    assert isinstance(build_provider("om", "openmeetings", settings(base_url), http), OpenMeetingsProvider)


async def test_create_room_uses_the_lesson_as_external_id(provider: OpenMeetingsProvider,
                                                          sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    stored = sim.rooms[int(room.id)]
    assert stored["externalId"] == LESSON.id and stored["externalType"] == "LessonBridge"
    assert stored["name"] == LESSON.room_name and stored["comment"] == "Algebra I"
    assert stored["type"] == "CONFERENCE"
    assert room.name == LESSON.room_name


async def test_create_room_twice_is_one_room_and_one_login(provider: OpenMeetingsProvider,
                                                           sim: OpenMeetingsSim) -> None:
    first = await provider.create_room(LESSON)
    second = await provider.create_room(LESSON)
    assert first.id == second.id and len(sim.rooms) == 1
    assert sim.logins == 1                      # the SID is cached and reused


async def test_join_gives_a_hash_url_with_the_moderator_flag(provider: OpenMeetingsProvider, base_url: str,
                                                             sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    before = datetime.now(UTC).replace(microsecond=0)
    teacher = await provider.join(LESSON, room, TEACHER)
    student = await provider.join(LESSON, room, STUDENT)
    parts = urlsplit(teacher.join_url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{base_url}/hash"
    assert parse_qs(parts.query)["secure"] == [teacher.token]
    entry = sim.enter(teacher.token)
    assert entry["options"] == {"roomId": int(room.id), "moderator": True, "showAudioVideoTest": True}
    assert entry["user"]["externalId"] == "42" and entry["user"]["firstname"] == "Ada"
    assert entry["user"]["lastname"] == "Lovelace" and entry["user"]["email"] == "ada@example.edu"
    assert teacher.role == "moderator" and student.role == "user"
    assert sim.enter(student.token)["options"]["moderator"] is False
    assert (teacher.expires_at - before).total_seconds() == pytest.approx(3600, abs=2)
    with pytest.raises(PermissionError):
        sim.enter(teacher.token)                 # single use


async def test_moderator_mapping_and_language_are_configurable(base_url: str, sim: OpenMeetingsSim,
                                                               http: httpx.AsyncClient) -> None:
    provider = build_provider("om", "openmeetings", settings(base_url, moderator_roles=["teacher", "ta"], language=4,
                                                   show_audio_video_test=False), http)
    room = await provider.create_room(LESSON)
    grant = await provider.join(LESSON, room, User(id="9", name="Tia", role="ta"))
    assert grant.join_url.endswith("&language=4")
    options = sim.enter(grant.token)["options"]
    assert options["moderator"] is True and options["showAudioVideoTest"] is False
    admin = await provider.join(LESSON, room, User(id="1", role="admin"))
    assert sim.enter(admin.token)["options"]["moderator"] is False


async def test_update_room(provider: OpenMeetingsProvider, sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    updated = await provider.update_room(Lesson(id=LESSON.id, title="Algebra II"), room)
    assert updated.id == room.id and len(sim.rooms) == 1
    assert sim.rooms[int(room.id)]["comment"] == "Algebra II"
    assert sim.rooms[int(room.id)]["externalId"] == LESSON.id


async def test_kick_removes_that_user_only(provider: OpenMeetingsProvider, sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    sim.enter((await provider.join(LESSON, room, TEACHER)).token)
    sim.enter((await provider.join(LESSON, room, STUDENT)).token)
    await provider.kick(LESSON, room, "7")
    await provider.kick(LESSON, room, "7")      # repeat is harmless
    assert sim.present[int(room.id)] == {("LessonBridge", "42")}
    assert sim.kicked == [(int(room.id), "LessonBridge", "7")] * 2
    assert sim.kick_all_calls == 0


async def test_end_room_closes_and_create_reopens(provider: OpenMeetingsProvider, sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    sim.enter((await provider.join(LESSON, room, STUDENT)).token)
    await provider.end_room(LESSON, room)
    await provider.end_room(LESSON, room)
    assert sim.rooms[int(room.id)]["closed"] is True and int(room.id) not in sim.present
    again = await provider.create_room(LESSON)
    assert again.id == room.id and sim.rooms[int(room.id)]["closed"] is False


async def test_delete_room_is_repeatable(provider: OpenMeetingsProvider, sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    await provider.delete_room(LESSON, room)
    await provider.delete_room(LESSON, room)
    assert sim.rooms == {}


# ---- sessions ----------------------------------------------------------------------------------

async def test_expired_sid_logs_in_again_and_retries_once(provider: OpenMeetingsProvider,
                                                          sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    sim.expire_sessions()
    calls_before = sim.calls_to("/user/hash")
    grant = await provider.join(LESSON, room, STUDENT)
    assert grant.token in sim.hashes
    assert sim.logins == 2 and sim.calls_to("/user/hash") == calls_before + 2   # refused once, then ok
    await provider.kick(LESSON, room, "7")
    assert sim.logins == 2                       # the new SID is reused


async def test_second_notallowed_is_not_retried_forever(provider: OpenMeetingsProvider,
                                                        sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    sim.deny_rights = True
    calls_before = sim.calls_to("/room/close/")
    with pytest.raises(ProviderError) as info:
        await provider.end_room(LESSON, room)
    assert not info.value.retryable and info.value.code == "error.notallowed"
    assert sim.calls_to("/room/close/") == calls_before + 2 and sim.logins == 2


async def test_wrong_password_is_a_permanent_auth_error(base_url: str, sim: OpenMeetingsSim,
                                                        http: httpx.AsyncClient,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    provider = build_provider("om", "openmeetings", settings(base_url, password="wrong-password-xyz"), http)
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    err = info.value
    assert not err.retryable and err.code == "-11" and "login failed" in err.message
    assert "wrong-password-xyz" not in str(err) and "wrong-password-xyz" not in repr(provider)
    assert "wrong-password-xyz" not in caplog.text and "user/login" in caplog.text   # httpx logged, redacted
    assert sim.rooms == {}


async def test_password_and_sid_never_reach_the_logs(provider: OpenMeetingsProvider, sim: OpenMeetingsSim,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    room = await provider.create_room(LESSON)
    await provider.join(LESSON, room, STUDENT)
    [sid] = sim.sessions
    assert "pass=***" in caplog.text and "sid=***" in caplog.text
    assert PASSWORD not in caplog.text and sid not in caplog.text


# ---- errors ------------------------------------------------------------------------------------

async def test_5xx_is_retryable(provider: OpenMeetingsProvider, sim: OpenMeetingsSim) -> None:
    await provider.create_room(LESSON)
    sim.inject(503, times=2, path="/room/")
    for _ in range(2):
        with pytest.raises(ProviderError) as info:
            await provider.create_room(LESSON)
        assert info.value.retryable and info.value.status == 503
    await provider.create_room(LESSON)
    assert len(sim.rooms) == 1


async def test_plain_500_is_retryable_not_a_relogin(provider: OpenMeetingsProvider, sim: OpenMeetingsSim) -> None:
    await provider.create_room(LESSON)
    sim.inject(500, body="java.lang.NullPointerException", path="/room/")
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.retryable and sim.logins == 1


async def test_429_honours_retry_after(provider: OpenMeetingsProvider, sim: OpenMeetingsSim) -> None:
    sim.inject(429, headers={"Retry-After": "12"}, body="slow down")
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.retryable and info.value.retry_after == 12.0 and info.value.status == 429


async def test_service_result_error_is_permanent_with_code_and_message(provider: OpenMeetingsProvider,
                                                                       sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    sim.inject(200, path="/user/hash",
               body={"serviceResult": {"code": -26, "message": "Room is full", "type": "ERROR"}})
    with pytest.raises(ProviderError) as info:
        await provider.join(LESSON, room, STUDENT)
    assert not info.value.retryable and info.value.code == "-26" and "Room is full" in info.value.message


async def test_4xx_is_permanent(provider: OpenMeetingsProvider, sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    sim.inject(400, path="/room/kick/")
    with pytest.raises(ProviderError) as info:
        await provider.kick(LESSON, room, "7")
    assert not info.value.retryable and info.value.status == 400
    assert info.value.code == "-1" and "injected failure" in info.value.message


async def test_connection_refused_is_retryable(sim: OpenMeetingsSim, http: httpx.AsyncClient) -> None:
    provider = build_provider("om", "openmeetings", settings(f"http://127.0.0.1:{free_port()}/openmeetings"), http)
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.retryable and info.value.code == "ConnectError"
    assert PASSWORD not in str(info.value)


async def test_timeout_is_retryable(base_url: str, sim: OpenMeetingsSim) -> None:
    sim.inject(None, delay=0.6, path="/user/login")
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.2)) as client:
        provider = build_provider("om", "openmeetings", settings(base_url), client)
        with pytest.raises(ProviderError) as info:
            await provider.create_room(LESSON)
    assert info.value.retryable and "Timeout" in info.value.code


# ---- settings and unsupported ------------------------------------------------------------------

async def test_settings_errors_name_the_key_never_the_secret(base_url: str, http: httpx.AsyncClient) -> None:
    for key in ("base_url", "user", "password"):
        bad = settings(base_url)
        del bad[key]
        with pytest.raises(SettingsError) as info:
            build_provider("om", "openmeetings", bad, http)
        assert info.value.key == key
    for key, value in (("base_url", "om.example"), ("room_type", "PARTY"), ("room_capacity", 0),
                       ("moderator_roles", "teacher"), ("language", "fr"), ("show_audio_video_test", "yes")):
        with pytest.raises(SettingsError) as info:
            build_provider("om", "openmeetings", {**settings(base_url), key: value}, http)
        assert info.value.key == key and PASSWORD not in str(info.value)
    assert PASSWORD not in repr(build_provider("om", "openmeetings", settings(base_url), http))


async def test_unsupported_operations(provider: OpenMeetingsProvider) -> None:
    room = await provider.create_room(LESSON)
    for cap in (Capability.BAN_USER, Capability.DIAL_OUT, Capability.STREAM_OUT):
        assert not provider.supports(cap)
    assert provider.supports(Capability.KICK)
    for call in (provider.ban_user(LESSON, room, "7"),
                 provider.hang_up(LESSON, room, "+100")):
        with pytest.raises(Unsupported):
            await call


# ---- attendance polling ------------------------------------------------------------------------

async def test_attendees_name_bridge_users_by_external_id_and_others_by_name(provider: OpenMeetingsProvider,
                                                                             sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    assert await provider.attendees(room) == []
    sim.enter((await provider.join(LESSON, room, TEACHER)).token)
    sim.visit(int(room.id), "Walter")
    teacher, walter = sorted(await provider.attendees(room), key=lambda a: a.user_id is None)
    assert (teacher.user_id, teacher.name, teacher.role) == ("42", "Ada Lovelace", None)
    assert (walter.user_id, walter.name) == (None, "Walter") and walter.participant_id != teacher.participant_id
    sim.leave(int(room.id), "42")
    assert [a.name for a in await provider.attendees(room)] == ["Walter"]


async def test_attendees_read_every_shape_of_the_user_list(provider: OpenMeetingsProvider,
                                                           sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    one = {"id": 5, "firstname": "Bob", "lastname": "", "externalId": "7", "externalType": "LessonBridge"}
    for body in ([one], {"userDTO": one}, {"userDTO": [one]}):
        sim.inject(200, body=body, path="/room/users/")
        [bob] = await provider.attendees(room)
        assert (bob.participant_id, bob.user_id, bob.name) == ("5", "7", "Bob")
    sim.inject(200, body={"userDTO": "nobody"}, path="/room/users/")
    with pytest.raises(ProviderError) as info:
        await provider.attendees(room)
    assert info.value.code == "bad_response" and info.value.retryable


async def test_attendees_log_in_again_when_the_sid_expired(provider: OpenMeetingsProvider,
                                                           sim: OpenMeetingsSim) -> None:
    room = await provider.create_room(LESSON)
    sim.expire_sessions()
    assert await provider.attendees(room) == []
    assert sim.logins == 2
