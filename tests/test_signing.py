"""Standard Webhooks signing: our signatures verify with the reference library, and the 5-minute
tolerance holds at its edges (an injected clock, so the boundary is exact)."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook

from bridge.signing import SignatureError, sign, verify

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
BODY = b'{"type":"join.ready"}'


def test_reference_library_verifies_every_rotated_signature() -> None:
    now = int(time.time())
    header = sign([OTHER, SECRET], "msg_1", now, BODY)
    assert len(header.split()) == 2
    for secret in (OTHER, SECRET):
        Webhook(secret).verify(BODY, {"webhook-id": "msg_1", "webhook-timestamp": str(now),
                                      "webhook-signature": header})


@pytest.mark.parametrize(("now", "ok"), [(1300, True), (700, True), (1300.5, False), (699, False)])
def test_tolerance_is_five_minutes_either_way(now: float, ok: bool) -> None:
    header = sign([SECRET], "msg_1", 1000, BODY)
    if ok:
        verify(SECRET, "msg_1", "1000", header, BODY, now=now)
    else:
        with pytest.raises(SignatureError):
            verify(SECRET, "msg_1", "1000", header, BODY, now=now)


def test_any_one_matching_signature_is_enough_and_none_is_refused() -> None:
    good = sign([SECRET], "msg_1", 1000, BODY)
    verify(SECRET, "msg_1", "1000", f"v1,AAAA {good}", BODY, now=1000)
    with pytest.raises(SignatureError):
        verify(SECRET, "msg_1", "1000", sign([OTHER], "msg_1", 1000, BODY), BODY, now=1000)
    with pytest.raises(SignatureError):
        verify(SECRET, "msg_1", "not-a-number", good, BODY, now=1000)
