"""Settings: a TOML file named by BRIDGE_CONFIG plus environment, validated once at start-up against the
declaration in bridge/schema/config.py.

`${VAR}` is substituted inside string values after parsing, so a multi-line PEM can come from the
environment. Every problem is reported as `<file>: <dotted.key>: <problem>` and stops start-up.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bridge.schema.config import (
    ENVIRONMENT,
    Config,
    KeyProblem,
    ProviderConfig,
    RecorderConfig,
    SourceConfig,
    StorageTable,
)

__all__ = ["ConfigError", "ProviderConfig", "Settings", "SourceConfig", "load_settings"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
             "string_type": "a string", "dict_type": "a table", "model_type": "a table", "tuple_type": "an array",
             "list_type": "an array", "path_type": "a path string"}
_TOML_TYPES = {str: "string", int: "integer", float: "float", bool: "boolean", dict: "table", list: "array"}


class ConfigError(Exception):
    def __init__(self, origin: str, key: str, problem: str) -> None:
        super().__init__(f"{origin}: {key}: {problem}")


@dataclass(frozen=True)
class Settings:
    """What the processes read: the declared file with the environment applied, under the names the code
    uses. No defaults here (they are declared once, in bridge.schema.config); [bridge] keys are fields of
    the same names."""

    sources: Mapping[str, SourceConfig]
    providers: Mapping[str, ProviderConfig]
    redis_url: str | None                   # with [redis] ssl_cert_reqs applied
    redis_confirm_fsync: bool
    webhook_retry_schedule: tuple[float, ...]
    webhook_timeout_s: float
    recording: RecorderConfig
    storage: StorageTable
    origin: str                             # the file, or <defaults>
    data_dir: Path
    public_url: str | None
    max_body_bytes: int
    max_batch: int
    dedupe_window_s: int
    job_timeout_s: int
    job_retry_base_s: float
    worker_redis_connections: int
    event_retention_s: int
    event_retention_max: int
    record_retention_s: int
    admin_token: str | None = field(repr=False)
    port: int | None
    worker_concurrency: int | None          # None: one `bridge worker` process per core it may use


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


def _read(path: str, env: Mapping[str, str]) -> dict[str, Any]:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(path, "BRIDGE_CONFIG", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "<syntax>", str(exc)) from None
    return {k: _interpolate(v, env, path, k) for k, v in raw.items()}


def _apply_environment(raw: dict[str, Any], env: Mapping[str, str], origin: str) -> dict[str, str]:
    """Set every ENVIRONMENT variable that has a value over the file's key; returns {dotted key: variable}."""
    applied = {}
    for variable, spec in ENVIRONMENT.items():
        section, key = spec.key.split(".")
        table = raw.setdefault(section, {})
        if not spec.in_file and isinstance(table, dict) and key in table:
            raise ConfigError(origin, spec.key, f"is read from the environment variable {variable} only")
        value = env.get(variable)
        if not value or not isinstance(table, dict):
            continue
        try:
            table[key] = spec.parse(value)
        except ValueError as exc:
            raise ConfigError(origin, variable, str(exc)) from None
        applied[spec.key] = variable
    return applied


def _dotted(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key


def _config_error(exc: ValidationError, origin: str, from_env: Mapping[str, str]) -> ConfigError:
    """The first problem, as one line naming the dotted key (or the environment variable that set it)."""
    error = exc.errors(include_url=False)[0]
    key, kind, cause = _dotted(error["loc"]), error["type"], error.get("ctx", {}).get("error")
    if isinstance(cause, KeyProblem):
        key, problem = ".".join(part for part in (key, cause.key) if part), cause.problem
    elif kind == "extra_forbidden":
        problem = "unknown key"
    elif kind == "missing":
        problem = "is required"
    elif kind in _EXPECTED:
        problem = f"must be {_EXPECTED[kind]}, got {_TOML_TYPES.get(type(error['input']), 'something else')}"
    elif isinstance(cause, ValueError):
        problem = str(cause)
    else:
        problem = error["msg"].replace("Input should be", "must be", 1)
    return ConfigError(origin, from_env.get(key, key), problem)


def _redis_url(config: Config) -> str | None:
    url, cert_reqs = config.redis.url, config.redis.ssl_cert_reqs
    if url and cert_reqs and url.startswith("rediss://") and "ssl_cert_reqs=" not in url:
        url += ("&" if "?" in url else "?") + f"ssl_cert_reqs={cert_reqs}"
    return url


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    path = env.get("BRIDGE_CONFIG")
    origin = path or "<defaults>"
    raw = _read(path, env) if path else {}
    from_env = _apply_environment(raw, env, origin)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, origin, from_env) from None
    recording = config.recording
    if "dir" not in recording.model_fields_set:      # the declared default follows [bridge] data_dir
        recording = recording.model_copy(update={"dir": RecorderConfig.absolute(config.bridge.data_dir / "recordings")})
    return Settings(
        sources=config.sources, providers=config.providers, redis_url=_redis_url(config),
        redis_confirm_fsync=config.redis.confirm_fsync, webhook_retry_schedule=config.webhooks.retry_schedule,
        webhook_timeout_s=config.webhooks.timeout_s, recording=recording, storage=config.storage, origin=origin,
        **dict(config.bridge),
    )
