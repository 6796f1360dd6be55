"""An offline model: no network, no key, a deterministic reply at a realistic pace.

It lets a fresh machine try the whole product; pages label it as a demo.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
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

_TOKEN = re.compile(r"\s*\S+|\s+")


def demo_reply(prompt: str) -> str:
    text = " ".join(prompt.split())
    quoted = f"“{text[:80]}{'…' if len(text) > 80 else ''}”" if text else "nothing"
    words = len(text.split())
    return _TEMPLATE.format(quoted=quoted, words=words, plural="" if words == 1 else "s")


@dataclass
class DemoProvider(Provider):
    """Options: ``first_token_delay`` (s, default 0.3) and ``tokens_per_second`` (default 40)."""

    is_demo = True

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        prompt = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        tokens = _TOKEN.findall(demo_reply(prompt))
        truncated = request.max_tokens is not None and len(tokens) > request.max_tokens
        if truncated:
            tokens = tokens[: request.max_tokens]
        delay = float(self.options.get("first_token_delay", 0.3))
        rate = float(self.options.get("tokens_per_second", 40))
        await asyncio.sleep(delay)
        for token in tokens:
            yield Chunk(text=token)
            if rate > 0:
                await asyncio.sleep(1 / rate)
        finish = "length" if truncated else "stop"
        prompt_tokens = sum(len(_TOKEN.findall(m["content"])) for m in request.messages)
        yield Chunk(finish_reason=finish, usage=Usage(prompt_tokens, len(tokens)))
