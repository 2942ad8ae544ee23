"""OpenMeetings auth: `GET services/user/login?user=..&pass=..` gives a SID, which every later call
carries as `?sid=`. Both are secrets in a query string, which httpx logs at INFO: blanked here."""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx

from bridge.providers.openmeetings.wire import service_result

LOGIN_PATH = "user/login"


def login_params(user: str, password: str) -> dict[str, str]:
    return {"user": user, "pass": password}


def sid_of(body: Any) -> str | None:
    """The SID a successful login answers with (`serviceResult.message`)."""
    result = service_result(body)
    sid = result.get("message") if result is not None else None
    return sid if isinstance(sid, str) and sid else None


class _RedactQuery(logging.Filter):
    """Blank the password and SID in httpx's request-URL records before any handler sees them."""

    _pattern = re.compile(r"([?&](?:pass|sid)=)[^&\s\"']*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(self._pattern.sub(r"\1***", str(a)) if isinstance(a, str | httpx.URL) else a
                                for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self._pattern.sub(r"\1***", record.msg)
        return True


_REDACT = _RedactQuery()
logging.getLogger("httpx").addFilter(_REDACT)     # the same object: added once however often imported
