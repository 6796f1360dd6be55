"""An offline model: no network, no key, a deterministic reply at a realistic pace.

It lets a fresh machine try the whole product; pages label it as a demo.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from chatstream.providers.base import ChatRequest, Chunk, Provider, Usage

DEMO_MODEL = "chatstream-demo"

_TEMPLATE = """\
This is the **offline demo model**: no language model was called, and no key is needed.

You wrote {quoted}, which is {words} word{plural} long.

Here is what chatstream does with a real model:

1. Your message is stored, then a reply starts in its own task.
2. The reply streams to you *typewriter style* over Server-Sent Events.
3. If the connection drops, the page resumes exactly where it left off.
4. Press **Stop** at any time: the upstream request is closed at once.

| Setting | Effect |
| --- | --- |
| `OPENAI_API_KEY` | use OpenAI |
| `OPENAI_BASE_URL` | use Ollama, vLLM or another compatible server |

```python
print("Set CHATSTREAM_MODEL with a real connection.")
```

Ask me something else to see it again."""

_THOUGHTS = """The person wrote {quoted}. No model runs here, so I will explain what chatstream \
does instead, and show a table, a list and some code, so that they can see how \
replies are rendered."""

_TOKEN = re.compile(r"\s*\S+|\s+")


def _quoted(prompt: str) -> str:
    text = " ".join(prompt.split())
    return f"“{text[:80]}{'…' if len(text) > 80 else ''}”" if text else "nothing"


def demo_reply(prompt: str) -> str:
    words = len(prompt.split())
    return _TEMPLATE.format(quoted=_quoted(prompt), words=words, plural="" if words == 1 else "s")


def demo_thoughts(prompt: str) -> str:
    """What the demo "thinks" before it answers, when its ``reasoning`` option is on."""
    return _THOUGHTS.format(quoted=_quoted(prompt))


@dataclass
class DemoProvider(Provider):
    """Options: ``first_token_delay`` (s, default 0.3), ``tokens_per_second`` (default 40),
    and ``reasoning`` (default off): stream a short "thinking" part before the answer, as
    reasoning models do, so the page's thinking block can be tried offline."""

    is_demo = True

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Chunk, None]:
        prompt = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        tokens = _TOKEN.findall(demo_reply(prompt))
        truncated = request.max_tokens is not None and len(tokens) > request.max_tokens
        if truncated:
            tokens = tokens[: request.max_tokens]
        delay = float(self.options.get("first_token_delay", 0.3))
        rate = float(self.options.get("tokens_per_second", 40))
        thoughts = _TOKEN.findall(demo_thoughts(prompt)) if self.options.get("reasoning") else []
        prompt_tokens = sum(len(_TOKEN.findall(m["content"])) for m in request.messages)
        del request  # as a real provider, not kept while the reply streams
        await asyncio.sleep(delay)
        for kind, token in [("reasoning", t) for t in thoughts] + [("text", t) for t in tokens]:
            yield Chunk(**{kind: token})
            if rate > 0:
                await asyncio.sleep(1 / rate)
        finish = "length" if truncated else "stop"
        spent = len(thoughts) + len(tokens)
        usage = Usage(prompt_tokens, spent, reasoning_tokens=len(thoughts) if thoughts else None)
        yield Chunk(finish_reason=finish, usage=usage)
