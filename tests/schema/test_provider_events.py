"""Provider-event bodies parse from real-shaped fixtures (tests/fixtures/jaas, tests/fixtures/100ms)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.schema.provider_events import HMS_TYPES, JAAS_TYPES, HmsEvent, JaasEvent

FIXTURES = Path(__file__).parent.parent / "fixtures"


def fixture(provider: str, name: str) -> dict:
    return json.loads((FIXTURES / provider / f"{name}.json").read_text())


def test_jaas_join_reads_the_lms_user_and_a_text_moderator_flag() -> None:
    event = JaasEvent.model_validate(fixture("jaas", "participant_joined"))
    assert event.event_type == "PARTICIPANT_JOINED" and event.event_type in JAAS_TYPES
    assert event.idempotency_key == "4b1f7f3e-8d7a-4c0e-9a51-2f3c6d1e9b10"
    assert event.timestamp == 1763805600112
    assert event.room == "moodle-lms-example-edu-87"
    assert event.data.id == "31" and event.data.name == "Ada Lovelace"
    assert event.data.moderator is True
    assert event.data.participant_id == "8a6c3e2b"


def test_jaas_leave_reads_a_boolean_moderator_flag_and_the_reason() -> None:
    event = JaasEvent.model_validate(fixture("jaas", "participant_left_kicked"))
    assert event.data.moderator is False and event.data.disconnect_reason == "kicked"


def test_jaas_room_and_recording_events() -> None:
    destroyed = JaasEvent.model_validate(fixture("jaas", "room_destroyed"))
    assert destroyed.event_type == "ROOM_DESTROYED" and destroyed.data.id is None
    uploaded = JaasEvent.model_validate(fixture("jaas", "recording_uploaded"))
    assert uploaded.data.pre_authenticated_link == "https://recordings.example.com/c3348153/recording.mp4?token=abc123"
    assert uploaded.data.duration_sec == 3540


@pytest.mark.parametrize("moderator", ["yes", 1.5, []])
def test_jaas_moderator_flag_must_be_a_boolean_or_its_text(moderator: object) -> None:
    body = fixture("jaas", "participant_joined")
    body["data"]["moderator"] = moderator
    with pytest.raises(ValidationError) as error:
        JaasEvent.model_validate(body)
    assert error.value.errors()[0]["loc"] == ("data", "moderator")


def test_jaas_body_without_idempotency_key_is_refused() -> None:
    body = fixture("jaas", "participant_joined")
    del body["idempotencyKey"]
    with pytest.raises(ValidationError) as error:
        JaasEvent.model_validate(body)
    assert error.value.errors()[0]["loc"] == ("idempotencyKey",)


def test_hms_join_and_leave() -> None:
    joined = HmsEvent.model_validate(fixture("100ms", "peer_join_success"))
    assert joined.type == "peer.join.success" and joined.type in HMS_TYPES
    assert joined.data.user_id == "31" and joined.data.role == "teacher"
    assert joined.data.joined_at == datetime(2025, 11, 22, 10, 0, 0, 100000, tzinfo=UTC)
    left = HmsEvent.model_validate(fixture("100ms", "peer_leave_success"))
    assert left.data.left_at == datetime(2025, 11, 22, 10, 45, 0, 400000, tzinfo=UTC)
    assert left.data.duration == 2700 and left.data.reason == "client_request"


def test_hms_session_close_and_recording() -> None:
    closed = HmsEvent.model_validate(fixture("100ms", "session_close_success"))
    assert closed.type == "session.close.success" and closed.data.session_id == "6571b2a0e3b6c2a5b1f0c0df"
    recording = HmsEvent.model_validate(fixture("100ms", "recording_success"))
    assert recording.data.recording_presigned_url.startswith("https://recordings.example.com/")
    assert recording.data.size == 734003200 and recording.data.duration == 3540


def test_unknown_types_parse_so_they_can_be_accepted_and_ignored() -> None:
    body = {**fixture("100ms", "peer_join_success"), "type": "beam.started.success"}
    assert HmsEvent.model_validate(body).type not in HMS_TYPES
