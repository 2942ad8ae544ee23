"""JaasProvider against the strict JaaS simulator over real loopback HTTP."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bridge.providers import build_provider
from bridge.providers.base import (
    Capability,
    Lesson,
    ProviderError,
    Room,
    SettingsError,
    Unsupported,
    User,
)
from bridge.providers.jaas.adapter import JaasProvider
from tests.fakes.server import Loopback, free_port, silent_listener
from tests.providers.jaas.sim import JaasSim

APP = "vpaas-magic-cookie-0123456789abcdef"
KID = f"{APP}/k1"
LESSON = Lesson(id="moodle:lms.example.edu:42", title="Algebra I")
ROOM_NAME = "moodle-lms-example-edu-42"
TEACHER = User(id="7", name="Ada Lovelace", email="ada@example.edu", role="teacher",
               avatar="https://lms.example.edu/ada.png")
STUDENT = User(id="42", name="Bob", email="bob@example.edu", role="student")


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def wrong_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def sim(loopback: Loopback, rsa_key: rsa.RSAPrivateKey) -> JaasSim:
    sim = JaasSim(APP)
    sim.add_key(KID, rsa_key.public_key())
    return loopback.swap_in(sim)


def settings(rsa_key: rsa.RSAPrivateKey, api_base: str, **extra: object) -> dict[str, object]:
    return {"app_id": APP, "key_id": "k1", "private_key": _pem(rsa_key), "api_base": api_base,
            "join_base": "https://meet.example", **extra}


@pytest.fixture
def provider(sim: JaasSim, base_url: str, rsa_key: rsa.RSAPrivateKey,
             http: httpx.AsyncClient) -> JaasProvider:
    return build_provider("jaas", "jaas", settings(rsa_key, base_url), http)


ROOM = Room(id=ROOM_NAME, name=ROOM_NAME)


# ---------------------------------------------------------------------------- settings


def test_registry_builds_jaas(rsa_key: rsa.RSAPrivateKey) -> None:
    provider = build_provider("j", "jaas", settings(rsa_key, "https://8x8.vc"), httpx.AsyncClient())
    assert isinstance(provider, JaasProvider)
    assert provider.kid == KID


@pytest.mark.parametrize(("change", "key"), [
    ({"app_id": None}, "app_id"),
    ({"app_id": "bad/app"}, "app_id"),
    ({"key_id": ""}, "key_id"),
    ({"private_key": None}, "private_key"),
    ({"private_key": "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LW1hdGVyaWFs\n-----END PRIVATE KEY-----"},
     "private_key"),
    ({"api_base": "ftp://x"}, "api_base"),
    ({"join_base": "not a url"}, "join_base"),
    ({"token_ttl_s": 0}, "token_ttl_s"),
    ({"token_ttl_s": "soon"}, "token_ttl_s"),
    ({"features": ["recording"]}, "features"),
    ({"features": {"recording": "yes"}}, "features"),
])
def test_settings_errors_name_the_key(rsa_key: rsa.RSAPrivateKey, change: dict[str, object], key: str) -> None:
    values = {k: v for k, v in {**settings(rsa_key, "https://8x8.vc"), **change}.items() if v is not None}
    with pytest.raises(SettingsError) as info:
        build_provider("j", "jaas", values, httpx.AsyncClient())
    assert info.value.key == key
    assert "c2VjcmV0" not in str(info.value) and "BEGIN" not in str(info.value)
    assert info.value.__cause__ is None


def test_settings_reject_non_rsa_key_and_both_key_sources(rsa_key: rsa.RSAPrivateKey, tmp_path) -> None:
    ec_pem = _pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(SettingsError, match="RSA"):
        build_provider("j", "jaas", settings(rsa_key, "https://8x8.vc", private_key=ec_pem), httpx.AsyncClient())
    path = tmp_path / "key.pem"
    path.write_text(_pem(rsa_key))
    with pytest.raises(SettingsError, match="not both"):
        build_provider("j", "jaas", settings(rsa_key, "https://8x8.vc", private_key_file=str(path)),
                       httpx.AsyncClient())
    with pytest.raises(SettingsError) as info:
        build_provider("j", "jaas", {"app_id": APP, "key_id": "k1", "private_key_file": str(tmp_path / "missing")},
                     httpx.AsyncClient())
    assert info.value.key == "private_key_file"


async def test_private_key_file_and_one_line_pem(rsa_key: rsa.RSAPrivateKey, tmp_path) -> None:
    path = tmp_path / "key.pem"
    path.write_text(_pem(rsa_key))
    from_file = build_provider("j", "jaas", {"app_id": APP, "key_id": f"{APP}/k1", "private_key_file": str(path)},
                             httpx.AsyncClient())
    one_line = build_provider("j", "jaas", {"app_id": APP, "key_id": "k1",
                                  "private_key": _pem(rsa_key).replace("\n", "\\n")}, httpx.AsyncClient())
    for provider in (from_file, one_line):
        assert provider.kid == KID
        grant = await provider.join(LESSON, ROOM, STUDENT)
        jwt.decode(grant.token, rsa_key.public_key(), algorithms=["RS256"], audience="jitsi")


async def test_repr_hides_the_key_and_admin_token(provider: JaasProvider, rsa_key: rsa.RSAPrivateKey) -> None:
    token = provider.admin_token()
    text = repr(provider) + str(provider)
    assert "PRIVATE" not in text and token not in text
    assert not any(line in text for line in _pem(rsa_key).splitlines()[1:-1])
    assert APP in repr(provider)


# ---------------------------------------------------------------------------- rooms and tokens


async def test_create_room_is_implicit_and_idempotent(provider: JaasProvider, sim: JaasSim) -> None:
    first = await provider.create_room(LESSON)
    second = await provider.create_room(LESSON)
    assert first == second
    assert first.id == first.name == ROOM_NAME
    updated = await provider.update_room(Lesson(id=LESSON.id, title="Algebra II"), first)
    assert updated.id == ROOM_NAME and updated.extra["title"] == "Algebra II"
    await provider.delete_room(LESSON, first)
    assert sim.requests == []


async def test_moderator_join_token(provider: JaasProvider, sim: JaasSim, rsa_key: rsa.RSAPrivateKey) -> None:
    before = int(time.time())
    grant = await provider.join(LESSON, ROOM, TEACHER)
    header = jwt.get_unverified_header(grant.token)
    assert header == {"alg": "RS256", "kid": KID, "typ": "JWT"}
    claims = jwt.decode(grant.token, rsa_key.public_key(), algorithms=["RS256"], audience="jitsi",
                        issuer="chat", options={"require": ["exp", "nbf", "room", "sub"]})
    assert claims["sub"] == APP and claims["room"] == ROOM_NAME
    assert before - 60 <= claims["nbf"] <= before
    assert before + 3600 <= claims["exp"] <= int(time.time()) + 3600
    assert claims["context"]["user"] == {"id": "7", "name": "Ada Lovelace", "email": "ada@example.edu",
                                         "avatar": "https://lms.example.edu/ada.png", "moderator": "true"}
    assert claims["context"]["features"]["recording"] == "true"
    assert set(claims["context"]["features"].values()) <= {"true", "false"}
    assert "admin" not in claims
    assert grant.expires_at == datetime.fromtimestamp(claims["exp"], UTC)
    assert grant.role == "moderator"
    url = urlsplit(grant.join_url)
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"https://meet.example/{APP}/{ROOM_NAME}"
    assert parse_qs(url.query)["jwt"] == [grant.token]
    assert sim.verify_participant_token(grant.token)["room"] == ROOM_NAME
    assert sim.requests == []     # minting a join token makes no call


async def test_guest_join_token_has_no_features(provider: JaasProvider, rsa_key: rsa.RSAPrivateKey) -> None:
    grant = await provider.join(LESSON, ROOM, STUDENT)
    claims = jwt.decode(grant.token, rsa_key.public_key(), algorithms=["RS256"], audience="jitsi")
    assert claims["context"]["user"]["moderator"] == "false"
    assert claims["context"]["user"]["id"] == "42"
    assert "features" not in claims["context"]
    assert grant.role == "participant"


async def test_join_token_ttl_and_wrong_key_rejected(sim: JaasSim, base_url, rsa_key, wrong_key, http) -> None:
    short = build_provider("jaas", "jaas", settings(rsa_key, base_url, token_ttl_s=120), http)
    grant = await short.join(LESSON, ROOM, STUDENT)
    claims = jwt.decode(grant.token, rsa_key.public_key(), algorithms=["RS256"], audience="jitsi")
    assert claims["exp"] - claims["nbf"] == 120 + 10
    forged = build_provider("jaas", "jaas", settings(wrong_key, base_url), http)
    bad = await forged.join(LESSON, ROOM, STUDENT)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(bad.token, rsa_key.public_key(), algorithms=["RS256"], audience="jitsi")


# ---------------------------------------------------------------------------- conference commands


def _bodies(sim: JaasSim) -> list[dict]:
    return [json.loads(r["body"]) for r in sim.requests if r["body"]]


async def test_end_room_destroys_with_full_name_and_caches_admin_token(
        provider: JaasProvider, sim: JaasSim, rsa_key: rsa.RSAPrivateKey) -> None:
    sim.join((await provider.join(LESSON, ROOM, STUDENT)).token)
    await provider.end_room(LESSON, ROOM)
    await provider.end_room(LESSON, ROOM)      # a repeat is harmless
    assert _bodies(sim) == [{"action": "DESTROY",
                             "payload": {"conferenceFullName": f"{ROOM_NAME}@conference.{APP}.8x8.vc"}}] * 2
    assert ROOM_NAME not in sim.conferences
    first, second = (r["auth"] for r in sim.requests)
    assert first == second and first.startswith("Bearer ")
    token = first.removeprefix("Bearer ")
    assert jwt.get_unverified_header(token)["kid"] == KID
    claims = jwt.decode(token, rsa_key.public_key(), algorithms=["RS256"], audience="jitsi", issuer="chat")
    assert claims["admin"] is True and claims["sub"] == APP
    assert "context" not in claims and "room" not in claims


async def test_admin_token_reminted_near_expiry(provider: JaasProvider, sim: JaasSim) -> None:
    await provider.end_room(LESSON, ROOM)
    provider._signer._admin_expires = time.time() + 30          # inside the refresh margin
    await provider.end_room(LESSON, ROOM)
    assert sim.requests[0]["auth"] != sim.requests[1]["auth"]


async def test_kick_targets_lms_user_id(provider: JaasProvider, sim: JaasSim) -> None:
    sim.join((await provider.join(LESSON, ROOM, STUDENT)).token)
    sim.join((await provider.join(LESSON, ROOM, TEACHER)).token)
    await provider.kick(LESSON, ROOM, "42")
    assert sim.conferences[ROOM_NAME] == {"7"}
    await provider.kick(LESSON, ROOM, "42", participant_id="7")
    assert sim.conferences[ROOM_NAME] == set()
    assert [b["payload"]["participantId"] for b in _bodies(sim)] == ["42", "7"]
    assert all(b["action"] == "KICK_PARTICIPANT" for b in _bodies(sim))


async def test_dial_out_and_hang_up(provider: JaasProvider, sim: JaasSim) -> None:
    await provider.dial_out(LESSON, ROOM, "+40 747-777-777")
    assert sim.dialled[ROOM_NAME] == {"+40747777777"}
    await provider.hang_up(LESSON, ROOM, "+40747777777")
    assert sim.dialled[ROOM_NAME] == set()
    assert _bodies(sim)[0] == {"action": "DIAL_OUT_PARTICIPANT", "payload": {
        "conferenceFullName": f"{ROOM_NAME}@conference.{APP}.8x8.vc", "phoneNo": "+40747777777"}}
    assert _bodies(sim)[1]["action"] == "HANG_UP_CALL"


@pytest.mark.parametrize("phone", ["0747777777", "+0747777777", "+1", "+1234567890123456", "call me", ""])
async def test_invalid_phone_is_permanent_and_never_sent(provider: JaasProvider, sim: JaasSim, phone: str) -> None:
    with pytest.raises(ProviderError) as info:
        await provider.dial_out(LESSON, ROOM, phone)
    assert info.value.code == "invalid_phone" and not info.value.retryable
    with pytest.raises(ProviderError, match="invalid_phone"):
        await provider.hang_up(LESSON, ROOM, phone)
    assert sim.requests == []


async def test_ban_user_and_ban_token(provider: JaasProvider, sim: JaasSim) -> None:
    grant = await provider.join(LESSON, ROOM, STUDENT)
    sim.join(grant.token)
    await provider.ban_user(LESSON, ROOM, "42")
    await provider.ban_user(LESSON, ROOM, "42")
    await provider.ban_token(LESSON, ROOM, grant.token)
    assert sim.banned_users == {"42"} and sim.banned_jwts == {grant.token}
    assert sim.conferences[ROOM_NAME] == set()
    paths = [r["path"] for r in sim.requests]
    assert paths == [f"/v1/_jaas/jaccess/v1/access-management/{APP}/ban/user/42"] * 2 + [
        f"/v1/_jaas/jaccess/v1/access-management/{APP}/ban/jwt"]
    with pytest.raises(ProviderError, match="invalid_token"):
        await provider.ban_token(LESSON, ROOM, "not-a-jwt")


# ---------------------------------------------------------------------------- errors


async def test_wrong_private_key_is_a_permanent_auth_error(sim: JaasSim, base_url, wrong_key, http) -> None:
    provider = build_provider("jaas", "jaas", settings(wrong_key, base_url), http)
    with pytest.raises(ProviderError) as info:
        await provider.end_room(LESSON, ROOM)
    assert info.value.status == 401 and not info.value.retryable
    assert info.value.code == "UNAUTHORIZED"
    assert len(sim.requests) == 1       # a freshly minted token refused: no pointless retry
    assert sim.commands == []


async def test_cached_admin_token_refused_is_reminted_once(provider: JaasProvider, sim: JaasSim) -> None:
    await provider.end_room(LESSON, ROOM)
    sim.inject(401, body={"status": 401, "error": "UNAUTHORIZED", "message": "revoked"})
    await provider.end_room(LESSON, ROOM)
    assert len(sim.requests) == 3 and len(sim.commands) == 2
    assert sim.requests[1]["auth"] != sim.requests[2]["auth"]


async def test_5xx_is_retryable(provider: JaasProvider, sim: JaasSim) -> None:
    sim.inject(503)
    with pytest.raises(ProviderError) as info:
        await provider.kick(LESSON, ROOM, "42")
    assert info.value.retryable and info.value.status == 503
    await provider.kick(LESSON, ROOM, "42")     # the service is back


async def test_429_honours_retry_after(provider: JaasProvider, sim: JaasSim) -> None:
    sim.inject(429, headers={"Retry-After": "7"})
    with pytest.raises(ProviderError) as info:
        await provider.dial_out(LESSON, ROOM, "+40747777777")
    assert info.value.retryable and info.value.retry_after == 7.0 and info.value.status == 429


async def test_429_with_http_date_retry_after(provider: JaasProvider, sim: JaasSim) -> None:
    when = datetime.fromtimestamp(time.time() + 30, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    sim.inject(429, headers={"Retry-After": when})
    with pytest.raises(ProviderError) as info:
        await provider.end_room(LESSON, ROOM)
    assert info.value.retryable and 20 <= (info.value.retry_after or 0) <= 31


async def test_4xx_is_permanent_with_provider_code_and_message(provider: JaasProvider, sim: JaasSim) -> None:
    sim.inject(400, body={"status": 400, "error": "BAD_REQUEST", "message": "room too long"})
    with pytest.raises(ProviderError) as info:
        await provider.end_room(LESSON, ROOM)
    assert not info.value.retryable and info.value.code == "BAD_REQUEST"
    assert "room too long" in info.value.message and info.value.status == 400


async def test_404_on_destroy_kick_hang_up_means_already_done(provider: JaasProvider, sim: JaasSim) -> None:
    sim.inject(404, times=3, body={"status": 404, "error": "NOT_FOUND", "message": "no such meeting"})
    await provider.end_room(LESSON, ROOM)
    await provider.kick(LESSON, ROOM, "42")
    await provider.hang_up(LESSON, ROOM, "+40747777777")
    sim.inject(404)
    with pytest.raises(ProviderError) as info:          # a ban that misses is an error
        await provider.ban_user(LESSON, ROOM, "42")
    assert not info.value.retryable


async def test_sim_rejects_bad_bodies(sim: JaasSim, base_url, provider: JaasProvider, http, rsa_key) -> None:
    url = base_url + "/v1/_jaas/conference-commands/v1/meeting"
    headers = {"Authorization": f"Bearer {provider.admin_token()}"}
    bad = [
        {"action": "EXPLODE", "payload": {"conferenceFullName": f"r@conference.{APP}.8x8.vc"}},
        {"action": "DESTROY", "conferenceFullName": f"r@conference.{APP}.8x8.vc"},
        {"action": "DESTROY", "payload": {"conferenceFullName": "r@conference.other-app.8x8.vc"}},
        {"action": "KICK_PARTICIPANT", "payload": {"conferenceFullName": f"r@conference.{APP}.8x8.vc"}},
        {"action": "DIAL_OUT_PARTICIPANT", "payload": {"conferenceFullName": f"r@conference.{APP}.8x8.vc",
                                                       "phoneNo": "0747"}},
    ]
    statuses = [(await http.post(url, json=body, headers=headers)).status_code for body in bad]
    assert statuses == [400, 400, 403, 400, 400]
    guest = (await provider.join(LESSON, ROOM, TEACHER)).token    # not an admin token
    answer = await http.post(url, json={"action": "DESTROY", "payload": {
        "conferenceFullName": f"r@conference.{APP}.8x8.vc"}}, headers={"Authorization": f"Bearer {guest}"})
    assert answer.status_code == 403
    expired = jwt.encode({"aud": "jitsi", "iss": "chat", "sub": APP, "admin": True, "nbf": 0, "exp": 1},
                         rsa_key, algorithm="RS256", headers={"kid": KID})
    answer = await http.post(url, json={}, headers={"Authorization": f"Bearer {expired}"})
    assert answer.status_code == 401
    assert sim.commands == []


async def test_connection_refused_is_retryable(rsa_key: rsa.RSAPrivateKey, http: httpx.AsyncClient) -> None:
    provider = build_provider("jaas", "jaas", settings(rsa_key, f"http://127.0.0.1:{free_port()}"), http)
    with pytest.raises(ProviderError) as info:
        await provider.end_room(LESSON, ROOM)
    assert info.value.retryable and info.value.code == "ConnectError"


async def test_timeout_is_retryable(rsa_key: rsa.RSAPrivateKey) -> None:
    async with httpx.AsyncClient(timeout=0.3) as client:
        with silent_listener() as url:
            provider = build_provider("jaas", "jaas", settings(rsa_key, url), client)
            with pytest.raises(ProviderError) as info:
                await provider.kick(LESSON, ROOM, "42")
    assert info.value.retryable and info.value.code == "ReadTimeout"


async def test_slow_answer_times_out(sim: JaasSim, base_url, rsa_key: rsa.RSAPrivateKey) -> None:
    sim.inject(200, delay=0.6)
    async with httpx.AsyncClient(timeout=0.2) as client:
        provider = build_provider("jaas", "jaas", settings(rsa_key, base_url), client)
        with pytest.raises(ProviderError) as info:
            await provider.end_room(LESSON, ROOM)
    assert info.value.retryable


# ---------------------------------------------------------------------------- unsupported


async def test_unsupported_operations(provider: JaasProvider, sim: JaasSim) -> None:
    assert Capability.STREAM_OUT not in provider.capabilities
    for capability in (Capability.JOIN, Capability.KICK, Capability.END_ROOM, Capability.DIAL_OUT,
                       Capability.HANG_UP, Capability.BAN_USER, Capability.BAN_TOKEN, Capability.ROOMS):
        assert provider.supports(capability)
    for call in (provider.start_stream_out(LESSON, ROOM, "rtmp://127.0.0.1/live"),
                 provider.stop_stream_out(LESSON, ROOM, "s")):
        with pytest.raises(Unsupported) as info:
            await call
        assert info.value.code == "unsupported" and not info.value.retryable
    assert sim.requests == []
