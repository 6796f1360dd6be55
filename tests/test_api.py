"""The Python API, from a host project that mounts chatstream's JSON + SSE API alone."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import AsyncClient, override_settings

from chatstream import api
from chatstream.exceptions import BadRequest, NotFound
from chatstream.models import Conversation
from chatstream.providers.demo import demo_reply
from tests.test_views import SLOW_DEMO

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def alice() -> User:
    return await sync_to_async(User.objects.create_user)("alice")


@override_settings(ROOT_URLCONF="tests.host_urls")
async def test_a_reply_started_from_python_streams_into_the_hosts_own_view(alice: User) -> None:
    started = await api.start_reply("Hello from Python", user=alice)
    assert started.stream_url == f"/host/api/messages/{started.reply.pk}/stream/"
    assert started.conversation.owner_id == alice.pk
    client = AsyncClient()
    response = await client.get(f"/mine/{started.reply.pk}/")
    body = b"".join([part async for part in response.streaming_content]).decode()
    assert body == demo_reply("Hello from Python") + "\n[complete]"
    # The host took the API alone: no chat page here.
    assert (await client.get("/host/")).status_code == 404
    # The same reply through the SSE API, for the owner.
    await client.aforce_login(alice)
    stream = await client.get(started.stream_url)
    assert b"event: done" in b"".join([part async for part in stream.streaming_content])


@override_settings(ROOT_URLCONF="tests.host_urls")
async def test_follow_resumes_from_an_offset_and_wait_returns_the_row(alice: User) -> None:
    started = await api.start_reply("hi", user=alice)
    message = await api.wait(started.reply.pk, timeout=20)
    assert message.status == "complete"
    full = demo_reply("hi")
    parts = [part async for part in api.follow(started.reply.pk, offset=10)]
    assert "".join(p.text for p in parts if isinstance(p, api.Text)) == full[10:]
    end = parts[-1]
    assert isinstance(end, api.End) and (end.status, end.offset) == ("complete", len(full))
    assert end.message["content"] == full


async def test_stop_from_python_and_wait_for_the_ending(alice: User) -> None:
    with override_settings(CHATSTREAM=SLOW_DEMO):
        started = await api.start_reply("go on", user=alice)
        assert started.stream_url == f"/api/messages/{started.reply.pk}/stream/"
        assert await api.stop(started.reply.pk) == "stopping"
        message = await api.wait(started.reply.pk, timeout=20)
    assert message.status == "stopped"
    assert await api.stop(started.reply.pk) == "stopped"  # idempotent


async def test_an_anonymous_owner_and_someone_elses_conversation(alice: User) -> None:
    with pytest.raises(BadRequest):
        await api.start_reply("who am I?")
    started = await api.start_reply("hi", anonymous_id="visitor-1")
    assert started.conversation.anonymous_owner == "visitor-1"
    await api.wait(started.reply.pk, timeout=20)
    theirs = await Conversation.objects.aget(pk=started.conversation.pk)
    with pytest.raises(NotFound):
        await api.start_reply("mine now?", user=alice, conversation=theirs)
    again = await api.start_reply("again", anonymous_id="visitor-1", conversation=theirs)
    assert again.conversation.pk == theirs.pk
    await api.wait(again.reply.pk, timeout=20)
