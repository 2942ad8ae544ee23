"""JaaS settings: the AppID, the API key (id and RSA private key), hosts, token lifetimes, features.

The private key is loaded here, once per process: a bad key is a start-up error, and every token is
signed with the loaded key object (PyJWT re-parses a PEM string on every call: ~30 signs/s, against
~4,000/s with a key object).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import AfterValidator, Field, PrivateAttr, model_validator

from bridge.providers.base import HttpUrl, ProviderSettings, Secret, SettingsError, Text, WholeNumber

APP_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")

# Features JaaS understands (its JWT guide); given to moderators only. Overridable with `features`.
DEFAULT_MODERATOR_FEATURES: dict[str, bool] = {
    "livestreaming": True,
    "recording": True,
    "transcription": True,
    "outbound-call": True,
    "sip-outbound-call": False,
}


def _app_id(value: str) -> str:
    if not APP_ID_RE.match(value):
        raise ValueError("the JaaS AppID (letters, digits, '-' and '_')")
    return value


def _read_key(pem: str | None, path: str | None) -> tuple[bytes, str]:
    """The PEM bytes and the setting they came from."""
    if pem and path:
        raise SettingsError("private_key", "set private_key or private_key_file, not both")
    if path:
        try:
            return Path(path).expanduser().read_bytes(), "private_key_file"
        except OSError as exc:
            raise SettingsError("private_key_file", f"cannot read {path}: {exc.strerror}") from None
    if pem:
        if "\\n" in pem and "\n" not in pem.strip():
            pem = pem.replace("\\n", "\n")    # a PEM squeezed onto one line in an env var
        return pem.strip().encode(), "private_key"
    raise SettingsError("private_key", "required (a PEM string), or set private_key_file")


def load_private_key(pem: str | None, path: str | None) -> RSAPrivateKey:
    data, key_name = _read_key(pem, path)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # Never chain the parser's exception: keep the key material out of every traceback.
        raise SettingsError(key_name, "not a readable unencrypted PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise SettingsError(key_name, "must be an RSA private key (JaaS signs with RS256)")
    if key.key_size < 2048:
        raise SettingsError(key_name, "RSA key must be at least 2048 bits")
    return key


class JaasSettings(ProviderSettings):
    app_id: Annotated[str, AfterValidator(_app_id)]
    key_id: Text                       # the key id alone, or the whole kid "<app_id>/<key_id>"
    private_key: Secret | None = None  # PEM; or private_key_file
    private_key_file: Text | None = None
    api_base: HttpUrl = "https://8x8.vc"
    join_base: HttpUrl = "https://8x8.vc"     # join URLs: <join_base>/<app_id>/<room>?jwt=<token>
    token_ttl_s: Annotated[WholeNumber, Field(ge=60, le=7 * 86400)] = 3600
    admin_token_ttl_s: Annotated[WholeNumber, Field(ge=60, le=86400)] = 3600
    features: dict[str, Any] = DEFAULT_MODERATOR_FEATURES   # name = true/false
    # Webhooks in (POST /v1/providers/<name>/events): JaaS signs each with this secret (X-Jaas-Signature);
    # webhook_authorization, when set, is the exact Authorization header JaaS is configured to send.
    webhook_secret: Secret | None = None
    webhook_authorization: Secret | None = None
    allow_private_network: bool = False        # a recording link may point at loopback/private addresses
    _signing_key: RSAPrivateKey = PrivateAttr()

    @model_validator(mode="after")
    def _check(self) -> JaasSettings:
        if not self.key_name or "/" in self.key_name:
            raise SettingsError("key_id", "must be the key id alone, or '<app_id>/<key_id>'")
        if not all(isinstance(v, bool) or v in ("true", "false") for v in self.features.values()):
            raise SettingsError("features", "must be a table of feature name = true/false")
        if self.webhook_authorization is not None and self.webhook_secret is None:
            raise SettingsError("webhook_authorization",
                                "needs webhook_secret: JaaS webhooks are verified by their signature")
        pem = self.private_key.get_secret_value() if self.private_key else None
        self._signing_key = load_private_key(pem, self.private_key_file)
        return self

    @property
    def key_name(self) -> str:
        """The key id alone (key_id may be the whole kid)."""
        prefix = self.app_id + "/"
        return self.key_id[len(prefix):] if self.key_id.startswith(prefix) else self.key_id

    @property
    def kid(self) -> str:
        return f"{self.app_id}/{self.key_name}"

    @property
    def signing_key(self) -> RSAPrivateKey:
        return self._signing_key
