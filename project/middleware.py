"""Django's middleware for this project, with its hooks run on the event loop.

Under ASGI, Django's ``MiddlewareMixin`` runs every synchronous ``process_request``
and ``process_response`` through ``sync_to_async``: a hop to the request's thread and
back for each, and WhiteNoise (synchronous only) puts the whole stack above it on a
thread as well. The hooks of the classes here only read headers and cookies and set
attributes: they do no I/O, except where a class says so, and there the hook still
goes to a thread.

Under load those hops, not their work, set how soon a reply starts: each waits for a
busy event loop's next turn. Django's Security, CSRF and X-Frame-Options classes make
six a request: with them the first-token p99 of 300 paced streams on one core (Daphne)
was 0.8 and 1.2 s in two runs, with the subclasses here 0.4 to 1.0 s in four
(``bench/README.md``).
``MIDDLEWARE`` still names those three by Django's path, since Django's deploy checks
(HSTS, SSL redirect, secure CSRF cookie, ...) look for them there and a subclass would
turn them off without a word: ``ASGIHandler`` loads the subclasses in their place.

The handler also makes a streaming response's request let go of what its middleware
loaded (the session, the user, the parsed body): Django keeps the request for as long as
the body streams.

The same classes work unchanged under WSGI (and Django's test ``Client``): only
their async path differs. The reusable app does not rely on them; a host keeps
whatever middleware it has.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.handlers import asgi
from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, common, csrf, security
from django.utils.deprecation import MiddlewareMixin
from whitenoise import middleware as whitenoise  # type: ignore[import-untyped]


class _OnTheLoop(MiddlewareMixin):
    """Runs the hooks inline in async mode; a subclass names the responses that need a thread."""

    def _response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        process_request = getattr(self, "process_request", None)
        if process_request is not None:
            response = process_request(request)
        response = response or await self.get_response(request)  # type: ignore[misc]  # async mode
        process_response = getattr(self, "process_response", None)
        if process_response is not None:
            if self._response_needs_thread(request, response):
                response = await sync_to_async(process_response)(request, response)
            else:
                response = process_response(request, response)
        return response


class WhiteNoiseMiddleware(whitenoise.WhiteNoiseMiddleware):
    """Static files from a thread (they are read from disk); everything else straight on."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if self.autorefresh:  # DEBUG: looks at the disk for every request
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)


class SessionMiddleware(_OnTheLoop, sessions.SessionMiddleware):
    """Saving a modified session writes to its store: that response goes to a thread."""

    def _response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class CommonMiddleware(_OnTheLoop, common.CommonMiddleware):
    pass


class AuthenticationMiddleware(_OnTheLoop, auth.AuthenticationMiddleware):
    pass


class MessageMiddleware(_OnTheLoop, messages.MessageMiddleware):
    """Messages added or read in this request are stored (maybe in the session): a thread."""

    def _response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class SecurityMiddleware(_OnTheLoop, security.SecurityMiddleware):
    pass


class XFrameOptionsMiddleware(_OnTheLoop, clickjacking.XFrameOptionsMiddleware):
    pass


class CsrfViewMiddleware(_OnTheLoop, csrf.CsrfViewMiddleware):
    """The token is read from a cookie, on the loop; from the session (``CSRF_USE_SESSIONS``)
    it is a read from the session's store, so every hook goes to a thread as in Django."""

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        if self.async_mode and not settings.CSRF_USE_SESSIONS:
            check = self.process_view  # Django sends a sync process_view to a thread

            async def process_view(*args: Any) -> HttpResponseBase | None:
                return check(*args)

            self.process_view = process_view  # type: ignore[method-assign,assignment]

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if settings.CSRF_USE_SESSIONS:
            return await MiddlewareMixin.__acall__(self, request)
        return await super().__acall__(request)


#: Django's classes that ``ASGIHandler`` loads as this module's.
ON_THE_LOOP = {
    "django.middleware.security.SecurityMiddleware": "project.middleware.SecurityMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware": "project.middleware.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware": (
        "project.middleware.XFrameOptionsMiddleware"
    ),
}


class ASGIHandler(asgi.ASGIHandler):
    """Django's ASGI handler, running the Django classes in ``ON_THE_LOOP`` as ours."""

    def load_middleware(self, is_async: bool = False) -> None:
        listed = settings.MIDDLEWARE  # only while the chain is built, once, at start-up
        settings.MIDDLEWARE = [ON_THE_LOOP.get(path, path) for path in listed]
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = listed

    async def run_get_response(self, request: HttpRequest) -> HttpResponseBase:
        """A streaming response's request lets go of what its middleware and view loaded.

        Django holds the request until the body ends, minutes for a reply while the
        middleware that needed the session, the user or the parsed body has finished
        with them: about 5 KB an open stream (``bench/README.md``). Cached properties
        come back if read again; nothing after this point reads the others.
        """
        response = await super().run_get_response(request)
        if response.streaming:
            for name in LOADED:
                request.__dict__.pop(name, None)
        return response


#: What a request's middleware and view load onto it: the session, the user, the
#: messages, the body as read and parsed, the cookies, the URL match, the Accept types.
LOADED = (
    "session", "user", "auser", "_cached_user", "_acached_user", "_messages",
    "_body", "_post", "_files", "_stream", "COOKIES", "resolver_match", "accepted_types",
)  # fmt: skip
