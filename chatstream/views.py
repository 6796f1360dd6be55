"""The chat page, the JSON API and the SSE stream.

Every API view answers JSON, errors included (CSRF failures, bad ids, wrong
methods), and is usable under ``LoginRequiredMiddleware``. A stream does all of
its request's database work before the first byte and then only reads the reply
log; the generation is never tied to the response.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError, connection
from django.db.models import Model
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import render, resolve_url
from django.urls import NoReverseMatch, reverse
from django.views.decorators.csrf import csrf_exempt, ensure_csrf_cookie

from chatstream import dbpool, export, listing, reading, sse, turns
from chatstream.compiled import Compiled
from chatstream.conf import get_settings
from chatstream.ending import recover
from chatstream.exceptions import (
    BadRequest,
    ChatstreamError,
    Conflict,
    CsrfFailed,
    DatabaseUnavailable,
    InvalidOffset,
    MethodNotAllowed,
    NotFound,
    ReplyLogUnavailable,
)
from chatstream.generation import registry
from chatstream.http import EventStreamResponse, JsonErrorResponse
from chatstream.models import Assistant, Conversation, Message, Role, Status
from chatstream.ownership import Owner, aget_owner, get_owner
from chatstream.replylog import get_reply_log
from chatstream.replylog.base import ANSWER
from chatstream.serializers import conversation_payload, message_payload
from chatstream.text import is_storable

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=Model)

View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _JsonCsrfCheck(CsrfViewMiddleware):
    def _reject(self, request: HttpRequest, reason: str) -> HttpResponse:
        raise CsrfFailed(f"CSRF check failed: {reason}")


_csrf = _JsonCsrfCheck(lambda request: HttpResponse())


def _no_view(request: HttpRequest) -> HttpResponse:
    """The CSRF check asks for the view it guards; ours only reads its csrf_exempt."""
    return HttpResponse()


def api_view(*methods: str) -> Callable[[View], View]:
    """JSON in, JSON out: method check, CSRF check, errors as ``{"error": ...}``."""

    def decorator(view: View) -> View:
        @wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            registry.ensure_sweeping()
            try:
                if request.method not in methods:
                    raise MethodNotAllowed(list(methods))
                if request.method not in _SAFE_METHODS:
                    _csrf.process_request(request)
                    _csrf.process_view(request, _no_view, (), {})
                return await view(request, *args, **kwargs)
            except ChatstreamError as error:
                return JsonErrorResponse(error)
            except OperationalError as exc:
                # SQLite locked past its timeout under load, or a database gone away:
                # the request's transaction is rolled back, the client may try again.
                logger.warning("Database unavailable: %s %s: %s", request.method, request.path, exc)
                return JsonErrorResponse(DatabaseUnavailable())

        wrapper.csrf_exempt = True  # type: ignore[attr-defined]  # checked above, as JSON
        wrapper.login_required = False  # type: ignore[attr-defined]  # we answer 403 JSON
        return wrapper

    return decorator


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound() from None


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        raw = request.body
    except RequestDataTooBig:
        raise BadRequest("The request body is too large.", code="request_too_large") from None
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object.", code="invalid_json")
    return data


def _string(data: Mapping[str, Any], key: str, *, max_length: int) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string.", code=f"invalid_{key}")
    if len(value) > max_length:
        raise BadRequest(f"'{key}' is longer than {max_length} characters.", code=f"invalid_{key}")
    if not is_storable(value):
        raise _unstorable(key)
    return value


def _unstorable(key: str) -> BadRequest:
    return BadRequest(
        f"'{key}' holds a character that cannot be stored (NUL, or a lone surrogate).",
        code="invalid_content",
    )


def _query(request: HttpRequest, key: str, *, max_length: int = 500) -> str:
    value = request.GET.get(key, "")
    if len(value) > max_length or not is_storable(value):
        raise BadRequest(f"The query parameter {key!r} is not valid.", code=f"invalid_{key}")
    return value


async def _assistant(slug: str | None) -> Assistant | None:
    if slug is None:
        return None
    assistant = await Assistant.objects.filter(slug=slug, is_active=True).afirst()
    if assistant is None:
        raise BadRequest(f"No active assistant is called {slug!r}.", code="unknown_assistant")
    return assistant


# Ownership is checked on the row by the caller: an ownership filter costs more to
# build than the query to run. Every send runs the first.
_CONVERSATION = Compiled(
    Conversation,
    lambda pk: Conversation.objects.select_related("assistant").filter(pk=pk).order_by(),
    ["id"],
)
_MESSAGE = Compiled(
    Message,
    lambda pk: Message.objects.select_related("conversation__assistant").filter(pk=pk).order_by(),
    ["id"],
)


def _by_key(rows: Compiled[M], key: str) -> M | None:
    """The row, or ``None``."""
    found = rows.objects(_uuid(key))
    return found[0] if found else None


def _get_conversation(owner: Owner, conversation_id: str) -> Conversation:
    conversation = _by_key(_CONVERSATION, conversation_id)
    if conversation is None or not owner.owns(conversation):
        raise NotFound("No such conversation.")
    return conversation


def _get_message(owner: Owner, message_id: str) -> Message:
    message = _by_key(_MESSAGE, message_id)
    if message is None or not owner.owns(message.conversation):
        raise NotFound("No such message.")
    return message


def _owned_conversation(request: HttpRequest, conversation_id: str) -> tuple[Owner, Conversation]:
    owner = get_owner(request)
    return owner, _get_conversation(owner, conversation_id)


def _owned_message(request: HttpRequest, message_id: str) -> tuple[Owner, Message]:
    owner = get_owner(request)
    return owner, _get_message(owner, message_id)


async def _conversation(request: HttpRequest, conversation_id: str) -> tuple[Owner, Conversation]:
    """The caller and their conversation (else 404): the session and the row in one hop."""
    return await dbpool.run(_owned_conversation, request, conversation_id)


async def _message(request: HttpRequest, message_id: str) -> tuple[Owner, Message]:
    """The caller and their message (else 404): the session and the row in one hop."""
    return await dbpool.run(_owned_message, request, message_id)


async def _started(request: HttpRequest, user_message: Message, reply: Message) -> HttpResponseBase:
    """The 201 with both messages, or, for a client that asks for an event stream, the
    reply's stream itself: one request per reply (``started``, then what ``stream_url``
    would send from offset 0)."""
    started = {
        "user_message": message_payload(user_message),
        "assistant_message": message_payload(reply),
        "stream_url": reverse("chatstream:stream", args=[reply.id]),
    }
    # META, not request.headers: that dict would stay cached on the request for as
    # long as the stream is open.
    if "text/event-stream" not in request.META.get("HTTP_ACCEPT", ""):
        return JsonResponse(started, status=201)
    request.META.pop("HTTP_ACCEPT_ENCODING", None)  # never compressed: see stream()
    # The turn's DB work ran on the pool (``dbpool``): no connection to close here.
    first = sse.encode_json(started, event="started")
    return EventStreamResponse(_events(reading.follow(str(reply.pk), 0), first=first))


# --- the page -----------------------------------------------------------------------


def _account_links(request: HttpRequest) -> dict[str, str]:
    """The host's sign-in URL (back to this page after) and sign-out URL, each "" when
    the host mounts none: the page then offers no link rather than failing to render."""
    try:
        login = resolve_url(settings.LOGIN_URL)
    except NoReverseMatch:
        login = ""
    else:
        login = f"{login}?{urlencode({'next': request.get_full_path()})}"
    try:
        logout = reverse("logout")
    except NoReverseMatch:
        logout = ""
    return {"login_url": login, "logout_url": logout}


@ensure_csrf_cookie
async def page(request: HttpRequest, conversation_id: uuid.UUID | None = None) -> HttpResponse:
    user = await request.auser()
    can_chat = user.is_authenticated or get_settings().allow_anonymous
    if conversation_id is not None and can_chat:
        # Someone else's conversation is a 404 here too, as on every endpoint.
        owner = await aget_owner(request)
        if not await Conversation.objects.filter(owner.of(), pk=conversation_id).aexists():
            raise Http404("No such conversation.")
    response = render(
        request,
        "chatstream/chat.html",
        {
            "conversation_id": str(conversation_id) if conversation_id else "",
            "can_chat": can_chat,
            "api_root": reverse("chatstream:conversations"),
            # The template cannot read request.user: in an async view that is a sync query.
            "user_name": user.get_username() if user.is_authenticated else "",
            **_account_links(request),
        },
    )
    # Model output is untrusted: no inline script or style may run, nothing loads from
    # elsewhere, and the page cannot be framed. Data reaches the script by data- attributes.
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    response.headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    return response


# --- conversations ------------------------------------------------------------------


@api_view("GET", "POST")
async def conversations(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        owner = await aget_owner(request)
        q = _query(request, "q", max_length=200)
        rows, cursor = await sync_to_async(listing.page)(owner, q, _query(request, "cursor"))
        return JsonResponse(
            {"conversations": [conversation_payload(c) for c in rows], "next": cursor}
        )
    data = _body(request)
    title = _string(data, "title", max_length=200) or ""
    assistant = await _assistant(_string(data, "assistant", max_length=100))
    owner = await aget_owner(request, create=True)
    conversation = Conversation(
        title=title, assistant=assistant or await turns.adefault_assistant()
    )
    owner.assign(conversation)
    await conversation.asave()
    return JsonResponse(conversation_payload(conversation, []), status=201)


@api_view("GET", "PATCH", "DELETE")
async def conversation(request: HttpRequest, conversation_id: str) -> HttpResponse:
    _, conversation = await _conversation(request, conversation_id)
    if request.method == "GET":
        messages = [m async for m in turns.current_messages(conversation.pk)]
        return JsonResponse(conversation_payload(conversation, messages))
    if request.method == "DELETE":
        await turns.adelete_conversation(conversation)
        return HttpResponse(status=204)
    data = _body(request)
    title = _string(data, "title", max_length=200)
    slug = _string(data, "assistant", max_length=100)
    if title is None and slug is None:
        raise BadRequest("Give a 'title' or an 'assistant' to change.", code="nothing_to_change")
    if title is not None:
        conversation.title = title
    if slug is not None:
        conversation.assistant = await _assistant(slug)
    await conversation.asave()
    return JsonResponse(conversation_payload(conversation))


@api_view("GET")
async def export_conversation(request: HttpRequest, conversation_id: str) -> HttpResponse:
    _, conversation = await _conversation(request, conversation_id)
    fmt = request.GET.get("format", "md")
    if fmt not in export.FORMATS:
        raise BadRequest("'format' is md or json.", code="invalid_format")
    messages = [m async for m in turns.current_messages(conversation.pk)]
    render = export.as_markdown if fmt == "md" else export.as_json
    response = HttpResponse(render(conversation, messages), content_type=export.FORMATS[fmt])
    name = export.filename(conversation, fmt)
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@api_view("GET")
async def assistants(request: HttpRequest) -> HttpResponse:
    await aget_owner(request)
    rows = [a async for a in Assistant.objects.filter(is_active=True)]
    return JsonResponse({"assistants": [turns.assistant_info(a) for a in rows]})


# --- messages -----------------------------------------------------------------------


@api_view("POST")
async def messages(request: HttpRequest, conversation_id: str) -> HttpResponseBase:
    def find() -> tuple[Owner, Conversation, str]:  # on the pool, with the limits and rows
        owner, conversation = _owned_conversation(request, conversation_id)
        content = _body(request).get("content")
        if not isinstance(content, str):
            raise BadRequest("'content' must be a string.", code="invalid_content")
        return owner, conversation, content

    user_message, reply = await turns.astart_reply_from(find)
    return await _started(request, user_message, reply)


@api_view("POST")
async def regenerate(request: HttpRequest, message_id: str) -> HttpResponseBase:
    owner, message = await _message(request, message_id)
    if message.role != Role.ASSISTANT:
        raise Conflict("Only an assistant reply can be regenerated.", code="not_a_reply")
    user_message, reply = await turns.aregenerate(owner, message)
    return await _started(request, user_message, reply)


@api_view("POST")
async def edit(request: HttpRequest, message_id: str) -> HttpResponseBase:
    owner, question = await _message(request, message_id)
    content = _body(request).get("content")
    if not isinstance(content, str):
        raise BadRequest("'content' must be a string.", code="invalid_content")
    user_message, reply = await turns.aedit(owner, question, content)
    return await _started(request, user_message, reply)


@api_view("GET")
async def versions(request: HttpRequest, message_id: str) -> HttpResponse:
    """A message's versions, oldest first; a question's each with the reply it got."""
    _, message = await _message(request, message_id)

    def gather() -> list[dict[str, Any]]:
        found = []
        for version in turns.versions(message):
            item = message_payload(version)
            if version.role == Role.USER:
                reply = turns.reply_to(version)
                item["reply"] = message_payload(reply) if reply else None
            found.append(item)
        return found

    return JsonResponse({"versions": await sync_to_async(gather)()})


@api_view("GET")
async def message(request: HttpRequest, message_id: str) -> HttpResponse:
    _, message = await _message(request, message_id)
    if message.status == Status.STREAMING:
        # Its generation may have ended (the row's write still retried) or died.
        with contextlib.suppress(ReplyLogUnavailable):  # then the row is all we know
            if not await get_reply_log().is_alive(str(message.pk)):
                message = await recover(str(message.pk)) or message
    return JsonResponse(message_payload(message))


@api_view("POST")
async def stop(request: HttpRequest, message_id: str) -> HttpResponse:
    _, message = await _message(request, message_id)
    if message.status == Status.STREAMING:
        log = get_reply_log()
        if await log.is_alive(str(message.id)):
            await log.request_stop(str(message.id))
            return JsonResponse({"status": "stopping"}, status=202)
        message = await recover(str(message.id), log) or message
    return JsonResponse({"status": message.status, "message": message_payload(message)})


# --- the stream ---------------------------------------------------------------------


def _resume_offset(request: HttpRequest) -> int:
    # The header wins: a reconnecting EventSource sends it while its URL keeps the old query.
    raw = request.META.get("HTTP_LAST_EVENT_ID") or request.GET.get("last_event_id") or "0"
    try:
        offset = int(raw)
    except ValueError:
        raise InvalidOffset(f"The resume offset {raw[:20]!r} is not an integer.") from None
    if offset < 0:
        raise InvalidOffset("The resume offset cannot be negative.")
    return offset


def _encode(item: reading.Item) -> list[bytes]:
    if isinstance(item, reading.Delta):
        return [sse.delta(item.text, item.end, "delta" if item.kind == ANSWER else item.kind)]
    if isinstance(item, reading.Ending):
        events = []
        if item.final.get("error"):
            events.append(sse.encode_json(item.final["error"], event="error"))
        done = {key: item.final.get(key) for key in ("status", "finish_reason", "usage", "message")}
        return [*events, sse.encode_json(done, event="done", id=item.end)]
    return [sse.comment("keepalive")]


async def _events(
    items: AsyncGenerator[reading.Item, None], first: bytes = b""
) -> AsyncGenerator[bytes, None]:
    yield sse.retry(get_settings().retry_ms) + first
    if first:
        del first  # sent: a stream open for minutes keeps none of its start,
        yield b""  # nor does Django's handler, which holds the last part it sent
    try:
        async with contextlib.aclosing(items):
            async for item in items:
                for event in _encode(item):
                    yield event
    except ReplyLogUnavailable as error:
        # No done: the browser's EventSource reconnects and resumes from its offset.
        yield sse.encode_json(error.as_dict(), event="error")


async def _replay(
    items: list[reading.Delta | reading.Ending],
) -> AsyncGenerator[reading.Item, None]:
    for item in items:
        yield item


async def _unavailable(error: ReplyLogUnavailable) -> AsyncGenerator[bytes, None]:
    # A 200 with an error event and no done: EventSource retries (it gives up on a 5xx).
    yield sse.retry(get_settings().retry_ms)
    yield sse.encode_json(error.as_dict(), event="error")


async def _own_live_length(owner: Owner, reply_id: str, offset: int) -> int | None:
    """The reply's length if its log holds it for this owner, else ``None``.

    Most streams start while their reply is live: they then need no database.
    """
    log = get_reply_log()
    try:
        if await log.owner(reply_id) != owner.key:
            return None
        return await log.length_reaching(reply_id, offset)
    except ReplyLogUnavailable:
        return None  # the database path below answers (and reports it)


@api_view("GET")
async def stream(request: HttpRequest, message_id: str) -> HttpResponseBase:
    owner = await dbpool.run(get_owner, request)
    reply_id = str(_uuid(message_id))
    offset = _resume_offset(request)
    # Compressing middleware (GZipMiddleware and kin) reads Accept-Encoding when the
    # response passes; without it they leave the stream alone, unbuffered.
    request.META.pop("HTTP_ACCEPT_ENCODING", None)
    length = await _own_live_length(owner, reply_id, offset)
    if length is not None:
        return await _follow(reply_id, offset, length)
    message = await dbpool.run(_get_message, owner, message_id)
    if message.role != Role.ASSISTANT:
        raise NotFound("No such reply.")
    if message.status == Status.STREAMING:
        try:
            length = await get_reply_log().length_reaching(reply_id, offset)
            if length is None:
                message = await reading.finished(reply_id)
        except ReplyLogUnavailable as error:
            return EventStreamResponse(_unavailable(error))
    if length is None:
        length = len(message.content) + len(message.reasoning)
        if offset > length:
            raise InvalidOffset(f"The reply is only {length} characters long.")
        return EventStreamResponse(_events(_replay(reading.rest_of(message, offset))))
    return await _follow(reply_id, offset, length)


async def _follow(reply_id: str, offset: int, length: int) -> HttpResponseBase:
    if offset > length:
        raise InvalidOffset(f"The reply is only {length} characters long so far.")
    # The lookups ran on the pool: the request's thread holds no connection while it streams.
    return EventStreamResponse(_events(reading.follow(reply_id, offset)))


def _database_answers() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


@api_view("GET")
async def health(request: HttpRequest) -> HttpResponse:
    """For load balancers: 200 when the database and the reply log answer, else 503."""
    checks = {}
    for name, check in (
        ("database", sync_to_async(_database_answers)),
        ("reply_log", get_reply_log().ping),
    ):
        try:
            await check()
            checks[name] = "ok"
        except Exception as exc:
            logger.warning("Health check %s failed: %s", name, exc)
            checks[name] = "error"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "error", "checks": checks}, status=200 if healthy else 503
    )


@csrf_exempt
@login_not_required
async def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    return JsonErrorResponse(NotFound("No such API endpoint."))
