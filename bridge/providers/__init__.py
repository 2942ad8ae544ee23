"""Provider registry: `kind` in config → adapter class. Adding a provider is one package
(bridge/providers/<kind>/) and one line here."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import httpx

from bridge.providers.base import Provider, ProviderSettings
from bridge.providers.receiver import Receiver

KINDS: dict[str, str] = {
    "sandbox": "bridge.providers.sandbox.adapter:SandboxProvider",
    "jaas": "bridge.providers.jaas.adapter:JaasProvider",
    "owt": "bridge.providers.owt.adapter:OwtProvider",
    "100ms": "bridge.providers.hms.adapter:HmsProvider",
    "openmeetings": "bridge.providers.openmeetings.adapter:OpenMeetingsProvider",
    "blendvision": "bridge.providers.blendvision.adapter:BlendVisionProvider",
}

# Kinds whose provider sends webhooks (POST /v1/providers/<name>/events): kind → its receiver.
RECEIVERS: dict[str, str] = {
    "jaas": "bridge.providers.jaas.receiver:JaasReceiver",
    "100ms": "bridge.providers.hms.receiver:HmsReceiver",
}


def _load(path: str) -> Any:
    module_name, _, name = path.partition(":")
    return getattr(importlib.import_module(module_name), name)


def provider_class(kind: str) -> type[Provider]:
    return _load(KINDS[kind])


def settings_model(kind: str) -> type[ProviderSettings]:
    """The declared settings of a kind: `settings_model(kind).parse(table)` checks a provider table."""
    return provider_class(kind).settings_model


def build_receiver(name: str, kind: str, settings: Mapping[str, Any]) -> Receiver | None:
    """The webhook receiver of `[providers.<name>]`; None when its kind sends none or its table lacks
    the webhook settings."""
    if kind not in RECEIVERS:
        return None
    receiver: Receiver = _load(RECEIVERS[kind])(name, settings_model(kind).parse(settings))
    return receiver if receiver.configured() else None


def build_provider(name: str, kind: str, settings: Mapping[str, Any], http: httpx.AsyncClient) -> Provider:
    """The adapter for `[providers.<name>]`; raises SettingsError (`<key>: <problem>`) for a bad table."""
    return provider_class(kind)(name, settings_model(kind).parse(settings), http)
