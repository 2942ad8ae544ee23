"""Settings: a TOML file named by BRIDGE_CONFIG plus environment, validated once at start-up.

`${VAR}` is substituted inside string values after parsing, so a multi-line PEM can come from the
environment. Every problem is reported as `<file>: <key>: <problem>` and stops start-up.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.providers import KINDS
from bridge.sources import FORMATS

DEFAULT_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    def __init__(self, origin: str, key: str, problem: str) -> None:
        super().__init__(f"{origin}: {key}: {problem}")


@dataclass(frozen=True)
class SourceConfig:
    name: str
    format: str
    provider: str
    token: str | None = field(default=None, repr=False)
    signing_secret: str | None = field(default=None, repr=False)
    webhook_url: str | None = None
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    webhook_events: tuple[str, ...] = ("*",)
    allow_private_network: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)   # format-specific (moodle event_map, roles)


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    kind: str
    settings: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Settings:
    sources: Mapping[str, SourceConfig]
    providers: Mapping[str, ProviderConfig]
    redis_url: str | None = None
    redis_confirm_fsync: bool = True      # WAITAOF in every accept call where the server has it
    data_dir: Path = Path("var")
    admin_token: str | None = field(default=None, repr=False)
    max_body_bytes: int = 256 * 1024
    max_batch: int = 500
    dedupe_window_s: int = 7 * 24 * 3600
    job_timeout_s: int = 120
    job_retry_base_s: float = 1.0
    worker_redis_connections: int = 30
    event_retention_s: int = 30 * 24 * 3600
    event_retention_max: int = 1_000_000
    recording_dir: Path = Path("var/recordings")
    recording_max_duration_s: int = 6 * 3600
    recording_options: Mapping[str, Any] = field(default_factory=dict)   # the rest of [recording], for the engine
    webhook_retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    webhook_timeout_s: float = 10.0
    origin: str = "<defaults>"


def _interpolate(value: Any, env: Mapping[str, str], origin: str, key: str) -> Any:
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ConfigError(origin, key, f"environment variable {name} is not set")
            return env[name]
        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, env, origin, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, origin, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


class _Reader:
    """Typed access to one TOML table that reports the full key path on error."""

    def __init__(self, table: Mapping[str, Any], origin: str, prefix: str) -> None:
        self.table, self.origin, self.prefix = table, origin, prefix

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.origin, f"{self.prefix}{key}", problem)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.table.get(key, default)
        if value is None or (isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))):
            return value
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise self.error(key, f"must be a {expected}, got {type(value).__name__}")

    def positive(self, key: str, default: float) -> Any:
        value = self.get(key, (int, float), default)
        if value <= 0:
            raise self.error(key, "must be greater than 0")
        return value


def _webhook_secrets(reader: _Reader) -> tuple[str, ...]:
    value = reader.get("webhook_secret", (str, list))
    secrets = [value] if isinstance(value, str) else list(value or [])
    for secret in secrets:
        if not isinstance(secret, str) or not secret.startswith("whsec_"):
            raise reader.error("webhook_secret", "every secret must be a string starting with whsec_")
    return tuple(secrets)


def _source(name: str, table: Mapping[str, Any], providers: Mapping[str, ProviderConfig],
            origin: str) -> SourceConfig:
    reader = _Reader(table, origin, f"sources.{name}.")
    fmt = reader.get("format", str, "canonical")
    if fmt not in FORMATS:
        raise reader.error("format", f"unknown format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
    token = reader.get("token", str) or None
    signing_secret = reader.get("signing_secret", str) or None
    if signing_secret and not signing_secret.startswith("whsec_"):
        raise reader.error("signing_secret", "must start with whsec_")
    if not token and not signing_secret and fmt == "moodle":
        raise reader.error("token", "a moodle source needs a token or a signing_secret")
    provider = reader.get("provider", str, next(iter(providers), "sandbox"))
    if provider not in providers:
        raise reader.error("provider", f"no provider named {provider!r} is configured")
    webhook_url = reader.get("webhook_url", str) or None
    secrets = _webhook_secrets(reader)
    if webhook_url and not webhook_url.startswith(("http://", "https://")):
        raise reader.error("webhook_url", "must be an http:// or https:// URL")
    if webhook_url and not secrets:
        raise reader.error("webhook_secret", "is required when webhook_url is set")
    events = reader.get("webhook_events", list, ["*"])
    known = {"token", "signing_secret", "format", "provider", "webhook_url", "webhook_secret",
             "webhook_events", "allow_private_network"}
    return SourceConfig(
        name=name, format=fmt, provider=provider, token=token, signing_secret=signing_secret,
        webhook_url=webhook_url, webhook_secrets=secrets, webhook_events=tuple(events),
        allow_private_network=bool(reader.get("allow_private_network", bool, False)),
        options={k: v for k, v in table.items() if k not in known},
    )


def _provider(name: str, table: Mapping[str, Any], origin: str) -> ProviderConfig:
    reader = _Reader(table, origin, f"providers.{name}.")
    kind = reader.get("kind", str)
    if kind is None:
        raise reader.error("kind", f"is required; one of {', '.join(sorted(KINDS))}")
    if kind not in KINDS:
        raise reader.error("kind", f"unknown kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    settings = {k: v for k, v in table.items() if k != "kind"}
    key_file = settings.pop("private_key_file", None)
    if key_file is not None:
        try:
            settings["private_key"] = Path(key_file).read_text()
        except OSError as exc:
            raise reader.error("private_key_file", f"cannot read {key_file}: {exc.strerror}") from None
    return ProviderConfig(name=name, kind=kind, settings=settings)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    path = env.get("BRIDGE_CONFIG")
    raw: dict[str, Any] = {}
    origin = "<defaults>"
    if path:
        origin = path
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(origin, "BRIDGE_CONFIG", "file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(origin, "<syntax>", str(exc)) from None
        raw = {k: _interpolate(v, env, origin, k) for k, v in raw.items()}
    return _settings_from(raw, env, origin)


def _settings_from(raw: Mapping[str, Any], env: Mapping[str, str], origin: str) -> Settings:
    top = _Reader(raw, origin, "")
    provider_tables = top.get("providers", dict, {}) or {"sandbox": {"kind": "sandbox"}}
    providers = {}
    for name, table in provider_tables.items():
        if not isinstance(table, dict):
            raise ConfigError(origin, f"providers.{name}", "must be a table")
        providers[name] = _provider(name, table, origin)
    source_tables = top.get("sources", dict, {}) or {"default": {"format": "canonical"}}
    sources = {}
    for name, table in source_tables.items():
        if not isinstance(table, dict):
            raise ConfigError(origin, f"sources.{name}", "must be a table")
        sources[name] = _source(name, table, providers, origin)

    redis = _Reader(top.get("redis", dict, {}), origin, "redis.")
    bridge = _Reader(top.get("bridge", dict, {}), origin, "bridge.")
    recording = _Reader(top.get("recording", dict, {}), origin, "recording.")
    webhooks = _Reader(top.get("webhooks", dict, {}), origin, "webhooks.")
    schedule = webhooks.get("retry_schedule", list, list(DEFAULT_RETRY_SCHEDULE))
    if not all(isinstance(s, int | float) and not isinstance(s, bool) and s >= 0 for s in schedule):
        raise webhooks.error("retry_schedule", "must be a list of non-negative numbers of seconds")
    data_dir = Path(bridge.get("data_dir", str, "var"))
    redis_url = env.get("REDIS_URL") or redis.get("url", str) or None
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(origin, "REDIS_URL" if env.get("REDIS_URL") else "redis.url",
                          "must start with redis://, rediss:// or unix://")
    # Managed add-ons (Heroku Redis) hand out rediss:// URLs with self-signed certificates and no way to
    # edit the URL: REDIS_SSL_CERT_REQS=none (or [redis] ssl_cert_reqs) adds what store.py reads from it.
    cert_reqs = env.get("REDIS_SSL_CERT_REQS") or redis.get("ssl_cert_reqs", str)
    if cert_reqs not in (None, "", "none", "required"):
        raise ConfigError(origin, "REDIS_SSL_CERT_REQS", "must be none or required")
    if cert_reqs and redis_url and redis_url.startswith("rediss://") and "ssl_cert_reqs=" not in redis_url:
        redis_url += ("&" if "?" in redis_url else "?") + f"ssl_cert_reqs={cert_reqs}"
    return Settings(
        sources=sources,
        providers=providers,
        redis_url=redis_url,
        redis_confirm_fsync=(env["REDIS_CONFIRM_FSYNC"].lower() not in ("0", "false", "no", "off")
                             if env.get("REDIS_CONFIRM_FSYNC") else bool(redis.get("confirm_fsync", bool, True))),
        data_dir=data_dir,
        admin_token=env.get("BRIDGE_ADMIN_TOKEN") or None,
        max_body_bytes=int(bridge.positive("max_body_bytes", 256 * 1024)),
        max_batch=int(bridge.positive("max_batch", 500)),
        dedupe_window_s=int(bridge.positive("dedupe_window_s", 7 * 24 * 3600)),
        job_timeout_s=int(bridge.positive("job_timeout_s", 120)),
        job_retry_base_s=float(bridge.positive("job_retry_base_s", 1.0)),
        worker_redis_connections=int(bridge.positive("worker_redis_connections", 30)),
        event_retention_s=int(bridge.positive("event_retention_s", 30 * 24 * 3600)),
        event_retention_max=int(bridge.positive("event_retention_max", 1_000_000)),
        recording_dir=Path(recording.get("dir", str, str(data_dir / "recordings"))).absolute(),
        recording_max_duration_s=int(recording.positive("max_duration_s", 6 * 3600)),
        recording_options={k: v for k, v in recording.table.items() if k not in ("dir", "max_duration_s")},
        webhook_retry_schedule=tuple(float(s) for s in schedule),
        webhook_timeout_s=float(webhooks.positive("timeout_s", 10.0)),
        origin=origin,
    )
