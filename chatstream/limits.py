"""Per-owner limits, checked before anything is stored.

Synchronous on purpose: they run inside the one thread hop that also creates
the turn's rows, rather than costing a hop each.

Counters live in the Django cache (django-redis when ``REDIS_URL`` is set, so
they hold across workers); concurrency is counted in the database, which every
worker shares anyway.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal

from django.core.cache import caches
from django.utils import timezone

from chatstream.conf import ChatstreamSettings
from chatstream.exceptions import CostLimitExceeded, RateLimited, TokenQuotaExceeded
from chatstream.models import Message, Status
from chatstream.ownership import Owner

logger = logging.getLogger(__name__)


def check_message_rate(owner: Owner, settings: ChatstreamSettings) -> None:
    limit = settings.messages_per_minute
    if not limit:
        return
    now = time.time()
    window = int(now // 60)
    key = f"chatstream:messages:{owner.key}:{window}"
    cache = caches[settings.cache_alias]
    try:
        cache.add(key, 0, timeout=120)
        count = cache.incr(key)
    except Exception as exc:  # the cache (Redis) is away: fail open, the log will tell
        logger.warning("Rate limit not checked, the cache failed: %s", exc)
        return
    if count > limit:
        raise RateLimited(
            f"At most {limit} messages a minute; try again shortly.",
            retry_after=60 - int(now % 60),
            code="rate_limited",
        )


class TooManyReplies(RateLimited):
    """Raised when the owner has as many streaming rows as allowed; some may be orphans.

    ``reply_ids`` are the ones old enough to be checked: the caller recovers those
    whose generation is gone and asks again.
    """

    def __init__(self, limit: int, reply_ids: list[str]) -> None:
        super().__init__(
            f"At most {limit} replies may stream at once; wait for one to finish.",
            retry_after=5,
            code="too_many_replies",
        )
        self.reply_ids = reply_ids


def check_concurrent_replies(owner: Owner, settings: ChatstreamSettings) -> None:
    limit = settings.max_concurrent_replies
    if not limit:
        return
    streaming = list(
        Message.objects.filter(owner.of("conversation__"), status=Status.STREAMING).values_list(
            "pk", "created_at"
        )
    )
    if len(streaming) >= limit:
        # A reply that is only starting (another request of this owner's) is alive.
        settled = timezone.now() - timedelta(seconds=5)
        raise TooManyReplies(limit, [str(pk) for pk, created in streaming if created < settled])


def _today_key(owner_key: str, what: str = "tokens") -> str:
    return f"chatstream:{what}:{owner_key}:{datetime.now(UTC).date().isoformat()}"


def _until_midnight() -> int:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((midnight - now).total_seconds()) + 1


def token_budget(owner: Owner, settings: ChatstreamSettings) -> int | None:
    """Tokens the owner may still use today, or ``None`` without a quota."""
    quota = settings.daily_token_quota
    if not quota:
        return None
    try:
        used = caches[settings.cache_alias].get(_today_key(owner.key), 0)
    except Exception as exc:  # the cache is away: fail open
        logger.warning("Token quota not checked, the cache failed: %s", exc)
        return None
    if used >= quota:
        raise TokenQuotaExceeded(
            f"The daily quota of {quota} tokens is used up; it resets at midnight UTC.",
            retry_after=_until_midnight(),
        )
    return quota - used


def record_tokens(owner_key: str, tokens: int, settings: ChatstreamSettings) -> None:
    if not settings.daily_token_quota or not owner_key or tokens <= 0:
        return
    cache, key = caches[settings.cache_alias], _today_key(owner_key)
    try:
        cache.add(key, 0, timeout=2 * 24 * 3600)
        cache.incr(key, tokens)
    except Exception as exc:
        logger.warning("Token usage not counted, the cache failed: %s", exc)


# Money is counted in the cache in millionths: cache counters are integers.
_MICROS = Decimal(1_000_000)


def cost_left(owner: Owner, settings: ChatstreamSettings) -> Decimal | None:
    """Money the owner may still spend today, or ``None`` without a limit."""
    limit = settings.daily_cost_limit
    if not limit:
        return None
    try:
        spent = caches[settings.cache_alias].get(_today_key(owner.key, "cost"), 0)
    except Exception as exc:  # the cache is away: fail open
        logger.warning("Cost limit not checked, the cache failed: %s", exc)
        return None
    left = Decimal(str(limit)) - Decimal(spent) / _MICROS
    if left <= 0:
        raise CostLimitExceeded(
            f"Today's spending limit of {limit} is reached; it resets at midnight UTC.",
            retry_after=_until_midnight(),
        )
    return left


def record_cost(owner_key: str, cost: Decimal | None, settings: ChatstreamSettings) -> None:
    if not settings.daily_cost_limit or not owner_key or not cost or cost <= 0:
        return
    cache, key = caches[settings.cache_alias], _today_key(owner_key, "cost")
    try:
        cache.add(key, 0, timeout=2 * 24 * 3600)
        cache.incr(key, int((cost * _MICROS).to_integral_value(rounding=ROUND_CEILING)))
    except Exception as exc:
        logger.warning("Spending not counted, the cache failed: %s", exc)
