"""Per-owner limits, checked before anything is stored.

Counters live in the Django cache (django-redis when ``REDIS_URL`` is set, so
they hold across workers); concurrency is counted in the database, which every
worker shares anyway.
"""

from __future__ import annotations

import logging
import time

from django.core.cache import caches

from chatstream.conf import ChatstreamSettings
from chatstream.exceptions import RateLimited
from chatstream.models import Message, Status
from chatstream.ownership import Owner

logger = logging.getLogger(__name__)


async def acheck_message_rate(owner: Owner, settings: ChatstreamSettings) -> None:
    limit = settings.messages_per_minute
    if not limit:
        return
    now = time.time()
    window = int(now // 60)
    key = f"chatstream:messages:{owner.key}:{window}"
    cache = caches[settings.cache_alias]
    try:
        await cache.aadd(key, 0, timeout=120)
        count = await cache.aincr(key)
    except Exception as exc:  # the cache (Redis) is away: fail open, the log will tell
        logger.warning("Rate limit not checked, the cache failed: %s", exc)
        return
    if count > limit:
        raise RateLimited(
            f"At most {limit} messages a minute; try again shortly.",
            retry_after=60 - int(now % 60),
            code="rate_limited",
        )


async def acheck_concurrent_replies(owner: Owner, settings: ChatstreamSettings) -> None:
    limit = settings.max_concurrent_replies
    if not limit:
        return
    streaming = await Message.objects.filter(
        owner.of("conversation__"), status=Status.STREAMING
    ).acount()
    if streaming >= limit:
        raise RateLimited(
            f"At most {limit} replies may stream at once; wait for one to finish.",
            retry_after=5,
            code="too_many_replies",
        )
