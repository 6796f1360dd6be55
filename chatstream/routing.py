"""WebSocket routes, for a project's ``ProtocolTypeRouter``.

The routes live under the prefix the app's HTTP URLs are included at, so the
page's WebSocket path follows any prefix, as ``stream_url`` does::

    from channels.auth import AuthMiddlewareStack
    from channels.routing import ProtocolTypeRouter, URLRouter
    from channels.security.websocket import AllowedHostsOriginValidator
    from chatstream.routing import websocket_urls

    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urls()))
        ),
    })

``websocket_urlpatterns`` are the same routes without a prefix, to nest by hand.
"""

from __future__ import annotations

from channels.routing import URLRouter
from django.urls import URLPattern, get_script_prefix, path, reverse

from chatstream.consumers import ConversationConsumer

websocket_urlpatterns = [
    path(
        "ws/conversations/<str:conversation_id>/",
        ConversationConsumer.as_asgi(),  # type: ignore[arg-type]  # an ASGI app, as channels routes
        name="chatstream-conversation-ws",
    ),
]


def url_prefix() -> str:
    """Where the URLconf includes ``chatstream.urls``: ``""`` at the root, else ``"chat/"``."""
    return reverse("chatstream:page")[len(get_script_prefix()) :]


def websocket_urls(prefix: str | None = None) -> list[URLPattern]:
    """The WebSocket routes under ``prefix`` (by default ``url_prefix()``), for a URLRouter."""
    prefix = url_prefix() if prefix is None else prefix.lstrip("/")
    if not prefix:
        return list(websocket_urlpatterns)
    if not prefix.endswith("/"):
        prefix += "/"
    # channels routes ASGI apps through Django's path(); django-stubs knows only views.
    return [path(prefix, URLRouter(websocket_urlpatterns))]  # type: ignore[arg-type]
