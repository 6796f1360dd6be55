"""What a reply costs: its usage at its model's price, computed once when it ends.

A reply's price is looked up when it starts (with its other limits, in the same
thread hop) and travels with it as a ``Price``: the ending then needs no query, and
a daily cost limit can be turned into a token budget up front.

The price table is small and read by every reply, so it is kept in the cache
(``CACHE_ALIAS``: Redis when there is one) and forgotten when a price is saved or
deleted; without the cache the table answers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.cache import caches
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from chatstream.conf import get_settings
from chatstream.models import ModelPrice

logger = logging.getLogger(__name__)

_MILLION = Decimal(1_000_000)
_CACHE_KEY = "chatstream:prices:1"  # pickled ``Price``s: a new layout takes a new key
#: A backstop for changes that send no signal (``QuerySet.update``, raw SQL).
_CACHE_SECONDS = 300


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
    """The model's price, or ``None`` when the admin set none. Sync: the cache, else a query."""
    cache = caches[get_settings().cache_alias]
    try:
        prices: dict[str, Price] | None = cache.get(_CACHE_KEY)
    except Exception as exc:
        logger.warning("Prices read from the database, the cache failed: %s", exc)
        return _all_prices().get(model)
    if prices is None:
        prices = _all_prices()
        try:
            cache.set(_CACHE_KEY, prices, _CACHE_SECONDS)
        except Exception as exc:
            logger.warning("Prices not cached, the cache failed: %s", exc)
    return prices.get(model)


def forget_prices() -> None:
    """The next ``price_for`` reads the table again."""
    try:
        caches[get_settings().cache_alias].delete(_CACHE_KEY)
    except Exception as exc:  # the backstop expiry still applies
        logger.warning("Prices not forgotten, the cache failed: %s", exc)


@receiver(post_save, sender=ModelPrice, dispatch_uid="chatstream-forget-prices-saved")
@receiver(post_delete, sender=ModelPrice, dispatch_uid="chatstream-forget-prices-deleted")
def _price_changed(sender: type[ModelPrice], **kwargs: Any) -> None:
    # Once committed: forgotten earlier, a reply starting now could cache the old price.
    transaction.on_commit(forget_prices, using=kwargs.get("using"))


def _all_prices() -> dict[str, Price]:
    return {row.model: _price(row) for row in ModelPrice.objects.all()}


def _price(row: ModelPrice) -> Price:
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
