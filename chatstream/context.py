"""How much history a reply may send: a budget safe for its model unless someone set one.

The budget is in estimated tokens (``chatstream.tokens``: about four characters a
token). Set per Assistant (``context_tokens``) or per connection
(``CONNECTIONS[name]["CONTEXT_TOKENS"]``); otherwise it comes from the model's
name: its context window less room for the answer, and never more than
``_MOST`` (a longer history costs more on every turn than it helps). A name we do
not know (a local model under a custom name) gets a small window: Ollama's and
llama.cpp's default contexts are a few thousand tokens whatever the model could do.
"""

from __future__ import annotations

import re

_MOST = 32_000
_ANSWER_ROOM = 4_096  # tokens kept for the reply itself
_UNKNOWN_WINDOW = 8_192
# Most specific first; names may carry a "provider/" prefix (OpenRouter).
_WINDOWS = [
    (re.compile(r"gpt-4\.1"), 1_000_000),
    (re.compile(r"gpt-5|o[134](?:-|$)|o1-"), 200_000),
    (re.compile(r"gpt-4o|gpt-4-turbo|chatgpt-4o"), 128_000),
    (re.compile(r"gpt-3\.5"), 16_000),
    (re.compile(r"deepseek"), 64_000),
    (re.compile(r"claude|gemini"), 200_000),
]


def model_window(model: str) -> int:
    """The model's context window in tokens, as far as its name tells."""
    name = model.rsplit("/", 1)[-1].lower()
    for pattern, window in _WINDOWS:
        if pattern.match(name):
            return window
    return _UNKNOWN_WINDOW


def history_budget(
    model: str, *, assistant: int | None, connection: int | None, max_output: int | None
) -> int:
    """Estimated tokens of history (system prompt and question included) a reply may send."""
    if assistant:
        return assistant
    if connection:
        return connection
    room = max(max_output or 0, _ANSWER_ROOM)
    return max(1, min(model_window(model) - room, _MOST))
