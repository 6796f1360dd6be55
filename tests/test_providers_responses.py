"""The Responses API providers against the fake server: real SDK, real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured

from chatstream.exceptions import UpstreamError
from chatstream.providers.base import ChatRequest, Chunk, Usage
from chatstream.providers.openai import AzureOpenAIResponsesProvider, OpenAIResponsesProvider
from chatstream.providers.responses import StreamFailure, parse_event
from tests.fake_openai import FakeOpenAI, Script


def trigger(fake: FakeOpenAI, script: Script) -> str:
    return fake.script(f"p-{uuid.uuid4().hex}", script)


def request_for(prompt: str, model: str = "o3-mini", **fields: object) -> ChatRequest:
    messages = [{"role": "user", "content": prompt}]
    return ChatRequest(model=model, messages=messages, **fields)  # type: ignore[arg-type]


async def collect(provider: OpenAIResponsesProvider, request: ChatRequest) -> list[Chunk]:
    try:
        return [chunk async for chunk in provider.stream(request)]
    finally:
        await provider.aclose()


def parts(chunks: list[Chunk]) -> list[tuple[str, str]]:
    found = []
    for chunk in chunks:
        if chunk.reasoning:
            found.append(("reasoning", chunk.reasoning))
        if chunk.text:
            found.append(("text", chunk.text))
    return found


def finishes(chunks: list[Chunk]) -> list[str]:
    return [c.finish_reason for c in chunks if c.finish_reason]


def responses_provider(fake: FakeOpenAI, **options: object) -> OpenAIResponsesProvider:
    return OpenAIResponsesProvider(
        options={
            "api_key": "sk-test-secret",
            "base_url": fake.base_url,
            "max_retries": 0,
            **options,
        }
    )


@pytest.fixture
def provider(fake_openai: FakeOpenAI) -> OpenAIResponsesProvider:
    return responses_provider(fake_openai)


async def test_reasoning_summary_text_and_usage(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    script = Script(
        reasoning=["Think", "ing"], hidden_reasoning=3, cached_tokens=2, tokens=["Hi", "!"]
    )
    prompt = trigger(fake_openai, script)
    chunks = await collect(provider, request_for(prompt))
    assert parts(chunks) == [
        ("reasoning", "Think"),
        ("reasoning", "ing"),
        ("text", "Hi"),
        ("text", "!"),
    ]
    assert finishes(chunks) == ["stop"]
    assert [c.usage for c in chunks if c.usage] == [
        Usage(9, 7, reasoning_tokens=5, cached_tokens=2)
    ]
    sent = fake_openai.wait_request(prompt)
    assert sent.method == "POST" and sent.path == "/v1/responses"
    assert sent.headers["authorization"] == "Bearer sk-test-secret"
    assert sent.body == {
        "model": "o3-mini",
        "input": [{"role": "user", "content": prompt}],
        "stream": True,
        "store": False,
        "reasoning": {"summary": "auto"},
    }
    assert sent.completed and not sent.closed_early


async def test_the_body_goes_out_as_built(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["ok"]))
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": 'Grüße 👋 "quoted"\nnext line'},
        {"role": "assistant", "content": "Hallo!"},
        {"role": "user", "content": prompt},
    ]
    request = ChatRequest(model="gpt-4.1", messages=history, temperature=0.3, max_tokens=64)
    assert parts(await collect(provider, request)) == [("text", "ok")]
    assert fake_openai.wait_request(prompt).body == {
        "model": "gpt-4.1",
        "input": history,
        "stream": True,
        "store": False,
        "max_output_tokens": 64,
        "temperature": 0.3,
    }


async def test_a_tiny_output_limit_is_raised_to_the_apis_minimum(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["ok"]))
    await collect(provider, request_for(prompt, "gpt-4.1", max_tokens=1))
    assert fake_openai.wait_request(prompt).body["max_output_tokens"] == 16


async def test_a_reasoning_model_gets_no_temperature(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["ok"]))
    assert parts(await collect(provider, request_for(prompt, "gpt-5", temperature=0.2))) == [
        ("text", "ok")
    ]
    assert "temperature" not in fake_openai.wait_request(prompt).body


@pytest.mark.parametrize(
    ("options", "model", "sent"),
    [
        ({"store": True}, "o3-mini", {"store": True, "reasoning": {"summary": "auto"}}),
        (
            {"reasoning": {"effort": "low", "summary": "detailed"}},
            "o4-mini",
            {"store": False, "reasoning": {"effort": "low", "summary": "detailed"}},
        ),
        (
            {"reasoning": {"effort": "high"}},
            "prod-deployment",
            {"store": False, "reasoning": {"summary": "auto", "effort": "high"}},
        ),
        ({"reasoning": None}, "o3", {"store": False, "reasoning": None}),
    ],
)
async def test_store_and_reasoning_options(
    fake_openai: FakeOpenAI, options: dict[str, object], model: str, sent: dict[str, object]
) -> None:
    provider = responses_provider(fake_openai, **options)
    prompt = trigger(fake_openai, Script(tokens=["ok"], reasoning_model=True))
    await collect(provider, request_for(prompt, model))
    body = fake_openai.wait_request(prompt).body
    assert {"store": body["store"], "reasoning": body.get("reasoning")} == sent


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"store": "yes"}, "Connection OPTIONS \"store\" must be True or False, not 'yes'."),
        (
            {"reasoning": "high"},
            'Connection OPTIONS "reasoning" must be a dict such as '
            '{"effort": "low", "summary": "auto"}, or None, not \'high\'.',
        ),
    ],
)
def test_wrong_options_are_named(option: dict[str, object], message: str) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        OpenAIResponsesProvider(options={"api_key": "k", **option}).client  # noqa: B018
    assert str(info.value) == message


async def test_reasoning_refused_by_a_plain_model_is_dropped_and_remembered(
    fake_openai: FakeOpenAI,
) -> None:
    provider = responses_provider(fake_openai, reasoning={"effort": "low"})
    first, second = (trigger(fake_openai, Script(tokens=["ok"])) for _ in range(2))
    try:
        for prompt in (first, second):
            chunks = [c async for c in provider.stream(request_for(prompt, "gpt-4.1"))]
            assert parts(chunks) == [("text", "ok")]
    finally:
        await provider.aclose()
    sent = [
        r.body.get("reasoning")
        for r in fake_openai.requests_for(first) + fake_openai.requests_for(second)
    ]
    assert sent == [{"summary": "auto", "effort": "low"}, None, None]


async def test_raw_reasoning_text_events_are_reasoning(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    script = Script(reasoning=["We", " see"], tokens=["Yes"], reasoning_events="text")
    prompt = trigger(fake_openai, script)
    chunks = await collect(provider, request_for(prompt, "gpt-oss-120b"))
    assert parts(chunks) == [("reasoning", "We"), ("reasoning", " see"), ("text", "Yes")]


async def test_interleaved_reasoning_items_keep_their_order(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    script = Script(reasoning=["a", "b"], tokens=["A", "B"], interleave=True)
    prompt = trigger(fake_openai, script)
    assert parts(await collect(provider, request_for(prompt))) == [
        ("reasoning", "a"),
        ("text", "A"),
        ("reasoning", "b"),
        ("text", "B"),
    ]


@pytest.mark.parametrize("split", [False, True])
async def test_non_ascii_split_across_events_and_reads_is_kept_whole(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider, split: bool
) -> None:
    tokens = ["世", "界", "👩\u200d", "👩\u200d👧", " é"]
    prompt = trigger(fake_openai, Script(reasoning=["🤔"], tokens=tokens, split_bytes=split))
    chunks = await collect(provider, request_for(prompt))
    assert "".join(c.text for c in chunks) == "".join(tokens)
    assert "".join(c.reasoning for c in chunks) == "🤔"


@pytest.mark.parametrize(
    ("reason", "finish"), [("length", "length"), ("content_filter", "content_filter")]
)
async def test_an_incomplete_response_says_why(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider, reason: str, finish: str
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["a"], finish_reason=reason))
    chunks = await collect(provider, request_for(prompt))
    assert finishes(chunks) == [finish]
    assert [c.usage for c in chunks if c.usage] == [
        Usage(9, 1, reasoning_tokens=0, cached_tokens=0)
    ]


async def test_thinking_that_uses_the_whole_budget_is_length(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    prompt = trigger(fake_openai, Script(hidden_reasoning=100, tokens=["late"]))
    chunks = await collect(provider, request_for(prompt, max_tokens=64))
    assert parts(chunks) == [] and finishes(chunks) == ["length"]


@pytest.mark.parametrize("event", ["response.failed", "error"])
async def test_a_failed_response_is_an_upstream_error_without_secrets(
    fake_openai: FakeOpenAI,
    provider: OpenAIResponsesProvider,
    event: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["a", "b"], error_after=1, error_event=event))
    seen = []
    with (
        caplog.at_level(logging.WARNING, "chatstream.providers.openai"),
        pytest.raises(UpstreamError) as info,
    ):
        async for chunk in provider.stream(request_for(prompt)):
            seen.append(chunk.text)
    await provider.aclose()
    assert seen == ["a"]
    assert (info.value.code, info.value.message) == (
        "upstream_error",
        "The model's server reported an error mid-reply.",
    )
    assert (
        "The model's server reported an error mid-reply (code server_error): "
        "The server had an error (key [redacted])" in caplog.text
    )
    assert "sk-" not in caplog.text


@pytest.mark.parametrize(
    ("error_code", "code"),
    [
        ("rate_limit_exceeded", "upstream_rate_limited"),
        ("context_length_exceeded", "context_too_long"),
    ],
)
async def test_failure_codes_map_to_safe_codes(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider, error_code: str, code: str
) -> None:
    prompt = trigger(fake_openai, Script(error_after=0, error_code=error_code))
    with pytest.raises(UpstreamError) as info:
        await collect(provider, request_for(prompt))
    assert info.value.code == code


async def test_an_input_over_the_context_window_is_context_too_long(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    prompt = trigger(fake_openai, Script(context_window=3))
    history = [
        {"role": "system", "content": "Answer every question at great length."},
        {"role": "user", "content": prompt},
    ]
    with pytest.raises(UpstreamError) as info:
        await collect(provider, ChatRequest(model="gpt-5", messages=history))
    assert info.value.code == "context_too_long"
    assert info.value.message == (
        "The conversation is too long for the model: start a new conversation, "
        "or shorten your message."
    )


@pytest.mark.parametrize(
    ("status", "code"), [(401, "upstream_auth"), (429, "upstream_rate_limited")]
)
async def test_http_errors_map_to_safe_codes(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider, status: int, code: str
) -> None:
    prompt = trigger(fake_openai, Script(status=status))
    with pytest.raises(UpstreamError) as info:
        await collect(provider, request_for(prompt))
    assert info.value.code == code and "sk-" not in info.value.message


async def test_cut_connection_is_upstream_incomplete(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["a"], cut=True))
    with pytest.raises(UpstreamError) as info:
        await collect(provider, request_for(prompt))
    assert info.value.code == "upstream_incomplete"


async def test_an_end_without_a_final_event_yields_no_finish_reason(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["a"], finish_reason=None))
    chunks = await collect(provider, request_for(prompt))
    assert parts(chunks) == [("text", "a")] and finishes(chunks) == []


async def test_unreachable_server() -> None:
    unreachable = OpenAIResponsesProvider(
        options={"api_key": "k", "base_url": "http://127.0.0.1:9/v1", "max_retries": 0}
    )
    with pytest.raises(UpstreamError) as info:
        await collect(unreachable, request_for("hi"))
    assert info.value.code == "upstream_unreachable"


async def test_closing_the_stream_early_closes_the_upstream_request(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    script = Script(reasoning=["hmm"] * 5, tokens=["x"] * 1000, interval=0.01)
    prompt = trigger(fake_openai, script)
    stream = provider.stream(request_for(prompt))
    assert (await anext(stream)).reasoning == "hmm"
    await stream.aclose()
    await provider.aclose()
    upstream = fake_openai.wait_request(prompt)
    assert upstream.ended_event.wait(10)
    assert upstream.closed_early and not upstream.completed


async def test_cancelling_the_reader_closes_the_upstream_request(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    prompt = trigger(fake_openai, Script(tokens=["x"] * 1000, interval=0.01))
    first = asyncio.Event()

    async def read() -> None:
        async for _ in provider.stream(request_for(prompt)):
            first.set()

    task = asyncio.create_task(read())
    try:
        await asyncio.wait_for(first.wait(), 10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await provider.aclose()
    upstream = fake_openai.wait_request(prompt)
    assert upstream.ended_event.wait(10)
    assert upstream.closed_early and not upstream.completed


async def test_replies_reuse_one_upstream_connection(
    fake_openai: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    """The body is read to its end after the final event: the connection goes back to the pool."""
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


async def test_azure_responses_path_key_header_and_api_version(fake_openai: FakeOpenAI) -> None:
    azure = AzureOpenAIResponsesProvider(
        options={
            "azure_endpoint": fake_openai.azure_endpoint,
            "api_key": "azure-secret",
            "api_version": "2025-04-01-preview",
        }
    )
    prompt = trigger(fake_openai, Script(reasoning=["r"], tokens=["Az", "ure"]))
    chunks = await collect(azure, request_for(prompt, "my-o4-mini", max_tokens=100))
    assert parts(chunks) == [("text", "Az"), ("text", "ure")]  # no summary asked for: no name
    assert finishes(chunks) == ["stop"]
    sent = fake_openai.wait_request(prompt)
    assert sent.path == "/openai/responses?api-version=2025-04-01-preview"
    assert sent.headers["api-key"] == "azure-secret"
    assert sent.body["model"] == "my-o4-mini" and sent.body["max_output_tokens"] == 100


async def test_azure_v1_responses_through_the_openai_client(fake_openai: FakeOpenAI) -> None:
    """Azure's v1 API takes the plain client with base_url .../openai/v1/."""
    v1 = OpenAIResponsesProvider(
        options={"base_url": f"{fake_openai.azure_endpoint}/openai/v1/", "api_key": "azure-secret"}
    )
    prompt = trigger(fake_openai, Script(reasoning=["r"], tokens=["ok"]))
    chunks = await collect(v1, request_for(prompt, "gpt-5-mini"))
    assert parts(chunks) == [("reasoning", "r"), ("text", "ok")]
    sent = fake_openai.wait_request(prompt)
    assert sent.path == "/openai/v1/responses"
    assert sent.headers["authorization"] == "Bearer azure-secret"


@pytest.mark.parametrize(
    ("event", "parsed"),
    [
        (
            {"type": "response.output_text.delta", "delta": "Hi", "sequence_number": 5},
            Chunk(text="Hi"),
        ),
        (
            {"type": "response.refusal.delta", "delta": "No.", "sequence_number": 5},
            Chunk(text="No."),
        ),
        (
            {"type": "response.reasoning_summary_text.delta", "delta": "So", "sequence_number": 3},
            Chunk(reasoning="So"),
        ),
        (
            {
                "type": "response.reasoning_summary_part.added",
                "summary_index": 1,
                "sequence_number": 9,
            },
            Chunk(reasoning="\n\n"),
        ),
        (
            {
                "type": "response.reasoning_summary_part.added",
                "summary_index": 0,
                "sequence_number": 2,
            },
            None,
        ),
        ({"type": "response.output_text.done", "text": "Hi", "sequence_number": 6}, None),
        ({"type": "response.created", "response": {}, "sequence_number": 0}, None),
        (
            {
                "type": "response.incomplete",
                "response": {"incomplete_details": {"reason": "max_output_tokens"}, "usage": None},
                "sequence_number": 8,
            },
            Chunk(finish_reason="length"),
        ),
        (
            {
                "type": "response.failed",
                "response": {"error": {"code": "server_error", "message": "boom"}},
                "sequence_number": 8,
            },
            StreamFailure("server_error", "boom"),
        ),
        (
            {"type": "error", "code": None, "message": "bad", "param": None, "sequence_number": 1},
            StreamFailure(None, "bad"),
        ),
    ],
)
def test_parse_event(event: dict[str, object], parsed: object) -> None:
    assert parse_event(event) == parsed
