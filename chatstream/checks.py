"""System checks: build the settings once at start-up so a wrong one is named before use."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
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


@checks.register()
def check_asgi(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Streams need an ASGI server: under WSGI a reply's task dies with its request."""
    asgi = getattr(django_settings, "ASGI_APPLICATION", None)
    served = {"daphne", "uvicorn", "granian", "hypercorn"} & set(django_settings.INSTALLED_APPS)
    if asgi or served:
        return []
    return [
        checks.Warning(
            "chatstream streams replies only under an ASGI server; this project "
            "names none, and `runserver` alone serves WSGI.",
            hint='Serve the project\'s asgi.py with daphne or uvicorn, and add "daphne" '
            "to INSTALLED_APPS (first) so that runserver serves ASGI too.",
            id="chatstream.W001",
        )
    ]
