"""The console in a real browser: sign in, find a failed delivery, redeliver it and see it succeed;
CSRF, sign-out, expiry; no secret on any page; LMS text shown as text; a screenshot of every page."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Locator, Page, expect

from bridge import attendance
from bridge.console.session import COOKIE, SessionSigner
from bridge.store import lesson_key, recording_key
from tests.browser.conftest import SCREENSHOTS
from tests.conftest import MOODLE_TOKEN, WEBHOOK_SECRET, Bridge, wait_until, worker_ready

TOKEN = "browser-admin-token-9c41d7e0b2"
XSS = "<img src=x onerror=alert(1)>"
LESSON = "c12-l7"


@pytest.fixture
def console(make_bridge: Callable[..., Bridge], receiver) -> Bridge:
    return make_bridge(webhook_url=receiver[1], env={"BRIDGE_ADMIN_TOKEN": TOKEN})


def joined(event_id: str, user: str, name: str) -> dict[str, Any]:
    return {"id": event_id, "type": "user.joined", "lesson": {"id": LESSON, "title": "Algebra I"},
            "user": {"id": user, "name": name, "role": "teacher"}}


async def sign_in(page: Page, base: str, next_path: str = "/console/") -> None:
    await page.goto(f"{base}{next_path}")
    await expect(page.get_by_role("heading", name="Sign in to the console")).to_be_visible()
    await page.get_by_label("Your name").fill("Grace")
    await page.get_by_label("Admin token").fill(TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()


async def reload_until(page: Page, wanted: Locator, timeout_s: float, failure: str) -> None:
    """The console does not refresh itself (no script): reload, as an operator would, until it shows."""
    deadline = time.monotonic() + timeout_s
    while not await wanted.count():
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.25)
        await page.reload()


async def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def test_a_dead_delivery_is_found_redelivered_and_then_delivered(console: Bridge, receiver, context,
                                                                        client) -> None:
    hook, _ = receiver
    hook.answer_next(500, 500, 500, 500)                 # the first attempt and all three retries fail
    console.start_worker()
    accepted = await client.post(f"{console.base_url}/v1/events/default", json=joined("evt_dead", "42", "Ada"))
    assert accepted.status_code == 202
    page = await context.new_page()
    await sign_in(page, console.base_url, "/console/events")
    # Find it: the events list shows the dead webhook (reload while the retries run out, bounded).
    await reload_until(page, page.locator("tr", has_text="evt_dead").locator(".badge-dead"), 20,
                       "the delivery never went dead")
    await page.get_by_role("link", name="evt_dead").click()
    await expect(page.get_by_role("heading", name="Event evt_dead")).to_be_visible()
    delivery = page.locator(".delivery", has_text="join.ready")
    await expect(delivery.locator(".badge-dead")).to_be_visible()
    await expect(delivery.locator("table.attempts tbody tr")).to_have_count(4)
    await delivery.get_by_role("button", name="Redeliver").click()
    await expect(page.get_by_role("status")).to_contain_text("1 redelivery(ies) queued, 0 refused")
    await page.get_by_role("link", name="Back").click()
    await reload_until(page, page.locator(".delivery", has_text="join.ready").locator(".badge-delivered"), 15,
                       "the redelivery did not succeed")
    assert any(d["type"] == "join.ready" for d in hook.delivered)


async def test_csrf_sign_out_and_an_expired_session(console: Bridge, context: BrowserContext) -> None:
    page = await context.new_page()
    await sign_in(page, console.base_url, "/console/deliveries?status=dead")
    # The browser's own cookies, but no CSRF token (what a forged cross-site form would send at best).
    forged = await context.request.post(f"{console.base_url}/console/deliveries/retry", form={"all_dead": "1"})
    assert forged.status == 403 and "CSRF" in await forged.text()
    wrong = await context.request.post(f"{console.base_url}/console/deliveries/retry",
                                       form={"all_dead": "1", "csrf": "not-the-token"})
    assert wrong.status == 403
    await page.get_by_role("button", name="Redeliver all dead").click()          # the page's own form works
    await expect(page.get_by_role("status")).to_contain_text("0 redelivery(ies) queued")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("status")).to_have_text("You are signed out.")
    await page.goto(f"{console.base_url}/console/events")
    await expect(page.get_by_role("heading", name="Sign in to the console")).to_be_visible()
    assert not [c for c in await context.cookies() if c["name"] == COOKIE]
    _, expired = SessionSigner(TOKEN).issue("Grace", lifetime_s=-60)
    await context.add_cookies([{"name": COOKIE, "value": expired, "url": f"{console.base_url}/console"}])
    await page.goto(f"{console.base_url}/console/deliveries")
    await expect(page.get_by_role("status")).to_have_text("Your session expired: sign in again.")


async def test_every_page_without_secrets_and_lms_text_as_text(console: Bridge, context, client, redis) -> None:
    console.start_worker()
    await wait_until(lambda: worker_ready(redis))
    events = [joined("evt_ada", "42", "Ada Lovelace"), joined("evt_xss", "66", XSS),
              {"id": "evt_sched", "type": "lesson.scheduled", "lesson": {"id": LESSON, "title": "Algebra I"}}]
    assert (await client.post(f"{console.base_url}/v1/events/default", json=events)).status_code == 202
    moodle = {"eventname": "\\mod_bigbluebuttonbn\\event\\meeting_joined", "component": "mod_bigbluebuttonbn",
              "objectid": 3, "contextlevel": 70, "contextinstanceid": 9, "userid": 5, "courseid": 2,
              "timecreated": 1763805600, "host": "lms.example.edu", "token": MOODLE_TOKEN, "other": {}}
    moodle_answer = await client.post(f"{console.base_url}/v1/events/moodle", json=moodle)
    assert moodle_answer.status_code == 202, moodle_answer.text
    # The attendance ledger and a finished recording, as the workers leave them for a lesson.
    ledger = attendance.Ledger("default", LESSON, "sess-1")
    start = int(time.time() * 1000) - 3_600_000
    await attendance.mark_started(redis, ledger, start)
    for key, person in [("j1", attendance.Presence("joined", start, "p1", "42", "Ada Lovelace", "moderator")),
                        ("j2", attendance.Presence("joined", start + 300_000, "p2", "66", XSS, "guest")),
                        ("l2", attendance.Presence("left", start + 2_400_000, "p2", "66", XSS, "guest", "left")),
                        ("l1", attendance.Presence("left", start + 3_000_000, "p1", "42", "Ada Lovelace",
                                                   "moderator", "left"))]:
        await attendance.record(redis, ledger, key, person)
    await redis.hset(recording_key("rec_1"), mapping={"lesson": lesson_key("default", LESSON), "status": "ready",
                                                      "url": "https://files.example.edu/rec_1.mp4?sig=abc"})
    await wait_until(lambda: redis.hget(lesson_key("default", LESSON), "room"))
    await redis.hset(lesson_key("default", LESSON), "recording", "rec_1")

    page = await context.new_page()
    dialogs: list[str] = []
    requests: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    page.on("request", lambda request: requests.append(request.url))
    await page.goto(f"{console.base_url}/console/")
    await shoot(page, "signin")
    await sign_in(page, console.base_url)
    pages = {
        "overview": "/console/",
        "events": "/console/events",
        "event": "/console/event?source=default&id=evt_xss",
        "deliveries": "/console/deliveries?status=failed",
        "endpoints": "/console/endpoints",
        "lessons": "/console/lessons",
        "lesson": f"/console/lesson?source=default&id={LESSON}",
        "moodle-event": f"/console/event?source=moodle&id={moodle_answer.json()['accepted'][0]}",
    }
    for name, path in pages.items():
        answer = await page.goto(f"{console.base_url}{path}")
        assert answer is not None and answer.status == 200, (name, answer and answer.status)
        html = await page.content()
        for secret in (TOKEN, WEBHOOK_SECRET, MOODLE_TOKEN):
            assert secret not in html, f"a secret on the {name} page"
        if name != "moodle-event":
            await shoot(page, name)
    await page.goto(f"{console.base_url}{pages['event']}")
    await expect(page.locator("pre.json").filter(has_text=XSS).first).to_be_visible()
    await page.goto(f"{console.base_url}{pages['lesson']}")
    await expect(page.locator("td", has_text=XSS)).to_be_visible()
    await expect(page.get_by_role("link", name="download")).to_have_attribute(
        "href", "https://files.example.edu/rec_1.mp4?sig=abc")
    await page.wait_for_timeout(300)                  # time for a broken-out image to load and fire
    assert await page.locator("img").count() == 0
    assert dialogs == []
    assert not [url for url in requests if url.rstrip("/").endswith("/x")]
