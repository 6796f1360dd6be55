"""ASGI entry point: HTTP through Django, WebSocket through the chatstream consumer.

HTTP goes through ``project.middleware.ASGIHandler``: Django's, with the Security,
CSRF and X-Frame-Options middleware's hooks on the event loop. WebSockets are
checked against ``ALLOWED_HOSTS`` by their Origin and signed in by the Django
session, like the HTTP API. ``runserver`` (Daphne) serves both.
"""

from __future__ import annotations

import gc
import os

import django
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup(set_prefix=False)  # as get_asgi_application() does; the handler is ours

# After Django is set up: these import models.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from chatstream.routing import websocket_urls  # noqa: E402
from project.admission import AdmissionLimit  # noqa: E402
from project.middleware import ASGIHandler  # noqa: E402


def tune_collector(threshold: int) -> None:
    """Keep the cyclic garbage collector's pauses out of the streams.

    Every open stream holds suspended coroutines, futures and async generators, and
    they are new again after each token. With Python's threshold (700 new objects)
    the collector walks thousands of them about a hundred times a second, and every few
    seconds a full collection walks all of Django and the SDK as well: about a sixth
    of a loaded worker's CPU, and stops of a tenth of a second (bench/README.md). What is
    loaded by now lives as long as the process, so it is frozen out of the walks.
    """
    gc.freeze()
    if threshold:
        gc.set_threshold(threshold, *gc.get_threshold()[1:])


django_application = ASGIHandler()

application = ProtocolTypeRouter(
    {
        "http": AdmissionLimit(django_application, settings.MAX_ACTIVE_REQUESTS),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urls()))),
    }
)
tune_collector(settings.GC_THRESHOLD)
