"""Moodle's REST web services, for one source that has `moodle_url` and `ws_token`.

Moodle answers every error with HTTP 200 and `{"exception", "errorcode", "message"}`; here that is a
MoodleError like a network failure, so callers degrade the same way whatever went wrong. A token
Moodle refuses is the source's configuration, not the call's: the first refusal pauses every call for
the source for PAUSE_S (one log line, one metric), instead of each job asking again.

Answers are cached in Redis (bridge.store.moodle_ws_cache_key): the calendar answer alone is ~23 KB
and every event of a lesson asks about the same course, activity and users. Only jobs and the
reconciler call Moodle; intake never does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import structlog
from redis.asyncio import Redis

from bridge import metrics
from bridge.config import SourceConfig
from bridge.sources.moodle import normalise_id
from bridge.store import moodle_ws_cache_key, moodle_ws_paused_key

log = structlog.get_logger("bridge.moodle")

REST_PATH = "/webservice/rest/server.php"
PAUSE_S = 60
# Moodle's error codes that say the token or its service is wrong (webservice_access_exception and
# friends): no call can succeed until an admin changes something in Moodle.
ACCESS_ERRORS = frozenset({"invalidtoken", "accessexception", "servicenotavailable", "forbiddenwsuser",
                           "usernotfullysetup", "invalidtimedtoken"})
MESSAGE_CHARS = 300
# How long answers are cached: names change rarely; activities and calendar entries are edited.
USER_TTL_S = 3600
MODULE_TTL_S = 300
CALENDAR_TTL_S = 300
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CALL_TIMEOUT_S = 5.0     # a slow Moodle costs a job this much per call at most, then the job degrades

Params = Mapping[str, Any]


class MoodleError(Exception):
    """A call that gave no answer: Moodle's `errorcode`, or unreachable / http_<status> / bad_response / paused."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def form_fields(params: Params, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Moodle's form encoding of nested parameters: `values[0]=5`, `events[courseids][0]=12`."""
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from form_fields(value, name)
        elif isinstance(value, list | tuple):
            yield from form_fields(dict(enumerate(value)), name)
        elif isinstance(value, bool):
            yield name, "1" if value else "0"
        else:
            yield name, str(value)


def _digest(params: Params) -> str:
    return hashlib.sha256(orjson.dumps(list(form_fields(params)))).hexdigest()[:32]


class MoodleClient:
    def __init__(self, source: SourceConfig, http: httpx.AsyncClient, redis: Redis) -> None:
        assert source.moodle_url and source.ws_token, "a Moodle client needs moodle_url and ws_token"
        self.source, self.http, self.redis = source, http, redis
        self.url = source.moodle_url.rstrip("/") + REST_PATH
        self._token = source.ws_token

    async def call(self, function: str, params: Params, *, ttl_s: int, fresh: bool = False) -> Any:
        """The answer of `function`, from the cache unless `fresh`; a fresh answer is cached for `ttl_s`."""
        cache_key = moodle_ws_cache_key(self.source.name, function, _digest(params))
        if not fresh and (cached := await self.redis.get(cache_key)) is not None:
            return orjson.loads(cached)
        if await self.redis.exists(moodle_ws_paused_key(self.source.name)):
            raise MoodleError("paused", "Moodle refused the source's ws_token recently; calls resume after "
                              f"{PAUSE_S} s")
        try:
            answer = await self._post(function, params)
        except MoodleError as exc:
            await self._failed(function, exc)
            raise
        await metrics.moodle_ws_call(self.redis, self.source.name, function, "ok")
        await self.redis.set(cache_key, orjson.dumps(answer), ex=ttl_s)
        return answer

    async def _post(self, function: str, params: Params) -> Any:
        # POST, so the token travels in the body and never lands in an access log's URL.
        fields = [("wstoken", self._token), ("wsfunction", function), ("moodlewsrestformat", "json"),
                  *form_fields(params)]
        try:
            response = await self.http.post(self.url, content=urlencode(fields), headers=FORM, timeout=CALL_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise MoodleError("unreachable", type(exc).__name__) from None
        if response.status_code != 200:
            raise MoodleError(f"http_{response.status_code}", "Moodle answered with an HTTP error")
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise MoodleError("bad_response", "the answer is not JSON (is moodlewsrestformat honoured?)") from None
        if isinstance(answer, dict) and ("exception" in answer or "errorcode" in answer):
            raise MoodleError(str(answer.get("errorcode") or answer.get("exception")),
                              str(answer.get("message") or "")[:MESSAGE_CHARS])
        return answer

    async def _failed(self, function: str, exc: MoodleError) -> None:
        if exc.code in ACCESS_ERRORS:
            outcome = "access_denied"
            # Only the process that starts the pause logs it: one line per pause, across all workers.
            if await self.redis.set(moodle_ws_paused_key(self.source.name), exc.code, nx=True, ex=PAUSE_S):
                log.error("moodle.ws_misconfigured", source=self.source.name, function=function,
                          errorcode=exc.code, message=exc.message, moodle_url=self.source.moodle_url,
                          consequence=f"no web-service calls for {PAUSE_S} s: names, activity titles, "
                          "the calendar check and reconciliation wait; check ws_token and the functions "
                          "of its service in Moodle")
        elif exc.code in ("unreachable", "bad_response") or exc.code.startswith("http_"):
            outcome = "unreachable"
        else:
            outcome = "error"
        await metrics.moodle_ws_call(self.redis, self.source.name, function, outcome)

    # ------------------------------------------------------------------ the functions the bridge uses

    async def calendar_event(self, event_id: str) -> dict[str, Any]:
        answer = await self.call("core_calendar_get_calendar_event_by_id", {"eventid": event_id}, ttl_s=CALENDAR_TTL_S)
        return _object(answer, "event")

    async def user(self, user_id: str) -> dict[str, Any] | None:
        answer = await self.call("core_user_get_users_by_field", {"field": "id", "values": [user_id]},
                                 ttl_s=USER_TTL_S)
        found = [u for u in answer if isinstance(u, dict) and normalise_id(u.get("id")) == user_id] \
            if isinstance(answer, list) else []
        return found[0] if found else None

    async def course_module(self, cmid: str, *, fresh: bool = False) -> dict[str, Any]:
        answer = await self.call("core_course_get_course_module", {"cmid": cmid}, ttl_s=MODULE_TTL_S, fresh=fresh)
        return _object(answer, "cm")

    async def course_modules(self, course_id: str, *, cmid: str | None = None,
                             fresh: bool = False) -> list[dict[str, Any]]:
        """The course's activities (one, with `cmid`), from core_course_get_contents without file lists."""
        options: list[dict[str, Any]] = [{"name": "excludecontents", "value": True}]
        if cmid is not None:
            options.append({"name": "cmid", "value": cmid})
        sections = await self.call("core_course_get_contents", {"courseid": course_id, "options": options},
                                   ttl_s=MODULE_TTL_S, fresh=fresh)
        if not isinstance(sections, list):
            raise MoodleError("bad_response", "core_course_get_contents did not answer a list of sections")
        return [m for s in sections if isinstance(s, dict) for m in s.get("modules") or [] if isinstance(m, dict)]

    async def course_calendar(self, course_id: str, start: int, end: int) -> list[dict[str, Any]]:
        """The course's calendar events between two Unix times (no user or site events), uncached."""
        answer = await self.call("core_calendar_get_calendar_events", {
            "events": {"courseids": [course_id]},
            "options": {"userevents": False, "siteevents": False, "timestart": start, "timeend": end}},
            ttl_s=CALENDAR_TTL_S, fresh=True)
        events = _object(answer, "events")
        if not isinstance(events, list):
            raise MoodleError("bad_response", "core_calendar_get_calendar_events did not answer a list of events")
        return [e for e in events if isinstance(e, dict)]


def _object(answer: Any, key: str) -> Any:
    value = answer.get(key) if isinstance(answer, dict) else None
    if value is None:
        raise MoodleError("bad_response", f"the answer has no {key!r}")
    return value
