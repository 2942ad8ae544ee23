"""Inbound formats: Moodle's event shape and the canonical schema, on realistic fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.config import SourceConfig
from bridge.sources import InvalidEvent, canonical, moodle

FIXTURES = Path(__file__).parent / "fixtures" / "moodle"
SOURCE = SourceConfig(name="moodle", format="moodle", provider="sandbox", token="t")
WS = {"moodle_url": "https://lms.example.edu", "ws_token": "ws-secret"}


def source(**settings: object) -> SourceConfig:
    return SourceConfig.model_validate({"name": "moodle", "format": "moodle", "provider": "sandbox", "token": "t",
                                        **settings})


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_module_created_becomes_scheduled_lesson_with_cmid_lesson_id() -> None:
    parsed = moodle.parse(SOURCE, fixture("bigbluebuttonbn_course_module_created"))
    assert parsed.event["type"] == "lesson.scheduled"
    assert parsed.event["lesson"]["id"] == "moodle:lms.example.edu:87"
    assert parsed.event["lesson"]["title"] == "Algebra I - live lesson"
    assert parsed.event["lesson"]["provider"] == "sandbox"
    assert "token" not in parsed.raw


def test_string_and_number_ids_give_the_same_event_and_lesson() -> None:
    as_numbers = fixture("bigbluebuttonbn_meeting_joined")
    as_strings = {k: str(v) if isinstance(v, int) and k != "anonymous" else v for k, v in as_numbers.items()}
    first, second = moodle.parse(SOURCE, as_numbers), moodle.parse(SOURCE, as_strings)
    assert first.event_id == second.event_id
    assert first.event["lesson"]["id"] == second.event["lesson"]["id"] == "moodle:lms.example.edu:87"
    assert first.event["user"]["id"] == "31"


def test_event_id_changes_with_identity_fields() -> None:
    item = fixture("bigbluebuttonbn_meeting_joined")
    later = {**item, "timecreated": item["timecreated"] + 1}
    assert moodle.event_id(item) != moodle.event_id(later)
    assert moodle.event_id(item).startswith("mdl_")


@pytest.mark.parametrize(("name", "expected"), [
    ("bigbluebuttonbn_meeting_joined", "user.joined"),
    ("bigbluebuttonbn_meeting_left", "user.left"),
    ("bigbluebuttonbn_meeting_ended", "lesson.ended"),
    ("zoom_join_meeting_button_clicked", "user.joined"),
    ("jitsi_session_enter", "user.joined"),
    ("role_assigned_editingteacher", "role.assigned"),
])
def test_built_in_map(name: str, expected: str) -> None:
    assert moodle.parse(SOURCE, fixture(name)).event["type"] == expected


def test_zoom_host_is_a_teacher_and_others_default_to_student() -> None:
    assert moodle.parse(SOURCE, fixture("zoom_join_meeting_button_clicked")).event["user"]["role"] == "teacher"
    assert moodle.parse(SOURCE, fixture("jitsi_session_enter")).event["user"]["role"] == "student"


def test_calendar_event_in_course_context_gets_event_lesson_id() -> None:
    event = moodle.parse(source(calendar_lessons="all"), fixture("calendar_event_created")).event
    assert event["lesson"]["id"] == "moodle:lms.example.edu:event:2210"
    assert event["lesson"]["starts_at"] == "2025-11-25T10:00:00Z"
    assert moodle.CALENDAR_CHECK not in event["data"]      # "all": no question for Moodle


def test_without_web_services_calendar_events_make_no_lessons() -> None:
    ignored = moodle.parse(SOURCE, fixture("calendar_event_created"))
    assert ignored.event is None and "calendar_lessons" in (ignored.ignored_reason or "")


def test_with_web_services_a_course_calendar_event_waits_for_the_jobs_check() -> None:
    """The twin case as a real Moodle 5.1 sends it: the activity, then its own calendar entry in course
    context with no module name (and its ids as strings). Intake cannot tell them apart; the job asks."""
    ws = source(**WS)
    activity = moodle.parse(ws, fixture("twin_course_module_created")).event
    entry = moodle.parse(ws, fixture("twin_calendar_event_created")).event
    assert activity["lesson"]["id"] == "moodle:lms.example.edu:87"
    assert moodle.CALENDAR_CHECK not in activity["data"]
    assert entry["lesson"]["id"] == "moodle:lms.example.edu:event:2211"
    assert entry["data"][moodle.CALENDAR_CHECK] == "2211"
    assert entry["lesson"]["starts_at"] == "2025-11-25T10:00:00Z"      # other.timestart as a string
    assert entry["data"]["moodle_course"] == activity["data"]["moodle_course"] == "lms.example.edu:12"


@pytest.mark.parametrize("mode", ["course", "all", "none"])
def test_a_users_own_calendar_event_is_never_a_lesson(mode: str) -> None:
    ignored = moodle.parse(source(**WS, calendar_lessons=mode), fixture("user_calendar_event_created"))
    assert ignored.event is None and "context level 30" in (ignored.ignored_reason or "")


def test_other_null_and_mixed_id_types() -> None:
    joined = fixture("bigbluebuttonbn_meeting_joined")
    assert joined["other"] is None
    mixed = {**joined, "contextinstanceid": "87", "userid": 31.0, "courseid": " 12"}
    first, second = moodle.parse(SOURCE, joined).event, moodle.parse(SOURCE, mixed).event
    assert first["lesson"] == second["lesson"] and first["lesson"]["title"] == ""
    assert second["user"]["id"] == "31" and second["data"]["moodle_course"] == "lms.example.edu:12"


def test_role_assigned_knows_teacher_roles() -> None:
    event = moodle.parse(SOURCE, fixture("role_assigned_editingteacher")).event
    assert event["user"]["id"] == "31" and event["data"]["teacher"] is True
    student = {**fixture("role_assigned_editingteacher"), "objectid": "5"}
    assert moodle.parse(SOURCE, student).event["data"]["teacher"] is False


def test_unmapped_and_non_lesson_modules_are_ignored_not_errors() -> None:
    assert moodle.parse(SOURCE, fixture("user_loggedin")).event is None
    ignored = moodle.parse(SOURCE, fixture("forum_course_module_created"))
    assert ignored.event is None and "forum" in (ignored.ignored_reason or "")


def test_source_can_override_the_map() -> None:
    source = SourceConfig(name="m", format="moodle", provider="sandbox", token="t",
                          event_map={"\\core\\event\\user_loggedin": "user.joined",
                                     "\\mod_jitsi\\event\\jitsi_session_enter": ""})
    assert moodle.parse(source, fixture("jitsi_session_enter")).event is None
    # Mapped now, but a log-in has no lesson context: ignored with a reason rather than a lesson invented.
    logged_in = moodle.parse(source, fixture("user_loggedin"))
    assert logged_in.event is None and "context" in (logged_in.ignored_reason or "")


def test_moodle_shape_errors_name_the_field() -> None:
    with pytest.raises(InvalidEvent) as error:
        moodle.parse(SOURCE, {"component": "core"})
    assert error.value.path == "eventname"


VALID = {"id": "evt_1", "type": "user.joined", "lesson": {"id": "c12-l7", "title": "Algebra I"},
         "user": {"id": 42, "name": "Ada", "role": "teacher"}}


def test_canonical_normalises_ids_and_defaults_provider() -> None:
    event = canonical.validate(VALID, "sandbox")
    assert event["user"]["id"] == "42" and event["lesson"]["provider"] == "sandbox"
    assert event["occurred_at"].endswith("Z")


@pytest.mark.parametrize(("patch", "path"), [
    ({"type": "lesson.exploded"}, "type"),
    ({"lesson": {"title": "no id"}}, "lesson.id"),
    ({"lesson": "c12"}, "lesson"),
    ({"user": None}, "user"),
    ({"user": {"name": "no id"}}, "user.id"),
    ({"occurred_at": "yesterday"}, "occurred_at"),
    ({"occurred_at": "2026-11-22T10:00:00"}, "occurred_at"),
    ({"lesson": {"id": "x", "record": "yes"}}, "lesson.record"),
    ({"type": "call.dial_out", "data": {}}, "data.phone"),
    ({"id": ""}, "id"),
])
def test_canonical_errors_name_the_field_path(patch: dict, path: str) -> None:
    with pytest.raises(InvalidEvent) as error:
        canonical.validate({**VALID, **patch}, "sandbox")
    assert error.value.path == path


def test_internal_types_are_not_accepted_from_outside() -> None:
    with pytest.raises(InvalidEvent):
        canonical.validate({**VALID, "type": "role.assigned"}, "sandbox")
