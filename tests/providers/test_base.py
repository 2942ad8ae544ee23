"""The shared HTTP base (bridge/providers/base.py): Retry-After, secret scrubbing, and the one policy
for unreadable answers, checked on a small adapter over real loopback HTTP and on every HTTP adapter
against its simulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bridge.providers import build_provider
from bridge.providers.base import (
    RETRY_AFTER_MAX_S,
    HttpProvider,
    Lesson,
    ProviderError,
    ProviderSettings,
    retry_after_seconds,
)
from tests.fakes.server import Loopback, serve
from tests.providers.blendvision.sim import BlendVisionSim
from tests.providers.hms.sim import HmsSim
from tests.providers.openmeetings.sim import OpenMeetingsSim
from tests.providers.owt.sim import OwtSim

NOW = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
SECRET = "s3cret-api-key-0123"
LESSON = Lesson(id="c12-l7", title="Algebra I")

# ---------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(("header", "seconds"), [
    ("12", 12.0),
    ("0", 0.0),
    ("1.5", 1.5),
    (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),      # IMF-fixdate
    ("Sunday, 22-Nov-26 10:00:45 GMT", 45.0),                              # the obsolete RFC 850 form
    (format_datetime(NOW - timedelta(hours=1), usegmt=True), 0.0),         # already past: go now
    ("-5", 0.0),
    (str(365 * 86400), RETRY_AFTER_MAX_S),                                  # a year: capped
    (format_datetime(NOW + timedelta(days=30), usegmt=True), RETRY_AFTER_MAX_S),
])
def test_retry_after_reads_seconds_and_dates_and_caps(header: str, seconds: float) -> None:
    assert retry_after_seconds(header, NOW) == seconds


@pytest.mark.parametrize("header", [None, "", "soon", "12 seconds", "nan", "Someday, 99 Nov 2026"])
def test_retry_after_absent_or_garbage_is_none(header: str | None) -> None:
    assert retry_after_seconds(header, NOW) is None


# ---------------------------------------------------------------------------- a small adapter


class EchoSettings(ProviderSettings):
    api_base: str
    api_key: str


class EchoProvider(HttpProvider):
    """An adapter whose auth is a header carrying its key and whose error body is {"fault": {...}}."""

    kind = "echo"
    settings_model = EchoSettings

    def __init__(self, name: str, settings: EchoSettings, http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        self.base, self.key = settings.api_base, settings.api_key

    def secrets(self) -> tuple[str, ...]:
        return (self.key,)

    @staticmethod
    def error_fields(body: Any) -> tuple[str, str]:
        fault = body.get("fault") if isinstance(body, dict) else None
        return (str(fault["code"]), str(fault["text"])) if isinstance(fault, dict) else ("", "")

    async def get(self, path: str) -> Any:
        response = await self.send("GET", self.base + path, headers={"x-api-key": self.key})
        return self.read_json(response, "the answer")


async def _leaky_fault(request: Request) -> Response:
    """A provider that quotes the caller's key back in its error (some do)."""
    key = request.headers["x-api-key"]
    return JSONResponse({"fault": {"code": f"denied-{key}", "text": f"key {key} is not allowed"}}, status_code=403)


async def _leaky_text(request: Request) -> Response:
    return PlainTextResponse(f"upstream said: bad key {request.headers['x-api-key']}", status_code=502)


async def _busy(request: Request) -> Response:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=40), usegmt=True)
    return JSONResponse({"fault": {"code": "busy", "text": "slow down"}}, status_code=429,
                        headers={"Retry-After": when})


async def _maintenance(request: Request) -> Response:
    return PlainTextResponse("<html>down for maintenance</html>", media_type="text/html")


ECHO = Starlette(routes=[Route("/fault", _leaky_fault), Route("/text", _leaky_text), Route("/busy", _busy),
                         Route("/maintenance", _maintenance)])


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    with serve(ECHO) as url:
        yield url


@pytest.fixture
def echo(echo_url: str, http: httpx.AsyncClient) -> EchoProvider:
    return EchoProvider("echo", EchoSettings.parse({"api_base": echo_url, "api_key": SECRET}), http)


@pytest.mark.parametrize("path", ["/fault", "/text"])
async def test_a_secret_quoted_back_never_reaches_the_error(echo: EchoProvider, path: str) -> None:
    with pytest.raises(ProviderError) as info:
        await echo.get(path)
    error = info.value
    assert SECRET not in error.code and SECRET not in error.message and SECRET not in str(error)
    assert "***" in error.message


async def test_the_error_body_reader_names_code_and_message(echo: EchoProvider) -> None:
    with pytest.raises(ProviderError) as info:
        await echo.get("/fault")
    assert info.value.code == "denied-***" and info.value.status == 403 and not info.value.retryable
    assert info.value.message == "echo HTTP 403: key *** is not allowed"


async def test_an_http_date_retry_after_reaches_the_error(echo: EchoProvider) -> None:
    with pytest.raises(ProviderError) as info:
        await echo.get("/busy")
    assert info.value.retryable and info.value.code == "busy" and 37 <= (info.value.retry_after or 0) <= 40


async def test_an_unreadable_success_is_retryable(echo: EchoProvider) -> None:
    with pytest.raises(ProviderError) as info:
        await echo.get("/maintenance")
    assert info.value.code == "bad_response" and info.value.retryable and info.value.status == 200


# ---------------------------------------------------------------------------- the same policy everywhere

Sim = OwtSim | HmsSim | OpenMeetingsSim | BlendVisionSim
CASES: dict[str, tuple[Callable[[], Sim], Callable[[str], dict[str, Any]], str]] = {
    "owt": (OwtSim, lambda url: {"base_url": url, "service_id": "5f0c1a2b3c4d5e6f7a8b9c0d",
                                 "service_key": "service-key"}, "/v1/rooms"),
    "100ms": (HmsSim, lambda url: {"access_key": "hms-access-key", "api_base": url, "policy_base": url,
                                   "app_secret": "hms-app-secret-for-tests-0123456789abcdef"}, "/v2/rooms"),
    "openmeetings": (OpenMeetingsSim, lambda url: {"base_url": f"{url}/openmeetings", "user": "soapuser",
                                                   "password": "!HansHans1-for-tests"}, "/room/"),
    "blendvision": (BlendVisionSim, lambda url: {"api_base": url, "api_token": "bv-api-token-for-tests",
                                                 "org_id": "org-0001"}, "/chatrooms"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("body", ["<html>down for maintenance</html>", "[1, 2"])
async def test_every_adapter_retries_an_unreadable_answer(kind: str, body: str, loopback: Loopback,
                                                          http: httpx.AsyncClient) -> None:
    make_sim, settings, path = CASES[kind]
    sim = loopback.swap_in(make_sim())
    provider = build_provider(kind, kind, settings(loopback.url), http)
    sim.inject(200, body=body, path=path)
    with pytest.raises(ProviderError) as info:
        await provider.create_room(LESSON)
    assert info.value.code == "bad_response" and info.value.retryable, kind
    await provider.create_room(LESSON)      # the retry succeeds
