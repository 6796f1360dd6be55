"""The WebSocket consumer in-process, through channels' WebsocketCommunicator."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import AsyncClient, override_settings
from django.urls import include, path

from chatstream.consumers import MAX_FRAME_BYTES, MAX_FRAME_CHARS
from chatstream.generation import registry
from chatstream.models import Message
from chatstream.providers.demo import demo_reply
from chatstream.routing import url_prefix, websocket_urlpatterns, websocket_urls
from tests.settings import CHATSTREAM as TEST_CHATSTREAM

pytestmark = pytest.mark.django_db(transaction=True)

# This module doubles as a URLconf that includes the app under a prefix.
urlpatterns = [path("chat/", include("chatstream.urls"))]

APP = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
TIMEOUT = 20  # other test runs share the machine's two cores
SLOW_DEMO = {
    **TEST_CHATSTREAM,
    "CONNECTIONS": {
        "default": {
            "BACKEND": "chatstream.providers.demo.DemoProvider",
            "OPTIONS": {"first_token_delay": 0, "tokens_per_second": 20},
        }
    },
}


async def new_conversation(client: AsyncClient) -> str:
    response = await client.post("/api/conversations/", "{}", content_type="application/json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


@contextlib.asynccontextmanager
async def websocket(
    client: AsyncClient, conversation_id: str, *, app: Any = APP, prefix: str = ""
) -> AsyncIterator[WebsocketCommunicator]:
    cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in client.cookies.items())
    communicator = WebsocketCommunicator(
        app,
        f"/{prefix}ws/conversations/{conversation_id}/",
        headers=[(b"cookie", cookie.encode()), (b"origin", b"http://testserver")],
    )
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    try:
        yield communicator
    finally:
        await communicator.disconnect(timeout=TIMEOUT)


async def frame(communicator: WebsocketCommunicator) -> dict[str, Any]:
    return await communicator.receive_json_from(timeout=TIMEOUT)


async def until_done(communicator: WebsocketCommunicator) -> list[dict[str, Any]]:
    frames = []
    while not frames or frames[-1]["type"] != "done":
        frames.append(await frame(communicator))
    return frames


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "delta")


async def refusal(client: AsyncClient, conversation_id: str) -> tuple[dict[str, Any], Any]:
    """The frame and close code a connection gets when it is refused."""
    async with websocket(client, conversation_id) as communicator:
        error = await frame(communicator)
        closed = await communicator.receive_output(timeout=TIMEOUT)
    return error, closed


async def test_send_streams_started_deltas_with_offsets_and_done() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    async with websocket(client, conversation) as communicator:
        await communicator.send_json_to({"type": "send", "content": "Hello über 世界"})
        started = await frame(communicator)
        frames = await until_done(communicator)
    reply_id = started["assistant_message"]["id"]
    await registry.wait(reply_id, timeout=TIMEOUT)
    assert started["type"] == "started"
    assert started["user_message"]["content"] == "Hello über 世界"
    assert started["user_message"]["conversation"] == conversation
    assert started["assistant_message"]["status"] == "streaming"
    text = text_of(frames)
    assert "offline demo model" in text
    seen = ""
    for delta in frames[:-1]:
        assert delta["type"] == "delta" and delta["message_id"] == reply_id
        seen += delta["text"]
        assert delta["offset"] == len(seen)
    done = frames[-1]
    assert done["message_id"] == reply_id
    assert done["status"] == "complete"
    assert done["offset"] == len(text)
    assert done["message"]["content"] == text
    assert done["message"]["offset"] == len(text)
    stored = await Message.objects.aget(pk=reply_id)
    assert stored.content == text


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "invalid_json"),
        (b"\x00binary", "invalid_frame"),
        ("[1, 2]", "invalid_frame"),
        ("{}", "unknown_type"),
        ('{"type": "shout"}', "unknown_type"),
        ('{"type": "send"}', "invalid_content"),
        ('{"type": "send", "content": 5}', "invalid_content"),
        ('{"type": "send", "content": "   "}', "empty_content"),
        ('{"type": "send", "content": "' + "x" * 16001 + '"}', "content_too_long"),
        ('{"type": "resume"}', "not_found"),
        ('{"type": "resume", "message_id": "nope", "offset": 0}', "not_found"),
        ('{"type": "resume", "message_id": "' + str(uuid.uuid4()) + '"}', "not_found"),
        ('{"type": "stop", "message_id": 7}', "not_found"),
    ],
)
async def test_bad_frames_get_an_error_frame_and_the_connection_goes_on(
    raw: str | bytes, code: str
) -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    async with websocket(client, conversation) as communicator:
        if isinstance(raw, bytes):
            await communicator.send_to(bytes_data=raw)
        else:
            await communicator.send_to(text_data=raw)
        error = await frame(communicator)
        await communicator.send_json_to({"type": "send", "content": "still there?"})
        started = await frame(communicator)
        frames = await until_done(communicator)
    await registry.wait(started["assistant_message"]["id"], timeout=TIMEOUT)
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["message"]
    assert started["type"] == "started"
    assert frames[-1]["status"] == "complete"


async def test_another_sessions_conversation_is_refused_like_a_missing_one() -> None:
    owner, stranger = AsyncClient(), AsyncClient()
    conversation = await new_conversation(owner)
    await new_conversation(stranger)  # the stranger has a session and an owner id too
    theirs = await refusal(stranger, conversation)
    missing = await refusal(stranger, str(uuid.uuid4()))
    malformed = await refusal(stranger, "not-a-uuid")
    assert theirs == missing == malformed
    error, closed = theirs
    assert error == {"type": "error", "code": "not_found", "message": "No such conversation."}
    assert closed == {"type": "websocket.close", "code": 4404}


async def test_a_visitor_without_a_session_is_refused() -> None:
    owner = AsyncClient()
    conversation = await new_conversation(owner)
    error, closed = await refusal(AsyncClient(), conversation)
    assert error["code"] == "not_found"
    assert closed["code"] == 4404


async def test_anonymous_visitor_is_refused_when_anonymous_chat_is_off() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    with override_settings(CHATSTREAM={**TEST_CHATSTREAM, "ALLOW_ANONYMOUS": False}):
        error, closed = await refusal(client, conversation)
    assert error == {"type": "error", "code": "not_authenticated", "message": "Sign in to chat."}
    assert closed == {"type": "websocket.close", "code": 4403}


async def test_signed_in_user_reaches_their_conversation() -> None:
    user = await User.objects.acreate_user("ada", password="pw-ada-123")
    client = AsyncClient()
    await client.aforce_login(user)
    conversation = await new_conversation(client)
    async with websocket(client, conversation) as communicator:
        await communicator.send_json_to({"type": "send", "content": "hi"})
        started = await frame(communicator)
        frames = await until_done(communicator)
    await registry.wait(started["assistant_message"]["id"], timeout=TIMEOUT)
    assert frames[-1]["status"] == "complete"
    error, _ = await refusal(AsyncClient(), conversation)
    assert error["code"] == "not_found"


async def test_stop_is_heard_while_a_reply_streams() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    with override_settings(CHATSTREAM=SLOW_DEMO):
        async with websocket(client, conversation) as communicator:
            await communicator.send_json_to({"type": "send", "content": "tell me"})
            started = await frame(communicator)
            first = await frame(communicator)
            await communicator.send_json_to({"type": "send", "content": "and another"})
            busy = await frame(communicator)
            await communicator.send_json_to({"type": "stop"})
            frames = [first, *await until_done(communicator)]
            reply_id = started["assistant_message"]["id"]
            await registry.wait(reply_id, timeout=TIMEOUT)
    assert first["type"] == "delta"
    assert busy["type"] == "error" and busy["code"] == "reply_in_progress"
    done = frames[-1]
    assert done["status"] == "stopped"
    assert done["message"]["content"] == text_of(frames)
    assert done["offset"] == len(text_of(frames))
    stored = await Message.objects.aget(pk=reply_id)
    assert stored.status == "stopped" and stored.content == text_of(frames)


async def test_disconnect_ends_the_reader_but_not_the_reply() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    with override_settings(CHATSTREAM={**SLOW_DEMO, "FLUSH_INTERVAL": 0.01}):
        async with websocket(client, conversation) as communicator:
            await communicator.send_json_to({"type": "send", "content": "go on"})
            started = await frame(communicator)
            assert (await frame(communicator))["type"] == "delta"
        reply_id = started["assistant_message"]["id"]
        stored = await Message.objects.aget(pk=reply_id)
        assert stored.status == "streaming"
        await registry.wait(reply_id, timeout=60)
    stored = await Message.objects.aget(pk=reply_id)
    assert stored.status == "complete"
    assert "offline demo model" in stored.content


async def test_cancel_policy_stops_a_reply_whose_websocket_readers_left() -> None:
    policy = {**SLOW_DEMO, "DISCONNECT_POLICY": "cancel", "DISCONNECT_GRACE": 0.3}
    client = AsyncClient()
    conversation = await new_conversation(client)
    with override_settings(CHATSTREAM=policy):
        async with websocket(client, conversation) as communicator:
            await communicator.send_json_to({"type": "send", "content": "go on"})
            started = await frame(communicator)
            assert (await frame(communicator))["type"] == "delta"  # counted in by now
        reply_id = started["assistant_message"]["id"]
        await registry.wait(reply_id, timeout=TIMEOUT)
    stored = await Message.objects.aget(pk=reply_id)
    assert stored.status == "stopped"
    assert 0 < len(stored.content) < len(demo_reply("go on"))


async def test_resume_from_offset_yields_exactly_the_rest() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    async with websocket(client, conversation) as communicator:
        await communicator.send_json_to({"type": "send", "content": "once"})
        started = await frame(communicator)
        full = text_of(await until_done(communicator))
    reply_id = started["assistant_message"]["id"]
    await registry.wait(reply_id, timeout=TIMEOUT)
    async with websocket(client, conversation) as communicator:
        await communicator.send_json_to({"type": "resume", "message_id": reply_id, "offset": 5})
        rest = await until_done(communicator)
        await communicator.send_json_to(
            {"type": "resume", "message_id": reply_id, "offset": len(full)}
        )
        nothing_left = await until_done(communicator)
        errors = []
        for offset in (len(full) + 1, -1, "3", 1.5, True):
            await communicator.send_json_to(
                {"type": "resume", "message_id": reply_id, "offset": offset}
            )
            errors.append((await frame(communicator))["code"])
        question = started["user_message"]["id"]
        await communicator.send_json_to({"type": "resume", "message_id": question, "offset": 0})
        not_a_reply = await frame(communicator)
    assert text_of(rest) == full[5:]
    assert rest[0]["offset"] == len(full)
    assert rest[-1]["offset"] == len(full) and rest[-1]["status"] == "complete"
    assert [f["type"] for f in nothing_left] == ["done"]
    assert errors == ["invalid_offset"] * 5
    assert not_a_reply["code"] == "not_found"


async def test_resume_of_another_conversations_reply_is_not_found() -> None:
    client = AsyncClient()
    first, second = await new_conversation(client), await new_conversation(client)
    async with websocket(client, first) as communicator:
        await communicator.send_json_to({"type": "send", "content": "here"})
        started = await frame(communicator)
        await until_done(communicator)
    reply_id = started["assistant_message"]["id"]
    await registry.wait(reply_id, timeout=TIMEOUT)
    async with websocket(client, second) as communicator:
        await communicator.send_json_to({"type": "resume", "message_id": reply_id, "offset": 0})
        error = await frame(communicator)
    assert error["code"] == "not_found"


async def test_a_reader_far_behind_catches_up_in_frames_under_the_size_limit() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    async with websocket(client, conversation) as communicator:
        await communicator.send_json_to({"type": "send", "content": "long"})
        started = await frame(communicator)
        await until_done(communicator)
    reply_id = started["assistant_message"]["id"]
    await registry.wait(reply_id, timeout=TIMEOUT)
    long_text = "€" * (MAX_FRAME_BYTES // 3 + 10)  # three bytes each: over the limit
    await Message.objects.filter(pk=reply_id).aupdate(content=long_text)
    # A fresh reply log (new settings) has no record of it: the database has the word.
    with override_settings(CHATSTREAM={**TEST_CHATSTREAM, "LOG_TTL": 1}):
        async with websocket(client, conversation) as communicator:
            await communicator.send_json_to({"type": "resume", "message_id": reply_id, "offset": 3})
            frames = await until_done(communicator)
    offsets = [*range(3 + MAX_FRAME_CHARS, len(long_text), MAX_FRAME_CHARS), len(long_text)]
    assert [f["offset"] for f in frames[:-1]] == offsets
    assert text_of(frames) == long_text[3:]
    done = frames[-1]
    assert done["offset"] == done["message"]["offset"] == len(long_text)
    assert done["message"]["content"] is None  # the deltas carried it; the frame stays small
    assert done["message"]["status"] == "complete"


async def test_routes_follow_the_url_prefix() -> None:
    assert url_prefix() == ""
    with override_settings(ROOT_URLCONF=__name__):
        assert url_prefix() == "chat/"
        client = AsyncClient()
        response = await client.post(
            "/chat/api/conversations/", "{}", content_type="application/json"
        )
        conversation = response.json()["id"]
        app = AuthMiddlewareStack(URLRouter(websocket_urls()))
        async with websocket(client, conversation, app=app, prefix="chat/") as communicator:
            await communicator.send_json_to({"type": "send", "content": "prefixed"})
            started = await frame(communicator)
            frames = await until_done(communicator)
    await registry.wait(started["assistant_message"]["id"], timeout=TIMEOUT)
    assert frames[-1]["status"] == "complete"
