"""The openai-SDK provider against the fake server: real SDK, real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import uuid

import openai
import pytest
from django.core.exceptions import ImproperlyConfigured

from chatstream.exceptions import UpstreamError
from chatstream.providers.base import ChatRequest, Chunk, Usage
from chatstream.providers.openai import AzureOpenAIProvider, OpenAIProvider
from tests.fake_openai import FakeOpenAI, Script


def trigger(fake: FakeOpenAI, script: Script) -> str:
    return fake.script(f"p-{uuid.uuid4().hex}", script)


def request_for(prompt: str) -> ChatRequest:
    return ChatRequest(model="fake-model", messages=[{"role": "user", "content": prompt}])


async def collect(provider: OpenAIProvider, prompt: str) -> list[Chunk]:
    try:
        return [chunk async for chunk in provider.stream(request_for(prompt))]
    finally:
        await provider.aclose()


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
