"""GET /openapi.json describes the real app: a property-based run (schemathesis) over real HTTP finds no
5xx and no answer that breaks the document; the document is valid OpenAPI 3.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import hypothesis
import jsonschema_rs
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.definitions import OPENAPI_31
from starlette.routing import Route

from bridge.app import create_app
from bridge.config import load_settings
from bridge.schema.webhooks import WebhookType
from tests.conftest import MOODLE_TOKEN, default_config
from tests.fakes.server import serve

# Statuses, media types, headers and bodies must all be as documented (a 503 is checked like any other).
CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
MAX_EXAMPLES = 50          # per operation and generation mode
WAIT_CAP_S = 0.05          # ?wait=N really waits N s for jobs no worker runs here; keep the value, cap the time


ADMIN_TOKEN = "admin-token-for-the-openapi-test"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _check_function(mode: GenerationMode, base_url: str, session: requests.Session) -> Any:
    def check(case: schemathesis.Case) -> None:
        wait = (case.query or {}).get("wait")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait <= 10:
            case.query["wait"] = min(wait, WAIT_CAP_S)
        if case.operation.path == "/v1/events/moodle" and mode is GenerationMode.POSITIVE:
            # The token is a secret, so the document can't hold it: supply it, to reach the parser.
            for item in case.body if isinstance(case.body, list) else [case.body]:
                if isinstance(item, dict):
                    item["token"] = MOODLE_TOKEN
        response = case.call(base_url=base_url, session=session, headers=AUTH, timeout=15)
        # The contract's only 5xx is a documented 503, and Redis is up all along here: so never a 500, and
        # never a `store_unavailable` (that tells clients to retry a request that can never succeed).
        assert response.status_code < 500 or (response.status_code == 503 and "store_unavailable" not in
                                              response.text), (
            f"{case.method} {case.formatted_path} answered {response.status_code}: {response.text[:500]}")
        case.validate_response(response, checks=CHECKS, headers=AUTH)
    return check


def fuzz(schema: Any, base_url: str, max_examples: int = MAX_EXAMPLES, only: str | None = None) -> list[str]:
    """Run every operation in positive and negative mode; return one line per failing operation/mode."""
    failures: list[str] = []
    settings = hypothesis.settings(max_examples=max_examples, deadline=None, database=None,
                                   suppress_health_check=list(hypothesis.HealthCheck),
                                   phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate,
                                           hypothesis.Phase.shrink])
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if only and operation.label != only:
                continue
            has_inputs = bool(operation.body) or any(True for _ in operation.iter_parameters())
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode is GenerationMode.NEGATIVE and not has_inputs:
                    continue
                test = settings(hypothesis.given(case=operation.as_strategy(generation_mode=mode))(
                    _check_function(mode, base_url, session)))
                try:
                    test()
                except (Exception, BaseExceptionGroup) as exc:  # schemathesis's report, with a curl line
                    failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return failures


@pytest.fixture
def bridge(redis_server, redis, tmp_path) -> Iterator[SimpleNamespace]:
    """The app over real HTTP with a real Redis: canonical, Moodle (body token) and signed sources, admin API on."""
    config = default_config(tmp_path)
    config.write_text(config.read_text() + """
[sources.signed]
format = "canonical"
provider = "sandbox"
signing_secret = "whsec_c2lnbmluZy1zZWNyZXQtZm9yLXRoZS1vcGVuYXBpLXRlc3Q="
""")
    settings = load_settings({"BRIDGE_CONFIG": str(config), "REDIS_URL": redis_server.url,
                              "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN})
    app = create_app(settings)
    with serve(app, lifespan=True) as base_url:
        yield SimpleNamespace(base_url=base_url, app=app)


async def test_document_is_valid_openapi_31_and_covers_the_routes(bridge, client) -> None:
    public = await client.get(f"{bridge.base_url}/openapi.json")
    assert public.status_code == 200 and public.headers["content-type"].startswith("application/json")
    assert not [path for path in public.json()["paths"] if path.startswith("/v1/admin")]   # shape kept private
    document = (await client.get(f"{bridge.base_url}/openapi.json", headers=AUTH)).json()
    jsonschema_rs.validator_for(OPENAPI_31).validate(document)
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    signed = document["paths"]["/v1/events/signed"]["post"]
    assert {p["name"] for p in signed["parameters"] if p.get("required")} == {
        "webhook-id", "webhook-timestamp", "webhook-signature"}
    moodle = document["paths"]["/v1/events/moodle"]["post"]["requestBody"]["content"]["application/json"]
    assert "token" in moodle["schema"]["anyOf"][0]["required"]
    # Every route the app serves is described (the admin API's catch-all 404/401 routes aside).
    served = {route.path.replace(":path}", "}") for route in bridge.app.routes if isinstance(route, Route)}
    served -= {"/v1/admin", "/v1/admin/{rest}"}
    assert served <= set(document["paths"]), served - set(document["paths"])
    assert set(document["paths"]) - served <= {"/v1/events/default", "/v1/events/moodle", "/v1/events/signed"}


async def test_property_based_run_finds_no_5xx_and_no_schema_violation(bridge) -> None:
    schema = schemathesis.openapi.from_url(f"{bridge.base_url}/openapi.json", headers=AUTH)
    assert len(list(schema.get_all_operations())) >= 15          # events x4, health x4, admin x9
    failures = await asyncio.to_thread(fuzz, schema, bridge.base_url)
    assert not failures, "\n\n".join(failures)


async def test_the_run_fails_when_the_app_breaks_the_document(bridge, client) -> None:
    """Guard against a vacuous run: with an answer mis-documented, the same run must fail."""
    document = (await client.get(f"{bridge.base_url}/openapi.json")).json()
    document["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {
        "type": "object", "required": ["status"], "properties": {"status": {"const": "down"}}}
    schema = schemathesis.openapi.from_dict(document)
    failures = await asyncio.to_thread(fuzz, schema, bridge.base_url, 10, "GET /healthz")
    assert failures and "healthz" in failures[0]


MOODLE_JOINED = {"eventname": "\\mod_bigbluebuttonbn\\event\\meeting_joined", "objectid": 9, "contextlevel": 70,
                 "contextinstanceid": 87, "userid": 31, "courseid": 12, "timecreated": 1763809200,
                 "host": "lms.example.edu", "token": MOODLE_TOKEN}
EVENT = {"id": "edge", "type": "user.joined", "lesson": {"id": "l"}, "user": {"id": "1"}}


# Inputs that answered 500 (or hung) before they were fixed; each must be a 4xx or an acceptance now.
@pytest.mark.parametrize(("source", "body"), [
    # nested deeper than orjson writes (254) but not than it reads (1024): hung the whole accept group
    ("default", '{"id": "deep", "type": "user.joined", "lesson": {"id": "l"}, "user": {"id": "1"}, "data": {"x": '
     + "[" * 300 + "]" * 300 + "}}"),
    ("default", "[" * 5000 + "]" * 5000),
    ("default", {**EVENT, "occurred_at": "0001-01-01T00:00:00+01:00"}),           # OverflowError
    ("default", {**EVENT, "lesson": {"id": "l", "starts_at": "9999-12-31T23:59:59-01:00"}}),
    ("moodle", {**MOODLE_JOINED, "timecreated": 10**15}),                          # year out of range
    ("moodle", {**MOODLE_JOINED, "timecreated": "\u00b2"}),                       # "²".isdigit() but not int()
    ("moodle", {**MOODLE_JOINED, "other": {"timestart": "99999999999999"}}),
    ("moodle", {**MOODLE_JOINED, "other": {"timestart": "\u00b3"}}),
])
async def test_edge_inputs_never_answer_500(bridge, client, source: str, body: Any) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    answer = await client.post(f"{bridge.base_url}/v1/events/{source}", content=content,
                               headers={"content-type": "application/json"})
    assert answer.status_code in (200, 202, 400), answer.text
    if answer.status_code == 400:
        assert answer.json()["error"]["code"] in ("invalid_json", "invalid_event")


def _payload_validator(document: dict[str, Any], webhook_type: str) -> Any:
    """The webhook's documented body schema, its `$ref`s resolved within the document."""
    pointer = f"#/webhooks/{webhook_type}/post/requestBody/content/application~1json/schema"
    return jsonschema_rs.validator_for({**document, "$schema": "https://json-schema.org/draft/2020-12/schema",
                                        "$ref": pointer})


async def test_every_outbound_type_is_in_the_webhooks_section(bridge, client) -> None:
    document = (await client.get(f"{bridge.base_url}/openapi.json")).json()
    assert set(document["webhooks"]) == {str(webhook_type) for webhook_type in WebhookType}
    for webhook_type, item in document["webhooks"].items():
        body = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["type"] == {"const": webhook_type}
        data = body["properties"]["data"]["$ref"].rsplit("/", 1)[1]
        assert set(document["components"]["schemas"][data]["required"]) >= {"event_id", "source", "lesson_id",
                                                                            "provider"}


SANDBOX_STORY = [   # every event type the sandbox provider acts on, and the webhook each one produces
    ({"type": "lesson.scheduled", "lesson": {"id": "l1", "title": "Algebra"}}, "room.created"),
    ({"type": "lesson.updated", "lesson": {"id": "l1", "title": "Algebra II"}}, "room.updated"),
    ({"type": "lesson.started", "lesson": {"id": "l1"}}, "room.updated"),
    ({"type": "user.joined", "lesson": {"id": "l1"}, "user": {"id": 7, "role": "teacher"}}, "join.ready"),
    ({"type": "user.removed", "lesson": {"id": "l1"}, "user": {"id": "7"}}, "participant.kicked"),
    ({"type": "user.banned", "lesson": {"id": "l1"}, "user": {"id": "7"}}, "participant.banned"),
    ({"type": "call.dial_out", "lesson": {"id": "l1"}, "data": {"phone": "+15550100"}}, "call.dialing"),
    ({"type": "call.hang_up", "lesson": {"id": "l1"}, "data": {"phone": "+15550100"}}, "call.hung_up"),
    ({"type": "recording.stop", "lesson": {"id": "l1"}}, "event.failed"),
    ({"type": "lesson.ended", "lesson": {"id": "l1"}}, "room.ended"),
    ({"type": "lesson.cancelled", "lesson": {"id": "l1"}}, "room.deleted"),
]


async def test_real_emitted_payloads_validate_against_their_documented_schemas(make_bridge, client) -> None:
    bridge = make_bridge()
    bridge.start_worker()
    document = (await client.get(f"{bridge.base_url}/openapi.json")).json()
    for number, (event, expected) in enumerate(SANDBOX_STORY):
        answer = await client.post(f"{bridge.base_url}/v1/events/default?wait=10", json={"id": f"e{number}", **event})
        assert answer.status_code == 200, answer.text
        (payload,) = answer.json()["webhooks"]
        assert payload["type"] == expected
        validator = _payload_validator(document, expected)
        validator.validate(payload)
        # Not vacuous: the same payload without a field its type requires is refused.
        assert not validator.is_valid({**payload, "data": {k: v for k, v in payload["data"].items()
                                                           if k != "event_id"}})
        assert not validator.is_valid({**payload, "type": "room.gone"})
