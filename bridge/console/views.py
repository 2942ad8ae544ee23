"""The operator console under /console: server-rendered pages over the admin tools.

Every page needs a signed session (bridge.console.session); every POST also needs the session's CSRF
token and, when the browser sends one, an Origin of this host. Actions are logged with who and when.
Everything shown passes through Jinja2 autoescaping and the masker (bridge.console.masking).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jinja2
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge import deliveries
from bridge.config import Settings
from bridge.console import charts, data
from bridge.console.masking import Masker, configured_secrets, safe_link
from bridge.console.session import COOKIE, Session, SessionSigner, clear_cookie, set_cookie
from bridge.eventlog.entries import parse_entry_id
from bridge.eventlog.query import Filters, RunState, event_details, events_page, find_events
from bridge.eventlog.replay import enqueue_replays, plan_replay
from bridge.routing import JOBS_BY_TYPE

log = structlog.get_logger("bridge.console")

HERE = Path(__file__).parent
PAGE_SIZE = 50
STATUSES = ("failed", "retrying", "pending", "ok")
MAX_FORM_BYTES = 256 * 1024   # a bulk redelivery of a few thousand ticked ids
MAX_FORM_FIELDS = 5000
STATUS_PAGE_CALLS = 5          # log pages one status-filtered page may read (failed has its own filter)
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),     # no-referrer would make forms send Origin: null
    (b"cache-control", b"no-store"),
]

Page = Callable[[Request, Session], Awaitable[Response]]


class SecurityHeaders:
    """Adds the console's headers to every answer under /console, static files included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class ConsoleError(Exception):
    """A request the console refuses: shown as a page that names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def read_form(request: Request) -> FormData:
    """The console's forms are URL-encoded and small: parsed here, bounded, without a multipart parser."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise ConsoleError(415, f"Forms are sent as application/x-www-form-urlencoded, not {kind or 'nothing'}.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise ConsoleError(413, f"The form is larger than {MAX_FORM_BYTES // 1024} KiB.")
    try:
        return FormData(parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConsoleError(400, f"The form could not be read: {exc}") from None


def _back(value: str | None, default: str = "/console/") -> str:
    """Where a result page links back to: only a path inside the console (no open redirect)."""
    parts = urlsplit(value or "")
    if parts.scheme or parts.netloc or not parts.path.startswith("/console/"):
        return default
    return value or default


def _since_label(minute_ms: int) -> str:
    return datetime.fromtimestamp(minute_ms / 1000, UTC).strftime("%H:%M")


class Console:
    def __init__(self, settings: Settings) -> None:
        assert settings.admin_token, "the console is off without BRIDGE_ADMIN_TOKEN"
        self.settings = settings
        self.signer = SessionSigner(settings.admin_token)
        self.masker = Masker(configured_secrets(settings))
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                      finalize=self.masker.finalize, undefined=jinja2.StrictUndefined)
        self.env.filters["pretty"] = lambda v: json.dumps(self.masker.value(v), indent=2, ensure_ascii=False)
        self.env.filters["link"] = safe_link
        self.env.filters["pct"] = lambda v: "\u2013" if v is None else f"{v * 100:.1f} %"
        self.env.filters["ms"] = lambda v: "\u2013" if v is None else f"{v:.0f} ms"
        self.env.globals["qs"] = lambda **kw: urlencode({k: v for k, v in kw.items() if v not in (None, "")})

    # ------------------------------------------------------------------------------------------ plumbing

    def render(self, request: Request, template: str, session: Session | None, code: int = 200,
               **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(
            session=session, csrf=self.signer.csrf_token(session) if session else "", path=request.url.path,
            here=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""), **context)
        return HTMLResponse(html, status_code=code)

    def _session(self, request: Request) -> tuple[Session | None, str]:
        return self.signer.read(request.cookies.get(COOKIE))

    def page(self, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session, why = self._session(request)
            if session is None:
                query = {"next": request.url.path + (f"?{request.url.query}" if request.url.query else "")}
                if why in ("expired", "invalid"):
                    query["why"] = why
                return RedirectResponse(f"/console/signin?{urlencode(query)}", status_code=303)
            return await self._guarded(request, session, handler)
        return endpoint

    def action(self, name: str, handler: Callable[[Request, Session, FormData], Awaitable[Response]]
               ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session, why = self._session(request)
            if session is None:
                return self.render(request, "error.html", None, 401,
                                   message=f"Your session is {why}: sign in again, then repeat the action.")
            try:
                form = await read_form(request)
            except ConsoleError as exc:
                return self.render(request, "error.html", session, exc.status, message=exc.message)
            origin = request.headers.get("origin")
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                log.warning("console.refused", action=name, who=session.name, reason="cross_origin", origin=origin)
                return self.render(request, "error.html", session, 403,
                                   message=f"Refused: the form was sent from another site ({origin}).")
            if not self.signer.csrf_matches(session, str(form.get("csrf") or "")):
                log.warning("console.refused", action=name, who=session.name, session=session.sid, reason="csrf")
                return self.render(request, "error.html", session, 403,
                                   message="Refused: the form's CSRF token is missing or does not match your "
                                           "session. Reload the page and try again.")
            log.info("console.action", action=name, who=session.name, session=session.sid,
                     client=request.client.host if request.client else None,
                     target={k: v for k, v in form.multi_items() if k != "csrf"})
            return await self._guarded(request, session, lambda r, s: handler(r, s, form))
        return endpoint

    async def _guarded(self, request: Request, session: Session, handler: Page) -> Response:
        try:
            return await handler(request, session)
        except ConsoleError as exc:
            return self.render(request, "error.html", session, exc.status, message=exc.message)
        except RedisError as exc:
            return self.render(request, "error.html", session, 503,
                               message=f"Redis is unreachable ({type(exc).__name__}); try again shortly.")

    def redis(self, request: Request) -> Redis:
        return request.app.state.bridge["redis"]

    # ------------------------------------------------------------------------------------------ sign-in

    async def signin(self, request: Request) -> Response:
        next_page = _back(request.query_params.get("next"))
        notes = {"expired": "Your session expired: sign in again.", "invalid": "Your session is not valid any "
                 "more (the admin token may have changed): sign in again.", "out": "You are signed out."}
        if request.method == "GET":
            return self.render(request, "signin.html", None, next=next_page,
                               note=notes.get(request.query_params.get("why", "")), error=None)
        try:
            form = await read_form(request)
        except ConsoleError as exc:
            return self.render(request, "error.html", None, exc.status, message=exc.message)
        next_page = _back(str(form.get("next") or ""))
        if not self.signer.token_matches(str(form.get("token") or "")):
            log.warning("console.signin_refused", client=request.client.host if request.client else None)
            return self.render(request, "signin.html", None, 401, next=next_page, note=None,
                               error="That is not the admin token (BRIDGE_ADMIN_TOKEN).")
        session, cookie = self.signer.issue(str(form.get("name") or ""))
        log.info("console.signin", who=session.name, session=session.sid,
                 client=request.client.host if request.client else None)
        response = RedirectResponse(next_page, status_code=303)
        set_cookie(response, request, cookie)
        return response

    async def signout(self, request: Request, session: Session, form: FormData) -> Response:
        response = RedirectResponse("/console/signin?why=out", status_code=303)
        clear_cookie(response, request)
        return response

    # ------------------------------------------------------------------------------------------ pages

    async def overview(self, request: Request, session: Session) -> Response:
        view = await data.overview(self.redis(request))
        rate = charts.bar_chart([(_since_label(m), n) for m, n in view.per_minute],
                                "Events accepted per minute, last 30 minutes (UTC)", label_every=5)
        attempts = charts.bar_chart(sorted(view.attempts.items()), "Webhook attempts by answer", width=320)
        latency = charts.bar_chart([(charts.duration_label(float(b)) if b != "+Inf" else "more", n)
                                    for b, n in view.latency], "Job durations (runs per bucket, upper bound)")
        queues = charts.bar_chart([(f"{q} due", due) for q, (_, due) in view.queues.items()] +
                                  [(f"{q} all", depth) for q, (depth, _) in view.queues.items()],
                                  "Queue depth", width=320)
        return self.render(request, "overview.html", session, view=view, rate=rate, attempts=attempts,
                           latency=latency, queues=queues)

    async def events(self, request: Request, session: Session) -> Response:
        q = request.query_params
        status = q.get("status", "")
        try:
            filters = Filters.build(since=q.get("since"), until=q.get("until"), sources=q.getlist("source"),
                                    types=q.getlist("type"), lessons=[q.get("lesson", "").strip()],
                                    ids=[q.get("id", "").strip()], failed_only=status == "failed",
                                    include_replays=q.get("replays") == "1")
            if status and status not in STATUSES:
                raise ValueError(f"status: must be one of {', '.join(STATUSES)}")
            cursor = q.get("cursor") or None
            if cursor:
                parse_entry_id(cursor)
        except ValueError as exc:
            raise ConsoleError(400, f"Filter not understood: {exc}") from None
        rows, next_cursor = await self._events_page(self.redis(request), filters, status, cursor)
        webhooks = await data.webhook_outcomes(self.redis(request), [state.ref for _, state in rows])
        return self.render(request, "events.html", session, rows=rows, next_cursor=next_cursor, q=q, webhooks=webhooks,
                           sources=sorted(self.settings.sources), types=sorted(JOBS_BY_TYPE), statuses=STATUSES,
                           status=status)

    async def _events_page(self, redis: Redis, filters: Filters, status: str, cursor: str | None
                           ) -> tuple[list[tuple[Any, RunState]], str | None]:
        """failed uses the log's own filter; another status keeps reading pages (bounded) to fill one."""
        rows, next_cursor = await events_page(redis, filters, limit=PAGE_SIZE, cursor=cursor,
                                              known_sources=self.settings.sources)
        if not status or status == "failed":
            return rows, next_cursor
        kept = [(e, s) for e, s in rows if s.status == status]
        for _ in range(STATUS_PAGE_CALLS - 1):
            if len(kept) >= PAGE_SIZE or next_cursor is None:
                break
            rows, next_cursor = await events_page(redis, filters, limit=PAGE_SIZE, cursor=next_cursor,
                                                  known_sources=self.settings.sources)
            kept += [(e, s) for e, s in rows if s.status == status]
        return kept, next_cursor

    async def event(self, request: Request, session: Session) -> Response:
        event_id, source = request.query_params.get("id", ""), request.query_params.get("source") or None
        if not event_id:
            raise ConsoleError(400, "Which event? The link needs ?id=<event id> (and &source=<source>).")
        found = await find_events(self.redis(request), event_id, source, self.settings.sources)
        if not found:
            raise ConsoleError(404, f"No event {event_id!r} in the event log"
                                    f"{f' of source {source!r}' if source else ''}.")
        if len(found) > 1:
            return self.render(request, "choose.html", session, event_id=event_id, found=found)
        details = await event_details(self.redis(request), found[0])
        return self.render(request, "event.html", session, d=details, e=found[0])

    async def deliveries(self, request: Request, session: Session) -> Response:
        q = request.query_params
        status = q.get("status", "failed")
        if status not in ("failed", "dead"):
            raise ConsoleError(400, "status must be failed or dead.")
        try:
            cursor = int(q.get("cursor") or 0)
        except ValueError:
            raise ConsoleError(400, "cursor must be the number a previous page linked to.") from None
        items, next_cursor = await deliveries.list_deliveries(self.redis(request), status,
                                                              endpoint=q.get("endpoint") or None,
                                                              limit=PAGE_SIZE, cursor=max(0, cursor))
        return self.render(request, "deliveries.html", session, items=items, next_cursor=next_cursor,
                           status=status, endpoint=q.get("endpoint", ""), sources=sorted(self.settings.sources))

    async def endpoints(self, request: Request, session: Session) -> Response:
        stats = await data.endpoints(self.redis(request), self.settings)
        return self.render(request, "endpoints.html", session, stats=stats, sample=data.SAMPLE_EVENTS)

    async def lessons(self, request: Request, session: Session) -> Response:
        rows = await data.recent_lessons(self.redis(request))
        return self.render(request, "lessons.html", session, rows=rows, sample=data.SAMPLE_EVENTS,
                           sources=sorted(self.settings.sources))

    async def lesson(self, request: Request, session: Session) -> Response:
        source, lesson_id = request.query_params.get("source", ""), request.query_params.get("id", "").strip()
        if source not in self.settings.sources or not lesson_id:
            raise ConsoleError(400, "A lesson is named by a configured source and its id: "
                                    "?source=<source>&id=<lesson id>.")
        view = await data.lesson(self.redis(request), self.settings, source, lesson_id)
        timeline = charts.attendance_timeline(view.attendance) if view.attendance else None
        return self.render(request, "lesson.html", session, v=view, timeline=timeline)

    # ------------------------------------------------------------------------------------------ actions

    async def replay(self, request: Request, session: Session, form: FormData) -> Response:
        event_id, source = str(form.get("id") or ""), str(form.get("source") or "") or None
        dry_run = form.get("dry_run") == "1"
        found = await find_events(self.redis(request), event_id, source, self.settings.sources)
        if len(found) != 1:
            raise ConsoleError(404, f"No single event {event_id!r} in source {source!r} to replay.")
        planned = plan_replay(self.settings, found[0], reparse=form.get("reparse") == "1")
        if not planned.error and not dry_run:
            await enqueue_replays(self.redis(request), self.settings, [planned])
        back = f"/console/event?{urlencode({'source': found[0].source, 'id': event_id})}"
        title = "Replay (dry run: nothing was changed)" if dry_run else "Replay"
        outcome = planned.error or ("Would be replayed as planned below." if dry_run else
                                    "Replay queued: its jobs run now; the event page shows them.")
        return self.render(request, "result.html", session, title=title, ok=not planned.error, outcome=outcome,
                           details=planned.describe(), back=back)

    async def retry(self, request: Request, session: Session, form: FormData) -> Response:
        redis = self.redis(request)
        ids = [str(i) for i in form.getlist("ids") if i]
        all_dead = form.get("all_dead") == "1"
        if not ids and not all_dead:
            raise ConsoleError(400, "Nothing selected: tick deliveries to redeliver, or use “Redeliver all dead”.")
        chosen = await deliveries.select_for_retry(redis, ids=ids, all_dead=all_dead)
        results = [await deliveries.retry_delivery(redis, self.settings, msg_id) for msg_id in chosen]
        ok = sum(r.ok for r in results)
        outcome = (f"{ok} redelivery(ies) queued, {len(results) - ok} refused. A worker makes the attempt now; "
                   "the page you came from shows the outcome.")
        return self.render(request, "result.html", session, title="Redeliver", ok=ok == len(results),
                           outcome=outcome, details=[r.as_dict() for r in results],
                           back=_back(str(form.get("back") or ""), "/console/deliveries"))

    async def enable(self, request: Request, session: Session, form: FormData) -> Response:
        name = str(form.get("name") or "")
        try:
            result = await deliveries.enable_endpoint(self.redis(request), self.settings, name,
                                                      retry=form.get("retry") == "1")
        except LookupError as exc:
            raise ConsoleError(404, str(exc)) from None
        return self.render(request, "result.html", session, title=f"Enable endpoint {name}", ok=True,
                           outcome="Enabled." if result["was_disabled"] else "It was not disabled.",
                           details=result, back="/console/endpoints")

    # ------------------------------------------------------------------------------------------ routes

    def routes(self) -> list[BaseRoute]:
        pages: list[tuple[str, Page]] = [
            ("/", self.overview), ("/events", self.events), ("/event", self.event),
            ("/deliveries", self.deliveries), ("/endpoints", self.endpoints), ("/lessons", self.lessons),
            ("/lesson", self.lesson),
        ]
        actions = [("/signout", "signout", self.signout), ("/replay", "replay", self.replay),
                   ("/deliveries/retry", "redeliver", self.retry), ("/endpoints/enable", "enable_endpoint",
                                                                    self.enable)]
        inner: list[BaseRoute] = [Route(path, self.page(handler), methods=["GET"]) for path, handler in pages]
        inner += [Route(path, self.action(name, handler), methods=["POST"]) for path, name, handler in actions]
        inner += [Route("/signin", self.signin, methods=["GET", "POST"]),
                  Mount("/static", StaticFiles(directory=HERE / "static"), name="console-static")]
        # One Mount, no top-level Route: the pages are not API, so /openapi.json leaves them out; the
        # router's redirect_slashes takes /console to /console/.
        return [Mount("/console", routes=inner, middleware=[Middleware(SecurityHeaders)])]


def console_routes(settings: Settings) -> list[BaseRoute]:
    """The console's routes; none (so /console is the app's 404) when BRIDGE_ADMIN_TOKEN is unset."""
    return Console(settings).routes() if settings.admin_token else []
