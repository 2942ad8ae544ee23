"""OpenMeetings settings: the REST user, the rooms the bridge makes, and who is a moderator."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, StrictBool

from bridge.polling import PollInterval
from bridge.providers.base import MODERATOR_ROLES, HttpUrl, ProviderSettings, Secret, Text, WholeNumber
from bridge.providers.openmeetings.wire import ROOM_TYPES


def _external_type(value: str) -> str:
    if "/" in value:
        raise ValueError("must not contain '/'")
    return value


def _room_type(value: str) -> str:
    if value.upper() not in ROOM_TYPES:
        raise ValueError(f"must be one of {list(ROOM_TYPES)}")
    return value.upper()


class OpenMeetingsSettings(ProviderSettings):
    base_url: HttpUrl                  # e.g. https://om.example/openmeetings
    user: Text
    password: Secret
    external_type: Annotated[Text, AfterValidator(_external_type)] = "LessonBridge"
    room_type: Annotated[Text, AfterValidator(_room_type)] = "CONFERENCE"
    room_capacity: Annotated[WholeNumber, Field(ge=1, le=10000)] = 50
    hash_ttl_s: Annotated[WholeNumber, Field(ge=60, le=7 * 86400)] = 3600
    language: Annotated[WholeNumber, Field(ge=1, le=1000)] | None = None
    show_audio_video_test: StrictBool = True
    # Canonical roles that become OpenMeetings moderators (contract default).
    moderator_roles: Annotated[list[str], Field(min_length=1)] = sorted(MODERATOR_ROLES)
    attendance_poll_s: PollInterval = 15.0    # room users polled while a lesson is live; 0 = off
