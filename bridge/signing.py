"""Standard Webhooks signatures (https://www.standardwebhooks.com): sign outbound, verify inbound."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

TOLERANCE_S = 5 * 60


class SignatureError(Exception):
    pass


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secrets: tuple[str, ...] | list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<sig>` for every secret, space-separated: receivers accept any one while secrets rotate."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(secret_bytes(s), to_sign, hashlib.sha256).digest()).decode()
        for s in secrets
    )


def verify(secret: str, msg_id: str | None, timestamp: str | None, signature_header: str | None, body: bytes,
           now: float | None = None) -> None:
    if not msg_id or not timestamp or not signature_header:
        raise SignatureError("webhook-id, webhook-timestamp and webhook-signature headers are required")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureError("webhook-timestamp must be Unix seconds") from None
    now = time.time() if now is None else now
    if abs(now - sent_at) > TOLERANCE_S:
        raise SignatureError("webhook-timestamp is more than 5 minutes away from the server's time")
    expected = sign([secret], msg_id, sent_at, body).encode()
    # Compare against every offered signature without stopping early, in constant time each.
    matched = False
    for offered in signature_header.split():
        matched |= hmac.compare_digest(offered.encode(), expected)
    if not matched:
        raise SignatureError("no webhook-signature matches the body")
