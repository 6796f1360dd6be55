"""Every conversation findable (pages, search), edit and resend, export."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import AsyncClient
from django.utils import timezone

from chatstream.models import Conversation, Message
from chatstream.providers.demo import demo_reply
from tests.test_consumers import until_done, websocket
from tests.test_views import error_of, finish, new_conversation, post, send

pytestmark = pytest.mark.django_db(transaction=True)


async def _listing(client: AsyncClient, **query: str) -> dict:
    response = await client.get("/api/conversations/", query)
    assert response.status_code == 200, response.content
    return response.json()


async def test_the_list_pages_through_every_conversation_newest_first() -> None:
    client = AsyncClient()
    first = await new_conversation(client)
    owner = (await Conversation.objects.aget(pk=first)).anonymous_owner
    start = timezone.now() - timedelta(days=1)
    await Conversation.objects.abulk_create(
        [Conversation(anonymous_owner=owner, title=f"c{i}") for i in range(119)]
    )
    # Distinct times, one per minute, c118 the newest; the first conversation newer still.
    async for row in Conversation.objects.exclude(pk=first):
        await Conversation.objects.filter(pk=row.pk).aupdate(
            updated_at=start + timedelta(minutes=int(row.title[1:]))
        )
    seen, cursor, pages = [], "", 0
    while True:
        page = await _listing(client, **({"cursor": cursor} if cursor else {}))
        seen += [c["id"] for c in page["conversations"]]
        pages += 1
        if page["next"] is None:
            break
        cursor = page["next"]
    assert pages == 3 and len(seen) == len(set(seen)) == 120
    assert seen[0] == first
    titles = [c.title async for c in Conversation.objects.filter(pk__in=seen[1:4])]
    assert sorted(titles) == ["c116", "c117", "c118"]
    bad = await client.get("/api/conversations/", {"cursor": "not-a-cursor"})
    assert (bad.status_code, error_of(bad)) == (400, "invalid_cursor")


async def test_search_finds_titles_and_message_text() -> None:
    client = AsyncClient()
    by_title = await new_conversation(client, title="Holiday plans in Lisbon")
    by_text = await new_conversation(client)
    await finish(await send(client, by_text, "what do zebras eat"))
    await new_conversation(client, title="Something else")
    found = await _listing(client, q="lisbon")
    assert [c["id"] for c in found["conversations"]] == [by_title]
    found = await _listing(client, q="zebras")
    assert [c["id"] for c in found["conversations"]] == [by_text]
    assert (await _listing(client, q="nowhere-to-be-found"))["conversations"] == []
    other = AsyncClient()  # someone else's conversations never match
    await new_conversation(other)
    assert (await _listing(other, q="zebras"))["conversations"] == []


async def test_edit_and_resend_keeps_the_old_pair_as_a_version() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    first = await send(client, conversation, "what is 2+2")
    await finish(first)
    question = first["user_message"]["id"]
    response = await post(client, f"/api/messages/{question}/edit/", {"content": "what is 3+3"})
    assert response.status_code == 201, response.content
    edited = response.json()
    await finish(edited)
    assert edited["user_message"]["previous"] == question
    shown = (await client.get(f"/api/conversations/{conversation}/")).json()["messages"]
    assert [m["content"] for m in shown] == ["what is 3+3", demo_reply("what is 3+3")]
    versions = (await client.get(f"/api/messages/{question}/versions/")).json()["versions"]
    assert [v["content"] for v in versions] == ["what is 2+2", "what is 3+3"]
    assert [v["reply"]["content"] for v in versions] == [
        demo_reply("what is 2+2"),
        demo_reply("what is 3+3"),
    ]
    # Only the last question, and never the old version.
    stale = await post(client, f"/api/messages/{question}/edit/", {"content": "again"})
    assert (stale.status_code, error_of(stale)) == (409, "not_last_question")
    reply = edited["assistant_message"]["id"]
    wrong = await post(client, f"/api/messages/{reply}/edit/", {"content": "again"})
    assert (wrong.status_code, error_of(wrong)) == (409, "not_last_question")
    empty = await post(
        client, f"/api/messages/{edited['user_message']['id']}/edit/", {"content": " "}
    )
    assert (empty.status_code, error_of(empty)) == (400, "empty_content")
    assert await Message.objects.filter(conversation_id=conversation).acount() == 4


async def test_edit_over_the_websocket() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    sent = await send(client, conversation, "first try")
    await finish(sent)
    async with websocket(client, conversation) as communicator:
        await communicator.send_json_to(
            {"type": "edit", "message_id": sent["user_message"]["id"], "content": "second try"}
        )
        frames = await until_done(communicator)
    assert frames[0]["type"] == "started"
    assert frames[0]["user_message"]["previous"] == sent["user_message"]["id"]
    assert frames[-1]["message"]["content"] == demo_reply("second try")


async def test_export_as_markdown_and_as_json() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client, title="Export me: now!")
    await finish(await send(client, conversation, "hello there"))
    markdown = await client.get(f"/api/conversations/{conversation}/export/", {"format": "md"})
    assert markdown["Content-Type"] == "text/markdown; charset=utf-8"
    assert markdown["Content-Disposition"].startswith('attachment; filename="export-me-now-')
    text = markdown.content.decode()
    assert text.startswith("# Export me: now!\n")
    assert "## You · " in text and "hello there" in text and demo_reply("hello there") in text
    exported = await client.get(f"/api/conversations/{conversation}/export/", {"format": "json"})
    data = json.loads(exported.content)
    shown = (await client.get(f"/api/conversations/{conversation}/")).json()
    assert data == shown  # the API's shapes, exactly
    bad = await client.get(f"/api/conversations/{conversation}/export/", {"format": "pdf"})
    assert (bad.status_code, error_of(bad)) == (400, "invalid_format")
    other = AsyncClient()
    theirs = await other.get(f"/api/conversations/{conversation}/export/")
    assert theirs.status_code == 404
