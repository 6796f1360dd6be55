"""System checks: build the settings once at start-up so a wrong one is named before use."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from chatstream.conf import get_settings


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    get_settings.cache_clear()
    try:
        settings = get_settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="chatstream.E001")]
    errors: list[checks.CheckMessage] = []
    for connection in settings.connections.values():
        if not connection.is_demo and not connection.model:
            errors.append(
                checks.Error(
                    f"CHATSTREAM['CONNECTIONS'][{connection.name!r}] has no MODEL.",
                    hint="Set MODEL (the demo project reads CHATSTREAM_MODEL), "
                    "or give every Assistant on this connection its own model.",
                    id="chatstream.E002",
                )
            )
    return errors
