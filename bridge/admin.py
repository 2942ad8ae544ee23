"""The admin API under /v1/admin/: the operator's tools (bridge.eventlog, bridge.deliveries) over HTTP.

Bearer `BRIDGE_ADMIN_TOKEN`, compared in constant time. With no token configured the API is off:
every /v1/admin/ path answers 404 exactly like a path that does not exist, whatever the method.
With a token, authentication comes before anything else (an unknown admin path or a wrong method
answers 401 to a caller without the token), so the API's shape is not revealed to strangers.

    GET  /v1/admin/events                    filters as query parameters; paginated by `cursor`
    GET  /v1/admin/events/{id}               ?source= when the id exists in several sources
    POST /v1/admin/events/{id}/replay        {"source", "reparse", "dry_run"} (all optional)
    POST /v1/admin/replays                   {filters..., "reparse", "dry_run", "limit"}
    GET  /v1/admin/deliveries                ?status=failed|dead|disabled&endpoint=&limit=&cursor=
    GET  /v1/admin/deliveries/{id}           one delivery with its attempts
    POST /v1/admin/deliveries/{id}/retry     one more attempt, same webhook-id, fresh job id
    POST /v1/admin/deliveries/retry          {"ids": [...]} | {"endpoint": "..."} | {"all_dead": true}
    POST /v1/admin/endpoints/{name}/enable   {"retry": true} also retries what was held while disabled
    GET  /v1/admin/lessons/{id}/attendance   ?source= ; the ledger of the lesson's current or last session
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import attendance, deliveries
from bridge.config import Settings
from bridge.errors import ApiError, error_response
from bridge.eventlog.entries import LogEvent, parse_entry_id
from bridge.eventlog.query import Filters, event_details, events_page, find_events, select_from_log
from bridge.eventlog.replay import enqueue_replays, plan_replay, summarize_replays

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
DEFAULT_PAGE = 50
MAX_PAGE = 500
DEFAULT_BULK = 1000
MAX_BULK = 10_000
UNAVAILABLE = ("OOM", "LOADING", "READONLY", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN")
RETRY_STATUS = {"not_found": 404, "already_delivered": 409, "endpoint_disabled": 409, "no_endpoint": 409,
                "busy": 409}

Handler = Callable[[Request, Settings, Redis], Awaitable[Response]]


def _not_found(request: Request) -> Response:
    """The same answer the app gives for any unknown path."""
    return error_response(404, "not_found", f"{request.method} {request.url.path}: Not Found")


async def _off(request: Request) -> Response:
    return _not_found(request)


def _truthy(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ApiError(400, "invalid_parameter", f"{name} must be true or false", details={"parameter": name})


def _int(value: Any, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, "invalid_parameter", f"{name} must be a whole number",
                       details={"parameter": name}) from None
    if not low <= number <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be between {low} and {high}",
                       details={"parameter": name})
    return number


def _strings(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in values):
        raise ApiError(400, "invalid_parameter", f"{name} must be a string or a list of strings",
                       details={"parameter": name})
    return values


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return body


def _time_value(value: Any, name: str) -> Any:
    """since/until in a JSON body: a string (ISO time or relative such as 2h), or nothing."""
    if value is None or isinstance(value, str):
        return value
    raise ApiError(400, "invalid_filter", f"{name} must be a string", details={"parameter": name})


def _filters(get: Callable[[str], Any], get_list: Callable[[str], list[str]]) -> Filters:
    try:
        return Filters.build(since=get("since"), until=get("until"), sources=get_list("source"),
                                types=get_list("type"), lessons=get_list("lesson"), ids=get_list("id"),
                                failed_only=_truthy(get("failed_only"), "failed_only"),
                                include_replays=_truthy(get("include_replays"), "include_replays"))
    except ValueError as exc:
        name = str(exc).split(":", 1)[0]
        raise ApiError(400, "invalid_filter", str(exc), details={"parameter": name}) from None


async def _one_event(request: Request, settings: Settings, redis: Redis, source: str | None) -> LogEvent:
    event_id = request.path_params["event_id"]
    found = await find_events(redis, event_id, source, settings.sources)
    if not found:
        raise ApiError(404, "event_not_found", f"no event {event_id!r} in the event log",
                       details={"id": event_id, "source": source})
    if len(found) > 1:
        raise ApiError(409, "ambiguous_event", f"event {event_id!r} exists in several sources; pass ?source=",
                       details={"sources": sorted(e.source for e in found)})
    return found[0]


# ---------------------------------------------------------------------------------------------- handlers

async def list_events(request: Request, settings: Settings, redis: Redis) -> Response:
    query = request.query_params
    filters = _filters(query.get, query.getlist)
    limit = _int(query.get("limit"), "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    cursor = query.get("cursor") or None
    if cursor:
        try:
            parse_entry_id(cursor)
        except ValueError:
            raise ApiError(400, "invalid_cursor", "cursor must be a next_cursor value from an earlier page",
                           details={"parameter": "cursor"}) from None
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "invalid_parameter", "order must be asc or desc", details={"parameter": "order"})
    rows, next_cursor = await events_page(redis, filters, limit=limit, cursor=cursor, newest_first=order == "desc",
                                            known_sources=settings.sources)
    events = [{**event.summary(), "status": state.status, "latest_ref": state.ref} for event, state in rows]
    return JSONResponse({"events": events, "next_cursor": next_cursor})


async def show_event(request: Request, settings: Settings, redis: Redis) -> Response:
    event = await _one_event(request, settings, redis, request.query_params.get("source"))
    return JSONResponse(await event_details(redis, event))


async def replay_event(request: Request, settings: Settings, redis: Redis) -> Response:
    body = await _body(request)
    source = body.get("source") or request.query_params.get("source")
    if source is not None and not isinstance(source, str):
        raise ApiError(400, "invalid_parameter", "source must be a source name", details={"parameter": "source"})
    dry_run = _truthy(body.get("dry_run", request.query_params.get("dry_run")), "dry_run")
    reparse = _truthy(body.get("reparse", request.query_params.get("reparse")), "reparse")
    event = await _one_event(request, settings, redis, source)
    planned = plan_replay(settings, event, reparse)
    if planned.error:
        raise ApiError(422, "cannot_replay", planned.error, details=planned.describe())
    if dry_run:
        return JSONResponse({"dry_run": True, "replay": planned.describe()})
    await enqueue_replays(redis, settings, [planned])
    if planned.error:
        raise ApiError(503, "store_unavailable", planned.error, headers={"Retry-After": "5"})
    return JSONResponse({"dry_run": False, "replay": planned.describe()}, status_code=202)


async def replay_many(request: Request, settings: Settings, redis: Redis) -> Response:
    body = await _body(request)
    filters = _filters(lambda name: _time_value(body.get(name), name) if name in ("since", "until") else body.get(name),
                       lambda name: _strings(body.get(name), name))
    limit = _int(body.get("limit"), "limit", DEFAULT_BULK, 1, MAX_BULK)
    dry_run = _truthy(body.get("dry_run"), "dry_run")
    events = await select_from_log(redis, filters, settings.sources, limit=limit + 1)
    truncated = len(events) > limit
    planned = [plan_replay(settings, event, _truthy(body.get("reparse"), "reparse")) for event in events[:limit]]
    if not dry_run:
        await enqueue_replays(redis, settings, planned)
    summary = summarize_replays(planned, dry_run=dry_run)
    return JSONResponse({"summary": summary.as_dict(), "truncated": truncated,
                         "replays": [p.describe() for p in planned]}, status_code=200 if dry_run else 202)


async def list_deliveries(request: Request, settings: Settings, redis: Redis) -> Response:
    query = request.query_params
    status = query.get("status", "failed")
    if status not in deliveries.DELIVERY_LISTS:
        raise ApiError(400, "invalid_parameter", f"status must be one of {', '.join(deliveries.DELIVERY_LISTS)}",
                       details={"parameter": "status"})
    limit = _int(query.get("limit"), "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    cursor = _int(query.get("cursor"), "cursor", 0, 0, 2**53)
    items, next_cursor = await deliveries.list_deliveries(redis, status, endpoint=query.get("endpoint") or None,
                                                        limit=limit, cursor=cursor)
    return JSONResponse({"deliveries": items, "next_cursor": str(next_cursor) if next_cursor else None})


async def show_delivery(request: Request, settings: Settings, redis: Redis) -> Response:
    msg_id = request.path_params["webhook_id"]
    info = await deliveries.delivery(redis, msg_id)
    if info is None:
        raise ApiError(404, "delivery_not_found", f"no delivery {msg_id!r}")
    return JSONResponse(info)


async def retry_one(request: Request, settings: Settings, redis: Redis) -> Response:
    result = await deliveries.retry_delivery(redis, settings, request.path_params["webhook_id"])
    if not result.ok:
        raise ApiError(RETRY_STATUS.get(result.code or "", 409), result.code or "cannot_retry",
                       result.message or "cannot retry", details={"webhook_id": result.webhook_id})
    return JSONResponse(result.as_dict(), status_code=202)


async def retry_many(request: Request, settings: Settings, redis: Redis) -> Response:
    body = await _body(request)
    ids = _strings(body.get("ids"), "ids")
    endpoint = body.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        raise ApiError(400, "invalid_parameter", "endpoint must be a source name", details={"parameter": "endpoint"})
    all_dead = _truthy(body.get("all_dead"), "all_dead")
    if not (ids or endpoint or all_dead):
        raise ApiError(400, "nothing_selected", 'name deliveries: {"ids": [...]}, {"endpoint": "..."} '
                       'or {"all_dead": true}')
    chosen = await deliveries.select_for_retry(redis, ids=ids, endpoint=endpoint, all_dead=all_dead)
    results = [await deliveries.retry_delivery(redis, settings, msg_id) for msg_id in chosen]
    return JSONResponse({"retried": sum(r.ok for r in results), "failed": sum(not r.ok for r in results),
                         "results": [r.as_dict() for r in results]}, status_code=202)


async def enable_endpoint(request: Request, settings: Settings, redis: Redis) -> Response:
    body = await _body(request)
    retry = _truthy(body.get("retry", request.query_params.get("retry")), "retry")
    name = request.path_params["name"]
    try:
        result = await deliveries.enable_endpoint(redis, settings, name, retry=retry)
    except LookupError as exc:
        raise ApiError(404, "unknown_endpoint", str(exc), details={"known": sorted(settings.sources)}) from None
    return JSONResponse(result)


async def lesson_attendance(request: Request, settings: Settings, redis: Redis) -> Response:
    lesson_id = request.path_params["lesson_id"]
    source = request.query_params.get("source")
    if not source:
        if len(settings.sources) != 1:
            raise ApiError(400, "missing_source", "several sources are configured: name the lesson's with ?source=",
                           details={"known": sorted(settings.sources)})
        (source,) = settings.sources
    if source not in settings.sources:
        raise ApiError(404, "unknown_source", f"no source named {source!r} is configured",
                       details={"known": sorted(settings.sources)})
    session_id = await attendance.latest_session(redis, source, lesson_id)
    if session_id is None:
        raise ApiError(404, "no_attendance", f"no provider session of lesson {lesson_id!r} (source {source!r}) "
                       "has been recorded", details={"lesson_id": lesson_id, "source": source})
    snapshot = await attendance.load(redis, attendance.Ledger(source, lesson_id, session_id))
    return JSONResponse({"source": source, "lesson_id": lesson_id,
                         **snapshot.so_far(session_id, int(time.time() * 1000))})


async def unknown(request: Request, settings: Settings, redis: Redis) -> Response:
    return _not_found(request)


# ---------------------------------------------------------------------------------------------- routes

def _guarded(settings: Settings, handlers: dict[str, Handler]) -> Callable[[Request], Awaitable[Response]]:
    expected = (settings.admin_token or "").encode()
    challenge = {"WWW-Authenticate": 'Bearer realm="lesson-bridge-admin"'}

    async def endpoint(request: Request) -> Response:
        header = request.headers.get("authorization")
        if not header:
            return error_response(401, "missing_token", "the admin API needs Authorization: Bearer <token>",
                                  headers=challenge)
        scheme, _, offered = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip().encode(), expected):
            return error_response(401, "bad_token", "the bearer token does not match BRIDGE_ADMIN_TOKEN",
                                  headers=challenge)
        handler = handlers.get("GET" if request.method == "HEAD" else request.method)
        if handler is None and "*" in handlers:
            handler = handlers["*"]
        if handler is None:
            allowed = ", ".join(sorted(handlers))
            return error_response(405, "method_not_allowed", f"{request.method} {request.url.path}: "
                                  f"Method Not Allowed (allowed: {allowed})", headers={"Allow": allowed})
        try:
            return await handler(request, settings, request.app.state.bridge["redis"])
        except ApiError as exc:
            return exc.response()
        except ResponseError as exc:
            if not str(exc).startswith(UNAVAILABLE):
                raise                  # a command Redis refused: a bug, not an outage
            return error_response(503, "store_unavailable", f"Redis cannot serve this now: {str(exc)[:100]}",
                                  headers={"Retry-After": "5"})
        except RedisError as exc:
            return error_response(503, "store_unavailable", f"Redis is unreachable ({type(exc).__name__})",
                                  headers={"Retry-After": "5"})

    return endpoint


def admin_routes(settings: Settings) -> list[Route]:
    if not settings.admin_token:
        return [Route("/v1/admin", _off, methods=ALL_METHODS),
                Route("/v1/admin/{rest:path}", _off, methods=ALL_METHODS)]
    table: list[tuple[str, dict[str, Handler]]] = [
        ("/v1/admin/events", {"GET": list_events}),
        ("/v1/admin/events/{event_id:path}/replay", {"POST": replay_event}),   # ids may hold a '/'
        ("/v1/admin/events/{event_id:path}", {"GET": show_event}),
        ("/v1/admin/replays", {"POST": replay_many}),
        ("/v1/admin/deliveries", {"GET": list_deliveries}),
        ("/v1/admin/deliveries/retry", {"POST": retry_many}),
        ("/v1/admin/deliveries/{webhook_id}", {"GET": show_delivery}),
        ("/v1/admin/deliveries/{webhook_id}/retry", {"POST": retry_one}),
        ("/v1/admin/endpoints/{name}/enable", {"POST": enable_endpoint}),
        ("/v1/admin/lessons/{lesson_id:path}/attendance", {"GET": lesson_attendance}),   # ids may hold a '/'
        ("/v1/admin", {"*": unknown}),
        ("/v1/admin/{rest:path}", {"*": unknown}),
    ]
    return [Route(path, _guarded(settings, handlers), methods=ALL_METHODS) for path, handlers in table]
