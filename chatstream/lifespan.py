"""The ASGI lifespan: finalise in-flight replies when the server shuts its worker down.

``chatstream.shutdown`` chains in front of the server's own SIGTERM handler, which
works for servers that install theirs with ``signal.signal`` (Daphne, uvicorn).
A server that handles signals on its event loop (``loop.add_signal_handler``, as
granian does) is told first, and may stop its loop as soon as no connection is
open, leaving replies nobody reads ``streaming`` until a sweep recovers them. What
such a server awaits before its worker exits is the ASGI lifespan's shutdown, so
that is where this finalises them too. Daphne speaks no lifespan; the signal
handler covers it.
"""

from __future__ import annotations

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, LifespanScope

from chatstream.conf import get_settings
from chatstream.generation import registry


class LifespanHandler:
    """The ASGI application for the ``lifespan`` scope.

    Route ``"lifespan"`` to an instance (in channels' ``ProtocolTypeRouter``, say).
    ``lifespan.shutdown.complete`` is sent once this process's replies are final,
    or after ``SHUTDOWN_GRACE`` seconds.
    """

    async def __call__(
        self, scope: LifespanScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await registry.shutdown(get_settings().shutdown_grace)
                await send({"type": "lifespan.shutdown.complete"})
                return
