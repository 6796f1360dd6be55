"""The admin: assistants and their connection check, conversations, messages, the
replies streaming now (with stop) and usage totals, as a staff user sees them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.test import AsyncClient, Client, override_settings
from django.utils import timezone

from chatstream.admin_views import CHECK_MAX_TOKENS, CHECK_PROMPT
from chatstream.generation import registry
from chatstream.models import Assistant, Conversation, Message, Role, Status
from chatstream.replylog import get_reply_log
from chatstream.replylog.base import WORKER
from tests.fake_openai import FakeOpenAI, Script
from tests.settings import CHATSTREAM as TEST_CHATSTREAM

SLOW_DEMO = {
    **TEST_CHATSTREAM,
    "CONNECTIONS": {
        "default": {
            "BACKEND": "chatstream.providers.demo.DemoProvider",
            "OPTIONS": {"first_token_delay": 0, "tokens_per_second": 20},
        }
    },
}


def upstream(base_url: str, backend: str = "OpenAIProvider") -> dict[str, Any]:
    connection = {
        "BACKEND": f"chatstream.providers.openai.{backend}",
        "OPTIONS": {"api_key": "sk-test-secret", "base_url": base_url, "max_retries": 0},
        "MODEL": "fake-model",
    }
    return {
        **TEST_CHATSTREAM,
        "CONNECTIONS": {**TEST_CHATSTREAM["CONNECTIONS"], "upstream": connection},
    }


def shown(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def assistant_form(**fields: Any) -> dict[str, Any]:
    return {
        "name": "Helper",
        "slug": "helper",
        "connection": "default",
        "model": "",
        "system_prompt": "",
        "temperature": "",
        "max_output_tokens": "",
        "context_tokens": "",
        "is_active": "on",
        **fields,
    }


def make_reply(conversation: Conversation, **fields: Any) -> Message:
    now = timezone.now()
    defaults: dict[str, Any] = {
        "role": Role.ASSISTANT,
        "status": Status.COMPLETE,
        "content": "An answer.",
        "model": "chatstream-demo",
        "created_at": now,
        "finished_at": now,
    }
    return Message.objects.create(conversation=conversation, **{**defaults, **fields})


@pytest.fixture
def ping_script(fake_openai: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The fake answers the check's prompt by a script of the test's; removed after."""
    yield fake_openai
    fake_openai.scripts.pop(CHECK_PROMPT, None)


# --- pages render and work with data ---------------------------------------------------


@pytest.mark.django_db
def test_admin_pages_render_with_data(admin_client: Client, admin_user: User) -> None:
    assistant = Assistant.objects.create(name="Helper", slug="helper", is_default=True)
    conversation = Conversation.objects.create(
        owner=admin_user, assistant=assistant, title="Quarterly numbers"
    )
    question = Message.objects.create(
        conversation=conversation, role=Role.USER, content="Hi", created_at=timezone.now()
    )
    reply = make_reply(
        conversation,
        reply_to=question,
        assistant=assistant,
        finish_reason="stop",
        prompt_tokens=12,
        completion_tokens=34,
        ttft_ms=210,
        duration_ms=1500,
    )
    pages = [
        "/admin/",
        "/admin/chatstream/",
        "/admin/chatstream/assistant/",
        f"/admin/chatstream/assistant/{assistant.pk}/change/",
        "/admin/chatstream/conversation/",
        f"/admin/chatstream/conversation/{conversation.pk}/change/",
        "/admin/chatstream/message/",
        f"/admin/chatstream/message/{reply.pk}/change/",
        "/admin/chatstream/message/live/",
        "/admin/chatstream/message/usage/",
    ]
    for page in pages:
        response = admin_client.get(page)
        assert response.status_code == 200, page
    conversation_page = admin_client.get(
        f"/admin/chatstream/conversation/{conversation.pk}/change/"
    ).content.decode()
    assert "An answer." in conversation_page  # the messages, read-only inline
    assert "Check connection" in admin_client.get(pages[3]).content.decode()
    message_list = admin_client.get("/admin/chatstream/message/").content.decode()
    assert "/admin/chatstream/message/live/" in message_list
    assert "/admin/chatstream/message/usage/" in message_list
    assert (
        "/admin/chatstream/message/live/" in admin_client.get("/admin/chatstream/").content.decode()
    )


@pytest.mark.django_db
def test_messages_are_read_only(admin_client: Client) -> None:
    conversation = Conversation.objects.create(title="t")
    reply = make_reply(conversation)
    page = admin_client.get(f"/admin/chatstream/message/{reply.pk}/change/").content.decode()
    assert 'name="content"' not in page
    assert admin_client.get("/admin/chatstream/message/add/").status_code == 403
    response = admin_client.post(
        f"/admin/chatstream/message/{reply.pk}/change/", {"content": "changed"}
    )
    assert response.status_code == 403
    reply.refresh_from_db()
    assert reply.content == "An answer."


@pytest.mark.django_db
def test_conversations_search_by_owner_and_title_and_filter_by_message_status(
    admin_client: Client,
) -> None:
    alice = User.objects.create_user("alice", email="alice@example.com")
    bob = User.objects.create_user("bob", email="bob@example.org")
    helper = Assistant.objects.create(name="Helper", slug="helper")
    other = Assistant.objects.create(name="Other", slug="other")
    failed = Conversation.objects.create(owner=alice, assistant=helper, title="Budget plan")
    fine = Conversation.objects.create(owner=bob, assistant=other, title="Holiday ideas")
    make_reply(failed, status=Status.ERROR, error_code="upstream_auth")
    make_reply(fine)

    def listed(query: str) -> set[str]:
        response = admin_client.get(f"/admin/chatstream/conversation/{query}")
        assert response.status_code == 200
        return {str(c.pk) for c in response.context["cl"].result_list}

    assert listed("?q=alice") == {str(failed.pk)}
    assert listed("?q=example.org") == {str(fine.pk)}
    assert listed("?q=holiday") == {str(fine.pk)}
    assert listed("?message_status=error") == {str(failed.pk)}
    assert listed("?message_status=complete") == {str(fine.pk)}
    assert listed(f"?assistant__id__exact={other.pk}") == {str(fine.pk)}
    today = timezone.localdate()
    assert len(listed(f"?created_at__year={today.year}")) == 2


@pytest.mark.django_db
def test_message_list_filters_by_status_and_error(admin_client: Client) -> None:
    conversation = Conversation.objects.create(title="t")
    failed = make_reply(conversation, status=Status.ERROR, error_code="upstream_auth")
    make_reply(conversation, status=Status.STOPPED)
    response = admin_client.get("/admin/chatstream/message/?status__exact=error")
    assert [m.pk for m in response.context["cl"].result_list] == [failed.pk]
    response = admin_client.get("/admin/chatstream/message/?error_code=upstream_auth")
    assert [m.pk for m in response.context["cl"].result_list] == [failed.pk]


# --- assistants ------------------------------------------------------------------------


@pytest.mark.django_db
def test_assistant_form_names_an_unknown_connection(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/chatstream/assistant/add/", assistant_form(connection="nowhere")
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["connection"] == [
        "The connection 'nowhere' is not configured: CHATSTREAM['CONNECTIONS'] has default."
    ]
    assert not Assistant.objects.exists()


@pytest.mark.django_db
def test_assistant_form_needs_a_model_when_the_connection_has_none(
    admin_client: Client,
) -> None:
    connection = {"BACKEND": "chatstream.providers.openai.OpenAIProvider", "OPTIONS": {}}
    chatstream = {
        **TEST_CHATSTREAM,
        "CONNECTIONS": {**TEST_CHATSTREAM["CONNECTIONS"], "bare": connection},
    }
    with override_settings(CHATSTREAM=chatstream):
        response = admin_client.post(
            "/admin/chatstream/assistant/add/", assistant_form(connection="bare")
        )
    assert response.context["adminform"].form.errors["model"] == [
        "Name a model: the connection 'bare' has no MODEL of its own."
    ]


@pytest.mark.django_db
def test_a_new_default_assistant_unsets_the_old_one(admin_client: Client) -> None:
    old = Assistant.objects.create(name="Old", slug="old", is_default=True)
    response = admin_client.post(
        "/admin/chatstream/assistant/add/", assistant_form(is_default="on"), follow=True
    )
    assert response.status_code == 200
    new = Assistant.objects.get(slug="helper")
    old.refresh_from_db()
    assert new.is_default and not old.is_default
    assert "“Old” is no longer the default assistant." in shown(response)


@pytest.mark.django_db
def test_check_connection_action_reports_model_and_latency(
    admin_client: Client, ping_script: FakeOpenAI
) -> None:
    assistant = Assistant.objects.create(name="Real", slug="real", connection="upstream")
    with override_settings(CHATSTREAM=upstream(ping_script.base_url)):
        response = admin_client.post(
            "/admin/chatstream/assistant/",
            {"action": "check_connection", "_selected_action": [assistant.pk]},
            follow=True,
        )
    [text] = shown(response)
    assert text.startswith("Real: model fake-model on connection 'upstream' answered in ")
    assert text.endswith(" ms.")
    request = ping_script.wait_request(CHECK_PROMPT)
    assert request.body["max_tokens"] == CHECK_MAX_TOKENS and request.body["model"] == "fake-model"
    assert request.ended_event.wait(5)


@pytest.mark.django_db
def test_check_connection_passes_on_a_reasoning_model_over_chat_completions(
    admin_client: Client, ping_script: FakeOpenAI
) -> None:
    """o3-mini thinks before its first visible token, and refuses max_tokens."""
    ping_script.script(CHECK_PROMPT, Script(hidden_reasoning=300, tokens=["Pong", "!"]))
    assistant = Assistant.objects.create(
        name="Thinker", slug="thinker", connection="upstream", model="o3-mini"
    )
    with override_settings(CHATSTREAM=upstream(ping_script.base_url)):
        response = admin_client.post(
            f"/admin/chatstream/assistant/{assistant.pk}/check-connection/", follow=True
        )
    [text] = shown(response)
    assert text.startswith("Thinker: model o3-mini on connection 'upstream' answered in ")
    sent = [r.body for r in ping_script.requests_for(CHECK_PROMPT) if r.body["model"] == "o3-mini"]
    assert [{k: v for k, v in body.items() if k.startswith("max_")} for body in sent] == [
        {"max_tokens": CHECK_MAX_TOKENS},
        {"max_completion_tokens": CHECK_MAX_TOKENS},
    ]


@pytest.mark.django_db
def test_check_connection_passes_on_a_reasoning_model_over_the_responses_api(
    admin_client: Client, ping_script: FakeOpenAI
) -> None:
    script = Script(reasoning=["The user pings."], hidden_reasoning=300, tokens=["Pong"])
    ping_script.script(CHECK_PROMPT, script)
    assistant = Assistant.objects.create(
        name="Thinker", slug="thinker", connection="upstream", model="gpt-5"
    )
    settings = upstream(ping_script.base_url, backend="OpenAIResponsesProvider")
    with override_settings(CHATSTREAM=settings):
        response = admin_client.post(
            f"/admin/chatstream/assistant/{assistant.pk}/check-connection/", follow=True
        )
    [text] = shown(response)
    assert text.startswith("Thinker: model gpt-5 on connection 'upstream' answered in ")
    request = ping_script.wait_request(CHECK_PROMPT)
    assert request.path == "/v1/responses"
    assert request.body["max_output_tokens"] == CHECK_MAX_TOKENS
    assert request.body["reasoning"] == {"summary": "auto"}
    assert request.ended_event.wait(5)


@pytest.mark.django_db
def test_check_connection_reports_a_model_that_thinks_past_its_budget(
    admin_client: Client, ping_script: FakeOpenAI
) -> None:
    ping_script.script(CHECK_PROMPT, Script(hidden_reasoning=CHECK_MAX_TOKENS + 1))
    assistant = Assistant.objects.create(
        name="Thinker", slug="thinker", connection="upstream", model="gpt-5"
    )
    with override_settings(CHATSTREAM=upstream(ping_script.base_url)):
        response = admin_client.post(
            f"/admin/chatstream/assistant/{assistant.pk}/check-connection/", follow=True
        )
    assert shown(response) == [
        "Thinker: model gpt-5 on connection 'upstream' did not answer: no_answer: "
        f"The model spent the check's whole budget of {CHECK_MAX_TOKENS} tokens without answering."
    ]


@pytest.mark.django_db
def test_check_connection_button_reports_an_upstream_refusal_without_secrets(
    admin_client: Client, ping_script: FakeOpenAI
) -> None:
    ping_script.script(CHECK_PROMPT, Script(status=401))
    assistant = Assistant.objects.create(
        name="Real", slug="real", connection="upstream", model="gpt-x"
    )
    with override_settings(CHATSTREAM=upstream(ping_script.base_url)):
        response = admin_client.post(
            f"/admin/chatstream/assistant/{assistant.pk}/check-connection/", follow=True
        )
    assert response.redirect_chain[-1][0] == f"/admin/chatstream/assistant/{assistant.pk}/change/"
    assert shown(response) == [
        "Real: model gpt-x on connection 'upstream' did not answer: "
        "upstream_auth: The model's server refused the credentials."
    ]
    page = response.content.decode()
    assert "sk-" not in page and "Traceback" not in page


@pytest.mark.django_db
def test_check_connection_reports_an_unreachable_server(
    admin_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    assistant = Assistant.objects.create(name="Real", slug="real", connection="upstream")
    with override_settings(CHATSTREAM=upstream("http://127.0.0.1:9/v1")):
        response = admin_client.post(
            f"/admin/chatstream/assistant/{assistant.pk}/check-connection/", follow=True
        )
    assert shown(response) == [
        "Real: model fake-model on connection 'upstream' did not answer: "
        "upstream_unreachable: The model's server could not be reached."
    ]
    assert "sk-test-secret" not in caplog.text


@pytest.mark.django_db
def test_check_connection_of_the_demo_model_and_of_a_missing_connection(
    admin_client: Client,
) -> None:
    demo = Assistant.objects.create(name="Demo", slug="demo")
    gone = Assistant.objects.create(name="Gone", slug="gone", connection="removed")
    response = admin_client.post(
        "/admin/chatstream/assistant/",
        {"action": "check_connection", "_selected_action": [demo.pk, gone.pk]},
        follow=True,
    )
    texts = sorted(shown(response))
    assert texts[0].startswith("Demo: model chatstream-demo on connection 'default' answered in ")
    assert texts[0].endswith(" ms (the offline demo model).")
    assert texts[1] == (
        "Gone: model (none) on connection 'removed' did not answer: "
        "assistant_misconfigured: The assistant's connection 'removed' is not configured."
    )


@pytest.mark.django_db
def test_check_connection_names_a_client_that_cannot_be_built(
    admin_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    azure = {
        "BACKEND": "chatstream.providers.openai.AzureOpenAIProvider",
        "OPTIONS": {"api_key": "sk-test-secret"},  # no endpoint, no API version
        "MODEL": "deployment",
    }
    chatstream = {
        **TEST_CHATSTREAM,
        "CONNECTIONS": {**TEST_CHATSTREAM["CONNECTIONS"], "azure": azure},
    }
    assistant = Assistant.objects.create(name="Azure", slug="azure", connection="azure")
    with override_settings(CHATSTREAM=chatstream):
        response = admin_client.post(
            f"/admin/chatstream/assistant/{assistant.pk}/check-connection/", follow=True
        )
    [text] = shown(response)
    assert text.startswith("Azure: model deployment on connection 'azure' did not answer: ")
    assert "check_failed: The check failed with " in text
    assert text.endswith(": check the connection's BACKEND and OPTIONS.")
    assert "sk-test-secret" not in response.content.decode() + caplog.text


@pytest.mark.django_db
def test_check_connection_button_is_post_only(admin_client: Client) -> None:
    assistant = Assistant.objects.create(name="Demo", slug="demo")
    response = admin_client.get(f"/admin/chatstream/assistant/{assistant.pk}/check-connection/")
    assert response.status_code == 405


# --- replies streaming now -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_live_view_lists_a_streaming_reply_and_stops_it(admin_user: User) -> None:
    client = AsyncClient()
    await client.aforce_login(admin_user)
    with override_settings(CHATSTREAM=SLOW_DEMO):
        response = await client.post(
            "/api/conversations/", json.dumps({}), content_type="application/json"
        )
        conversation = response.json()["id"]
        response = await client.post(
            f"/api/conversations/{conversation}/messages/",
            json.dumps({"content": "tell me a long story"}),
            content_type="application/json",
        )
        assert response.status_code == 201, response.content
        reply_id = response.json()["assistant_message"]["id"]
        try:
            page = await client.get("/admin/chatstream/message/live/")
            assert page.status_code == 200
            [row] = page.context["replies"]
            assert str(row.message.pk) == reply_id
            assert row.owner == "admin <admin@example.com>"
            assert row.message.model == "chatstream-demo"
            assert row.from_log and row.worker == WORKER
            html = page.content.decode()
            assert reply_id in html and WORKER in html
            assert f"/admin/chatstream/message/live/{reply_id}/stop/" in html

            stopped = await client.post(f"/admin/chatstream/message/live/{reply_id}/stop/")
            assert stopped.status_code == 302
            assert stopped["Location"] == "/admin/chatstream/message/live/"
        finally:
            await registry.wait(reply_id, timeout=15)
    reply = await Message.objects.aget(pk=reply_id)
    assert reply.status == Status.STOPPED
    assert 0 < len(reply.content) < 200
    after = await client.get("/admin/chatstream/message/live/")
    assert after.context["replies"] == []


@pytest.mark.django_db(transaction=True)
async def test_stop_needs_csrf_and_the_change_permission(admin_user: User) -> None:
    conversation = await Conversation.objects.acreate(title="t")
    reply = await Message.objects.acreate(
        conversation=conversation,
        role=Role.ASSISTANT,
        status=Status.STREAMING,
        created_at=timezone.now(),
    )
    writer = await get_reply_log().open(str(reply.pk))
    url = f"/admin/chatstream/message/live/{reply.pk}/stop/"
    strict = AsyncClient(enforce_csrf_checks=True)
    await strict.aforce_login(admin_user)
    assert (await strict.post(url)).status_code == 403

    viewer = await sync_to_async(User.objects.create_user)("viewer", is_staff=True)
    view = await Permission.objects.aget(codename="view_message")
    await sync_to_async(viewer.user_permissions.add)(view)
    client = AsyncClient()
    await client.aforce_login(viewer)
    page = await client.get("/admin/chatstream/message/live/")
    assert page.status_code == 200 and url not in page.content.decode()
    assert (await client.post(url)).status_code == 403
    assert (await Message.objects.aget(pk=reply.pk)).status == Status.STREAMING
    await writer.close({})


@pytest.mark.django_db
def test_an_orphaned_reply_shows_its_checkpoint_and_is_finalised_interrupted(
    admin_client: Client,
) -> None:
    conversation = Conversation.objects.create(title="t", anonymous_owner="a" * 32)
    reply = make_reply(
        conversation, status=Status.STREAMING, content="Half a sent", finished_at=None
    )
    page = admin_client.get("/admin/chatstream/message/live/")
    [row] = page.context["replies"]
    assert (row.length, row.from_log, row.worker) == (11, False, None)
    assert row.owner == "anonymous aaaaaaaa"
    assert "none (orphaned)" in page.content.decode()

    response = admin_client.post(f"/admin/chatstream/message/live/{reply.pk}/stop/", follow=True)
    assert shown(response) == [
        f"Reply {reply.pk} had no live generation: it was finalised as interrupted."
    ]
    reply.refresh_from_db()
    assert (reply.status, reply.content) == (Status.INTERRUPTED, "Half a sent")
    response = admin_client.post(f"/admin/chatstream/message/live/{reply.pk}/stop/", follow=True)
    assert shown(response) == [f"Reply {reply.pk} had already finished (interrupted)."]


@pytest.mark.django_db
def test_deleting_a_conversation_stops_its_streaming_reply(admin_client: Client) -> None:
    conversation = Conversation.objects.create(title="t")
    reply = make_reply(conversation, status=Status.STREAMING, finished_at=None)
    log = get_reply_log()
    writer = async_to_sync(log.open)(str(reply.pk))
    response = admin_client.post(
        f"/admin/chatstream/conversation/{conversation.pk}/delete/", {"post": "yes"}, follow=True
    )
    assert "Stop requested for 1 streaming reply." in shown(response)
    assert not Conversation.objects.exists()
    # The generation's stop signal is set; it would now close the upstream and end.
    assert writer.stop_signal().done()
    async_to_sync(writer.close)({})


# --- usage -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_usage_shows_reasoning_and_cached_tokens(admin_client: Client) -> None:
    conversation = Conversation.objects.create(title="t")
    make_reply(conversation, prompt_tokens=100, completion_tokens=50, cached_tokens=64,
               reasoning_tokens=30, reasoning="I think.")  # fmt: skip
    make_reply(conversation, prompt_tokens=10, completion_tokens=5)  # an upstream that says not
    response = admin_client.get("/admin/chatstream/message/usage/")
    [total] = response.context["totals"]
    assert (total["cached_tokens"], total["reasoning_tokens"]) == (64, 30)
    page = response.content.decode()
    assert ">Cached</th>" in page and ">Reasoning</th>" in page
    assert "<td>64</td>" in page and "<td>30</td>" in page


@pytest.mark.django_db
def test_usage_totals_by_assistant_owner_and_day(admin_client: Client) -> None:
    alice = User.objects.create_user("alice")
    helper = Assistant.objects.create(name="Helper", slug="helper")
    coder = Assistant.objects.create(name="Coder", slug="coder")
    mine = Conversation.objects.create(owner=alice, title="a")
    anonymous = Conversation.objects.create(anonymous_owner="b" * 32, title="b")
    now = timezone.now()
    yesterday = now - timedelta(days=1)
    make_reply(mine, assistant=helper, prompt_tokens=10, completion_tokens=5, created_at=now)
    make_reply(
        mine,
        assistant=coder,
        prompt_tokens=20,
        completion_tokens=7,
        usage_estimated=True,
        status=Status.STOPPED,
        created_at=yesterday,
    )
    make_reply(anonymous, assistant=helper, prompt_tokens=1, completion_tokens=2, created_at=now)
    # Outside the default range, a user's message, a reply still streaming: none counts.
    make_reply(anonymous, status=Status.STREAMING, prompt_tokens=500, created_at=now)
    make_reply(mine, assistant=helper, prompt_tokens=999, created_at=now - timedelta(days=40))
    Message.objects.create(
        conversation=mine, role=Role.USER, content="q", prompt_tokens=50, created_at=now
    )

    def table(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (r["label"], r["replies"], r["prompt_tokens"], r["completion_tokens"], r["estimated"])
            for r in rows
        ]

    response = admin_client.get("/admin/chatstream/message/usage/")
    context = response.context
    assert table(context["totals"]) == [("All", 3, 31, 14, 1)]
    assert table(context["by_assistant"]) == [("Coder", 1, 20, 7, 1), ("Helper", 2, 11, 7, 0)]
    assert table(context["by_owner"]) == [
        ("alice", 2, 30, 12, 1),
        ("anonymous bbbbbbbb", 1, 1, 2, 0),
    ]
    today, before = timezone.localdate(now), timezone.localdate(yesterday)
    assert table(context["by_day"]) == [(today, 2, 11, 7, 0), (before, 1, 20, 7, 1)]
    assert context["totals"][0]["total_tokens"] == 45
    assert ">Coder<" in response.content.decode()

    start = (now - timedelta(days=45)).date().isoformat()
    wide = admin_client.get(f"/admin/chatstream/message/usage/?start={start}")
    assert table(wide.context["totals"]) == [("All", 4, 1030, 14, 1)]
    narrow = admin_client.get(f"/admin/chatstream/message/usage/?start={today}&end={today}")
    assert table(narrow.context["totals"]) == [("All", 2, 11, 7, 0)]


@pytest.mark.django_db
def test_usage_rejects_a_backwards_range(admin_client: Client) -> None:
    response = admin_client.get("/admin/chatstream/message/usage/?start=2025-02-01&end=2025-01-01")
    assert response.status_code == 200
    assert "The start date is after the end date." in response.content.decode()
