"""The OpenAPI 3.1 document for the routes the web process really serves: GET /openapi.json.

The document is built from the running configuration: besides the generic `/v1/events/{source}`
operation, each configured source gets its own path with the body its format takes (Moodle or
canonical) and the authentication it requires (a body `token` or Standard Webhooks headers), so a
plugin author reads exactly what this deployment expects. tests/test_openapi.py runs a
property-based check (schemathesis) of the real app against this document.
"""

from __future__ import annotations

import hmac
import re
from functools import cache
from importlib import metadata
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bridge.config import Settings, SourceConfig
from bridge.schema.events import (
    CANONICAL,
    MAX_TEXT,
    RECORDING_ID,
    CallEvent,
    LessonEvent,
    RecordingDeleteEvent,
    UserEvent,
)
from bridge.schema.provider_events import HmsEvent, JaasEvent
from bridge.schema.webhooks import WEBHOOK_DATA, WebhookType, payload_schema

Schema = dict[str, Any]

SCHEMA_REF = "#/components/schemas/{model}"
SAFE_NAME = re.compile(r"[A-Za-z0-9._~-]+")
MAX_UNIX_TIME = 253402300799          # 9999-12-31T23:59:59Z, the last second Python's datetime holds

# Error codes each status carries (the contract's error body: {"error": {"code", "message", "details"}}).
ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("invalid_json", "invalid_body", "empty_batch", "batch_too_large", "invalid_event", "invalid_wait"),
    401: ("bad_token", "bad_signature"),
    404: ("unknown_source", "not_found"),
    413: ("body_too_large",),
    415: ("unsupported_media_type",),
    503: ("store_unavailable",),
}
ERROR_TEXT = {
    400: "The body is not valid JSON, not an object or array, an empty or too large batch, an event that "
         "fails validation (`details.path` names the field, `details.index` the batch item), or a bad `wait`.",
    401: "Authentication failed: the body `token` is missing or wrong, or the Standard Webhooks signature "
         "headers are missing, stale (5-minute tolerance) or do not match.",
    404: "No source of that name is configured (`details.known` lists them).",
    413: "The body is larger than the limit (`[bridge] max_body_bytes`, default 256 KiB); refused before "
         "it is read whole.",
    415: "The Content-Type is not `application/json` (or `application/*+json`).",
    503: "Redis is unreachable: nothing was stored. Retry after `Retry-After` seconds.",
}

# ---------------------------------------------------------------------------- schemas


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


TEXT = {"type": ["string", "null"], "maxLength": MAX_TEXT}


def _error_schema(status: int | None = None) -> Schema:
    code: Schema = {"type": "string", "pattern": "^[a-z_]+$", "description": "Machine-readable error code."}
    if status in ERROR_CODES:
        code = {**code, "enum": list(ERROR_CODES[status])}
    return {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message", "details"], "additionalProperties": False,
            "properties": {
                "code": code,
                "message": {"type": "string", "description": "Human-readable explanation."},
                "details": {"description": "Structured details, or null."},
            },
        }},
    }


@cache
def model_schemas() -> dict[str, Schema]:
    """Component schemas generated from bridge.schema: the canonical event and every webhook's data."""
    models = dict.fromkeys([LessonEvent, UserEvent, CallEvent, RecordingDeleteEvent, JaasEvent, HmsEvent,
                            *WEBHOOK_DATA.values()])
    _, generated = models_json_schema([(model, "validation") for model in models], ref_template=SCHEMA_REF)
    schemas: dict[str, Schema] = generated["$defs"]
    event = CANONICAL.json_schema(ref_template=SCHEMA_REF)
    event.pop("$defs", None)
    schemas["CanonicalEvent"] = {
        **event, "description": "A canonical event. Unknown properties are kept in the event log and otherwise "
                                "ignored; null counts as absent.",
        "examples": [{"id": "evt_01", "type": "user.joined", "occurred_at": "2026-11-22T10:00:00Z",
                      "lesson": {"id": "c12-l7", "title": "Algebra I"},
                      "user": {"id": "42", "name": "Ada Lovelace", "email": "ada@example.edu", "role": "teacher"},
                      "data": {}}]}
    return schemas


def canonical_event(providers: list[str] | None = None) -> Schema:
    """The canonical event; with `providers`, `lesson.provider` must name one of them."""
    if not providers:
        return _ref("CanonicalEvent")
    return {"allOf": [_ref("CanonicalEvent"), {"properties": {"lesson": {"properties": {"provider": {
        "enum": providers, "description": "A configured provider name; default: the source's provider."}}}}}]}


def moodle_event(token_required: bool) -> Schema:
    moodle_id = {"type": ["string", "integer", "null"], "description": "Moodle sends ids as numbers or strings."}
    schema: Schema = {
        "type": "object",
        "description": "A Moodle event as the local_webhooks plugin sends it. Known event names become "
                       "canonical events; every other event is accepted and reported under `ignored`. "
                       "The event id is a stable hash of host, eventname, objectid, contextinstanceid, userid, "
                       "relateduserid and timecreated.",
        "required": ["eventname", *(["token"] if token_required else [])],
        "properties": {
            "eventname": {"type": "string", "pattern": r"\S",
                          "examples": ["\\mod_bigbluebuttonbn\\event\\meeting_joined"]},
            "token": {"type": "string", "description": "The source's shared token (compared in constant time)."},
            "component": TEXT, "action": TEXT, "target": TEXT, "objecttable": TEXT, "crud": TEXT,
            "objectid": moodle_id, "contextid": moodle_id, "contextinstanceid": moodle_id, "userid": moodle_id,
            "courseid": moodle_id, "relateduserid": moodle_id, "contextlevel": moodle_id, "edulevel": moodle_id,
            "anonymous": moodle_id, "host": TEXT,
            "timecreated": {
                "description": "Unix time in seconds (a number, or a string of digits).",
                "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_UNIX_TIME},
                          {"type": "string", "pattern": r"^\s*[0-9]{1,12}\s*$"}, {"type": "null"}],
            },
            "other": {"description": "Event-specific data (name, timestart, modulename, userishost...)."},
            "extra": {},
        },
        "examples": [{
            "eventname": "\\mod_bigbluebuttonbn\\event\\meeting_joined", "component": "mod_bigbluebuttonbn",
            "action": "joined", "target": "meeting", "objecttable": "bigbluebuttonbn", "objectid": 9, "crud": "r",
            "edulevel": 2, "contextid": 412, "contextlevel": 70, "contextinstanceid": 87, "userid": 31,
            "courseid": 12, "relateduserid": None, "anonymous": 0, "other": None, "timecreated": 1763809200,
            "host": "lms.example.edu", "token": "<the source's token>", "extra": ""}],
    }
    return schema


def _batch(item: Schema, max_batch: int) -> Schema:
    return {"type": "array", "minItems": 1, "maxItems": max_batch, "items": item,
            "description": f"A batch: all-or-nothing, at most {max_batch} events."}


WEBHOOK_PAYLOAD: Schema = {
    "type": "object", "required": ["type", "timestamp", "data"],
    "description": "An outbound webhook body (as delivered, Standard Webhooks signed).",
    "properties": {
        "type": {"type": "string", "enum": [str(webhook_type) for webhook_type in WebhookType]},
        "timestamp": {"type": "string", "format": "date-time"},
        "data": {
            "type": "object", "required": ["event_id", "source", "lesson_id", "provider"],
            "properties": {"event_id": {"type": "string"}, "source": {"type": "string"},
                           "lesson_id": {"type": ["string", "null"]}, "provider": {"type": ["string", "null"]},
                           "replay_of": {"type": "string"}},
        },
    },
}
def outbound_webhooks() -> Schema:
    """The OpenAPI 3.1 `webhooks` section: every outbound type, as the source's `webhook_url` receives it."""
    return {str(webhook_type): {"post": {
        "operationId": f"webhook_{webhook_type.value.replace('.', '_')}",
        "summary": f"`{webhook_type}`, Standard Webhooks signed",
        "tags": ["webhooks"],
        "parameters": _signature_headers(True, OUTBOUND_HEADER_TEXT),
        "requestBody": {"required": True, "content": _json(payload_schema(
            webhook_type, _ref(WEBHOOK_DATA[webhook_type].__name__)))},
        "responses": {"200": {"description": "Any 2xx acknowledges it. Other answers and timeouts are retried "
                                             "(`[webhooks] retry_schedule`); 410 disables the endpoint."}},
    }} for webhook_type in WebhookType}


ANSWER: Schema = {
    "type": "object", "required": ["accepted", "duplicates", "ignored"], "additionalProperties": False,
    "properties": {
        "accepted": {"type": "array", "items": {"type": "string"}, "description": "Event ids stored now."},
        "duplicates": {"type": "array", "items": {"type": "string"},
                       "description": "Event ids already stored (within the dedupe window)."},
        "ignored": {"type": "array", "items": {"type": "string"},
                    "description": "Event ids accepted but not acted on (unmapped Moodle events)."},
        "webhooks": {"type": "array", "items": _ref("WebhookPayload"),
                     "description": "With `?wait=N`: the webhooks the events produced, when every job finished "
                                    "in time."},
    },
}

# ---------------------------------------------------------------------------- operations


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _error(status: int, description: str | None = None, retry_after: bool = False) -> Schema:
    response: Schema = {"description": description or ERROR_TEXT[status], "content": _json(_ref(f"Error{status}"))}
    if retry_after:
        response["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    return response


SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
INBOUND_HEADER_TEXT = (
    "Standard Webhooks message id (when the source has a `signing_secret`).",
    "Unix seconds; at most 5 minutes from the server's clock.",
    "`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, several space-separated allowed.",
)
OUTBOUND_HEADER_TEXT = (
    "`msg_...`: the same for every attempt of the same logical webhook (dedupe on it).",
    "Unix seconds of this attempt.",
    "`v1,<base64 HMAC-SHA256 of id.timestamp.body>` per `webhook_secret` (several while rotating).",
)


def _signature_headers(required: bool, texts: tuple[str, str, str] = INBOUND_HEADER_TEXT) -> list[Schema]:
    return [{"name": name, "in": "header", "required": required, "schema": {"type": "string"}, "description": text}
            for name, text in zip(SIGNATURE_HEADERS, texts, strict=True)]


WAIT = {"name": "wait", "in": "query", "required": False,
        "schema": {"type": "number", "minimum": 0, "maximum": 10},
        "description": "Wait up to N seconds for the event's jobs; answer 200 with `webhooks` when they finish."}


def _events_operation(operation_id: str, summary: str, body: Schema, headers: list[Schema],
                      sources: list[str] | None, description: str) -> Schema:
    parameters = [*headers, WAIT]
    if sources is not None:
        parameters.insert(0, {"name": "source", "in": "path", "required": True,
                              "schema": {"type": "string", **({"examples": sources} if sources else {})},
                              "description": "A configured source name (`[sources.<name>]`)."})
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "tags": ["events"],
        "parameters": parameters,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": {"description": "A pure repeat (every event a duplicate), or a `?wait` answer with `webhooks`.",
                    "content": _json(_ref("Answer"))},
            "202": {"description": "Accepted: durably stored and queued.", "content": _json(_ref("Answer"))},
            **{str(s): _error(s, retry_after=s == 503) for s in (400, 401, 404, 413, 415, 503)},
        },
    }


def _source_operation(source: SourceConfig, settings: Settings) -> Schema:
    item = (moodle_event(bool(source.token) and not source.signing_secret) if source.format == "moodle"
            else canonical_event(sorted(settings.providers)))
    if source.format != "moodle" and source.token and not source.signing_secret:
        item = {"allOf": [item, {"required": ["token"],
                                 "properties": {"token": {"type": "string",
                                                          "description": "The source's shared token."}}}]}
    if source.signing_secret:
        auth = "Standard Webhooks signature headers (the source has a `signing_secret`)."
    elif source.token:
        auth = "the body field `token` of every event (the source has a `token`)."
    else:
        auth = "none (the source has neither `token` nor `signing_secret`)."
    return _events_operation(
        f"postEvents_{source.name}", f"Send {source.format} events to the `{source.name}` source",
        {"anyOf": [item, _batch(item, settings.max_batch)]}, _signature_headers(bool(source.signing_secret)),
        sources=None,
        description=f"Format `{source.format}`; default provider `{source.provider}`. Authentication: {auth}")


# ---------------------------------------------------------------------------- admin API (bridge/admin.py)

ADMIN_ERRORS = {
    "400": "A bad parameter or body (`invalid_parameter`, `invalid_filter`, `invalid_cursor`, `invalid_json`, "
           "`invalid_body`, `nothing_selected`).",
    "401": "No `Authorization: Bearer <BRIDGE_ADMIN_TOKEN>`, or a wrong one (`missing_token`, `bad_token`).",
    "503": "Redis is unreachable (`store_unavailable`); retry after `Retry-After` seconds.",
}
OBJ: Schema = {"type": "object"}


def _admin_op(operation_id: str, summary: str, ok: dict[str, tuple[str, Schema]],
              errors: dict[str, str] | None = None, parameters: list[Schema] | None = None,
              body: Schema | None = None) -> Schema:
    responses: Schema = {status: {"description": text, "content": _json(schema)}
                         for status, (text, schema) in ok.items()}
    for status, text in {**ADMIN_ERRORS, **(errors or {})}.items():
        response: Schema = {"description": text, "content": _json(_ref("Error"))}
        if status == "401":
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        if status == "503":
            response["headers"] = {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}}
        responses[status] = response
    op: Schema = {"operationId": operation_id, "summary": summary, "tags": ["admin"],
                  "security": [{"adminToken": []}], "parameters": parameters or [], "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": False, "content": _json(body)}
    return op


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


FLAG = {"type": "boolean"}
LIST = {"type": "array", "items": {"type": "string"}}
EVENT_FILTERS = [
    _query("since", {"type": "string"}, "ISO 8601 time or a relative age such as `2h`, `3d`."),
    _query("until", {"type": "string"}, "ISO 8601 time or a relative age."),
    _query("source", LIST, "Source names (repeatable)."),
    _query("type", LIST, "Canonical event types (repeatable)."),
    _query("lesson", LIST, "Lesson ids (repeatable)."),
    _query("id", LIST, "Event ids (repeatable)."),
    _query("failed_only", FLAG, "Only events whose latest execution failed."),
    _query("include_replays", FLAG, "Also list replay entries."),
]
FILTER_BODY = {"type": "object", "properties": {
    "since": {"type": "string"}, "until": {"type": "string"}, "source": LIST, "type": LIST, "lesson": LIST,
    "id": LIST, "failed_only": FLAG, "include_replays": FLAG, "reparse": FLAG, "dry_run": FLAG,
    "limit": {"type": "integer", "minimum": 1, "maximum": 10000}}}
NOT_FOUND_OR_AMBIGUOUS = {"404": "No such event (`event_not_found`).",
                          "409": "The id exists in several sources: pass `source` (`ambiguous_event`)."}


def provider_events_path() -> Schema:
    """POST /v1/providers/{provider}/events (DESIGN.md, "Provider events in")."""
    def error(text: str) -> Schema:
        return {"description": text, "content": _json(_ref("Error"))}
    return {"post": {
        "operationId": "postProviderEvents", "summary": "A provider's webhook (JaaS, 100ms)", "tags": ["providers"],
        "description": "Stored durably (event log source `provider:<name>`) before a 2xx; a repeat of the "
                       "provider's idempotency key (JaaS `idempotencyKey`, 100ms `id`) is `200`. Types the bridge "
                       "does not act on and rooms it never made are `202` with the id under `ignored`. JaaS: "
                       "`X-Jaas-Signature: t=<unix s>,v1=<base64 HMAC-SHA256(webhook_secret, \"<t>.<body>\")>`, "
                       "5-minute tolerance, plus `Authorization` when `webhook_authorization` is set. 100ms: every "
                       "header of `webhook_headers`, present and equal.",
        "parameters": [_path("provider", "A `[providers.X]` name with webhook settings."),
                       {"name": "X-Jaas-Signature", "in": "header", "required": False, "schema": {"type": "string"},
                        "description": "JaaS only."}],
        "requestBody": {"required": True, "content": _json({"anyOf": [_ref("JaasEvent"), _ref("HmsEvent")]})},
        "responses": {
            "200": {"description": "A repeat: nothing new stored.", "content": _json(_ref("Answer"))},
            "202": {"description": "Stored (or ignored).", "content": _json(_ref("Answer"))},
            "400": error("Not JSON, not an object, or not the provider's event shape (`invalid_event`)."),
            "401": error("Missing or bad auth: `missing_signature`, `bad_signature`, `stale_signature`, "
                         "`missing_authorization`, `bad_authorization`, `missing_headers`, `bad_headers`."),
            "404": error("No such provider (`unknown_provider`), or it has no webhook settings "
                         "(`no_webhook_settings`)."),
            "413": _error(413),
            "415": _error(415),
            "503": _error(503, retry_after=True),
        },
    }}


def admin_paths() -> dict[str, Schema]:
    page = {"type": ["string", "null"], "description": "Pass as `cursor` for the next page; null on the last."}
    return {
        "/v1/admin/events": {"get": _admin_op(
            "adminListEvents", "List events in the log, newest first, with their latest status.",
            {"200": ("A page of events.", {"type": "object", "required": ["events", "next_cursor"], "properties": {
                "events": {"type": "array", "items": OBJ}, "next_cursor": page}})},
            parameters=[*EVENT_FILTERS,
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "Page size (50)."),
                        _query("cursor", {"type": "string", "pattern": r"^\d+-\d+$"}, "From `next_cursor`."),
                        _query("order", {"type": "string", "enum": ["asc", "desc"]}, "desc (default) or asc.")])},
        "/v1/admin/events/{event_id}": {"get": _admin_op(
            "adminShowEvent", "One event: raw and canonical forms, each execution's jobs and deliveries.",
            {"200": ("The event.", {"type": "object", "required": ["event", "status", "executions"],
                                    "properties": {"event": OBJ, "status": {"type": "string"},
                                                   "executions": {"type": "array", "items": OBJ}}})},
            NOT_FOUND_OR_AMBIGUOUS,
            parameters=[_path("event_id", "The event id (may contain `/`)."),
                        _query("source", {"type": "string"}, "The source, when the id exists in several.")])},
        "/v1/admin/events/{event_id}/replay": {"post": _admin_op(
            "adminReplayEvent", "Replay one event: a fresh replay id, new job ids, `data.replay_of` in webhooks.",
            {"200": ("Dry run: what would be replayed.", {"type": "object", "required": ["dry_run", "replay"],
                                                          "properties": {"dry_run": {"const": True},
                                                                         "replay": OBJ}}),
             "202": ("Replay enqueued.", {"type": "object", "required": ["dry_run", "replay"],
                                          "properties": {"dry_run": {"const": False}, "replay": OBJ}})},
            {**NOT_FOUND_OR_AMBIGUOUS, "422": "The event cannot be replayed (`cannot_replay`)."},
            parameters=[_path("event_id", "The event id (may contain `/`)."),
                        _query("source", {"type": "string"}, "The source, when the id exists in several."),
                        _query("dry_run", FLAG, "Only show what would happen."),
                        _query("reparse", FLAG, "Re-derive the canonical event from the raw body.")],
            body={"type": "object", "properties": {"source": {"type": "string"}, "reparse": FLAG,
                                                   "dry_run": FLAG}})},
        "/v1/admin/replays": {"post": _admin_op(
            "adminReplayMany", "Replay every event matching filters (at most `limit`, default 1000).",
            {status: (text, {"type": "object", "required": ["summary", "truncated", "replays"], "properties": {
                "summary": OBJ, "truncated": {"type": "boolean"}, "replays": {"type": "array", "items": OBJ}}})
             for status, text in (("200", "Dry run."), ("202", "Replays enqueued."))},
            body=FILTER_BODY)},
        "/v1/admin/deliveries": {"get": _admin_op(
            "adminListDeliveries", "Failing, dead or disabled webhook deliveries, most recent first.",
            {"200": ("A page of deliveries.", {"type": "object", "required": ["deliveries", "next_cursor"],
                                               "properties": {"deliveries": {"type": "array", "items": OBJ},
                                                              "next_cursor": page}})},
            parameters=[_query("status", {"type": "string", "enum": ["failed", "dead", "disabled"]},
                               "Which list (default failed)."),
                        _query("endpoint", {"type": "string"}, "Only this source's endpoint."),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "Page size (50)."),
                        _query("cursor", {"type": "integer", "minimum": 0}, "From `next_cursor`.")])},
        "/v1/admin/deliveries/retry": {"post": _admin_op(
            "adminRetryMany", "Retry chosen deliveries: by ids, by endpoint, or every dead one.",
            {"202": ("Retries enqueued.", {"type": "object", "required": ["retried", "failed", "results"],
                                           "properties": {"retried": {"type": "integer"},
                                                          "failed": {"type": "integer"},
                                                          "results": {"type": "array", "items": OBJ}}})},
            body={"type": "object", "properties": {"ids": LIST, "endpoint": {"type": "string"},
                                                   "all_dead": FLAG}})},
        "/v1/admin/deliveries/{webhook_id}": {"get": _admin_op(
            "adminShowDelivery", "One delivery with its attempt log.",
            {"200": ("The delivery.", {"type": "object", "required": ["webhook_id", "status"],
                                       "properties": {"webhook_id": {"type": "string"}}})},
            {"404": "No such delivery (`delivery_not_found`)."},
            parameters=[_path("webhook_id", "The `webhook-id` (msg_...).")])},
        "/v1/admin/deliveries/{webhook_id}/retry": {"post": _admin_op(
            "adminRetryDelivery", "One more attempt, same webhook-id, fresh job id.",
            {"202": ("Retry enqueued.", {"type": "object", "required": ["webhook_id", "ok"],
                                         "properties": {"webhook_id": {"type": "string"}, "ok": {"const": True}}})},
            {"404": "No such delivery (`not_found`).",
             "409": "Already delivered, endpoint disabled, no endpoint, or busy."},
            parameters=[_path("webhook_id", "The `webhook-id` (msg_...).")])},
        "/v1/admin/lessons/{lesson_id}/attendance": {"get": _admin_op(
            "adminLessonAttendance", "The attendance ledger of a lesson's current or last provider session, "
            "shaped like `attendance.report` data (a running session: `ended_at` null, open connections counted "
            "up to now).",
            {"200": ("The ledger so far.", {"type": "object", "required": ["source", "lesson_id", "session_id",
                                                                            "started_at", "ended_at", "participants"],
                                            "properties": {"participants": {"type": "array",
                                                                            "items": _ref("Attendee")}}})},
            {"400": "Several sources are configured and `source` is missing (`missing_source`).",
             "404": "No such source (`unknown_source`) or no session recorded (`no_attendance`)."},
            parameters=[_path("lesson_id", "The lesson id (may contain `/`)."),
                        _query("source", {"type": "string"}, "The lesson's source (needed with several).")])},
        "/v1/admin/endpoints/{name}/enable": {"post": _admin_op(
            "adminEnableEndpoint", "Re-enable a source's webhook endpoint after it answered 410 Gone.",
            {"200": ("Enabled.", {"type": "object", "required": ["endpoint", "was_disabled"],
                                  "properties": {"endpoint": {"type": "string"},
                                                 "was_disabled": {"type": "boolean"}}})},
            {"404": "No source of that name (`unknown_endpoint`)."},
            parameters=[_path("name", "The source name."),
                        _query("retry", FLAG, "Also retry the deliveries held while it was disabled.")],
            body={"type": "object", "properties": {"retry": FLAG}})},
    }


def _recording_download(operation_id: str) -> Schema:
    """`[storage] kind = "local"`: the link a recording.ready webhook hands out."""
    def refused(description: str) -> Schema:
        return {"description": description, "content": _json(_ref("Error"))}
    media = {"description": "The recording (`Content-Type` by container).",
             "headers": {"Accept-Ranges": {"schema": {"const": "bytes"}}},
             "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}}
    return {
        "operationId": operation_id, "summary": "Download a stored recording through a signed, expiring link.",
        "tags": ["recordings"],
        "parameters": [
            {"name": "recording_id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": f"^{RECORDING_ID.pattern}$"}},
            {"name": "expires", "in": "query", "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}},
            {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
            {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "One byte range (`bytes=first-last`, `bytes=first-`, `bytes=-suffix`)."}],
        "responses": {
            "200": media,
            "206": {**media, "description": "The requested range (`Content-Range`)."},
            "403": refused("The signature does not match this recording (`bad_signature`) or the link has "
                           "expired (`link_expired`)."),
            "404": refused("No stored recording has this id (`not_found`)."),
            "416": refused("The range lies outside the file (`range_not_satisfiable`)."),
            "503": _error(503, "Redis, which holds the link secret, is unreachable.", retry_after=True),
        },
    }


def document(settings: Settings, admin: bool = False) -> Schema:
    """The document; `admin` adds the admin API (served only to a caller holding the admin token)."""
    try:
        version = metadata.version("lesson-bridge")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    any_event = {"anyOf": [canonical_event(), moodle_event(False)]}
    paths: dict[str, Schema] = {
        "/v1/events/{source}": {"post": _events_operation(
            "postEvents", "Send events to a source",
            {"anyOf": [any_event, _batch(any_event, settings.max_batch)]}, _signature_headers(False),
            sources=sorted(settings.sources),
            description="One JSON event or a batch. The body format and authentication depend on the source's "
                        "configuration; the per-source paths below spell them out. Answers `202` when anything "
                        "was stored, `200` for a pure repeat; never `2xx` for anything not durably stored.",
        )},
    }
    paths["/v1/providers/{provider}/events"] = provider_events_path()
    for source in settings.sources.values():
        if SAFE_NAME.fullmatch(source.name):     # other names are served, and described, by the generic path
            paths[f"/v1/events/{source.name}"] = {"post": _source_operation(source, settings)}
    status_ok = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
    paths.update({
        "/sandbox/{room}": {"get": {
            "operationId": "sandboxRoom", "summary": "Where sandbox join links lead (a page naming who joined).",
            "tags": ["operations"],
            "parameters": [{"name": "room", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "token", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "The token is valid for this room.", "content": {"text/html": {
                    "schema": {"type": "string"}}}},
                "401": _error(401, "The join token is missing, invalid, expired or for another room."),
                "404": _error(404, "No sandbox provider is configured."),
            },
        }},
        "/healthz": {"get": {
            "operationId": "healthz", "summary": "Liveness: the web process answers.", "tags": ["operations"],
            "responses": {"200": {"description": "Alive.", "content": _json({**status_ok, "properties": {
                "status": {"const": "ok"}}})}},
        }},
        "/readyz": {"get": {
            "operationId": "readyz", "summary": "Readiness: Redis answers and a worker sent a heartbeat recently.",
            "tags": ["operations"],
            "responses": {
                "200": {"description": "Ready.", "content": _json({**status_ok, "properties": {
                    "status": {"const": "ready"}}})},
                "503": {"description": "Redis is unreachable (`store_unavailable`, with `Retry-After`) or no "
                                       "worker heartbeat was seen in the last 30 s (`no_worker`).",
                        "headers": {"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}},
                        "content": _json(_ref("ErrorReadyz"))},
            },
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics for the whole deployment (all processes).",
            "description": "Counters and histograms every process keeps in Redis, and gauges read from it: "
                           "bridge_events_total, bridge_events_rejected_total, bridge_jobs_total, "
                           "bridge_job_duration_seconds, bridge_webhook_attempts_total, bridge_dead_letters, "
                           "bridge_failing_deliveries, bridge_recordings_active, bridge_queue_depth, "
                           "bridge_queue_due.",
            "tags": ["operations"],
            "responses": {
                "200": {"description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}}},
                "503": _error(503, "Redis is unreachable.", retry_after=True),
            },
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document.", "tags": ["operations"],
            "responses": {"200": {"description": "OpenAPI 3.1.", "content": _json({"type": "object"})}},
        }},
    })
    if settings.storage.kind == "local":
        paths["/v1/recordings/{recording_id}"] = {"get": _recording_download("getRecording"),
                                                   "head": _recording_download("headRecording")}
    components: Schema = {}
    if admin and settings.admin_token:
        paths.update(admin_paths())
        components["securitySchemes"] = {"adminToken": {"type": "http", "scheme": "bearer",
                                                        "description": "BRIDGE_ADMIN_TOKEN"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Lesson Bridge",
            "version": version,
            "description": "Connects learning platforms to video-conferencing providers. Platforms POST events; "
                           "the bridge answers at once and does the work on queues, reporting back through "
                           "Standard Webhooks-signed callbacks.",
        },
        "paths": paths,
        "webhooks": outbound_webhooks(),
        "components": {"schemas": {
            "Answer": ANSWER,
            "WebhookPayload": WEBHOOK_PAYLOAD,
            **model_schemas(),
            "MoodleEvent": moodle_event(False),
            "Error": _error_schema(),
            "ErrorReadyz": {**_error_schema(), "properties": {"error": {
                **_error_schema()["properties"]["error"],
                "properties": {**_error_schema()["properties"]["error"]["properties"],
                               "code": {"type": "string", "enum": ["store_unavailable", "no_worker"]}}}}},
            **{f"Error{status}": _error_schema(status) for status in ERROR_CODES},
        }, **components},
    }


def endpoint(settings: Settings) -> Any:
    """The GET /openapi.json handler. Documents are built once, on first request.

    The admin API keeps its shape from strangers (bridge/admin.py), so its operations are described
    only to a caller that sends `Authorization: Bearer <BRIDGE_ADMIN_TOKEN>`.
    """
    cache: dict[bool, bytes] = {}
    token = (settings.admin_token or "").encode()

    async def openapi_json(request: Request) -> Response:
        scheme, _, offered = request.headers.get("authorization", "").partition(" ")
        admin = bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token)
        if admin not in cache:
            cache[admin] = JSONResponse(document(settings, admin=admin)).body
        return Response(cache[admin], media_type="application/json")

    return openapi_json
