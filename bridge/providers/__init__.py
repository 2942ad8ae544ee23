"""Provider registry: `kind` in config → adapter class. Adding a provider is one package
(bridge/providers/<kind>/) and one line here."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import httpx

from bridge.providers.base import Provider, ProviderSettings

KINDS: dict[str, str] = {
    "sandbox": "bridge.providers.sandbox.adapter:SandboxProvider",
    "jaas": "bridge.providers.jaas.adapter:JaasProvider",
    "owt": "bridge.providers.owt.adapter:OwtProvider",
    "100ms": "bridge.providers.hms.adapter:HmsProvider",
    "openmeetings": "bridge.providers.openmeetings.adapter:OpenMeetingsProvider",
    "blendvision": "bridge.providers.blendvision.adapter:BlendVisionProvider",
}


def provider_class(kind: str) -> type[Provider]:
    module_name, _, class_name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def settings_model(kind: str) -> type[ProviderSettings]:
    """The declared settings of a kind: `settings_model(kind).parse(table)` checks a provider table."""
    return provider_class(kind).settings_model


def build_provider(name: str, kind: str, settings: Mapping[str, Any], http: httpx.AsyncClient) -> Provider:
    """The adapter for `[providers.<name>]`; raises SettingsError (`<key>: <problem>`) for a bad table."""
    return provider_class(kind)(name, settings_model(kind).parse(settings), http)
