"""Keeping secrets out of console pages.

Three nets, so one miss is caught by another: values under secret-looking keys (the same pattern the
logs scrub), secret-looking query parameters in URLs (a join link's `jwt`, a signed link's `sig`), and
any literal occurrence of a configured secret (admin token, source tokens, webhook and signing
secrets) or of a `whsec_` key anywhere in rendered text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from markupsafe import Markup

from bridge.config import Settings
from bridge.logs import SECRET_KEYS

MASK = "••••••"
SECRET_PARAM = re.compile(r"([?&](?:[^=&#\s]*(?:token|secret|password|signature|jwt|sig|key)[^=&#\s]*)=)[^&#\s\"']+",
                          re.IGNORECASE)
WEBHOOK_KEY = re.compile(r"whsec_[A-Za-z0-9+/=_-]+")
MIN_SECRET_LEN = 4            # shorter configured values would mask ordinary words


def configured_secrets(settings: Settings) -> list[str]:
    values: list[str] = [settings.admin_token or ""]
    for source in settings.sources.values():
        for name in ("token", "signing_secret", "webhook_secrets", "ws_token"):
            value = getattr(source, name, None)
            values += value if isinstance(value, list | tuple) else [value or ""]
    for provider in settings.providers.values():
        for key, value in provider.settings.items():
            if isinstance(value, str) and (SECRET_KEYS.search(key) or key.endswith("key")):
                values.append(value)
            elif isinstance(value, dict) and ("header" in key or SECRET_KEYS.search(key)):
                values += [v for v in value.values() if isinstance(v, str)]   # e.g. 100ms webhook_headers
    return sorted({v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)


class Masker:
    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = list(secrets)

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        value = WEBHOOK_KEY.sub(MASK, value)
        return SECRET_PARAM.sub(lambda m: m.group(1) + MASK, value)

    def value(self, value: Any) -> Any:
        """A JSON-like value with secrets masked; keys that name a secret keep their key, lose their value."""
        if isinstance(value, dict):
            return {k: (MASK if isinstance(k, str) and SECRET_KEYS.search(k) and v not in (None, "")
                        else self.value(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    def finalize(self, value: Any) -> Any:
        """Jinja's finalize hook: every `{{ }}` output passes here before it is escaped.

        Markup is already-rendered output (a macro, whose own values passed here) or a link the
        operator is meant to follow (`safe_link`), so it is left as it is."""
        if isinstance(value, Markup):
            return value
        return self.text(value) if isinstance(value, str) else value


def safe_link(url: Any) -> Markup:
    """An href for a link the operator should be able to follow as given (a recording's signed URL):
    escaped, and only http(s), so a provider cannot hand the page a javascript: URL."""
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        return Markup("")
    return Markup.escape(url)
