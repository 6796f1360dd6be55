"""The openai-SDK provider against the fake server: real SDK, real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import uuid

import openai
import pytest
from django.core.exceptions import ImproperlyConfigured

from chatstream.exceptions import UpstreamError
from chatstream.providers.base import ChatRequest, Chunk, Usage
from chatstream.providers.openai import (
    READ_BUFFER,
    AzureOpenAIProvider,
    OpenAIProvider,
    is_reasoning_model,
)
from tests.fake_openai import FakeOpenAI, Script


def trigger(fake: FakeOpenAI, script: Script) -> str:
    return fake.script(f"p-{uuid.uuid4().hex}", script)


def request_for(prompt: str, model: str = "fake-model", **fields: object) -> ChatRequest:
    messages = [{"role": "user", "content": prompt}]
    return ChatRequest(model=model, messages=messages, **fields)  # type: ignore[arg-type]


async def collect(provider: OpenAIProvider, prompt: str, **fields: object) -> list[Chunk]:
    try:
        return [chunk async for chunk in provider.stream(request_for(prompt, **fields))]
    finally:
        await provider.aclose()


async def reply(provider: OpenAIProvider, request: ChatRequest) -> list[Chunk]:
    """One reply, keeping the provider (and what it learned) open."""
    return [chunk async for chunk in provider.stream(request)]


def parts(chunks: list[Chunk]) -> list[tuple[str, str]]:
    """The reply's pieces in order, as ("reasoning" | "text", piece)."""
    found = []
    for chunk in chunks:
        if chunk.reasoning:
            found.append(("reasoning", chunk.reasoning))
        if chunk.text:
            found.append(("text", chunk.text))
    return found


@pytest.fixture
def provider(fake_openai: FakeOpenAI) -> OpenAIProvider:
    return OpenAIProvider(
        options={"api_key": "sk-test-secret", "base_url": fake_openai.base_url, "max_retries": 0}
    )


async def test_text_finish_and_usage(fake_openai: FakeOpenAI, provider: OpenAIProvider) -> None:
    prompt = trigger(fake_openai, Script(tokens=["Hi", " there"]))
    chunks = await collect(provider, prompt)
    assert "".join(c.text for c in chunks) == "Hi there"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert [c.usage for c in chunks if c.usage] == [Usage(9, 2)]
    sent = fake_openai.wait_request(prompt)
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.headers["authorization"] == "Bearer sk-test-secret"


async def test_the_body_goes_out_as_built(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    # The messages travel in extra_body, past the SDK's transform: nothing may change.
    prompt = trigger(fake_openai, Script(tokens=["ok"]))
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": 'Grüße 👋 "quoted"\nnext line'},
        {"role": "assistant", "content": "Hallo!"},
        {"role": "user", "content": prompt},
    ]
    request = ChatRequest(model="fake-model", messages=history, temperature=0.3, max_tokens=64)
    try:
        chunks = [chunk async for chunk in provider.stream(request)]
    finally:
        await provider.aclose()
    assert "".join(c.text for c in chunks) == "ok"
    assert fake_openai.wait_request(prompt).body == {
        "model": "fake-model",
        "messages": history,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.3,
        "max_tokens": 64,
    }


@pytest.mark.parametrize("split", [False, True])
async def test_non_ascii_split_across_deltas_and_reads_is_kept_whole(
    fake_openai: FakeOpenAI, provider: OpenAIProvider, split: bool
) -> None:
    tokens = ["世", "界", "👩\u200d", "👩\u200d👧", " é", "🇺", "🇳"]
    prompt = trigger(fake_openai, Script(tokens=tokens, split_bytes=split))
    chunks = await collect(provider, prompt)
    assert "".join(c.text for c in chunks) == "".join(tokens)


@pytest.mark.parametrize("reason", ["length", "content_filter"])
async def test_finish_reasons_pass_through(
    fake_openai: FakeOpenAI, provider: OpenAIProvider, reason: str
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["a"], finish_reason=reason))
    chunks = await collect(provider, prompt)
    assert [c.finish_reason for c in chunks if c.finish_reason] == [reason]


async def test_in_stream_error_is_an_upstream_error_without_secrets(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["a", "b"], error_after=1))
    seen = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(request_for(prompt)):
            seen.append(chunk.text)
    await provider.aclose()
    assert seen == ["a"]
    assert info.value.code == "upstream_error"
    assert "sk-" not in info.value.message


async def test_cut_connection_is_upstream_incomplete(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["a", "b"], cut=True))
    with pytest.raises(UpstreamError) as info:
        await collect(provider, prompt)
    assert info.value.code == "upstream_incomplete"


async def test_clean_end_without_finish_yields_no_finish_reason(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["a"], finish_reason=None, done=False))
    chunks = await collect(provider, prompt)
    assert [c.finish_reason for c in chunks if c.finish_reason] == []


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "upstream_auth"),
        (404, "upstream_not_found"),
        (429, "upstream_rate_limited"),
        (500, "upstream_unavailable"),
    ],
)
async def test_http_errors_map_to_safe_codes(
    fake_openai: FakeOpenAI, provider: OpenAIProvider, status: int, code: str
) -> None:
    prompt = trigger(fake_openai, Script(status=status))
    with pytest.raises(UpstreamError) as info:
        await collect(provider, prompt)
    assert info.value.code == code
    assert "sk-" not in info.value.message


@pytest.mark.parametrize("transport", ["aiohttp", "httpx2"])
async def test_unreachable_server(transport: str) -> None:
    unreachable = OpenAIProvider(
        options={
            "api_key": "k",
            "base_url": "http://127.0.0.1:9/v1",
            "max_retries": 0,
            "transport": transport,
        }
    )
    with pytest.raises(UpstreamError) as info:
        await collect(unreachable, "hi")
    assert info.value.code == "upstream_unreachable"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx2"])
async def test_silent_server_times_out(fake_openai: FakeOpenAI, transport: str) -> None:
    slow = OpenAIProvider(
        options={
            "api_key": "k",
            "base_url": fake_openai.base_url,
            "max_retries": 0,
            "timeout": 0.3,
            "transport": transport,
        }
    )
    prompt = trigger(fake_openai, Script(tokens=["late"], first_delay=5))
    with pytest.raises(UpstreamError) as info:
        await collect(slow, prompt)
    assert info.value.code == "upstream_timeout"


def test_transport_is_aiohttp_unless_asked_otherwise(fake_openai: FakeOpenAI) -> None:
    options = {"api_key": "k", "base_url": fake_openai.base_url}
    assert isinstance(OpenAIProvider(options=options).client._client, openai.DefaultAioHttpClient)
    httpx_only = OpenAIProvider(options={**options, "transport": "httpx2"})
    assert not isinstance(httpx_only.client._client, openai.DefaultAioHttpClient)
    with pytest.raises(ImproperlyConfigured, match="transport"):
        OpenAIProvider(options={**options, "transport": "curl"}).client  # noqa: B018


async def test_a_reply_read_slower_than_it_comes_waits_in_the_socket_not_in_memory(
    fake_openai: FakeOpenAI,
) -> None:
    """At most twice the read buffer, plus one read of the event loop's (256 KiB), is held."""
    provider = OpenAIProvider(options={"api_key": "k", "base_url": fake_openai.base_url})
    session = provider.client._client._transport.get_client()
    prompt = trigger(fake_openai, Script(tokens=["x" * 200] * 10_000))  # about 3 MB of events
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    try:
        async with session.post(f"{fake_openai.base_url}/chat/completions", json=body) as response:
            first = await response.content.read(READ_BUFFER)
            held = -1
            for _ in range(100):  # until the buffer stops growing: reading has paused
                await asyncio.sleep(0.05)
                if response.content.total_bytes - len(first) == held:
                    break
                held = response.content.total_bytes - len(first)
    finally:
        await session.close()
        await provider.aclose()
    assert 0 < held <= 2 * READ_BUFFER + 256 * 1024


async def test_server_that_refuses_stream_options_is_asked_again_without(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["ok"], reject_stream_options=True))
    chunks = await collect(provider, prompt)
    assert "".join(c.text for c in chunks) == "ok"
    assert [r.body.get("stream_options") for r in fake_openai.requests_for(prompt)] == [
        {"include_usage": True},
        None,
    ]


async def test_base_url_alone_needs_no_key(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    local = OpenAIProvider(options={"base_url": fake_openai.base_url})
    prompt = trigger(fake_openai, Script(tokens=["local"]))
    assert "".join(c.text for c in await collect(local, prompt)) == "local"


async def test_closing_the_stream_early_closes_the_upstream_request(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["x"] * 1000, interval=0.01))
    stream = provider.stream(request_for(prompt))
    assert (await anext(stream)).text == "x"
    await stream.aclose()
    await provider.aclose()
    upstream = fake_openai.wait_request(prompt)
    assert upstream.ended_event.wait(10)
    assert upstream.closed_early and not upstream.completed


async def test_replies_reuse_one_upstream_connection(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """The body is read to its end after [DONE], so the connection goes back to the pool."""
    prompts = [trigger(fake_openai, Script(tokens=[f"r{i}"], keep_alive=True)) for i in range(3)]
    before = fake_openai.connections
    try:
        texts = []
        for prompt in prompts:
            texts.append("".join([c.text async for c in provider.stream(request_for(prompt))]))
    finally:
        await provider.aclose()
    assert texts == ["r0", "r1", "r2"]
    assert fake_openai.connections - before == 1


async def test_a_body_held_open_after_done_does_not_hold_the_reply(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["held"], hold_after_done=60))
    chunks = await asyncio.wait_for(collect(provider, prompt), 30)
    assert "".join(c.text for c in chunks) == "held"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]


async def test_azure_deployment_path_key_header_and_chunk_shapes(fake_openai: FakeOpenAI) -> None:
    azure = AzureOpenAIProvider(
        options={
            "azure_endpoint": fake_openai.azure_endpoint,
            "api_key": "azure-secret",
            "api_version": "2024-10-21",
        }
    )
    prompt = trigger(fake_openai, Script(tokens=["Az", "ure"], azure=True))
    chunks = await collect(azure, prompt)
    assert "".join(c.text for c in chunks) == "Azure"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    sent = fake_openai.wait_request(prompt)
    assert sent.path.startswith("/openai/deployments/fake-model/chat/completions")
    assert "api-version=2024-10-21" in sent.path
    assert sent.headers["api-key"] == "azure-secret"


# --- parameters per model family ----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "thinks"),
    [
        ("o1", True),
        ("o3-mini", True),
        ("o4-mini", True),
        ("gpt-5", True),
        ("gpt-5.1-chat-latest", True),
        ("openai/o3", True),
        ("gpt-4o", False),
        ("gpt-4.1-mini", False),
        ("deepseek-reasoner", False),
        ("qwen3:8b", False),
        ("gpt-oss:20b", False),
        ("omni-moderation", False),
    ],
)
def test_reasoning_models_are_known_by_name(model: str, thinks: bool) -> None:
    assert is_reasoning_model(model) is thinks


@pytest.mark.parametrize(
    ("provider_class", "options", "param"),
    [
        (OpenAIProvider, {}, "max_completion_tokens"),
        (OpenAIProvider, {"base_url": "https://api.openai.com/v1"}, "max_completion_tokens"),
        (
            OpenAIProvider,
            {"base_url": "https://res.openai.azure.com/openai/v1/"},
            "max_completion_tokens",
        ),
        (
            AzureOpenAIProvider,
            {"azure_endpoint": "https://res.openai.azure.com", "api_version": "2024-10-21"},
            "max_completion_tokens",
        ),
        (OpenAIProvider, {"base_url": "http://localhost:11434/v1"}, "max_tokens"),
        (OpenAIProvider, {"base_url": "https://api.deepseek.com"}, "max_tokens"),
        (
            OpenAIProvider,
            {"base_url": "http://localhost:8000/v1", "max_tokens_param": "max_completion_tokens"},
            "max_completion_tokens",
        ),
        (OpenAIProvider, {"max_tokens_param": "max_tokens"}, "max_tokens"),
    ],
)
def test_the_output_limit_is_named_by_the_server_it_goes_to(
    monkeypatch: pytest.MonkeyPatch,
    provider_class: type[OpenAIProvider],
    options: dict[str, str],
    param: str,
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    provider = provider_class(options={"api_key": "k", **options})
    assert provider.token_param("gpt-4o") == param


def test_a_wrong_max_tokens_param_is_named() -> None:
    provider = OpenAIProvider(options={"api_key": "k", "max_tokens_param": "limit"})
    with pytest.raises(ImproperlyConfigured) as info:
        provider.client  # noqa: B018
    assert str(info.value) == (
        'Connection OPTIONS "max_tokens_param" must be "max_completion_tokens" '
        "or \"max_tokens\", not 'limit'."
    )


async def test_max_tokens_param_option_names_the_limit_sent(fake_openai: FakeOpenAI) -> None:
    provider = OpenAIProvider(
        options={
            "api_key": "k",
            "base_url": fake_openai.base_url,
            "max_tokens_param": "max_completion_tokens",
        }
    )
    prompt = trigger(fake_openai, Script(tokens=["ok"]))
    await collect(provider, prompt, max_tokens=64)
    body = fake_openai.wait_request(prompt).body
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body


async def test_a_reasoning_model_gets_no_temperature(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["ok"]))
    chunks = await collect(provider, prompt, model="o3-mini", temperature=0.3)
    assert "".join(c.text for c in chunks) == "ok"
    assert "temperature" not in fake_openai.wait_request(prompt).body


async def test_max_tokens_refused_by_a_reasoning_model_is_sent_again_as_max_completion_tokens(
    fake_openai: FakeOpenAI, provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenAI's exact 400 for gpt-5: ask once more by the other name, and remember it."""
    first = trigger(fake_openai, Script(tokens=["one"]))
    second = trigger(fake_openai, Script(tokens=["two"]))
    try:
        assert parts(await reply(provider, request_for(first, "gpt-5", max_tokens=64))) == [
            ("text", "one")
        ]
        assert parts(await reply(provider, request_for(second, "gpt-5", max_tokens=64))) == [
            ("text", "two")
        ]
    finally:
        await provider.aclose()
    limits = [
        {k: v for k, v in r.body.items() if k.startswith("max_")}
        for r in fake_openai.requests_for(first) + fake_openai.requests_for(second)
    ]
    assert limits == [
        {"max_tokens": 64},
        {"max_completion_tokens": 64},
        {"max_completion_tokens": 64},
    ]
    assert "refused 'max_tokens' for model 'gpt-5': asking again without it." in caplog.text


async def test_a_deployment_that_hides_its_family_is_taught_by_its_refusals(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """Named "prod-chat" but an o3 underneath: max_tokens, then temperature, are refused."""
    script = Script(tokens=["ok"], reasoning_model=True)
    first, second = trigger(fake_openai, script), trigger(fake_openai, script)
    try:
        for prompt in (first, second):
            request = request_for(prompt, "prod-chat", temperature=0.3, max_tokens=64)
            assert parts(await reply(provider, request)) == [("text", "ok")]
    finally:
        await provider.aclose()
    sent = [
        {
            k: v
            for k, v in r.body.items()
            if k in ("max_tokens", "max_completion_tokens", "temperature")
        }
        for r in fake_openai.requests_for(first) + fake_openai.requests_for(second)
    ]
    assert sent == [
        {"max_tokens": 64, "temperature": 0.3},
        {"max_completion_tokens": 64, "temperature": 0.3},
        {"max_completion_tokens": 64},
        {"max_completion_tokens": 64},
    ]


async def test_other_models_of_the_connection_keep_their_parameters(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    script = Script(tokens=["ok"], reasoning_model=True)
    taught, other = trigger(fake_openai, script), trigger(fake_openai, Script(tokens=["ok"]))
    try:
        await reply(provider, request_for(taught, "prod-chat", temperature=0.3, max_tokens=8))
        await reply(provider, request_for(other, "fake-model", temperature=0.3, max_tokens=8))
    finally:
        await provider.aclose()
    body = fake_openai.wait_request(other).body
    assert body["temperature"] == 0.3 and body["max_tokens"] == 8


async def test_an_older_server_refusing_max_completion_tokens_gets_max_tokens(
    fake_openai: FakeOpenAI,
) -> None:
    provider = OpenAIProvider(
        options={
            "api_key": "k",
            "base_url": fake_openai.base_url,
            "max_tokens_param": "max_completion_tokens",
        }
    )
    prompt = trigger(fake_openai, Script(tokens=["ok"], refuse=("max_completion_tokens",)))
    chunks = await collect(provider, prompt, max_tokens=32)
    assert "".join(c.text for c in chunks) == "ok"
    assert [
        [k for k in r.body if k.startswith("max_")] for r in fake_openai.requests_for(prompt)
    ] == [["max_completion_tokens"], ["max_tokens"]]


async def test_a_server_refusing_every_name_for_the_limit_is_not_asked_forever(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    script = Script(tokens=["ok"], refuse=("max_tokens", "max_completion_tokens"))
    prompt = trigger(fake_openai, script)
    with pytest.raises(UpstreamError) as info:
        await collect(provider, prompt, max_tokens=32)
    assert info.value.code == "upstream_bad_request"
    assert len(fake_openai.requests_for(prompt)) == 2


# --- reasoning and usage -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_deltas_come_before_the_answer(
    fake_openai: FakeOpenAI, provider: OpenAIProvider, field: str
) -> None:
    script = Script(reasoning=["Let", " me", " think"], tokens=["Hi", "!"], reasoning_field=field)
    prompt = trigger(fake_openai, script)
    chunks = await collect(provider, prompt)
    assert parts(chunks) == [
        ("reasoning", "Let"),
        ("reasoning", " me"),
        ("reasoning", " think"),
        ("text", "Hi"),
        ("text", "!"),
    ]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]


async def test_interleaved_reasoning_keeps_its_order(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    script = Script(reasoning=["a", "b", "c"], tokens=["A", "B"], interleave=True)
    prompt = trigger(fake_openai, script)
    assert parts(await collect(provider, prompt)) == [
        ("reasoning", "a"),
        ("text", "A"),
        ("reasoning", "b"),
        ("text", "B"),
        ("reasoning", "c"),
    ]


async def test_usage_counts_reasoning_and_cached_tokens(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    script = Script(reasoning=["r1", "r2"], hidden_reasoning=5, cached_tokens=4, tokens=["ok"])
    prompt = trigger(fake_openai, script)
    chunks = await collect(provider, prompt)
    assert [c.usage for c in chunks if c.usage] == [
        Usage(9, 8, reasoning_tokens=7, cached_tokens=4)
    ]


async def test_a_plain_model_reports_no_reasoning_tokens(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["ok"]))
    assert [c.usage for c in await collect(provider, prompt) if c.usage] == [Usage(9, 1)]


async def test_thinking_counts_against_the_limit(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    script = Script(hidden_reasoning=50, tokens=["never", " shown"])
    prompt = trigger(fake_openai, script)
    chunks = await collect(provider, prompt, model="o3-mini", max_tokens=40)
    assert parts(chunks) == []
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]


# --- errors ---------------------------------------------------------------------------------

CONTEXT_TOO_LONG = (
    "The conversation is too long for the model: start a new conversation, or shorten your message."
)


async def test_a_conversation_over_the_context_window_is_context_too_long(
    fake_openai: FakeOpenAI, provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = trigger(fake_openai, Script(context_window=5))
    history = [
        {"role": "system", "content": "You are a careful helper who answers at length."},
        {"role": "user", "content": prompt},
    ]
    with (
        caplog.at_level(logging.WARNING, "chatstream.providers.openai"),
        pytest.raises(UpstreamError) as info,
    ):
        await provider.stream(ChatRequest(model="fake-model", messages=history)).__anext__()
    await provider.aclose()
    assert (info.value.code, info.value.message) == ("context_too_long", CONTEXT_TOO_LONG)
    assert (
        "The model's server answered HTTP 400 (code context_length_exceeded): "
        "This model's maximum context length is 5 tokens." in caplog.text
    )
    assert "careful helper" not in caplog.text  # never the prompt


async def test_http_413_is_context_too_long(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    prompt = trigger(fake_openai, Script(status=413))
    with pytest.raises(UpstreamError) as info:
        await collect(provider, prompt)
    assert (info.value.code, info.value.message) == ("context_too_long", CONTEXT_TOO_LONG)


async def test_a_context_error_mid_stream_is_context_too_long(
    fake_openai: FakeOpenAI, provider: OpenAIProvider
) -> None:
    prompt = trigger(fake_openai, Script(error_after=0, error_code="context_length_exceeded"))
    with pytest.raises(UpstreamError) as info:
        await collect(provider, prompt)
    assert info.value.code == "context_too_long"


async def test_upstream_errors_are_logged_with_status_code_and_message_without_keys(
    fake_openai: FakeOpenAI, provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    refused = trigger(fake_openai, Script(status=401))
    failed = trigger(fake_openai, Script(tokens=["a", "b"], error_after=1))
    with caplog.at_level(logging.WARNING, "chatstream.providers.openai"):
        for prompt in (refused, failed):
            with pytest.raises(UpstreamError):
                await reply(provider, request_for(prompt))
    await provider.aclose()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "The model's server answered HTTP 401 (code x): Incorrect API key provided: [redacted]",
        "The model's server reported an error mid-reply (code server_error): "
        "The server had an error (key [redacted])",
    ]
    assert "sk-" not in caplog.text and "sk-test-secret" not in caplog.text
