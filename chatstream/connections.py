"""Providers by connection name, built once per settings object and event loop.

An SDK client pools connections on the loop that made them, so each loop gets its own.
"""

from __future__ import annotations

import asyncio
import weakref

from django.utils.module_loading import import_string

from chatstream.conf import ChatstreamSettings, Connection, get_settings
from chatstream.providers.base import Provider

_providers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Connection, Provider]] = (
    weakref.WeakKeyDictionary()
)


def get_provider(name: str, settings: ChatstreamSettings | None = None) -> Provider:
    settings = settings or get_settings()
    connection = settings.connection(name)
    per_loop = _providers.setdefault(asyncio.get_running_loop(), {})
    if connection not in per_loop:
        cls = import_string(connection.backend)
        per_loop[connection] = cls(options=dict(connection.options))
    return per_loop[connection]
