"""OWT settings: the service's id and key, the roles joins get, and the options rooms are made with."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StrictInt, model_validator

from bridge.polling import PollInterval
from bridge.providers.base import HttpUrl, ProviderSettings, Secret, SettingsError, Text
from bridge.providers.owt.wire import ROLE_RE, validate_room_options

SERVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")   # sent raw inside the MAuth header


def _service_id(value: str) -> str:
    if not SERVICE_ID_RE.match(value):
        raise ValueError("the OWT service id (no ',' '=' or spaces)")
    return value


def _role(value: str) -> str:
    if not ROLE_RE.match(value):
        raise ValueError("must be a role name (letters, digits, '_', '-', '.')")
    return value


def _room_options(value: dict[str, Any]) -> dict[str, Any]:
    problems = validate_room_options(value)
    if problems:
        raise ValueError(problems[0])
    return value


Role = Annotated[str, AfterValidator(_role)]


class OwtSettings(ProviderSettings):
    base_url: HttpUrl
    join_base: HttpUrl | None = None          # where join links point; base_url when unset
    service_id: Annotated[str, AfterValidator(_service_id)]
    service_key: Secret
    moderator_role: Role = "presenter"        # must exist in the room (its room_options.roles when set)
    guest_role: Role = "viewer"
    room_options: Annotated[dict[str, Any], AfterValidator(_room_options)] = {}
    mix_view: Text = "common"                 # the mixed view streamed out to the recorder
    token_ttl_s: Annotated[StrictInt, Field(ge=1, le=86400)] = 180
    token_preference: dict[str, str] = {"isp": "isp", "region": "region"}
    attendance_poll_s: PollInterval = 15.0    # participants polled while a lesson is live; 0 = off

    @model_validator(mode="after")
    def _roles_exist(self) -> OwtSettings:
        roles = {r.get("role") for r in self.room_options.get("roles", [])}
        for key in ("moderator_role", "guest_role"):
            if roles and getattr(self, key) not in roles:
                raise SettingsError(key, "is not one of the roles in room_options.roles")
        return self

    @property
    def join_url_base(self) -> str:
        return self.join_base or self.base_url
