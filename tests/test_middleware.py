"""The project's middleware: Django's, with hooks on the event loop unless they do I/O,
and the ASGI handler that runs Django's Security, CSRF and X-Frame-Options so."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from django.contrib import messages
from django.core.handlers.asgi import ASGIHandler as DjangosHandler
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.middleware.csrf import get_token
from django.test import AsyncClient, AsyncRequestFactory, override_settings
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from project import middleware
from project.settings import MIDDLEWARE as PROJECT_MIDDLEWARE
from tests.asgi_request import asgi

pytestmark = pytest.mark.django_db(transaction=True)

STACK = [m for m in PROJECT_MIDDLEWARE if "WhiteNoise" not in m]  # no static files here
OURS = [m for m in STACK if m.startswith("project.")] + list(middleware.ON_THE_LOOP.values())


@csrf_exempt
async def remember(request: HttpRequest) -> HttpResponse:
    await request.session.aset("seen", "yes")
    return HttpResponse("ok")


@csrf_exempt
async def recall(request: HttpRequest) -> HttpResponse:
    return HttpResponse(await request.session.aget("seen", "no"))


@csrf_exempt
async def notify(request: HttpRequest) -> HttpResponse:
    messages.info(request, "saved")
    return HttpResponse("ok")


async def read(request: HttpRequest) -> HttpResponse:
    return HttpResponse(" ".join(str(m) for m in messages.get_messages(request)))


async def token(request: HttpRequest) -> HttpResponse:
    return HttpResponse(get_token(request))


async def guarded(request: HttpRequest) -> HttpResponse:
    return HttpResponse("accepted")


handled: list[HttpRequest] = []


@csrf_exempt
async def trickle(request: HttpRequest) -> StreamingHttpResponse:
    """Loads what a reply's send loads, then streams what its request still holds."""
    await request.session.aset("seen", "streamed")
    await request.auser()
    assert request.POST is not None and request.COOKIES is not None
    handled.append(request)

    async def parts() -> Any:
        yield b"held:"
        yield ",".join(sorted(set(vars(request)) & set(middleware.LOADED))).encode()

    return StreamingHttpResponse(parts())


@csrf_exempt
async def plain(request: HttpRequest) -> HttpResponse:
    await request.session.aset("seen", "plain")
    handled.append(request)
    return HttpResponse("ok")


urlpatterns = [
    path("remember/", remember),
    path("recall/", recall),
    path("notify/", notify),
    path("read/", read),
    path("token/", token),
    path("guarded/", guarded),
    path("trickle/", trickle),
    path("plain/", plain),
]


def hooked(cls: type, record: list[str]) -> Any:
    """An instance of ``cls`` in async mode whose hooks record the thread they ran on."""

    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    instance = cls(view)
    for name in ("process_request", "process_response"):
        hook = getattr(instance, name, None)
        if hook is not None:
            setattr(instance, name, recording(hook, name, record))
    return instance


def recording(hook: Callable[..., Any], name: str, record: list[str]) -> Callable[..., Any]:
    def wrapper(*args: Any) -> Any:
        on_loop = threading.current_thread() is threading.main_thread()
        record.append(f"{name} {'loop' if on_loop else 'thread'}")
        return hook(*args)

    return wrapper


@pytest.mark.parametrize("dotted", OURS)
async def test_hooks_run_on_the_event_loop(dotted: str) -> None:
    cls = getattr(middleware, dotted.rsplit(".", 1)[1])
    record: list[str] = []
    request = AsyncRequestFactory().get("/anything/")
    if cls is not middleware.SessionMiddleware:
        request.session = {}  # type: ignore[assignment]  # what Auth checks is there

    await hooked(cls, record)(request)

    assert record
    assert all(entry.endswith(" loop") for entry in record), record


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=STACK)
async def test_a_modified_session_is_saved() -> None:
    client = AsyncClient()

    await client.post("/remember/")
    response = await client.get("/recall/")

    assert response.content == b"yes"


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=STACK)
async def test_a_message_added_is_stored_and_read_once() -> None:
    client = AsyncClient()

    await client.post("/notify/")
    first, second = await client.get("/read/"), await client.get("/read/")

    assert (first.content, second.content) == (b"saved", b"")


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=STACK)
async def test_responses_keep_their_security_headers() -> None:
    response = await AsyncClient().get("/recall/")

    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


async def test_whitenoise_serves_static_files_and_passes_the_rest_on(tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("alert(1)")
    passed: list[str] = []

    async def view(request: HttpRequest) -> HttpResponse:
        passed.append(request.path)
        return HttpResponse("view")

    with override_settings(STATIC_ROOT=tmp_path, STATIC_URL="/static/", DEBUG=False):
        static = middleware.WhiteNoiseMiddleware(view)
    factory = AsyncRequestFactory()

    served = await static(factory.get("/static/app.js"))
    other = await static(factory.get("/api/health/"))
    content = b"".join(served.streaming_content)
    served.close()

    assert content == b"alert(1)"
    assert other.content == b"view"
    assert passed == ["/api/health/"]


def with_cookies(response_headers: dict[str, str]) -> dict[str, str]:
    """The cookie the response set, sent back as a browser would."""
    cookie = response_headers["Set-Cookie"].split(";", 1)[0]
    return {"cookie": cookie}


def csrf_post(token_response: tuple[int, dict[str, str], bytes]) -> dict[str, str]:
    _, headers, token = token_response
    return {**with_cookies(headers), "x-csrftoken": token.decode()}


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=STACK)
async def test_the_asgi_handler_spares_djangos_security_csrf_and_x_frame_hops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hops = {"count": 0}
    hop = SyncToAsync.__call__

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        hops["count"] += 1
        return hop(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    made = {}
    for name, handler in (("django", DjangosHandler()), ("ours", middleware.ASGIHandler())):
        hops["count"] = 0
        status, headers, body = await asgi(handler, "GET", "/token/")
        assert (status, headers["X-Frame-Options"], headers["X-Content-Type-Options"]) == (
            200, "DENY", "nosniff",
        )  # fmt: skip
        made[name] = hops["count"]

    # Security: request and response; CSRF: request, view and response; X-Frame: response.
    assert made["django"] - made["ours"] == 6, made


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=STACK)
async def test_the_asgi_handler_still_refuses_a_post_without_the_csrf_token() -> None:
    handler = middleware.ASGIHandler()
    issued = await asgi(handler, "GET", "/token/")

    refused = await asgi(handler, "POST", "/guarded/", with_cookies(issued[1]))
    accepted = await asgi(handler, "POST", "/guarded/", csrf_post(issued))

    assert refused[0] == 403
    assert (accepted[0], accepted[2]) == (200, b"accepted")


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=STACK, SECURE_SSL_REDIRECT=True)
async def test_the_asgi_handler_still_redirects_to_https() -> None:
    status, headers, _ = await asgi(middleware.ASGIHandler(), "GET", "/token/")

    assert (status, headers["Location"]) == (301, "https://testserver/token/")


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=STACK, CSRF_USE_SESSIONS=True)
async def test_a_csrf_token_kept_in_the_session_is_read_on_a_thread_and_checked() -> None:
    handler = middleware.ASGIHandler()
    issued = await asgi(handler, "GET", "/token/")

    refused = await asgi(handler, "POST", "/guarded/", with_cookies(issued[1]))
    accepted = await asgi(handler, "POST", "/guarded/", csrf_post(issued))

    assert "sessionid=" in issued[1]["Set-Cookie"]  # the token went to the session
    assert (refused[0], accepted[0]) == (403, 200)


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=STACK)
async def test_a_streaming_responses_request_lets_go_of_what_its_middleware_loaded() -> None:
    handler = middleware.ASGIHandler()

    status, headers, body = await asgi(handler, "POST", "/trickle/")
    recalled = await asgi(handler, "GET", "/recall/", with_cookies(headers))

    assert (status, body) == (200, b"held:")  # nothing of LOADED while the body streamed
    assert recalled[2] == b"streamed"  # the session was saved before it was let go
    assert handled[-1].path == "/trickle/"  # what a server's logs read stays


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=STACK)
async def test_any_other_responses_request_keeps_what_it_loaded() -> None:
    await asgi(middleware.ASGIHandler(), "POST", "/plain/")

    request = handled[-1]
    assert (request.path, request.session["seen"]) == ("/plain/", "plain")
    assert request.resolver_match is not None
