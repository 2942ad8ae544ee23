"""HmsProvider against the strict 100ms simulator, over real HTTP on loopback."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import jwt
import pytest

from bridge.providers import build_provider
from bridge.providers.base import Capability, Lesson, ProviderError, SettingsError, Unsupported, User
from bridge.providers.hms.adapter import HmsProvider
from bridge.providers.hms.wire import validate_role
from tests.fakes.server import Loopback, free_port
from tests.providers.hms.sim import HmsSim

SECRET = "hms-app-secret-for-tests-0123456789abcdef"
LESSON = Lesson(id="moodle:lms.example.edu:77", title="Algebra I")
TEACHER = User(id="42", name="Ada Lovelace", role="teacher")
STUDENT = User(id="7", name="Bob", role="student")


@pytest.fixture
def sim(loopback: Loopback) -> HmsSim:
    return loopback.swap_in(HmsSim(app_secret=SECRET))


def settings(base_url: str, **extra: object) -> dict[str, object]:
    return {"access_key": "hms-access-key", "app_secret": SECRET, "api_base": base_url,
            "policy_base": base_url, "join_base": "https://lessons.example/hms", **extra}


@pytest.fixture
def provider(base_url: str, sim: HmsSim, http: httpx.AsyncClient) -> HmsProvider:
    return build_provider("hms", "100ms", settings(base_url), http)


# ---- success paths -----------------------------------------------------------------------------

async def test_registry_builds_the_adapter(base_url: str, http: httpx.AsyncClient) -> None:
    assert isinstance(build_provider("hms", "100ms", settings(base_url), http), HmsProvider)


async def test_create_room_provisions_template_and_roles(provider: HmsProvider, sim: HmsSim) -> None:
    room = await provider.create_room(LESSON)
    assert room.name == LESSON.room_name == "moodle-lms-example-edu-77"
    [template] = [t for t in sim.templates.values() if t["name"] == "lesson-bridge"]
    assert sim.rooms[room.id]["template_id"] == template["id"] == room.extra["template_id"]
    teacher = template["roles"]["teacher"]["permissions"]
    assert teacher["removeOthers"] is True and teacher["endRoom"] is True
    assert template["roles"]["student"]["permissions"]["removeOthers"] is False
    assert sim.rooms[room.id]["description"] == "Algebra I"


async def test_create_room_twice_is_one_room_and_one_provisioning(
        provider: HmsProvider, sim: HmsSim, base_url: str, http: httpx.AsyncClient) -> None:
    first = await provider.create_room(LESSON)
    second = await provider.create_room(LESSON)
    assert first.id == second.id and len(sim.rooms) == 1
    assert sim.calls_to("/policy/v1/templates", "GET") == 1      # lazily once per process
    assert sim.calls_to("/policy/v1/templates", "POST") == 1
    # Another process finds the template by name and leaves it alone.
    other = build_provider("hms", "100ms", settings(base_url), http)
    assert (await other.create_room(LESSON)).id == first.id
    assert sim.calls_to("/policy/v1/templates", "POST") == 1
    assert len(sim.templates) == 1 and len(sim.rooms) == 1


async def test_existing_template_with_drifted_roles_is_fixed(provider: HmsProvider, sim: HmsSim) -> None:
    sim.templates["t1"] = {"id": "t1", "name": "lesson-bridge", "default": False, "settings": {"region": "auto"},
                           "roles": {"student": {"permissions": {"endRoom": False}}}}
    await provider.create_room(LESSON)
    roles = sim.templates["t1"]["roles"]
    assert roles["teacher"]["permissions"]["endRoom"] is True
    assert roles["teacher"]["permissions"]["removeOthers"] is True
    assert sim.calls_to("/policy/v1/templates/t1/roles/", "POST") == 2
    assert len(sim.templates) == 1


async def test_configured_template_id_is_used_untouched(
        base_url: str, sim: HmsSim, http: httpx.AsyncClient) -> None:
    sim.templates["ops"] = {"id": "ops", "name": "ops-managed", "default": False, "settings": {},
                            "roles": {"teacher": {}, "student": {}}}
    provider = build_provider("hms", "100ms", settings(base_url, template_id="ops"), http)
    room = await provider.create_room(LESSON)
    assert sim.rooms[room.id]["template_id"] == "ops"
    assert sim.calls_to("/policy/") == 0


async def test_management_token_is_reused_until_near_expiry(provider: HmsProvider, sim: HmsSim) -> None:
    await provider.create_room(LESSON)
    await provider.create_room(LESSON)
    assert len(sim.management_jtis) == 1
    claims = jwt.decode(provider.management_token(), SECRET, algorithms=["HS256"])
    assert claims["type"] == "management" and claims["version"] == 2
    assert claims["access_key"] == "hms-access-key"
    assert claims["nbf"] <= time.time() < claims["exp"]
    provider._management._expires = time.time() + 10      # about to expire: the next call mints a new one
    await provider.create_room(LESSON)
    assert len(sim.management_jtis) == 2


async def test_join_mints_verifiable_app_tokens(provider: HmsProvider, sim: HmsSim) -> None:
    room = await provider.create_room(LESSON)
    calls_before = len(sim.calls)
    grant = await provider.join(LESSON, room, TEACHER)
    assert len(sim.calls) == calls_before           # minted locally
    claims = jwt.decode(grant.token, SECRET, algorithms=["HS256"],
                        options={"require": ["exp", "iat", "nbf", "jti"]})
    assert claims["type"] == "app" and claims["version"] == 2
    assert claims["access_key"] == "hms-access-key"
    assert (claims["room_id"], claims["user_id"], claims["role"]) == (room.id, "42", "teacher")
    assert grant.role == "teacher"
    assert grant.expires_at == datetime.fromtimestamp(claims["exp"], UTC)
    assert 86400 - 5 <= (grant.expires_at - datetime.now(UTC)).total_seconds() <= 86400 + 1
    assert grant.join_url == f"https://lessons.example/hms/{room.id}?token={grant.token}"
    student = await provider.join(LESSON, room, STUDENT)
    assert jwt.decode(student.token, SECRET, algorithms=["HS256"])["role"] == "student"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(student.token, "wrong-secret-0123456789abcdef-0123456789", algorithms=["HS256"])
    assert sim.join_peer(grant.token) and sim.join_peer(student.token)   # the service accepts both


async def test_join_url_template_and_role_names_are_configurable(
        base_url: str, sim: HmsSim, http: httpx.AsyncClient) -> None:
    provider = build_provider("hms", "100ms", settings(base_url, teacher_role="host", student_role="guest",
                                           token_ttl_s=600,
                                           join_url_template="{join_base}/{room_name}/{role}?auth={token}"), http)
    room = await provider.create_room(LESSON)
    grant = await provider.join(LESSON, room, User(id="1", role="admin"))
    assert grant.role == "host"
    assert grant.join_url == f"https://lessons.example/hms/{room.name}/host?auth={grant.token}"
    assert jwt.decode(grant.token, SECRET, algorithms=["HS256"])["exp"] - time.time() <= 600
    template = next(iter(sim.templates.values()))
    assert set(template["roles"]) == {"host", "guest"}
    assert template["roles"]["host"]["permissions"]["endRoom"] is True


async def test_update_room(provider: HmsProvider, sim: HmsSim) -> None:
    room = await provider.create_room(LESSON)
    updated = await provider.update_room(Lesson(id=LESSON.id, title="Algebra II"), room)
    assert updated.id == room.id and sim.rooms[room.id]["description"] == "Algebra II"
    await provider.update_room(Lesson(id=LESSON.id, title="Algebra II"), room)
    assert len(sim.rooms) == 1


async def test_delete_room_disables_and_is_repeatable(provider: HmsProvider, sim: HmsSim) -> None:
    room = await provider.create_room(LESSON)
    await provider.delete_room(LESSON, room)
    await provider.delete_room(LESSON, room)
    assert sim.rooms[room.id]["enabled"] is False
    again = await provider.create_room(LESSON)       # rescheduled: the same room comes back enabled
    assert again.id == room.id and sim.rooms[room.id]["enabled"] is True


async def test_end_room(provider: HmsProvider, sim: HmsSim) -> None:
    room = await provider.create_room(LESSON)
    sim.join_peer((await provider.join(LESSON, room, STUDENT)).token)
    await provider.end_room(LESSON, room)
    assert sim.ended == [room.id] and room.id not in sim.peers
    await provider.end_room(LESSON, room)            # no active session any more: still fine
    assert sim.ended == [room.id]


async def test_kick_removes_every_peer_of_that_user_only(provider: HmsProvider, sim: HmsSim) -> None:
    room = await provider.create_room(LESSON)
    a1 = sim.join_peer((await provider.join(LESSON, room, STUDENT)).token)
    a2 = sim.join_peer((await provider.join(LESSON, room, STUDENT)).token)
    t = sim.join_peer((await provider.join(LESSON, room, TEACHER)).token)
    await provider.kick(LESSON, room, "7")
    assert set(sim.peers[room.id]) == {t}
    assert sorted(sim.removed) == sorted([(room.id, a1), (room.id, a2)])
    await provider.kick(LESSON, room, "7")           # repeat: nobody left to remove
    await provider.kick(LESSON, room, "999", participant_id=t)
    assert room.id not in sim.peers
    await provider.kick(LESSON, room, "42", participant_id=t)   # already gone: fine


# ---- errors ------------------------------------------------------------------------------------

async def test_wrong_secret_is_a_permanent_auth_error(base_url: str, sim: HmsSim, http: httpx.AsyncClient) -> None:
    provider = build_provider("hms", "100ms", settings(base_url, app_secret="not-the-secret-0123456789abcdef-xyz"),
                              http)
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    err = info.value
    assert not err.retryable and err.status == 401 and err.code == "401"
    assert "invalid management token" in err.message
    assert "not-the-secret" not in str(err) and "not-the-secret" not in repr(provider)


async def test_wrong_access_key_is_rejected(base_url: str, sim: HmsSim, http: httpx.AsyncClient) -> None:
    provider = build_provider("hms", "100ms", settings(base_url, access_key="someone-else"), http)
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.status == 401 and not info.value.retryable
    assert "someone-else" not in str(info.value)


async def test_5xx_is_retryable(provider: HmsProvider, sim: HmsSim) -> None:
    sim.inject(503, times=2)
    for _ in range(2):
        with pytest.raises(ProviderError) as info:
            await provider.create_room(LESSON)
        assert info.value.retryable and info.value.status == 503
    assert (await provider.create_room(LESSON)).name == LESSON.room_name


async def test_429_honours_retry_after(provider: HmsProvider, sim: HmsSim) -> None:
    sim.inject(429, headers={"Retry-After": "7"},
               body={"code": 429, "message": "rate limit exceeded", "details": []})
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.retryable and info.value.retry_after == 7.0 and info.value.code == "429"


async def test_4xx_is_permanent_with_provider_code_and_message(provider: HmsProvider, sim: HmsSim) -> None:
    await provider.create_room(LESSON)
    sim.inject(400, path="/v2/rooms", body={"code": 4001, "message": "room name is invalid", "details": ["name"]})
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    err = info.value
    assert not err.retryable and err.status == 400
    assert err.code == "4001" and "room name is invalid" in err.message


async def test_connection_refused_is_retryable(sim: HmsSim, http: httpx.AsyncClient) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    provider = build_provider("hms", "100ms", settings(dead), http)
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.retryable and info.value.code == "ConnectError"


async def test_timeout_is_retryable(base_url: str, sim: HmsSim) -> None:
    sim.inject(None, delay=0.6)
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.2)) as client:
        provider = build_provider("hms", "100ms", settings(base_url), client)
        with pytest.raises(ProviderError) as info:
            await provider.create_room(LESSON)
    assert info.value.retryable and "Timeout" in info.value.code


async def test_failed_provisioning_is_retried_next_time(provider: HmsProvider, sim: HmsSim) -> None:
    sim.inject(502, path="/policy/v1/templates")
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.retryable
    assert (await provider.create_room(LESSON)).name == LESSON.room_name
    assert len(sim.templates) == 1


# ---- settings and role validation --------------------------------------------------------------

async def test_settings_errors_name_the_key_never_the_secret(base_url: str, http: httpx.AsyncClient) -> None:
    for key in ("access_key", "app_secret"):
        bad = settings(base_url)
        del bad[key]
        with pytest.raises(SettingsError) as info:
            build_provider("hms", "100ms", bad, http)
        assert info.value.key == key
    for key, value in (("api_base", "ftp://nope"), ("token_ttl_s", "soon"), ("join_url_template", "{nope}"),
                       ("region", "mars"), ("template", "bad name!"), ("student_role", "teacher")):
        with pytest.raises(SettingsError) as info:
            build_provider("hms", "100ms", settings(base_url, **{key: value}), http)
        assert info.value.key == key and SECRET not in str(info.value)
    provider = build_provider("hms", "100ms", settings(base_url), http)
    assert SECRET not in repr(provider) and SECRET not in str(vars(provider).get("name"))


@pytest.mark.parametrize(("override", "field"), [
    ({"student": {"publishParams": {"video": {"bitRate": 5000}}}}, "roles.student.publishParams.video.bitRate"),
    ({"student": {"publishParams": {"screen": {"height": 1086}}}}, "roles.student.publishParams.screen.height"),
    ({"student": {"publishParams": {"audio": {"bitRate": 8}}}}, "roles.student.publishParams.audio.bitRate"),
    ({"student": {"publishParams": {"audio": {"codec": "aac"}}}}, "roles.student.publishParams.audio.codec"),
    ({"student": {"priority": 11}}, "roles.student.priority"),
    ({"student": {"subscribeParams": {"subscribeDegradation": {"packetLossThreshold": 0}}}},
     "roles.student.subscribeParams.subscribeDegradation.packetLossThreshold"),
    ({"student": {"subscribeParams": {"subscribeToRoles": ["ghost"]}}},
     "roles.student.subscribeParams.subscribeToRoles"),
    ({"teacher": {"permissions": {"endRoom": False}}}, "roles.teacher.permissions.endRoom"),
    ({"student": {"permissions": {"fly": True}}}, "roles.student.permissions.fly"),
])
async def test_out_of_range_role_params_are_refused_at_start(
        base_url: str, http: httpx.AsyncClient, override: dict, field: str) -> None:
    with pytest.raises(SettingsError) as info:
        build_provider("hms", "100ms", settings(base_url, roles=override), http)
    assert info.value.key == field


def test_validate_role_is_a_permanent_error_naming_the_field() -> None:
    with pytest.raises(ProviderError) as info:
        validate_role("student", {"publishParams": {"video": {"frameRate": 60}}})
    assert not info.value.retryable and info.value.code == "invalid_role_param"
    assert "roles.student.publishParams.video.frameRate" in info.value.message
    validate_role("student", {"publishParams": {"allowed": ["audio"], "audio": {"bitRate": 128, "codec": "opus"},
                                                "screen": {"bitRate": 500, "width": 1920, "height": 1080}},
                              "priority": 10})


async def test_valid_role_overrides_reach_the_template(base_url: str, sim: HmsSim, http: httpx.AsyncClient) -> None:
    provider = build_provider("hms", "100ms", settings(base_url, region="eu", roles={
        "student": {"publishParams": {"video": {"bitRate": 400, "width": 640, "height": 360}}}}), http)
    await provider.create_room(LESSON)
    template = next(iter(sim.templates.values()))
    assert template["roles"]["student"]["publishParams"]["video"]["bitRate"] == 400
    assert template["settings"]["region"] == "eu"


# ---- unsupported -------------------------------------------------------------------------------

async def test_unsupported_operations(provider: HmsProvider) -> None:
    room = await provider.create_room(LESSON)
    assert provider.supports(Capability.KICK) and provider.supports(Capability.END_ROOM)
    for cap in (Capability.BAN_USER, Capability.DIAL_OUT, Capability.STREAM_OUT):
        assert not provider.supports(cap)
    for call in (provider.ban_user(LESSON, room, "7"),
                 provider.dial_out(LESSON, room, "+100"), provider.start_stream_out(LESSON, room, "rtmp://x")):
        with pytest.raises(Unsupported) as info:
            await call
        assert info.value.code == "unsupported" and not info.value.retryable
