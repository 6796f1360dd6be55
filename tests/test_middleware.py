"""The project's middleware: Django's, with hooks on the event loop unless they do I/O."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, AsyncRequestFactory, override_settings
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from project import middleware
from project.settings import MIDDLEWARE as PROJECT_MIDDLEWARE

pytestmark = pytest.mark.django_db(transaction=True)

STACK = [m for m in PROJECT_MIDDLEWARE if "WhiteNoise" not in m]  # no static files here
OURS = [m for m in STACK if m.startswith("project.")]


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


urlpatterns = [
    path("remember/", remember),
    path("recall/", recall),
    path("notify/", notify),
    path("read/", read),
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
