"""Token estimates, for when the upstream reports no usage and for budgets set ahead."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

# Chat formats add a few tokens of framing per message.
_PER_MESSAGE = 4


def estimate_tokens(text: str) -> int:
    """About four characters a token: good enough to account for a reply cut short."""
    return tokens_for_length(len(text))


def tokens_for_length(characters: int) -> int:
    return math.ceil(characters / 4)


def estimate_messages(messages: Iterable[Mapping[str, str]]) -> int:
    return sum(estimate_tokens(m["content"]) + _PER_MESSAGE for m in messages)
