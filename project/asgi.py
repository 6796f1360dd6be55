"""ASGI entry point: HTTP through Django (WebSocket routes join here)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402 (after Django is set up)

application = ProtocolTypeRouter({"http": django_application})
