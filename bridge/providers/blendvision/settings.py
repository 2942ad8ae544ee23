"""BlendVision settings: the API token and organisation, and how joins look."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from bridge.providers.base import HttpUrl, ProviderSettings, Secret, Text, WholeNumber, format_template
from bridge.providers.blendvision.wire import GUEST_ROLES, JOIN_PLACEHOLDERS


def _guest_role(value: str) -> str:
    role = value.strip().upper()
    if role not in GUEST_ROLES:
        raise ValueError(f"must be one of {list(GUEST_ROLES)}")
    return role


class BlendVisionSettings(ProviderSettings):
    api_base: HttpUrl = "https://api.one.blendvision.com"
    api_token: Secret
    org_id: Text
    guest_role: Annotated[str, AfterValidator(_guest_role)] = "ROLE_VIEWER"
    # A chatroom token has no page of its own: join_url is "" unless a template says where it leads.
    join_url_template: Annotated[str, format_template(*JOIN_PLACEHOLDERS)] = ""
    page_size: Annotated[WholeNumber, Field(ge=1, le=1000)] = 100
    max_lookup_pages: Annotated[WholeNumber, Field(ge=1, le=10000)] = 50
