"""JaaS through the real pipeline: join tokens that verify, kick and dial-out commands that the
simulator accepts, and a dial-out job that runs twice (arq is at-least-once) dialling once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.config import load_settings
from bridge.http_transport import ConnectionPerRequestTransport
from bridge.lifecycle import Job, Runtime, call_dial_out
from bridge.providers import build_provider
from tests.conftest import WEBHOOK_SECRET, wait_until, write_config
from tests.fakes.server import serve
from tests.providers.jaas.sim import JaasSim

APP_ID = "vpaas-magic-cookie-0123456789abcdef"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jaas(key) -> Iterator[tuple[JaasSim, str]]:
    sim = JaasSim(APP_ID)
    sim.add_key(f"{APP_ID}/k1", key.public_key())
    with serve(sim.app) as url:
        yield sim, url


def jaas_config(tmp_path: Path, key, api_base: str, hook_url: str) -> Path:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    (tmp_path / "jaas.pem").write_text(pem)
    return write_config(tmp_path / "bridge.toml", f"""
[providers.jaas]
kind = "jaas"
app_id = "{APP_ID}"
key_id = "k1"
private_key_file = "{tmp_path / 'jaas.pem'}"
api_base = "{api_base}"
join_base = "https://8x8.vc"

[sources.default]
format = "canonical"
provider = "jaas"
webhook_url = "{hook_url}"
webhook_secret = "{WEBHOOK_SECRET}"
allow_private_network = true
""")


async def test_join_kick_and_end_on_jaas(make_bridge, client, redis, receiver, jaas, key, tmp_path) -> None:
    hook, hook_url = receiver
    sim, url = jaas
    bridge = make_bridge(jaas_config(tmp_path, key, url, hook_url))
    bridge.start_worker()
    lesson = {"id": "c12-l7", "title": "Algebra I"}
    joined = await client.post(f"{bridge.base_url}/v1/events/default?wait=10", json={
        "id": "evt_join", "type": "user.joined", "lesson": lesson,
        "user": {"id": "42", "name": "Ada", "email": "ada@example.edu", "role": "teacher"}})
    (ready,) = joined.json()["webhooks"]
    claims = jwt.decode(ready["data"]["token"], key.public_key(), algorithms=["RS256"], audience="jitsi")
    assert claims["room"] == "c12-l7" and claims["context"]["user"]["id"] == "42"
    assert str(claims["context"]["user"]["moderator"]).lower() == "true"
    assert ready["data"]["join_url"] == f"https://8x8.vc/{APP_ID}/c12-l7?jwt={ready['data']['token']}"
    for event in ({"id": "evt_kick", "type": "user.removed", "lesson": lesson, "user": {"id": "42"}},
                  {"id": "evt_end", "type": "lesson.ended", "lesson": lesson}):
        assert (await client.post(f"{bridge.base_url}/v1/events/default", json=event)).status_code == 202
    await wait_until(lambda: hook.of_type("room.ended"))
    assert [d["type"] for d in hook.delivered] == ["join.ready", "participant.kicked", "room.ended"]
    assert sim.destroyed == ["c12-l7"]


async def test_dial_out_job_run_twice_dials_once(redis, redis_server, jaas, key, tmp_path) -> None:
    sim, url = jaas
    config = jaas_config(tmp_path, key, url, "http://127.0.0.1:9/unused")
    settings = load_settings({"BRIDGE_CONFIG": str(config), "REDIS_URL": redis_server.url})
    event = {"id": "evt_dial", "type": "call.dial_out", "data": {"phone": "+4930123456"},
             "lesson": {"id": "c12-l7", "title": "", "provider": "jaas", "record": False}}
    async with httpx.AsyncClient() as http:
        provider = build_provider("jaas", "jaas", settings.providers["jaas"].settings, http)
        runtime = Runtime(settings, redis, http, ConnectionPerRequestTransport(), {"jaas": provider})
        for _ in range(2):          # the same job again, as after a crash between the call and the ack
            await call_dial_out(Job(runtime, settings.sources["default"], "default:evt_dial", event, None))
    dials = [c for c in sim.commands if "DIAL" in str(c)]
    assert len(dials) == 1
