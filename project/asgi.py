"""ASGI entry point: HTTP through Django, WebSocket through the chatstream consumer.

WebSockets are checked against ``ALLOWED_HOSTS`` by their Origin and signed in by
the Django session, like the HTTP API. ``runserver`` (Daphne) serves both.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_application = get_asgi_application()

# After Django is set up: these import models.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from chatstream.routing import websocket_urls  # noqa: E402
from project.admission import AdmissionLimit  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": AdmissionLimit(django_application, settings.MAX_ACTIVE_REQUESTS),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urls()))),
    }
)
