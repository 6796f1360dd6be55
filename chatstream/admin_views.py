"""The admin's operations pages: check an assistant's connection, watch and stop live
replies, and add up usage.

Admin views are sync (``AdminSite.admin_view`` wraps a sync callable), while the
provider and the reply log are async. Each view therefore does its ORM work in
sync code and makes one ``async_to_sync`` call for the async part: under ASGI that
runs on the server's event loop (where this process's generations and the log's
clients live); under the sync test client it runs on a short-lived loop of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename, get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string

from chatstream.conf import ChatstreamSettings, get_settings
from chatstream.ending import recover
from chatstream.exceptions import ChatstreamError, UpstreamError
from chatstream.models import Assistant, Message, Role, Status
from chatstream.providers.base import ChatRequest
from chatstream.replylog import get_reply_log
from chatstream.turns import resolve_target

logger = logging.getLogger(__name__)

#: Seconds a connection check waits for the model's first answer.
CHECK_TIMEOUT = 20.0
#: The check's prompt: the fake upstream in the tests picks its script by this text.
CHECK_PROMPT = "ping"
#: The check's output budget. A reasoning model spends tokens thinking before its first
#: visible one (OpenAI's o-series and gpt-5 on Chat Completions show none of it), and a
#: deployment's name need not tell its family: every model gets room to think. The check
#: closes the stream at the first text or reasoning, so a model that answers at once
#: costs a token or two, not the budget.
CHECK_MAX_TOKENS = 2048
#: Seconds the stop button waits for the reply to be finalised before it redirects.
_STOP_WAIT = 2.0
USAGE_DAYS = 30


# --- check connection -----------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """What a connection check found; ``code``/``message`` are safe to show (no secrets)."""

    assistant: str
    connection: str
    model: str
    ok: bool
    latency_ms: int | None = None
    is_demo: bool = False
    code: str = ""
    message: str = ""

    def __str__(self) -> str:
        where = f"model {self.model or '(none)'} on connection {self.connection!r}"
        if self.ok:
            demo = " (the offline demo model)" if self.is_demo else ""
            return f"{self.assistant}: {where} answered in {self.latency_ms} ms{demo}."
        return f"{self.assistant}: {where} did not answer: {self.code}: {self.message}"


async def acheck_assistant(
    assistant: Assistant,
    settings: ChatstreamSettings | None = None,
    timeout: float = CHECK_TIMEOUT,
) -> CheckResult:
    """Send a tiny request through the assistant's connection and time the first answer.

    The first text or reasoning, or a finish, is the answer; a model that spent the
    whole budget without either did not answer.

    The provider is built for this check and closed after it, rather than taken
    from ``get_provider``'s per-loop cache: from sync admin code the loop may be a
    short-lived one, whose pooled client would be left unclosed, and a fresh client
    proves the connection as a new worker would see it.
    """
    settings = settings or get_settings()
    name = assistant.connection
    try:
        name, model, is_demo = resolve_target(assistant, settings)
    except ChatstreamError as exc:
        return CheckResult(
            str(assistant), name, assistant.model, False, code=exc.code, message=exc.message
        )
    result = functools.partial(CheckResult, str(assistant), name, model, is_demo=is_demo)
    request = ChatRequest(
        model=model,
        messages=[{"role": "user", "content": CHECK_PROMPT}],
        max_tokens=CHECK_MAX_TOKENS,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    provider = None
    try:
        connection = settings.connection(name)
        provider = import_string(connection.backend)(options=dict(connection.options))
        async with asyncio.timeout(timeout):
            async with contextlib.aclosing(provider.stream(request)) as chunks:
                async for chunk in chunks:
                    if chunk.finish_reason == "length" and not (chunk.text or chunk.reasoning):
                        return result(
                            False,
                            code="no_answer",
                            message=f"The model spent the check's whole budget of "
                            f"{CHECK_MAX_TOKENS} tokens without answering.",
                        )
                    if chunk.text or chunk.reasoning or chunk.finish_reason is not None:
                        # Leaving the block closes the stream, and so the upstream request.
                        return result(True, latency_ms=round((loop.time() - started) * 1000))
        return result(
            False, code="upstream_incomplete", message="The model's server sent no answer."
        )
    except UpstreamError as exc:
        return result(False, code=exc.code, message=exc.message)
    except TimeoutError:
        return result(False, code="upstream_timeout", message=f"No answer within {timeout:g} s.")
    except Exception as exc:
        # Its text may quote a setting (a key, an endpoint): neither the page nor the log
        # gets more than its type.
        logger.warning("Connection check for %r failed with %s", name, type(exc).__name__)
        return result(
            False,
            code="check_failed",
            message=f"The check failed with {type(exc).__name__}: "
            "check the connection's BACKEND and OPTIONS.",
        )
    finally:
        if provider is not None:
            await provider.aclose()


def check_assistants(request: HttpRequest, assistants: Iterable[Assistant]) -> list[CheckResult]:
    """Check each assistant and report it as an admin message."""
    assistants = list(assistants)

    async def run() -> list[CheckResult]:
        settings = get_settings()
        return list(await asyncio.gather(*(acheck_assistant(a, settings) for a in assistants)))

    results = async_to_sync(run)()
    for found in results:
        level = messages.SUCCESS if found.ok else messages.ERROR
        messages.add_message(request, level, str(found))
    return results


# --- who owns a conversation, as operators see it --------------------------------------


def owner_label(user: Any, anonymous_owner: str) -> str:
    if user is not None:
        email = getattr(user, user.get_email_field_name(), "") or ""
        name = user.get_username()
        return f"{name} <{email}>" if email and email != name else name
    return f"anonymous {anonymous_owner[:8]}" if anonymous_owner else "—"


def _context(model_admin: admin.ModelAdmin, request: HttpRequest, **extra: Any) -> dict[str, Any]:
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "app_label": model_admin.model._meta.app_label,
        **extra,
    }


def can_stop(request: HttpRequest) -> bool:
    """Stopping a reply changes it: staff with the change permission on messages."""
    opts = Message._meta
    return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")


# --- replies streaming now --------------------------------------------------------------


@dataclass(frozen=True)
class LiveReply:
    message: Message
    owner: str
    length: int
    #: False: the log has no text for it here, so ``length`` is the last checkpoint's.
    from_log: bool
    worker: str | None
    age: timedelta


async def _alog_state(ids: list[str]) -> dict[str, tuple[int | None, str | None]]:
    log = get_reply_log()

    async def one(reply_id: str) -> tuple[str, tuple[int | None, str | None]]:
        return reply_id, (await log.length(reply_id), await log.worker(reply_id))

    return dict(await asyncio.gather(*(one(reply_id) for reply_id in ids)))


def live_replies(request: HttpRequest) -> tuple[list[LiveReply], str]:
    """The replies streaming now, oldest first, and a warning when the log is unreachable."""
    rows = list(
        Message.objects.filter(role=Role.ASSISTANT, status=Status.STREAMING)
        .select_related("conversation__owner", "assistant")
        .order_by("created_at")
    )
    warning = ""
    try:
        state = async_to_sync(_alog_state)([str(m.pk) for m in rows])
    except ChatstreamError as exc:
        state, warning = {}, exc.message
    now = timezone.now()
    replies = []
    for message in rows:
        length, worker = state.get(str(message.pk), (None, None))
        replies.append(
            LiveReply(
                message=message,
                owner=owner_label(message.conversation.owner, message.conversation.anonymous_owner),
                length=len(message.content) if length is None else length,
                from_log=length is not None,
                worker=worker,
                age=now - message.created_at,
            )
        )
    return replies, warning


def live_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    replies, warning = live_replies(request)
    if warning:
        messages.warning(request, warning)
    refresh = request.GET.get("refresh", "")
    context = _context(
        model_admin,
        request,
        title="Replies streaming now",
        replies=replies,
        can_stop=can_stop(request),
        refresh=int(refresh) if refresh.isdigit() and 0 < int(refresh) <= 300 else None,
    )
    return TemplateResponse(request, "admin/chatstream/message/live.html", context)


async def _astop(reply_id: str) -> str:
    """Stop a live reply, or finalise an orphan; returns what happened."""
    log = get_reply_log()
    if await log.is_alive(reply_id):
        await log.request_stop(reply_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STOP_WAIT
        while loop.time() < deadline:
            if not await Message.objects.filter(pk=reply_id, status=Status.STREAMING).aexists():
                return "stopped"
            await asyncio.sleep(0.05)
        return "stopping"
    return "recovered" if await recover(reply_id, log) is not None else "stopping"


def stop_view(model_admin: admin.ModelAdmin, request: HttpRequest, reply_id: str) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if not can_stop(request):
        raise PermissionDenied
    back = HttpResponseRedirect(reverse(f"{model_admin.admin_site.name}:chatstream_message_live"))
    message = Message.objects.filter(pk=reply_id, role=Role.ASSISTANT).first()
    if message is None:
        messages.warning(request, f"There is no reply {reply_id}.")
        return back
    if message.status != Status.STREAMING:
        messages.info(request, f"Reply {reply_id} had already finished ({message.status}).")
        return back
    try:
        outcome = async_to_sync(_astop)(reply_id)
    except ChatstreamError as exc:
        messages.error(request, f"Reply {reply_id} could not be stopped: {exc.message}")
        return back
    texts = {
        "stopped": f"Reply {reply_id} was stopped.",
        "stopping": f"Stop requested for reply {reply_id}; it ends in a moment.",
        "recovered": f"Reply {reply_id} had no live generation: it was finalised as interrupted.",
    }
    messages.success(request, texts[outcome])
    model_admin.log_change(request, message, f"Stop: {outcome}.")
    return back


async def _arequest_stops(ids: list[str]) -> None:
    log = get_reply_log()
    for reply_id in ids:
        await log.request_stop(reply_id)


def request_stops(request: HttpRequest, ids: list[str]) -> None:
    """Ask these replies to stop (before their conversations are deleted)."""
    if not ids:
        return
    try:
        async_to_sync(_arequest_stops)(ids)
    except ChatstreamError as exc:
        messages.warning(request, f"Streaming replies could not be stopped: {exc.message}")
    else:
        messages.info(
            request,
            f"Stop requested for {len(ids)} streaming repl{'y' if len(ids) == 1 else 'ies'}.",
        )


# --- usage totals -----------------------------------------------------------------------


class UsageRangeForm(forms.Form):
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end and start > end:
            raise forms.ValidationError("The start date is after the end date.")
        return data


def usage_range(request: HttpRequest) -> tuple[UsageRangeForm, date, date]:
    """The dates asked for (inclusive, in the current time zone); default the last 30 days."""
    today = timezone.localdate()
    form = UsageRangeForm(request.GET or None)
    start, end = today - timedelta(days=USAGE_DAYS - 1), today
    if form.is_bound and form.is_valid():
        end = form.cleaned_data["end"] or end
        start = form.cleaned_data["start"] or min(start, end)
    if not form.is_bound:
        form = UsageRangeForm(initial={"start": start, "end": end})
    return form, start, end


_TOTALS = {
    "prompt_tokens": Sum("prompt_tokens", default=0),
    "completion_tokens": Sum("completion_tokens", default=0),
    # Parts of the two above, where the upstream reported them.
    "reasoning_tokens": Sum("reasoning_tokens", default=0),
    "cached_tokens": Sum("cached_tokens", default=0),
    "replies": Count("id"),
    "estimated": Count("id", filter=Q(usage_estimated=True)),
    "cost": Sum("cost", default=0),
    "currency": Max("cost_currency"),
    "currencies": Count("cost_currency", distinct=True, filter=~Q(cost_currency="")),
}


def _with_total(row: Mapping[str, Any], label: Any = "") -> dict[str, Any]:
    total = row["prompt_tokens"] + row["completion_tokens"]
    # Costs in several currencies do not add up: say so rather than sum them.
    currency = "mixed" if row["currencies"] > 1 else row["currency"] or ""
    return {**row, "label": label, "total_tokens": total, "currency": currency}


def usage_totals(start: date, end: date) -> dict[str, Any]:
    """Tokens spent by replies created from ``start`` to ``end``: every finished status
    (a stopped or failed reply was paid for too), regenerated ones as well; replies
    still streaming have no usage yet and wait for the next look."""
    replies: QuerySet[Message] = Message.objects.filter(
        role=Role.ASSISTANT, created_at__date__gte=start, created_at__date__lte=end
    ).exclude(status=Status.STREAMING)
    by_assistant = [
        _with_total(row, row["assistant__name"] or "(no assistant)")
        for row in replies.values("assistant_id", "assistant__name")
        .annotate(**_TOTALS)
        .order_by("assistant__name", "assistant_id")
    ]
    username = f"conversation__owner__{get_user_model().USERNAME_FIELD}"
    by_owner = []
    for row in (
        replies.values("conversation__owner_id", username, "conversation__anonymous_owner")
        .annotate(**_TOTALS)
        .order_by(username, "conversation__anonymous_owner")
    ):
        anonymous = row["conversation__anonymous_owner"]
        label = row[username] or (f"anonymous {anonymous[:8]}" if anonymous else "—")
        by_owner.append(_with_total(row, label))
    by_owner.sort(key=lambda row: -row["total_tokens"])  # the biggest spenders first
    by_day = [
        _with_total(row, row["day"])
        for row in replies.annotate(
            day=TruncDate("created_at", tzinfo=timezone.get_current_timezone())
        )
        .values("day")
        .annotate(**_TOTALS)
        .order_by("-day")
    ]
    total = _with_total(replies.aggregate(**_TOTALS), "All")
    return {
        "by_assistant": by_assistant,
        "by_owner": by_owner,
        "by_day": by_day,
        "totals": [total],
    }


def usage_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    form, start, end = usage_range(request)
    context = _context(
        model_admin,
        request,
        title="Usage totals",
        form=form,
        start=start,
        end=end,
        **usage_totals(start, end),
    )
    return TemplateResponse(request, "admin/chatstream/message/usage.html", context)
