"""OWT's MAuth header.

`Authorization: MAuth realm=http://webrtc.intel.com,mauth_signature_method=HMAC_SHA256,
[mauth_username=<base64>,mauth_role=<role>,]mauth_serviceid=..,mauth_cnonce=..,mauth_timestamp=..,
mauth_signature=..` with no spaces after the commas (the server splits on `,` and strips the `mauth_`
prefix by position). The signature is base64 of the lowercase HEX HMAC-SHA256 (service key) of
`timestamp,cnonce[,username,role]`; username is base64 when sent and is signed in that form.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

REALM = "http://webrtc.intel.com"


class MAuth:
    def __init__(self, service_id: str, service_key: str) -> None:
        self.service_id = service_id
        self._key = service_key.encode()
        self._last_ts = 0

    def _timestamp_ms(self) -> int:
        """Milliseconds, strictly increasing in this process (old servers refuse a repeated timestamp)."""
        now = int(time.time() * 1000)
        self._last_ts = max(now, self._last_ts + 1)
        return self._last_ts

    def header(self, username: str | None = None, role: str | None = None) -> str:
        timestamp = self._timestamp_ms()
        cnonce = secrets.randbelow(100000)
        fields = [f"MAuth realm={REALM}", "mauth_signature_method=HMAC_SHA256"]
        to_sign = f"{timestamp},{cnonce}"
        if username and role:
            encoded = base64.b64encode(username.encode()).decode()
            fields += [f"mauth_username={encoded}", f"mauth_role={role}"]
            to_sign += f",{encoded},{role}"
        digest = hmac.new(self._key, to_sign.encode(), hashlib.sha256).hexdigest()
        signature = base64.b64encode(digest.encode()).decode()
        fields += [f"mauth_serviceid={self.service_id}", f"mauth_cnonce={cnonce}",
                   f"mauth_timestamp={timestamp}", f"mauth_signature={signature}"]
        return ",".join(fields)
