"""Chromium from the distribution (/usr/bin/chromium) driven by Playwright's Python package: no browser
is downloaded. `make test-browser` runs these; `make test` leaves this folder out."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, async_playwright

CHROMIUM = os.environ.get("BRIDGE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
LAPTOP = {"width": 1366, "height": 860}


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set BRIDGE_CHROMIUM)")
    async with async_playwright() as playwright:
        # Chromium refuses to start its sandbox as root (CI runs as root).
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield launched
        await launched.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport=LAPTOP)
    ctx.set_default_timeout(10_000)
    yield ctx
    await ctx.close()
