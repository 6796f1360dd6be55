"""The JSON API in-process: errors, ownership, limits, regenerate, delete, middleware."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.db import OperationalError
from django.test import AsyncClient, override_settings

from chatstream import dbpool, turns
from chatstream.generation import registry
from chatstream.models import Assistant, Conversation, Message
from chatstream.providers.demo import demo_reply
from chatstream.signals import reply_finished
from tests.settings import CHATSTREAM as TEST_CHATSTREAM
from tests.sse_client import parse_events
from tests.statements import on_statements

pytestmark = pytest.mark.django_db(transaction=True)

SLOW_DEMO = {
    **TEST_CHATSTREAM,
    "CONNECTIONS": {
        "default": {
            "BACKEND": "chatstream.providers.demo.DemoProvider",
            "OPTIONS": {"first_token_delay": 0, "tokens_per_second": 20},
        }
    },
}


async def post(client: AsyncClient, path: str, body: Any = None, **extra: Any) -> Any:
    data = json.dumps(body) if body is not None else ""
    return await client.post(path, data, content_type="application/json", **extra)


async def new_conversation(client: AsyncClient, **body: Any) -> str:
    response = await post(client, "/api/conversations/", body)
    assert response.status_code == 201, response.content
    return response.json()["id"]


async def send(client: AsyncClient, conversation: str, content: str = "hello") -> dict[str, Any]:
    response = await post(
        client, f"/api/conversations/{conversation}/messages/", {"content": content}
    )
    assert response.status_code == 201, response.content
    return response.json()


async def finish(started: dict[str, Any]) -> None:
    await registry.wait(started["assistant_message"]["id"], timeout=10)


async def stream_text(client: AsyncClient, url: str, **extra: Any) -> tuple[str, list]:
    response = await client.get(url, **extra)
    assert response.status_code == 200
    body = b"".join([part async for part in response.streaming_content]).decode()
    events = list(parse_events(iter(body.split("\n"))))
    return "".join(e.data["text"] for e in events if e.event == "delta"), events


def error_of(response: Any) -> str:
    return response.json()["error"]["code"]


async def test_full_turn_in_process() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    started = await send(client, conversation, "What is SSE?")
    assert started["stream_url"] == f"/api/messages/{started['assistant_message']['id']}/stream/"
    assert started["assistant_message"]["status"] == "streaming"
    text, events = await stream_text(client, started["stream_url"])
    assert "offline demo model" in text
    assert events[-1].data["message"]["content"] == text
    detail = (await client.get(f"/api/conversations/{conversation}/")).json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    assert detail["title"] == "What is SSE?"


async def test_wrong_method_is_405_json_with_allow() -> None:
    response = await AsyncClient().put("/api/conversations/")
    assert response.status_code == 405
    assert response["Allow"] == "GET, POST"
    assert error_of(response) == "method_not_allowed"


@pytest.mark.parametrize(
    "path",
    [
        "/api/conversations/not-a-uuid/",
        "/api/messages/123/stream/",
        "/api/nothing-here/",
        "/api/conversations/00000000-0000-0000-0000-000000000000/",
    ],
)
async def test_unknown_and_malformed_ids_are_404_json(path: str) -> None:
    response = await AsyncClient().get(path)
    assert response.status_code == 404
    assert error_of(response) == "not_found"


async def test_anonymous_visitor_is_403_when_anonymous_chat_is_off() -> None:
    with override_settings(CHATSTREAM={**TEST_CHATSTREAM, "ALLOW_ANONYMOUS": False}):
        response = await post(AsyncClient(), "/api/conversations/", {})
        listing = await AsyncClient().get("/api/conversations/")
    assert response.status_code == 403 and error_of(response) == "not_authenticated"
    assert listing.status_code == 403


async def test_api_answers_json_under_login_required_middleware() -> None:
    middleware = [*settings.MIDDLEWARE, "django.contrib.auth.middleware.LoginRequiredMiddleware"]
    with override_settings(
        MIDDLEWARE=middleware, CHATSTREAM={**TEST_CHATSTREAM, "ALLOW_ANONYMOUS": False}
    ):
        response = await AsyncClient().get("/api/conversations/")
    assert response.status_code == 403
    assert error_of(response) == "not_authenticated"


async def test_csrf_failure_is_403_json() -> None:
    client = AsyncClient(enforce_csrf_checks=True)
    response = await post(client, "/api/conversations/", {})
    assert response.status_code == 403
    assert error_of(response) == "csrf_failed"


async def test_oversized_body_is_400_json() -> None:
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100):
        client = AsyncClient()
        conversation = await new_conversation(client)
        response = await post(
            client, f"/api/conversations/{conversation}/messages/", {"content": "x" * 500}
        )
    assert response.status_code == 400
    assert error_of(response) == "request_too_large"


async def test_second_message_while_streaming_is_409() -> None:
    with override_settings(CHATSTREAM=SLOW_DEMO):
        client = AsyncClient()
        conversation = await new_conversation(client)
        started = await send(client, conversation)
        again = await post(
            client, f"/api/conversations/{conversation}/messages/", {"content": "more"}
        )
        regenerate = await post(
            client, f"/api/messages/{started['assistant_message']['id']}/regenerate/"
        )
        stop = await post(client, f"/api/messages/{started['assistant_message']['id']}/stop/")
        await finish(started)
    assert again.status_code == 409 and error_of(again) == "reply_in_progress"
    assert regenerate.status_code == 409
    assert stop.status_code == 202
    assert await Message.objects.filter(conversation_id=conversation).acount() == 2


async def test_message_rate_limit_is_429_with_retry_after_and_stores_nothing() -> None:
    with override_settings(CHATSTREAM={**TEST_CHATSTREAM, "MESSAGES_PER_MINUTE": 1}):
        client = AsyncClient()
        conversation = await new_conversation(client)
        await finish(await send(client, conversation))
        refused = await post(
            client, f"/api/conversations/{conversation}/messages/", {"content": "again"}
        )
    assert refused.status_code == 429
    assert error_of(refused) == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert await Message.objects.filter(conversation_id=conversation).acount() == 2


async def test_concurrent_reply_limit_is_429() -> None:
    with override_settings(CHATSTREAM={**SLOW_DEMO, "MAX_CONCURRENT_REPLIES": 1}):
        client = AsyncClient()
        first = await send(client, await new_conversation(client))
        other = await new_conversation(client)
        refused = await post(client, f"/api/conversations/{other}/messages/", {"content": "x"})
        await post(client, f"/api/messages/{first['assistant_message']['id']}/stop/")
        await finish(first)
    assert refused.status_code == 429
    assert error_of(refused) == "too_many_replies"
    assert refused["Retry-After"] == "5"


async def test_regenerate_replaces_the_last_reply_only() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    first = await send(client, conversation, "one")
    await finish(first)
    second = await send(client, conversation, "two")
    await finish(second)
    old_reply = first["assistant_message"]["id"]
    refused = await post(client, f"/api/messages/{old_reply}/regenerate/")
    assert refused.status_code == 409 and error_of(refused) == "not_last_reply"
    again = await post(client, f"/api/messages/{second['assistant_message']['id']}/regenerate/")
    assert again.status_code == 201
    body = again.json()
    await finish(body)
    assert body["user_message"]["id"] == second["user_message"]["id"]
    detail = (await client.get(f"/api/conversations/{conversation}/")).json()
    ids = [m["id"] for m in detail["messages"]]
    assert ids[-1] == body["assistant_message"]["id"]
    assert second["assistant_message"]["id"] not in ids
    assert len(ids) == 4
    sent = await registry_history(body["assistant_message"]["id"])
    assert sent == ["user", "assistant", "user"]


async def registry_history(reply_id: str) -> list[str]:
    """The roles the regenerated reply's request carried (the demo echoes the last one)."""
    reply = await Message.objects.aget(pk=reply_id)
    messages = Message.objects.filter(
        conversation_id=reply.conversation_id,
        superseded=False,
        created_at__lt=reply.created_at,
    ).order_by("created_at")
    return [m.role async for m in messages]


async def test_patch_renames_and_changes_assistant() -> None:
    await Assistant.objects.acreate(name="Poet", slug="poet")
    client = AsyncClient()
    conversation = await new_conversation(client)
    url = f"/api/conversations/{conversation}/"
    response = await client.patch(
        url, json.dumps({"title": "Renamed", "assistant": "poet"}), content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json()["title"] == "Renamed" and response.json()["assistant"] == "poet"
    unknown = await client.patch(
        url, json.dumps({"assistant": "nope"}), content_type="application/json"
    )
    assert unknown.status_code == 400 and error_of(unknown) == "unknown_assistant"
    empty = await client.patch(url, "{}", content_type="application/json")
    assert empty.status_code == 400 and error_of(empty) == "nothing_to_change"


async def test_delete_stops_a_streaming_reply_first() -> None:
    with override_settings(CHATSTREAM=SLOW_DEMO):
        client = AsyncClient()
        conversation = await new_conversation(client)
        started = await send(client, conversation)
        response = await client.delete(f"/api/conversations/{conversation}/")
        await finish(started)
    assert response.status_code == 204
    assert not await Conversation.objects.filter(pk=conversation).aexists()


async def test_assistants_list_says_which_is_the_offline_demo() -> None:
    await Assistant.objects.acreate(name="Helper", slug="helper", is_default=True)
    await Assistant.objects.acreate(name="Off", slug="off", is_active=False)
    response = await AsyncClient().get("/api/assistants/")
    assert response.json() == {
        "assistants": [
            {
                "slug": "helper",
                "name": "Helper",
                "model": "chatstream-demo",
                "is_default": True,
                "is_demo": True,
            }
        ]
    }


async def test_stream_of_a_user_message_is_404() -> None:
    client = AsyncClient()
    started = await send(client, await new_conversation(client))
    await finish(started)
    response = await client.get(f"/api/messages/{started['user_message']['id']}/stream/")
    assert response.status_code == 404


async def test_a_live_reply_streams_to_its_owner_without_reading_the_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[str] = []

    def recording(sql: str) -> None:
        if sql.lstrip().upper().startswith("SELECT") and "chatstream_message" in sql:
            reads.append(sql)

    with override_settings(CHATSTREAM=SLOW_DEMO):
        owner, stranger = AsyncClient(), AsyncClient()
        started = await send(owner, await new_conversation(owner))
        await new_conversation(stranger)  # a visitor with an owner id of their own
        on_statements(monkeypatch, recording)
        response = await owner.get(started["stream_url"])
        assert (response.status_code, reads) == (200, [])
        # Someone else asking for it is answered from the database: not theirs.
        assert (await stranger.get(started["stream_url"])).status_code == 404
        assert reads
        await post(owner, f"/api/messages/{started['assistant_message']['id']}/stop/")
        body = b"".join([part async for part in response.streaming_content])
    assert b"event: done" in body


async def test_a_locked_database_is_503_json_and_stores_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)

    def locked(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("database is locked")

    # As SQLite answers a writer that waited past its timeout.
    monkeypatch.setattr(turns._MESSAGES, "insert", locked)
    response = await post(
        client, f"/api/conversations/{conversation}/messages/", {"content": "hello"}
    )
    assert response.status_code == 503
    assert error_of(response) == "database_unavailable"
    assert not await Message.objects.filter(conversation_id=conversation).aexists()


async def test_finished_reply_is_served_from_the_database_after_the_log_expires() -> None:
    with override_settings(CHATSTREAM={**TEST_CHATSTREAM, "LOG_TTL": 0}):
        client = AsyncClient()
        started = await send(client, await new_conversation(client))
        await finish(started)
        reply = await Message.objects.aget(pk=started["assistant_message"]["id"])
        text, events = await stream_text(
            client, started["stream_url"], headers={"Last-Event-ID": "10"}
        )
    assert text == reply.content[10:]
    assert events[-1].event == "done" and events[-1].id == len(reply.content)


async def test_sse_is_never_compressed_by_gzip_middleware() -> None:
    with override_settings(
        MIDDLEWARE=["django.middleware.gzip.GZipMiddleware", *settings.MIDDLEWARE]
    ):
        client = AsyncClient()
        started = await send(client, await new_conversation(client))
        response = await client.get(started["stream_url"], headers={"Accept-Encoding": "gzip"})
        body = b"".join([part async for part in response.streaming_content])
    assert not response.has_header("Content-Encoding")
    assert body.startswith(b"retry: 3000\n\n")
    assert b"event: done" in body


async def test_anonymous_conversations_survive_login() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    user = await sync_to_async(User.objects.create_user)("ann", password="pw-123456")
    response = await client.post("/accounts/login/", {"username": "ann", "password": "pw-123456"})
    assert response.status_code == 302
    owned = await Conversation.objects.aget(pk=conversation)
    assert owned.owner_id == user.pk and owned.anonymous_owner == ""
    listing = (await client.get("/api/conversations/")).json()["conversations"]
    assert [c["id"] for c in listing] == [conversation]


async def test_reply_finished_fires_once_per_reply() -> None:
    received: list[tuple[str, str]] = []

    def receiver(sender: Any, message: Message, **kwargs: Any) -> None:
        received.append((str(message.id), message.status))

    reply_finished.connect(receiver)
    try:
        with override_settings(CHATSTREAM=SLOW_DEMO):
            client = AsyncClient()
            complete = await send(client, await new_conversation(client))
            stopped = await send(client, await new_conversation(client))
            await post(client, f"/api/messages/{stopped['assistant_message']['id']}/stop/")
            await finish(stopped)
            await post(client, f"/api/messages/{stopped['assistant_message']['id']}/stop/")
            await finish(complete)
    finally:
        reply_finished.disconnect(receiver)
    assert sorted(received) == sorted(
        [
            (complete["assistant_message"]["id"], "complete"),
            (stopped["assistant_message"]["id"], "stopped"),
        ]
    )


async def test_cancel_policy_stops_a_reply_its_readers_left() -> None:
    policy = {**SLOW_DEMO, "DISCONNECT_POLICY": "cancel", "DISCONNECT_GRACE": 0.3}
    with override_settings(CHATSTREAM=policy):
        client = AsyncClient()
        started = await send(client, await new_conversation(client))
        response = await client.get(started["stream_url"])
        stream = aiter(response)  # as the ASGI handler iterates it
        await anext(stream)  # the retry line
        await anext(stream)  # a first delta: the reader is counted in
        await stream.aclose()  # the client went away: counted out
        await finish(started)
    reply = await Message.objects.aget(pk=started["assistant_message"]["id"])
    assert reply.status == "stopped"
    assert 0 < len(reply.content) < len(demo_reply("hello"))


async def test_continue_policy_finishes_a_reply_nobody_reads() -> None:
    with override_settings(CHATSTREAM={**TEST_CHATSTREAM, "DISCONNECT_GRACE": 0}):
        client = AsyncClient()
        started = await send(client, await new_conversation(client))
        await finish(started)
    reply = await Message.objects.aget(pk=started["assistant_message"]["id"])
    assert reply.status == "complete"


async def test_every_url_the_app_emits_follows_its_prefix() -> None:
    with override_settings(ROOT_URLCONF="tests.prefixed_urls"):
        client = AsyncClient()
        page = await client.get("/chat/")
        response = await post(client, "/chat/api/conversations/", {})
        conversation = response.json()["id"]
        started = await post(
            client, f"/chat/api/conversations/{conversation}/messages/", {"content": "hi"}
        )
        await finish(started.json())
        text, events = await stream_text(client, started.json()["stream_url"])
        unknown = await client.get("/chat/api/nothing/")
    assert b'data-api-root="/chat/api/conversations/"' in page.content
    assert started.json()["stream_url"].startswith("/chat/api/messages/")
    assert events[-1].event == "done" and text
    assert unknown.status_code == 404 and error_of(unknown) == "not_found"


async def test_chat_page_of_someone_elses_conversation_is_404() -> None:
    owner, stranger = AsyncClient(), AsyncClient()
    conversation = await new_conversation(owner)
    mine = await owner.get(f"/c/{conversation}/")
    theirs = await stranger.get(f"/c/{conversation}/")
    missing = await owner.get("/c/00000000-0000-0000-0000-000000000000/")
    assert mine.status_code == 200
    assert f'data-conversation="{conversation}"'.encode() in mine.content
    assert mine["Content-Security-Policy"].startswith("default-src 'self'")
    assert theirs.status_code == missing.status_code == 404


async def test_someone_elses_conversation_and_reply_are_404_to_the_api() -> None:
    owner, stranger, user = AsyncClient(), AsyncClient(), AsyncClient()
    await user.aforce_login(await sync_to_async(User.objects.create_user)("bob"))
    conversation = await new_conversation(owner)
    started = await send(owner, conversation)
    await finish(started)
    reply = started["assistant_message"]["id"]
    urls = [
        f"/api/conversations/{conversation}/",
        f"/api/messages/{reply}/",
        started["stream_url"],
    ]
    for client in (stranger, user):
        for url in urls:
            response = await client.get(url)
            assert (response.status_code, error_of(response)) == (404, "not_found"), url
        for body in ({"content": "x"}, {"content": 3}, ["not", "an", "object"]):
            refused = await post(client, f"/api/conversations/{conversation}/messages/", body)
            assert (refused.status_code, error_of(refused)) == (404, "not_found"), body
    assert all([(await owner.get(url)).status_code == 200 for url in urls])
    assert await Message.objects.filter(conversation_id=conversation).acount() == 2


@pytest.mark.parametrize("text", ["a\x00b", "lone \ud800 surrogate"])
async def test_text_no_database_can_store_is_400_invalid_content_and_stores_nothing(
    text: str,
) -> None:
    client = AsyncClient()
    titled = await post(client, "/api/conversations/", {"title": text})
    assert (titled.status_code, error_of(titled)) == (400, "invalid_content")
    conversation = await new_conversation(client, title="kept")
    sent = await post(client, f"/api/conversations/{conversation}/messages/", {"content": text})
    assert (sent.status_code, error_of(sent)) == (400, "invalid_content")
    renamed = await client.patch(
        f"/api/conversations/{conversation}/",
        json.dumps({"title": text}),
        content_type="application/json",
    )
    assert (renamed.status_code, error_of(renamed)) == (400, "invalid_content")
    assert [c.title async for c in Conversation.objects.all()] == ["kept"]
    assert not await Message.objects.filter(conversation_id=conversation).aexists()


async def test_one_request_per_reply_when_the_client_asks_for_an_event_stream() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    response = await post(
        client,
        f"/api/conversations/{conversation}/messages/",
        {"content": "hello"},
        headers={"Accept": "text/event-stream"},
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    body = b"".join([part async for part in response.streaming_content]).decode()
    events = list(parse_events(iter(body.split("\n"))))
    started = events[0]
    assert started.event == "started"
    assert set(started.data) == {"user_message", "assistant_message", "stream_url"}
    assert "".join(e.data["text"] for e in events if e.event == "delta") == demo_reply("hello")
    assert events[-1].event == "done" and events[-1].id == len(demo_reply("hello"))
    # Exactly what GET stream_url sends from offset 0, after the started event.
    _, again = await stream_text(client, started.data["stream_url"])
    assert [(e.event, e.id, e.data) for e in events[1:]] == [(e.event, e.id, e.data) for e in again]
    # Refusals stay JSON with their status.
    busy = await post(
        client,
        f"/api/conversations/{conversation}/messages/",
        {"content": " "},
        headers={"Accept": "text/event-stream"},
    )
    assert (busy.status_code, error_of(busy)) == (400, "empty_content")


@override_settings(CHATSTREAM=SLOW_DEMO)  # still streaming when the 201 comes
async def test_a_send_finds_its_conversation_and_makes_its_rows_in_one_hop_to_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under load each hop waits for a busy event loop's turn: a send makes one."""
    client = AsyncClient()
    conversation = await new_conversation(client)
    units: list[str] = []
    run = dbpool.run

    async def recorded(fn: Any, *args: Any) -> Any:
        units.append(fn.__name__)
        return await run(fn, *args)

    monkeypatch.setattr(dbpool, "run", recorded)
    started = await send(client, conversation)
    before_the_reply = list(units)
    await finish(started)

    assert before_the_reply == ["_admit_and_create"]
    assert units[-1] == "_finalise_row"
    assert started["user_message"]["content"] == "hello"
    assert await Message.objects.filter(conversation_id=conversation).acount() == 2
