"""100ms settings: the app's keys, the hosts, the template and its two roles."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, PrivateAttr, model_validator

from bridge.providers.base import (
    HttpUrl,
    ProviderError,
    ProviderSettings,
    Secret,
    SettingsError,
    Text,
    WholeNumber,
    format_template,
)
from bridge.providers.hms.wire import (
    JOIN_PLACEHOLDERS,
    REGIONS,
    TEMPLATE_NAME_RE,
    deep_merge,
    default_roles,
    validate_role,
)


def _template_name(value: str) -> str:
    if not TEMPLATE_NAME_RE.match(value):
        raise ValueError("accepted characters are a-z A-Z 0-9 . - : _")
    return value


def _region(value: str) -> str:
    if value not in REGIONS:
        raise ValueError(f"must be one of {sorted(REGIONS)}")
    return value


class HmsSettings(ProviderSettings):
    access_key: Text
    app_secret: Secret                 # signs the management and app tokens (HS256)
    api_base: HttpUrl = "https://api.100ms.live"
    policy_base: HttpUrl = "https://prod-policy.100ms.live"    # templates/roles live on their own host
    join_base: HttpUrl = "https://app.100ms.live/meeting"
    join_url_template: Annotated[Text, format_template(*JOIN_PLACEHOLDERS)] = "{join_base}/{room_id}?token={token}"
    token_ttl_s: Annotated[WholeNumber, Field(ge=60, le=7 * 86400)] = 86400
    management_token_ttl_s: Annotated[WholeNumber, Field(ge=600, le=86400)] = 3600
    teacher_role: Text = "teacher"
    student_role: Text = "student"
    # With template_id the template is managed by the operator: used as is, never modified.
    template_id: Text | None = None
    template: Annotated[Text, AfterValidator(_template_name)] = "lesson-bridge"
    region: Annotated[str, AfterValidator(_region)] | None = None
    roles: dict[str, dict[str, Any]] = {}      # overrides, deep-merged over the two default roles
    # Webhooks in (POST /v1/providers/<name>/events): 100ms does not sign them; it sends the headers
    # configured on its dashboard, which must all be present and equal.
    webhook_headers: dict[Text, Secret] = {}
    allow_private_network: bool = False        # a recording link may point at loopback/private addresses
    _merged_roles: dict[str, dict[str, Any]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_roles(self) -> HmsSettings:
        if self.teacher_role == self.student_role:
            raise SettingsError("student_role", "must differ from teacher_role")
        roles = default_roles(self.teacher_role, self.student_role)
        for role_name, override in self.roles.items():
            roles[role_name] = deep_merge(roles.get(role_name, {}), override)
        teacher_permissions = roles[self.teacher_role].get("permissions", {})
        for permission in ("removeOthers", "endRoom"):
            if teacher_permissions.get(permission) is not True:
                raise SettingsError(f"roles.{self.teacher_role}.permissions.{permission}",
                                    "the teacher role needs removeOthers and endRoom")
        names = frozenset(roles)
        for role_name, role in roles.items():
            try:
                validate_role(role_name, role, names)
            except ProviderError as exc:
                field, _, problem = exc.message.partition(": ")
                raise SettingsError(field, problem) from None
        self._merged_roles = roles
        return self

    @property
    def template_roles(self) -> dict[str, dict[str, Any]]:
        """The two default roles with the configured overrides merged in, checked."""
        return self._merged_roles
