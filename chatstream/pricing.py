"""What a reply costs: its usage at its model's price, computed once when it ends.

A reply's price is looked up when it starts (with its other limits, in the same
thread hop) and travels with it as a ``Price``: the ending then needs no query, and
a daily cost limit can be turned into a token budget up front.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from chatstream.models import ModelPrice

_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    currency: str
    input: Decimal
    cached_input: Decimal
    output: Decimal
    reasoning: Decimal

    def cost(self, usage: Mapping[str, Any]) -> Decimal | None:
        """The cost of a row's usage fields; ``None`` without usage."""
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if prompt is None or completion is None:
            return None
        cached = min(int(usage.get("cached_tokens") or 0), int(prompt))
        reasoning = min(int(usage.get("reasoning_tokens") or 0), int(completion))
        total: Decimal = (
            (prompt - cached) * self.input
            + cached * self.cached_input
            + (completion - reasoning) * self.output
            + reasoning * self.reasoning
        )
        return total / _MILLION

    def tokens_for(self, money: Decimal) -> int:
        """How many output tokens ``money`` buys (a cost limit as a token budget)."""
        return int(money * _MILLION / self.output) if self.output > 0 else 2**62


def price_for(model: str) -> Price | None:
    """The model's price, or ``None`` when the admin set none. Sync: one small query."""
    row = ModelPrice.objects.filter(model=model).first()
    if row is None:
        return None
    return Price(
        currency=row.currency,
        input=row.input_per_million,
        cached_input=(
            row.input_per_million
            if row.cached_input_per_million is None
            else row.cached_input_per_million
        ),
        output=row.output_per_million,
        reasoning=(
            row.output_per_million
            if row.reasoning_per_million is None
            else row.reasoning_per_million
        ),
    )


def cost_fields(price: Price | None, usage: Mapping[str, Any]) -> dict[str, Any]:
    """The row's ``cost`` and ``cost_currency`` for ``usage``; empty without a price."""
    cost = price.cost(usage) if price is not None else None
    if price is None or cost is None:
        return {}
    return {"cost": cost.quantize(Decimal("1e-8")), "cost_currency": price.currency}
