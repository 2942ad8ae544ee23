"""What the provider test modules share: one loopback HTTP server per module, which each test puts its
own fresh simulator behind (`loopback.swap_in(Sim(...))`), and the httpx client the adapter under test
talks through."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.fakes.server import Loopback, Swappable, serve


@pytest.fixture(scope="module")
def loopback() -> Iterator[Loopback]:
    target = Swappable()
    with serve(target) as url:
        yield Loopback(target, url)


@pytest.fixture
def base_url(loopback: Loopback) -> str:
    """Where the adapter's API base points (a module whose service lives under a path overrides this)."""
    return loopback.url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as client:
        yield client
