"""Configuration: the declared TOML shape (bridge/schema/config.py) loaded by bridge/config.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.config import ConfigError, Settings, load_settings
from bridge.schema.config import BridgeTable, RecorderConfig, StorageTable, WebhooksTable
from tests.conftest import ROOT

SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def load(tmp_path: Path, text: str, **env: str) -> Settings:
    config = tmp_path / "bridge.toml"
    config.write_text(text)
    return load_settings({"BRIDGE_CONFIG": str(config), **env})


def refused(tmp_path: Path, text: str, **env: str) -> str:
    """The one-line message of the ConfigError the file causes, without the file's name."""
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text, **env)
    prefix = f"{tmp_path / 'bridge.toml'}: "
    assert str(error.value).startswith(prefix), str(error.value)
    return str(error.value).removeprefix(prefix)


@pytest.mark.parametrize(("text", "message"), [
    ("colour = 1", "colour: unknown key"),
    ("[bridge]\nmax_bytes = 1", "bridge.max_bytes: unknown key"),
    ("[redis]\nhost = 'x'", "redis.host: unknown key"),
    ("[webhooks]\nretries = 3", "webhooks.retries: unknown key"),
    ("[recording]\nsegment_secs = 10", "recording.segment_secs: unknown key"),
    ("[recording.stop_graces]\nsigterm = 1", "recording.stop_graces.sigterm: unknown key"),
    ("[storage]\nkind = 's3'\nbucket = 'b'\nacl = 'public'", "storage.acl: unknown key"),
    ("[sources.lms]\ntokn = 't'", "sources.lms.tokn: unknown key"),
    ("[sources.lms]\nname = 'other'", "sources.lms.name: unknown key"),
    ("[sources.lms]\nwebhook_secrets = ['whsec_x']", "sources.lms.webhook_secrets: unknown key"),
    ("[providers.p]\nkind = 'sandbox'\nname = 'q'", "providers.p.name: unknown key"),
])
def test_an_unknown_key_at_any_level_is_named(tmp_path: Path, text: str, message: str) -> None:
    assert refused(tmp_path, text) == message


@pytest.mark.parametrize(("text", "message"), [
    ("bridge = 5", "bridge: must be a table, got integer"),
    ("[bridge]\nmax_batch = '500'", "bridge.max_batch: must be an integer, got string"),
    ("[bridge]\nmax_batch = true", "bridge.max_batch: must be an integer, got boolean"),
    ("[bridge]\nmax_batch = 0", "bridge.max_batch: must be greater than 0"),
    ("[bridge]\ndata_dir = 3", "bridge.data_dir: must be a path string, got integer"),
    ("[bridge]\npublic_url = 'lms.example'", "bridge.public_url: must be an http:// or https:// URL"),
    ("[redis]\nconfirm_fsync = 1", "redis.confirm_fsync: must be true or false, got integer"),
    ("[redis]\nurl = 'http://x'", "redis.url: must start with redis://, rediss:// or unix://"),
    ("[webhooks]\nretry_schedule = [1, 'x']", "webhooks.retry_schedule[1]: must be a number, got string"),
    ("[webhooks]\nretry_schedule = [1, -1]", "webhooks.retry_schedule[1]: must be greater than or equal to 0"),
    ("[bridge]\nrecord_retention_s = 86400", "bridge.record_retention_s: must be longer than a webhook can be "
     "retried: 127520 s with [webhooks] retry_schedule and timeout_s"),
    ("[recording]\npart_format = 'mp4'", "recording.part_format: must be 'mpegts' or 'matroska'"),
    ("[recording]\nlisten_port_range = [1]", "recording.listen_port_range[1]: is required"),
    ("[storage]\nkind = 's3'", 'storage.bucket: is required for kind = "s3"'),
    ("[storage]\nbucket = 'b'", 'storage.bucket: only for kind = "s3"'),
    ("[sources.lms]\nformat = 'xml'", "sources.lms.format: unknown format 'xml'; known: canonical, moodle"),
    ("[sources.lms]\nprovider = 'zoom'", "sources.lms.provider: no provider named 'zoom' is configured"),
    ("[sources.lms]\nwebhook_events = 'x'", "sources.lms.webhook_events: must be an array, got string"),
    ("[sources.lms]\nsigning_secret = 'abc'", "sources.lms.signing_secret: must start with whsec_"),
    (f"[sources.lms]\nwebhook_secret = ['{SECRET}', 'abc']",
     "sources.lms.webhook_secret: every secret must be a string starting with whsec_"),
    ("[sources.lms]\nwebhook_url = 'https://lms.example/hook'",
     "sources.lms.webhook_secret: is required when webhook_url is set"),
    ("[sources.lms]\nwebhook_url = 'ftp://lms.example/hook'\nwebhook_secret = 'whsec_x'",
     "sources.lms.webhook_url: must be an http:// or https:// URL"),
    ("[sources.lms]\nevent_map = {}", 'sources.lms.event_map: only for format = "moodle"'),
    ("[sources.m]\nformat = 'moodle'", "sources.m.token: a moodle source needs a token or a signing_secret"),
    ("[sources.m]\nformat = 'moodle'\ntoken = 't'\nteacher_role_ids = [1.5]",
     "sources.m.teacher_role_ids[0]: must be a string, got float"),
    ("[sources.m]\nformat = 'moodle'\ntoken = 't'\nmoodle_url = 'https://lms.example'",
     "sources.m.ws_token: moodle_url and ws_token go together"),
    ("[sources.m]\nformat = 'moodle'\ntoken = 't'\ncalendar_lessons = 'course'",
     "sources.m.calendar_lessons: course needs moodle_url and ws_token"),
    ("[sources.m]\nformat = 'moodle'\ntoken = 't'\nreconcile_s = 60",
     "sources.m.reconcile_s: needs moodle_url and ws_token"),
    ("[sources.m]\nformat = 'moodle'\ntoken = 't'\ncalendar_lessons = 'some'",
     "sources.m.calendar_lessons: must be 'course', 'none' or 'all'"),
    ("[providers.p]\napi_base = 'x'", "providers.p.kind: is required"),
    ("[providers.p]\nkind = 'zoom'", "providers.p.kind: unknown kind 'zoom'; known: "),
    ("[providers.p]\nkind = 'jaas'\napp_id = 'a'\nkey_id = 'k'\nprivate_key_file = '/nonexistent/key.pem'",
     "providers.p.private_key_file: cannot read /nonexistent/key.pem: No such file or directory"),
    ("[sources.lms]\ntoken = '${LB_TEST_UNSET}'", "sources.lms.token: environment variable LB_TEST_UNSET is not set"),
    ("[bridge]\nadmin_token = 'x'",
     "bridge.admin_token: is read from the environment variable BRIDGE_ADMIN_TOKEN only"),
    ("[bridge]\nport = 80", "bridge.port: is read from the environment variable PORT only"),
])
def test_a_wrong_value_names_its_key(tmp_path: Path, text: str, message: str) -> None:
    assert refused(tmp_path, text).startswith(message)


def test_syntax_errors_and_a_missing_file(tmp_path: Path) -> None:
    assert refused(tmp_path, "[bridge\n").startswith("<syntax>: ")
    with pytest.raises(ConfigError, match=r"^/nonexistent/bridge\.toml: BRIDGE_CONFIG: file not found$"):
        load_settings({"BRIDGE_CONFIG": "/nonexistent/bridge.toml"})


def test_without_a_file_the_declared_defaults_apply(tmp_path: Path) -> None:
    settings = load_settings({})
    assert settings.origin == "<defaults>" and settings.redis_url is None and settings.admin_token is None
    assert {name: p.kind for name, p in settings.providers.items()} == {"sandbox": "sandbox"}
    [source] = settings.sources.values()
    assert (source.name, source.format, source.provider, source.webhook_events) == ("default", "canonical",
                                                                                    "sandbox", ("*",))
    bridge = BridgeTable()
    assert (settings.max_body_bytes, settings.max_batch, settings.job_timeout_s) == (256 * 1024, 500, 120)
    assert (settings.max_batch, settings.dedupe_window_s) == (bridge.max_batch, bridge.dedupe_window_s)
    assert settings.webhook_retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000) \
        == WebhooksTable().retry_schedule and settings.webhook_timeout_s == 10
    assert settings.recording == RecorderConfig() and settings.recording.dir == Path("var/recordings").resolve()
    assert settings.recording.lease_s == 15 and settings.recording.max_duration_s == 6 * 3600
    assert settings.storage == StorageTable() and settings.storage.kind == "local"
    assert settings.redis_confirm_fsync is True and settings.public_url is None and settings.port is None


def test_defaults_that_follow_other_keys(tmp_path: Path) -> None:
    settings = load(tmp_path, f"""
[bridge]
data_dir = "{tmp_path / 'data'}"
[providers.first]
kind = "sandbox"
[providers.second]
kind = "sandbox"
[sources.lms]
[sources.plain]
format = "moodle"
token = "t"
[sources.ws]
format = "moodle"
token = "t"
moodle_url = "https://lms.example"
ws_token = "${{WS_TOKEN}}"
[sources.ws_all]
format = "moodle"
token = "t"
moodle_url = "https://lms.example"
ws_token = "w"
calendar_lessons = "all"
reconcile_s = 0
teacher_role_ids = [3, " 9 "]
""", WS_TOKEN="ws-secret")
    assert settings.recording.dir == tmp_path / "data" / "recordings"       # under [bridge] data_dir
    assert settings.sources["lms"].provider == "first"                      # the first provider
    plain, ws, ws_all = settings.sources["plain"], settings.sources["ws"], settings.sources["ws_all"]
    assert (plain.calendar_lessons, plain.reconcile_s, plain.teacher_role_ids) == ("none", 0, ("1", "3", "4"))
    assert (ws.calendar_lessons, ws.reconcile_s, ws.ws_token) == ("course", 300, "ws-secret")
    assert (ws_all.calendar_lessons, ws_all.reconcile_s, ws_all.teacher_role_ids) == ("all", 0, ("3", "9"))


def test_values_from_the_file(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    settings = load(tmp_path, f"""
[recording]
dir = "{tmp_path / 'rec'}"
lease_s = 2
[bridge]
record_retention_s = 86400
[webhooks]
retry_schedule = [0.5, 1]
[providers.jaas]
kind = "jaas"
app_id = "vpaas-magic-cookie-1"
key_id = "k1"
private_key_file = "{key}"
[sources.moodle]
format = "moodle"
token = ""
signing_secret = "{SECRET}"
webhook_url = "https://lms.example/hook"
webhook_secret = "{SECRET}"
event_map = {{ "\\\\core\\\\event\\\\user_loggedin" = "user.joined" }}
""")
    assert settings.recording.dir == tmp_path / "rec" and settings.recording.lease_s == 2
    assert settings.webhook_retry_schedule == (0.5, 1.0)
    assert settings.record_retention_s == 86400         # a day outlives this schedule (two waits, at most 2 h)
    jaas = settings.providers["jaas"]
    # The adapter's own settings read the key file (and refuse one it cannot read or parse).
    assert jaas.settings == {"app_id": "vpaas-magic-cookie-1", "key_id": "k1", "private_key_file": str(key)}
    moodle = settings.sources["moodle"]
    assert moodle.token is None and moodle.signing_secret == SECRET      # "" is unset, as the contract shows
    assert moodle.webhook_secrets == (SECRET,) and moodle.event_map == {"\\core\\event\\user_loggedin": "user.joined"}
    assert SECRET not in repr(settings) and "BEGIN PRIVATE KEY" not in repr(settings)


def test_environment_overrides(tmp_path: Path) -> None:
    text = "[redis]\nurl = 'redis://127.0.0.1:1/0'\nconfirm_fsync = true\n"
    assert load(tmp_path, text).redis_url == "redis://127.0.0.1:1/0"
    settings = load(tmp_path, text, REDIS_URL="rediss://127.0.0.1:2", REDIS_CONFIRM_FSYNC="off",
                    REDIS_SSL_CERT_REQS="none", BRIDGE_ADMIN_TOKEN="admin-secret", PORT="8123")
    assert settings.redis_url == "rediss://127.0.0.1:2?ssl_cert_reqs=none" and settings.redis_confirm_fsync is False
    assert settings.admin_token == "admin-secret" and "admin-secret" not in repr(settings) and settings.port == 8123
    assert load(tmp_path, text, REDIS_CONFIRM_FSYNC="1", REDIS_URL="").redis_confirm_fsync is True
    assert load(tmp_path, text, BRIDGE_ADMIN_TOKEN="").admin_token is None            # empty is unset
    # A bad value from the environment names the variable, not the key it sets.
    assert refused(tmp_path, text, REDIS_URL="http://x") == "REDIS_URL: must start with redis://, rediss:// or unix://"
    assert refused(tmp_path, text, PORT="eighty") == "PORT: must be a port number"
    assert refused(tmp_path, text, PORT="70000") == "PORT: must be less than 65536"


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["recorder"], ["dev"], ["export"]])
def test_every_process_stops_with_one_line_on_a_bad_file(tmp_path: Path, command: list[str]) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("[recording]\nsegment_secs = 10\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "REDIS_", "PORT"))}
    env.update(BRIDGE_CONFIG=str(config), REDIS_URL="redis://127.0.0.1:9/0", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "bridge.cli", *command], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done
    assert done.stderr == f"configuration error: {config}: recording.segment_secs: unknown key\n", done.stderr
    assert not list(tmp_path.glob("var")), "nothing may start before the configuration is valid"
