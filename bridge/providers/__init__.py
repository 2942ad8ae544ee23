"""Provider registry: `kind` in config → adapter class. Adding a provider is one line here."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import httpx

from bridge.providers.base import Provider

KINDS: dict[str, str] = {
    "sandbox": "bridge.providers.sandbox:SandboxProvider",
    "jaas": "bridge.providers.jaas:JaasProvider",
    "owt": "bridge.providers.owt:OwtProvider",
    "100ms": "bridge.providers.hms:HmsProvider",
    "openmeetings": "bridge.providers.openmeetings:OpenMeetingsProvider",
    "blendvision": "bridge.providers.blendvision:BlendVisionProvider",
}


def provider_class(kind: str) -> type[Provider]:
    module_name, _, class_name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_provider(name: str, kind: str, settings: Mapping[str, Any], http: httpx.AsyncClient) -> Provider:
    return provider_class(kind)(name, settings, http)
