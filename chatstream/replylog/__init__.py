from __future__ import annotations

import functools

from django.utils.module_loading import import_string

from chatstream.conf import ChatstreamSettings, get_settings
from chatstream.replylog.base import LogRead, ReplyLog

__all__ = ["LogRead", "ReplyLog", "get_reply_log"]


@functools.lru_cache(maxsize=4)
def _build(settings: ChatstreamSettings) -> ReplyLog:
    config = settings.reply_log
    cls = import_string(config.backend)
    return cls(location=config.location, options=config.options, ttl=settings.log_ttl)


def get_reply_log() -> ReplyLog:
    """The process's reply log; rebuilt when ``CHATSTREAM`` changes."""
    return _build(get_settings())
