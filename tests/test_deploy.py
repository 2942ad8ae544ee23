"""The Heroku-style deploy surface: Procfile, app.json, .python-version, managed-Redis TLS settings."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
from redis.asyncio.connection import SSLConnection

from bridge.config import ConfigError, load_settings
from bridge.store import redis_client, worker_redis
from tests.conftest import ROOT


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_procfile_app_json_and_python_version_agree() -> None:
    processes = {name: command.strip() for name, command in procfile().items()}
    assert processes == {"web": "bridge serve", "worker": "bridge worker", "recorder": "bridge recorder"}
    manifest = json.loads((ROOT / "app.json").read_text())
    assert set(manifest["formation"]) == set(processes)
    assert len(manifest["name"]) <= 30 and len(manifest["description"]) <= 140
    assert any(addon["plan"].startswith("heroku-redis:") for addon in manifest["addons"])
    # Every variable the manifest offers is one the code reads.
    code = "\n".join(p.read_text() for p in (ROOT / "bridge").rglob("*.py"))
    for name, spec in manifest["env"].items():
        assert spec["description"] and spec.get("required") is False, name
        assert f'"{name}"' in code or name == "MOODLE_TOKEN", f"{name} is offered but never read"
    # The buildpack reads .python-version; it must satisfy the project's requires-python.
    version = (ROOT / ".python-version").read_text().strip()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert re.fullmatch(r"3\.\d+", version) and requires == ">=3.11" and int(version.split(".")[1]) >= 11


def test_rediss_url_with_self_signed_certificate_settings() -> None:
    # As some add-ons hand it out: the option in the URL itself.
    url = "rediss://:secret@redis.example:6380/0?ssl_cert_reqs=none"
    assert redis_client(url).connection_pool.connection_kwargs["ssl_cert_reqs"] == "none"
    assert worker_redis(url, 5, "q").connection_pool.connection_kwargs["ssl_cert_reqs"] == "none"
    # As Heroku Key-Value Store hands it out: a plain rediss:// URL nobody can edit, plus REDIS_SSL_CERT_REQS.
    env = {"REDIS_URL": "rediss://:secret@redis.example:6380", "REDIS_SSL_CERT_REQS": "none"}
    settings = load_settings(env)
    client = redis_client(settings.redis_url)
    assert client.connection_pool.connection_kwargs["ssl_cert_reqs"] == "none"
    assert client.connection_pool.connection_kwargs["password"] == "secret"
    worker = worker_redis(settings.redis_url, 5, "q").connection_pool
    kwargs = worker.connection_kwargs
    assert issubclass(worker.connection_class, SSLConnection) and kwargs["ssl_cert_reqs"] == "none"
    assert issubclass(client.connection_pool.connection_class, SSLConnection)
    assert (kwargs["host"], kwargs["port"], kwargs["password"]) == ("redis.example", 6380, "secret")
    # Verification stays on unless asked for, and the knob never touches plain redis:// URLs.
    verified = load_settings({"REDIS_URL": "rediss://redis.example:6380"}).redis_url
    assert redis_client(verified).connection_pool.connection_kwargs["ssl_cert_reqs"] == "required"
    plain = load_settings({"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_SSL_CERT_REQS": "none"}).redis_url
    assert plain == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="REDIS_SSL_CERT_REQS"):
        load_settings({**env, "REDIS_SSL_CERT_REQS": "maybe"})
