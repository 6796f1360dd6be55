from __future__ import annotations

from chatstream.providers.base import ChatRequest
from chatstream.providers.demo import DemoProvider, demo_reply, demo_thoughts


async def reply(prompt: str, **request: object) -> tuple[str, list]:
    provider = DemoProvider(options={"first_token_delay": 0, "tokens_per_second": 0})
    chunks = [
        c
        async for c in provider.stream(
            ChatRequest(
                model="chatstream-demo", messages=[{"role": "user", "content": prompt}], **request
            )
        )
    ]
    return "".join(c.text for c in chunks), chunks


async def test_demo_reply_is_deterministic_and_says_it_is_a_demo() -> None:
    first, chunks = await reply("Tell me about SSE")
    second, _ = await reply("Tell me about SSE")
    assert first == second == demo_reply("Tell me about SSE")
    assert "offline demo model" in first
    assert "“Tell me about SSE”" in first
    assert len(chunks) > 50  # streamed in many small pieces, like a model
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage is not None
    assert DemoProvider.is_demo


async def test_demo_honours_max_tokens_with_finish_reason_length() -> None:
    text, chunks = await reply("hi", max_tokens=3)
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 3
    assert text == "This is the"


async def test_demo_thinks_first_when_asked() -> None:
    provider = DemoProvider(
        options={"first_token_delay": 0, "tokens_per_second": 0, "reasoning": 1}
    )
    request = ChatRequest(model="chatstream-demo", messages=[{"role": "user", "content": "hi"}])
    chunks = [c async for c in provider.stream(request)]
    kinds = ["reasoning" if c.reasoning else "text" for c in chunks if c.reasoning or c.text]
    assert kinds == sorted(kinds)  # all of the reasoning, then all of the answer
    assert "".join(c.reasoning for c in chunks) == demo_thoughts("hi")
    assert "".join(c.text for c in chunks) == demo_reply("hi")
    assert chunks[-1].usage.reasoning_tokens == kinds.count("reasoning")
