"""Typewriter output on any page: ``{% load chatstream %}``.

``{% chatstream_assets %}`` once in the page's ``<head>`` (a stylesheet and one ES
module, no inline script, so it works under a strict Content-Security-Policy), then
``{% chatstream_typewriter reply %}`` wherever a reply should be typed out. ``reply``
is an assistant ``Message`` (its stream URL and the text stored so far are filled in)
or any reply's stream URL as a string.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse

from chatstream.models import Message

register = template.Library()


@register.inclusion_tag("chatstream/assets.html")
def chatstream_assets() -> dict[str, Any]:
    """The stylesheet and the module that start every typewriter on the page."""
    return {}


@register.inclusion_tag("chatstream/typewriter.html")
def chatstream_typewriter(
    reply: Message | str, format: str = "markdown", css_class: str = ""
) -> dict[str, Any]:
    """A container that types out ``reply`` (a Message, or a stream URL) as it streams.

    ``format`` is ``"markdown"`` (sanitized) or ``"text"``. The text already stored
    is rendered at once and the stream resumes after it, so a finished reply costs
    one short request and shows no animation.
    """
    if format not in ("markdown", "text"):
        raise template.TemplateSyntaxError(
            f"chatstream_typewriter's 'format' must be 'markdown' or 'text', not {format!r}."
        )
    if isinstance(reply, Message):
        url = reverse("chatstream:stream", args=[reply.pk])
        content, reasoning = reply.content, reply.reasoning
    elif isinstance(reply, str) and reply:
        url, content, reasoning = reply, "", ""
    else:
        raise template.TemplateSyntaxError(
            f"chatstream_typewriter needs an assistant Message or a stream URL, not {reply!r}."
        )
    return {
        "url": url,
        "content": content,
        "reasoning": reasoning,
        # Offsets count both kinds of text: what is stored so far is the stream's start.
        "offset": len(content) + len(reasoning),
        "format": format,
        "css_class": css_class,
    }
