"""Fixtures of the provider-event tests: the JaaS and 100ms simulators, and a bridge configured with
both providers' webhook settings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import FIXTURES, lms_source_toml, write_config
from tests.fakes.server import serve
from tests.providers.hms.sim import HmsSim
from tests.providers.jaas.sim import JaasSim

APP_ID = "vpaas-magic-cookie-c2824d584eac4489a1e32e4e164d5a3c"
JAAS_SECRET = "jaas-webhook-secret"
HMS_HEADERS = {"X-Lesson-Bridge-Secret": "hms-webhook-secret", "X-Tenant": "school-7"}
ROOM = "moodle-lms-example-edu-87"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jaas(key) -> Iterator[tuple[JaasSim, str]]:
    sim = JaasSim(APP_ID, webhook_secret=JAAS_SECRET)
    sim.add_key(f"{APP_ID}/k1", key.public_key())
    with serve(sim.app) as url:
        yield sim, url


@pytest.fixture
def hms() -> Iterator[tuple[HmsSim, str]]:
    sim = HmsSim(webhook_headers=HMS_HEADERS)
    with serve(sim.app) as url:
        yield sim, url


def providers_config(tmp_path: Path, key: rsa.RSAPrivateKey, jaas_url: str, hms_url: str, hook_url: str,
                     provider: str = "jaas", jaas_extra: str = "", extra: str = "") -> Path:
    """JaaS and 100ms with webhook settings, a 100ms without them (`quiet`), one source."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    (tmp_path / "jaas.pem").write_text(pem)
    hms = HmsSim()
    headers = ", ".join(f'"{name}" = "{value}"' for name, value in HMS_HEADERS.items())
    return write_config(tmp_path / "bridge.toml", f"""
[providers.jaas]
kind = "jaas"
app_id = "{APP_ID}"
key_id = "k1"
private_key_file = "{tmp_path / 'jaas.pem'}"
api_base = "{jaas_url}"
webhook_secret = "{JAAS_SECRET}"
{jaas_extra}

[providers.hms]
kind = "100ms"
access_key = "{hms.access_key}"
app_secret = "{hms.app_secret}"
api_base = "{hms_url}"
policy_base = "{hms_url}"
webhook_headers = {{ {headers} }}

[providers.quiet]
kind = "100ms"
access_key = "{hms.access_key}"
app_secret = "{hms.app_secret}"

{lms_source_toml(provider, hook_url)}
[bridge]
data_dir = "{tmp_path / 'var'}"
job_timeout_s = 20
{extra}
""")


def fixture(name: str, **changes: Any) -> dict[str, Any]:
    body = json.loads((FIXTURES / name).read_text())
    return {**body, **changes}


@pytest.fixture
def bridge(make_bridge, tmp_path, key, jaas, hms, redis):
    return make_bridge(providers_config(tmp_path, key, jaas[1], hms[1], "http://127.0.0.1:9/unused"))


