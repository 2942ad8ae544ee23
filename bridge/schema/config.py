"""The TOML configuration, declared once with its defaults; bridge/config.py loads a file into it.

Every table refuses keys it does not declare, and values keep their TOML types (`"10"` and `true` are
not numbers), so a typo is an error at start-up instead of a setting silently ignored. A validator's
finding about a key below its table is a KeyProblem, so the loader can name the full dotted key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from bridge.providers import KINDS, settings_model
from bridge.providers.base import RETRY_AFTER_MAX_S, SettingsError
from bridge.sources import FORMATS

DEFAULT_DATA_DIR = Path("var")


class KeyProblem(ValueError):
    """What is wrong with `key` (dotted, relative to the table whose validator raised it)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key, self.problem = key, problem


def _blank_is_unset(value: Any) -> Any:
    # `token = "${MOODLE_TOKEN}"` with the variable set but empty, or the contract's `signing_secret = ""`
    return None if value == "" else value


def _http_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _redis_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return value


def _whsec(value: str | None) -> str | None:
    if value is not None and not value.startswith("whsec_"):
        raise ValueError("must start with whsec_")
    return value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _every_whsec(secrets: tuple[str, ...]) -> tuple[str, ...]:
    if not all(secret.startswith("whsec_") for secret in secrets):
        raise ValueError("every secret must be a string starting with whsec_")
    return secrets


def _id_text(value: Any) -> Any:
    """Moodle ids are numbers or strings depending on the plugin; 3 and "3 " are one id."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) else value


def _one_of(registry: Mapping[str, Any], what: str) -> AfterValidator:
    """A name that must be in a registry (bridge.sources.FORMATS, bridge.providers.KINDS)."""
    def known(value: str) -> str:
        if value not in registry:
            raise ValueError(f"unknown {what} {value!r}; known: {', '.join(sorted(registry))}")
        return value
    return AfterValidator(known)


Text = StrictStr
OptionalText = Annotated[StrictStr | None, BeforeValidator(_blank_is_unset)]
Url = Annotated[OptionalText, AfterValidator(_http_url)]
Count = Annotated[StrictInt, Field(gt=0)]
Amount = Annotated[StrictInt, Field(ge=0)]
Seconds = Annotated[StrictFloat, Field(gt=0)]
OptionalSeconds = Annotated[StrictFloat, Field(ge=0)]
Port = Annotated[StrictInt, Field(gt=0, lt=65536)]
MoodleId = Annotated[StrictStr, BeforeValidator(_id_text)]


class Table(BaseModel):
    """One TOML table: only the keys it declares; read-only once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _only_when(table: BaseModel, keys: frozenset[str], condition: str) -> None:
    """Keys that mean something under one setting of the table only are refused under the others."""
    misplaced = sorted(keys & table.model_fields_set)
    if misplaced:
        raise KeyProblem(misplaced[0], f"only for {condition}")


class BridgeTable(Table):
    data_dir: Path = DEFAULT_DATA_DIR
    public_url: Url = None                  # how the LMS reaches `web`; None: http://127.0.0.1:$PORT
    max_body_bytes: Count = 256 * 1024
    max_batch: Count = 500
    dedupe_window_s: Count = 7 * 24 * 3600
    job_timeout_s: Count = 120
    job_retry_base_s: Seconds = 1.0
    worker_redis_connections: Count = 30
    event_retention_s: Count = 30 * 24 * 3600
    event_retention_max: Count = 1_000_000
    record_retention_s: Count = 30 * 24 * 3600   # runs and delivery records (most of Redis's memory)
    # From the environment only (ENVIRONMENT below): the file may not set them.
    admin_token: OptionalText = Field(None, repr=False)     # admin API off when unset
    port: Port | None = None
    worker_concurrency: Count | None = None     # `bridge worker` processes; None: the cores it may use


class RedisTable(Table):
    url: Annotated[OptionalText, AfterValidator(_redis_url)] = None    # None: an embedded server
    confirm_fsync: StrictBool = True        # WAITAOF in every accept call where the server has it
    # Managed add-ons (Heroku Redis) hand out rediss:// URLs with self-signed certificates and no way to
    # edit the URL: `none` adds ssl_cert_reqs=none to it.
    ssl_cert_reqs: Annotated[Literal["none", "required"] | None, BeforeValidator(_blank_is_unset)] = None


RETRY_JITTER = 0.2              # each retry's wait is its retry_schedule entry ± 20 %


class WebhooksTable(Table):
    # Seconds to wait before each retry, after the first attempt.
    retry_schedule: tuple[OptionalSeconds, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    timeout_s: Seconds = 10.0

    def longest_retrying_s(self) -> float:
        """From a webhook's first attempt to its last at the latest: every wait at its longest (the
        jitter's top, or a Retry-After at its cap) and every attempt at its timeout."""
        waits = sum(max(wait * (1 + RETRY_JITTER), RETRY_AFTER_MAX_S) for wait in self.retry_schedule)
        return waits + (len(self.retry_schedule) + 1) * self.timeout_s


class StopGraces(Table):
    """How long each stop step may take before the next, harsher one (seconds)."""

    q: Seconds = 2.0                # 'q' on stdin: FFmpeg finishes the part cleanly
    q_stalled: Seconds = 0.5        # the same when the input is known stalled ('q' cannot unblock a read)
    sigint: Seconds = 3.0           # first SIGINT
    sigint_stalled: Seconds = 0.5   # after init, FFmpeg's read interrupt needs a *second* signal
    sigint2: Seconds = 2.0          # second SIGINT aborts a blocking read that ignored the first
    sigkill: Seconds = 2.0          # after SIGKILL only the kernel's reaping is left

    @property
    def total(self) -> float:
        return self.q + self.sigint + self.sigint2 + self.sigkill


class RecorderConfig(Table):
    """`[recording]`: where recordings land and how the recorder runs FFmpeg."""

    dir: Path = DEFAULT_DATA_DIR / "recordings"     # in a file: default <[bridge] data_dir>/recordings
    max_duration_s: Seconds = 6 * 3600.0
    lease_s: Seconds = 15.0                 # a recorder that misses renewing this long loses the recording
    ffmpeg: OptionalText = None             # "auto" (None: BRIDGE_FFMPEG, else auto) | "bundled" | a path
    ffprobe: OptionalText = None
    min_free_bytes: Amount = 2 * 1024**3    # refuse to start below this
    stop_free_bytes: Amount | None = None   # stop a running recording below this (default min_free/4)
    disk_check_period_s: Seconds = 5.0
    part_format: Literal["mpegts", "matroska"] = "mpegts"     # both survive a kill
    flush_packets: StrictBool = True        # write each packet through: a kill loses nothing buffered
    progress_period_s: Seconds = 0.5
    loglevel: Text = "warning"
    stderr_tail_lines: Count = 20
    stop_graces: StopGraces = StopGraces()
    listen_host: Text = "127.0.0.1"         # where listen-mode FFmpeg binds
    public_host: OptionalText = None        # host in the push URL handed out (default listen_host)
    listen_port_range: tuple[Port, Port] = (19350, 19449)     # for ListenSpec(port=0)
    reconnect_backoff_s: tuple[OptionalSeconds, ...] = (1.0, 2.0, 5.0)
    finalize_timeout_s: Seconds = 600.0

    @field_validator("dir")
    @classmethod
    def absolute(cls, path: Path) -> Path:
        return path.expanduser().resolve()

    @property
    def effective_stop_free_bytes(self) -> int:
        return self.stop_free_bytes if self.stop_free_bytes is not None else self.min_free_bytes // 4


MIN_LINK_SECRET_BYTES = 16
S3_KEYS = frozenset({"bucket", "prefix", "endpoint_url", "region", "access_key_id", "secret_access_key"})


class StorageTable(Table):
    """`[storage]`: where finished recordings go so that the LMS can fetch them."""

    kind: Literal["local", "s3"] = "local"  # local: [recording] dir, served by `web` with signed links
    url_ttl_s: Count = 86400                # lifetime of the links handed out in recording.ready
    retention_days: Amount = 0              # 0 keeps recordings forever
    copy_provider_recordings: StrictBool = True
    bucket: OptionalText = None             # kind = "s3": any S3-compatible service
    prefix: Text = ""
    endpoint_url: Url = None
    region: OptionalText = None
    access_key_id: OptionalText = Field(None, repr=False)
    secret_access_key: OptionalText = Field(None, repr=False)
    # kind = "local": the key that signs download links. None: a random one kept in Redis, shared by
    # every process of the deploy (nothing to configure).
    link_secret: OptionalText = Field(None, repr=False)

    @model_validator(mode="after")
    def _s3_settings(self) -> StorageTable:
        if self.kind != "s3":
            _only_when(self, S3_KEYS, 'kind = "s3"')
        else:
            # Never botocore's credential chain either: it probes instance metadata over the network.
            for key in ("bucket", "access_key_id", "secret_access_key"):
                if not getattr(self, key):
                    raise KeyProblem(key, 'is required for kind = "s3"')
        if self.link_secret is not None and len(self.link_secret.encode()) < MIN_LINK_SECRET_BYTES:
            raise KeyProblem("link_secret", f"must be at least {MIN_LINK_SECRET_BYTES} bytes long")
        return self


MOODLE_KEYS = frozenset({"event_map", "conference_modules", "teacher_role_ids", "default_role", "moodle_url",
                         "ws_token", "calendar_lessons", "reconcile_s"})


class SourceConfig(Table):
    """`[sources.<name>]`: one inbound format, its authentication and where its webhooks go."""

    name: Text                              # the table's name
    format: Annotated[Text, _one_of(FORMATS, "format")] = "canonical"
    provider: Text                          # in a file: default the first configured provider
    token: OptionalText = Field(None, repr=False)      # body-token auth (local_webhooks)
    signing_secret: Annotated[OptionalText, AfterValidator(_whsec)] = Field(None, repr=False)
    webhook_url: Url = None
    # A string, or a list while rotating: every one signs.
    webhook_secrets: Annotated[tuple[Text, ...], BeforeValidator(_one_or_many), AfterValidator(_every_whsec)] = (
        Field((), alias="webhook_secret", repr=False))
    webhook_events: tuple[Text, ...] = ("*",)          # filter of outbound types
    allow_private_network: StrictBool = False          # webhook_url may be a loopback/private address
    # format = "moodle" only (MOODLE_KEYS)
    event_map: dict[Text, Text] = {}                   # Moodle event name → canonical type; "" unmaps
    conference_modules: tuple[Text, ...] = ("bigbluebuttonbn", "zoom", "jitsi")   # lessons among activities
    teacher_role_ids: tuple[MoodleId, ...] = ("1", "3", "4")    # manager, editingteacher, teacher
    default_role: Text = "student"
    moodle_url: Url = None                  # with ws_token: the bridge may call Moodle's web services
    ws_token: OptionalText = Field(None, repr=False)
    calendar_lessons: Literal["course", "none", "all"] = "none"   # with web services: default course
    reconcile_s: Amount = 0                 # with web services: default 300

    @model_validator(mode="before")
    @classmethod
    def _web_service_defaults(cls, table: Any) -> Any:
        if isinstance(table, dict) and table.get("format") == "moodle" and table.get("moodle_url") \
                and table.get("ws_token"):
            return {"calendar_lessons": "course", "reconcile_s": 300, **table}
        return table

    @model_validator(mode="after")
    def _consistent(self) -> SourceConfig:
        if self.format != "moodle":
            _only_when(self, MOODLE_KEYS, 'format = "moodle"')
        elif not self.token and not self.signing_secret:
            raise KeyProblem("token", "a moodle source needs a token or a signing_secret")
        if bool(self.moodle_url) != bool(self.ws_token):
            raise KeyProblem("ws_token" if self.moodle_url else "moodle_url", "moodle_url and ws_token go together")
        if not self.ws_token:
            if self.calendar_lessons == "course":
                raise KeyProblem("calendar_lessons", "course needs moodle_url and ws_token")
            if self.reconcile_s:
                raise KeyProblem("reconcile_s", "needs moodle_url and ws_token")
        if self.webhook_url and not self.webhook_secrets:
            raise KeyProblem("webhook_secret", "is required when webhook_url is set")
        return self


class ProviderConfig(Table):
    """`[providers.<name>]`: `kind` picks the adapter, which reads every other key from `settings`."""

    name: Text                              # the table's name, which events refer to
    kind: Annotated[Text, _one_of(KINDS, "kind")]
    settings: Mapping[str, Any] = Field(default_factory=dict, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _adapter_settings(cls, table: Any) -> Any:
        # A table from a file carries the adapter's keys beside kind; code may pass settings= itself.
        if not isinstance(table, dict) or "settings" in table:
            return table
        own = {key: table[key] for key in ("name", "kind") if key in table}
        return {**own, "settings": {key: value for key, value in table.items() if key not in own}}

    @model_validator(mode="after")
    def _adapter_accepts(self) -> ProviderConfig:
        # Checked here, at start-up in every process, against the kind's declared settings: an unknown or
        # wrong key stops the web process too, not only the workers that build adapters.
        try:
            settings_model(self.kind).parse(self.settings)
        except SettingsError as exc:
            raise KeyProblem(exc.key, exc.problem) from None
        return self


def _named(tables: Any, section: str) -> Any:
    """`[sources.x]` → a SourceConfig named x: the name comes from the table's, never from a key."""
    if not isinstance(tables, dict):
        return tables
    for name, table in tables.items():
        if isinstance(table, dict) and "name" in table:
            raise KeyProblem(f"{section}.{name}.name", "unknown key")
    return {name: {**table, "name": name} if isinstance(table, dict) else table for name, table in tables.items()}


class Config(Table):
    """The whole file. Without [providers] there is one `sandbox` provider; without [sources], one
    canonical source named `default`."""

    bridge: BridgeTable = BridgeTable()
    redis: RedisTable = RedisTable()
    webhooks: WebhooksTable = WebhooksTable()
    recording: RecorderConfig = RecorderConfig()
    storage: StorageTable = StorageTable()
    providers: dict[str, ProviderConfig]
    sources: dict[str, SourceConfig]

    @model_validator(mode="before")
    @classmethod
    def _name_tables(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        providers = _named(raw.get("providers") or {"sandbox": {"kind": "sandbox"}}, "providers")
        sources = _named(raw.get("sources") or {"default": {}}, "sources")
        if isinstance(providers, dict) and isinstance(sources, dict):
            first = next(iter(providers))
            sources = {name: {"provider": first, **table} if isinstance(table, dict) else table
                       for name, table in sources.items()}
        return {**raw, "providers": providers, "sources": sources}

    @model_validator(mode="after")
    def _providers_exist(self) -> Config:
        for source in self.sources.values():
            if source.provider not in self.providers:
                raise KeyProblem(f"sources.{source.name}.provider",
                                 f"no provider named {source.provider!r} is configured")
        return self

    @model_validator(mode="after")
    def _records_outlive_retries(self) -> Config:
        # A retried webhook's record and payload live this long: expired mid-schedule, a retry would have
        # nothing to send, and its write would re-create the record without a lifetime.
        retrying_s = self.webhooks.longest_retrying_s()
        if self.bridge.record_retention_s <= retrying_s:
            raise KeyProblem("bridge.record_retention_s", f"must be longer than a webhook can be retried: "
                             f"{retrying_s:.0f} s with [webhooks] retry_schedule and timeout_s")
        return self


def _flag(value: str) -> bool:
    return value.lower() not in ("0", "false", "no", "off")


def _positive_int(value: str) -> int:
    if not value.isdecimal() or int(value) == 0:
        raise ValueError("must be a positive integer")
    return int(value)


def _port(value: str) -> int:
    if not value.isdecimal():
        raise ValueError("must be a port number")
    return int(value)


class EnvVar(NamedTuple):
    key: str                                # the dotted key it sets; it wins over the file
    parse: Callable[[str], Any] = str
    in_file: bool = True                    # False: the environment is the only place for it


# Every environment variable that sets configuration (an empty value counts as unset). BRIDGE_CONFIG
# names the file; BRIDGE_FFMPEG / BRIDGE_FFPROBE belong to the FFmpeg locator (bridge/recording/ffmpeg.py).
ENVIRONMENT: dict[str, EnvVar] = {
    "REDIS_URL": EnvVar("redis.url"),
    "REDIS_CONFIRM_FSYNC": EnvVar("redis.confirm_fsync", _flag),
    "REDIS_SSL_CERT_REQS": EnvVar("redis.ssl_cert_reqs"),
    "BRIDGE_ADMIN_TOKEN": EnvVar("bridge.admin_token", in_file=False),
    "PORT": EnvVar("bridge.port", _port, in_file=False),
    "WORKER_CONCURRENCY": EnvVar("bridge.worker_concurrency", _positive_int, in_file=False),
    "BRIDGE_LINK_SECRET": EnvVar("storage.link_secret"),
}
