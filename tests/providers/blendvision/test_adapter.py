"""BlendVisionProvider against the strict BlendVision chatroom simulator, over real HTTP on loopback."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import jwt
import pytest

from bridge.providers import build_provider
from bridge.providers.base import Capability, Lesson, ProviderError, Room, SettingsError, Unsupported, User
from bridge.providers.blendvision.adapter import BlendVisionProvider
from tests.fakes.server import Loopback, free_port
from tests.providers.blendvision.sim import BlendVisionSim

API_TOKEN = "bv-api-token-for-tests"
SIGNING = "bv-chatroom-signing-secret-0123456789"
LESSON = Lesson(id="moodle:lms.example.edu:77", title="Algebra I")
TEACHER = User(id="42", name="Ada Lovelace", role="teacher")
STUDENT = User(id="7", name="Bob", role="student")


@pytest.fixture
def sim(loopback: Loopback) -> BlendVisionSim:
    return loopback.swap_in(BlendVisionSim(api_token=API_TOKEN, org_id="org-0001", token_secret=SIGNING))


def settings(base_url: str, **extra: object) -> dict[str, object]:
    return {"api_base": base_url, "api_token": API_TOKEN, "org_id": "org-0001", **extra}


@pytest.fixture
def provider(base_url: str, sim: BlendVisionSim, http: httpx.AsyncClient) -> BlendVisionProvider:
    return build_provider("bv", "blendvision", settings(base_url), http)


def decode(token: str) -> dict:
    return jwt.decode(token, SIGNING, algorithms=["HS256"], options={"require": ["exp", "iat", "sub"]})


# ---- success paths -----------------------------------------------------------------------------

async def test_registry_builds_the_adapter(base_url: str, http: httpx.AsyncClient) -> None:
    assert isinstance(build_provider("bv", "blendvision", settings(base_url), http), BlendVisionProvider)


async def test_create_room_twice_is_one_chatroom(provider: BlendVisionProvider, sim: BlendVisionSim,
                                                 base_url: str, http: httpx.AsyncClient) -> None:
    first = await provider.create_room(LESSON)
    second = await provider.create_room(LESSON)
    other_process = await build_provider("bv", "blendvision", settings(base_url), http).create_room(LESSON)
    assert first.id == second.id == other_process.id and len(sim.chatrooms) == 1
    assert sim.chatrooms[first.id]["custom_counters"][0]["key"] == f"lesson-bridge:{LESSON.room_name}"
    assert first.name == LESSON.room_name
    other = await provider.create_room(Lesson(id="moodle:lms.example.edu:78"))
    assert other.id != first.id and len(sim.chatrooms) == 2


async def test_lookup_pages_through_many_chatrooms(base_url: str, sim: BlendVisionSim,
                                                   http: httpx.AsyncClient) -> None:
    provider = build_provider("bv", "blendvision", settings(base_url, page_size=2), http)
    for n in range(5):
        await provider.create_room(Lesson(id=f"lesson-{n}"))
    again = await provider.create_room(Lesson(id="lesson-4"))
    assert len(sim.chatrooms) == 5
    assert sim.chatrooms[again.id]["custom_counters"][0]["key"] == "lesson-bridge:lesson-4"


async def test_join_maps_roles_and_token_expiry(provider: BlendVisionProvider, sim: BlendVisionSim) -> None:
    room = await provider.create_room(LESSON)
    before = datetime.now(UTC).replace(microsecond=0)
    teacher = await provider.join(LESSON, room, TEACHER)
    student = await provider.join(LESSON, room, STUDENT)
    t_claims, s_claims = decode(teacher.token), decode(student.token)
    assert (teacher.role, t_claims["role"]) == ("ROLE_ADMIN", "ROLE_ADMIN")
    assert (student.role, s_claims["role"]) == ("ROLE_VIEWER", "ROLE_VIEWER")
    assert t_claims["sub"] == "42" and t_claims["name"] == "Ada Lovelace" and t_claims["chatroom_id"] == room.id
    assert abs((teacher.expires_at - datetime.fromtimestamp(t_claims["exp"], UTC)).total_seconds()) <= 2
    assert (teacher.expires_at - before).total_seconds() == pytest.approx(604800, abs=2)
    assert teacher.join_url == ""                    # no join page unless configured


async def test_guest_role_and_join_url_are_configurable(base_url: str, sim: BlendVisionSim,
                                                        http: httpx.AsyncClient) -> None:
    provider = build_provider("bv", "blendvision", settings(base_url, guest_role="ROLE_GUEST",
                                                  join_url_template="https://lms.example/chat/{chatroom_id}"
                                                                    "?token={token}"), http)
    room = await provider.create_room(LESSON)
    grant = await provider.join(LESSON, room, STUDENT)
    assert grant.role == "ROLE_GUEST" and decode(grant.token)["role"] == "ROLE_GUEST"
    assert grant.join_url == f"https://lms.example/chat/{room.id}?token={grant.token}"


async def test_update_room_changes_nothing(provider: BlendVisionProvider, sim: BlendVisionSim) -> None:
    room = await provider.create_room(LESSON)
    calls = len(sim.calls)
    updated = await provider.update_room(Lesson(id=LESSON.id, title="Algebra II"), room)
    assert updated.id == room.id and len(sim.calls) == calls


# ---- errors ------------------------------------------------------------------------------------

async def test_wrong_api_token_is_a_permanent_auth_error(base_url: str, sim: BlendVisionSim,
                                                         http: httpx.AsyncClient) -> None:
    provider = build_provider("bv", "blendvision", settings(base_url, api_token="stolen-token-xyz"), http)
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    err = info.value
    assert not err.retryable and err.status == 401 and err.code == "16" and "unauthenticated" in err.message
    assert "stolen-token-xyz" not in str(err) and "stolen-token-xyz" not in repr(provider)


async def test_wrong_org_is_a_permanent_error(base_url: str, sim: BlendVisionSim, http: httpx.AsyncClient) -> None:
    provider = build_provider("bv", "blendvision", settings(base_url, org_id="org-9999"), http)
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert not info.value.retryable and info.value.status == 403 and info.value.code == "7"


async def test_5xx_is_retryable(provider: BlendVisionProvider, sim: BlendVisionSim) -> None:
    room = await provider.create_room(LESSON)
    sim.inject(503, times=2, path="/tokens")
    for _ in range(2):
        with pytest.raises(ProviderError) as info:
            await provider.join(LESSON, room, STUDENT)
        assert info.value.retryable and info.value.status == 503 and info.value.code == "14"
    assert (await provider.join(LESSON, room, STUDENT)).token


async def test_429_honours_retry_after(provider: BlendVisionProvider, sim: BlendVisionSim) -> None:
    sim.inject(429, headers={"Retry-After": "3"}, body={"code": 8, "message": "resource exhausted", "details": []})
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.retryable and info.value.retry_after == 3.0 and info.value.code == "8"


async def test_4xx_is_permanent_with_grpc_code_and_message(provider: BlendVisionProvider,
                                                           sim: BlendVisionSim) -> None:
    with pytest.raises(ProviderError) as info:      # a chatroom that does not exist: real validation
        await provider.join(LESSON, Room(id="no-such-room", name="x"), STUDENT)
    assert not info.value.retryable and info.value.status == 404 and info.value.code == "5"
    assert "chatroom not found" in info.value.message
    sim.inject(400, body={"code": 3, "message": "invalid argument: subject", "details": [{"@type": "x"}]})
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert not info.value.retryable and info.value.code == "3" and "invalid argument: subject" in info.value.message


async def test_connection_refused_is_retryable(sim: BlendVisionSim, http: httpx.AsyncClient) -> None:
    provider = build_provider("bv", "blendvision", settings(f"http://127.0.0.1:{free_port()}"), http)
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.retryable and info.value.code == "ConnectError"


async def test_timeout_is_retryable(base_url: str, sim: BlendVisionSim) -> None:
    sim.inject(None, delay=0.6)
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.2)) as client:
        provider = build_provider("bv", "blendvision", settings(base_url), client)
        with pytest.raises(ProviderError) as info:
            await provider.create_room(LESSON)
    assert info.value.retryable and "Timeout" in info.value.code


# ---- settings and unsupported ------------------------------------------------------------------

async def test_settings_errors_name_the_key_never_the_secret(base_url: str, http: httpx.AsyncClient) -> None:
    for key in ("api_token", "org_id"):
        bad = settings(base_url)
        del bad[key]
        with pytest.raises(SettingsError) as info:
            build_provider("bv", "blendvision", bad, http)
        assert info.value.key == key
    for key, value in (("guest_role", "ROLE_ADMIN"), ("api_base", "api.example"), ("join_url_template", "{x}"),
                       ("page_size", 0)):
        with pytest.raises(SettingsError) as info:
            build_provider("bv", "blendvision", {**settings(base_url), key: value}, http)
        assert info.value.key == key and API_TOKEN not in str(info.value)
    assert API_TOKEN not in repr(build_provider("bv", "blendvision", settings(base_url), http))


async def test_unsupported_operations(provider: BlendVisionProvider, sim: BlendVisionSim) -> None:
    room = await provider.create_room(LESSON)
    assert provider.capabilities == frozenset({Capability.ROOMS, Capability.JOIN})
    calls = len(sim.calls)
    for call in (provider.kick(LESSON, room, "7"), provider.end_room(LESSON, room),
                 provider.delete_room(LESSON, room), provider.ban_user(LESSON, room, "7")):
        with pytest.raises(Unsupported) as info:
            await call
        assert info.value.code == "unsupported" and not info.value.retryable
    assert len(sim.calls) == calls
