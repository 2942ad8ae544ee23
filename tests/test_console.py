"""The operator console over real HTTP (no browser): off without a token, sign-in, cookie flags,
security headers, CSRF refusal, masking. tests/browser/ drives the same pages in Chromium."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from bridge.console.masking import MASK, Masker
from bridge.console.session import COOKIE, SessionSigner
from tests.conftest import MOODLE_TOKEN, WEBHOOK_SECRET, Bridge

TOKEN = "console-admin-token-4f9e2a77"
PAGES = ["/console/", "/console/events", "/console/deliveries", "/console/deliveries?status=dead",
         "/console/endpoints", "/console/lessons"]


@pytest.fixture
def console(make_bridge: Callable[..., Bridge], receiver) -> Bridge:
    return make_bridge(webhook_url=receiver[1], env={"BRIDGE_ADMIN_TOKEN": TOKEN})


@asynccontextmanager
async def signed_in(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, timeout=15) as http:
        answer = await http.post("/console/signin", data={"token": TOKEN, "name": "Grace",
                                                          "next": "/console/events"})
        assert answer.status_code == 303 and answer.headers["location"] == "/console/events"
        yield http


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def test_the_console_is_not_there_without_an_admin_token(make_bridge, client) -> None:
    bridge = make_bridge()
    for path in ["/console", "/console/", "/console/signin", "/console/events", "/console/static/console.css"]:
        answer = await client.get(f"{bridge.base_url}{path}")
        assert answer.status_code == 404, path
    answer = await client.post(f"{bridge.base_url}/console/signin", data={"token": ""})
    assert answer.status_code == 404


async def test_pages_need_a_session_and_the_token_signs_in(console: Bridge, client) -> None:
    for path in PAGES:
        answer = await client.get(f"{console.base_url}{path}")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/console/signin?next=")
    bare = await client.get(f"{console.base_url}/console")
    assert bare.status_code in (307, 308) and bare.headers["location"].endswith("/console/")
    wrong = await client.post(f"{console.base_url}/console/signin", data={"token": TOKEN + "x"})
    assert wrong.status_code == 401 and "not the admin token" in wrong.text and COOKIE not in wrong.cookies
    async with signed_in(console.base_url) as http:
        for path in PAGES:
            page = await http.get(path)
            assert page.status_code == 200, (path, page.text[:500])
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert page.headers["x-frame-options"] == "DENY"
            assert TOKEN not in page.text


async def test_the_session_cookie_is_httponly_strict_and_secure_behind_https(console: Bridge, client) -> None:
    plain = await client.post(f"{console.base_url}/console/signin", data={"token": TOKEN})
    cookie = plain.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert "secure" not in cookie
    proxied = await client.post(f"{console.base_url}/console/signin", data={"token": TOKEN},
                                headers={"X-Forwarded-Proto": "https"})
    assert "; secure" in proxied.headers["set-cookie"].lower()


async def test_an_expired_or_forged_session_is_sent_to_sign_in(console: Bridge, client) -> None:
    _, expired = SessionSigner(TOKEN).issue("Ada", lifetime_s=-1)
    _, foreign = SessionSigner("another-token").issue("Mallory")
    for value, why in ((expired, "expired"), (foreign, "invalid"), (expired[:-2] + "xx", "invalid")):
        answer = await client.get(f"{console.base_url}/console/events", headers={"Cookie": f"{COOKIE}={value}"})
        assert answer.status_code == 303 and f"why={why}" in answer.headers["location"]


async def test_actions_without_the_sessions_csrf_token_are_refused(console: Bridge) -> None:
    async with signed_in(console.base_url) as http:
        page = await http.get("/console/deliveries?status=dead")
        token = csrf_of(page.text)
        for data in ({"all_dead": "1"}, {"all_dead": "1", "csrf": "forged"}, {"all_dead": "1", "csrf": token + "x"}):
            refused = await http.post("/console/deliveries/retry", data=data)
            assert refused.status_code == 403 and "CSRF" in refused.text
        cross = await http.post("/console/deliveries/retry", data={"all_dead": "1", "csrf": token},
                                headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403 and "another site" in cross.text
        done = await http.post("/console/deliveries/retry", data={"all_dead": "1", "csrf": token})
        assert done.status_code == 200 and "0 redelivery(ies) queued" in done.text
        out = await http.post("/console/signout", data={"csrf": token})
        assert out.status_code == 303 and 'max-age=0' in out.headers["set-cookie"].lower()


async def test_the_event_page_masks_tokens_and_escapes_what_the_lms_sent(console: Bridge, client) -> None:
    moodle = {"eventname": "\\mod_bigbluebuttonbn\\event\\meeting_joined", "component": "mod_bigbluebuttonbn",
              "action": "joined", "target": "meeting", "objectid": 3, "contextlevel": 70, "contextinstanceid": 9,
              "userid": 5, "courseid": 2, "timecreated": 1763805600, "host": "lms.example.edu",
              "token": MOODLE_TOKEN, "other": {"note": "<script>alert(1)</script>", "jwt": "eyJhbGciOi.secret"}}
    accepted = await client.post(f"{console.base_url}/v1/events/moodle", json=moodle)
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["accepted"][0]
    async with signed_in(console.base_url) as http:
        page = await http.get("/console/event", params={"source": "moodle", "id": event_id})
        assert page.status_code == 200
        assert MOODLE_TOKEN not in page.text and "eyJhbGciOi.secret" not in page.text
        assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        for path in PAGES:
            text = (await http.get(path)).text
            assert MOODLE_TOKEN not in text and WEBHOOK_SECRET not in text and TOKEN not in text


def test_the_masker_hides_secret_keys_parameters_and_configured_values() -> None:
    masker = Masker(["s3cr3t-value"])
    shown = masker.value({"token": "abc", "user": {"api_key": "k"}, "join_url": "https://x/room?jwt=aaa.bbb&x=1",
                          "note": "has s3cr3t-value inside", "secret": "", "hook": "whsec_QUJD"})
    assert shown == {"token": MASK, "user": {"api_key": MASK}, "join_url": f"https://x/room?jwt={MASK}&x=1",
                     "note": f"has {MASK} inside", "secret": "", "hook": MASK}
