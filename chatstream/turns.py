"""Taking turns in a conversation: store the user's message, start the reply, regenerate, delete.

All of a turn's database work happens here, before the 201 (and so before any
stream's first byte). One streaming reply per conversation is the database's
job (a conditional unique constraint), so two workers cannot both start one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from chatstream import context, dbpool, limits, pricing
from chatstream.compiled import Compiled, CompiledInsert, CompiledUpdate
from chatstream.conf import ChatstreamSettings, get_settings
from chatstream.ending import recover, recover_all
from chatstream.exceptions import (
    BadRequest,
    ChatstreamError,
    Conflict,
    ContentTooLong,
    ReplyInProgress,
    ServiceUnavailable,
)
from chatstream.generation import ReplySpec, registry
from chatstream.models import Assistant, Conversation, Message, Role, Status
from chatstream.ownership import Owner
from chatstream.pricing import Price
from chatstream.providers.base import ChatRequest
from chatstream.providers.demo import DEMO_MODEL
from chatstream.serializers import assistant_payload
from chatstream.text import is_storable
from chatstream.tokens import estimate_messages

_TITLE_LENGTH = 60

# (the user's message, the new reply, the request's messages)
Turn = tuple[Message, Message, list[dict[str, str]]]
# Makes a turn's rows for (the assistant, the model, the history's token budget).
Create = Callable[[Assistant | None, str, int], Turn]
# Who takes the turn, in which conversation, and how its rows are made: run on the
# pool in the same hop as the limits and the rows (it may query, and raise NotFound).
Start = Callable[[], tuple[Owner, Conversation, Create]]


def current_messages(conversation_id: Any) -> QuerySet[Message]:
    """The conversation as people see it: regenerated replies are left out."""
    return Message.objects.filter(conversation_id=conversation_id, superseded=False).order_by(
        "created_at"
    )


_HISTORY = Compiled(
    Message,
    lambda conversation, before: (
        current_messages(conversation).filter(created_at__lt=before).values_list("role", "content")
    ),
    ["conversation", "created_at"],
)
_MESSAGES = CompiledInsert(Message)
_CONVERSATION = CompiledUpdate(Conversation, lambda pk: Conversation.objects.filter(pk=pk), ["id"])


def _defaults() -> QuerySet[Assistant]:
    return Assistant.objects.filter(is_active=True).order_by("-is_default", "name")


def default_assistant() -> Assistant | None:
    return _defaults().first()


async def adefault_assistant() -> Assistant | None:
    return await _defaults().afirst()


def resolve_target(
    assistant: Assistant | None, settings: ChatstreamSettings
) -> tuple[str, str, bool]:
    """(connection name, model, is_demo) for a reply by ``assistant``."""
    name = assistant.connection if assistant else "default"
    connection = settings.connections.get(name)
    if connection is None:
        raise ServiceUnavailable(
            f"The assistant's connection {name!r} is not configured.",
            code="assistant_misconfigured",
        )
    model = (assistant.model if assistant else "") or connection.model
    if not model and connection.is_demo:
        model = DEMO_MODEL
    if not model:
        raise ServiceUnavailable(
            f"No model is set for the assistant or the connection {name!r}.",
            code="assistant_misconfigured",
        )
    return name, model, connection.is_demo


def assistant_info(assistant: Assistant) -> dict[str, Any]:
    try:
        _, model, is_demo = resolve_target(assistant, get_settings())
    except ChatstreamError:
        model, is_demo = assistant.model, False
    return assistant_payload(assistant, model=model, is_demo=is_demo)


def _validate(content: str, settings: ChatstreamSettings) -> str:
    if not content.strip():
        raise BadRequest("The message is empty.", code="empty_content")
    if not is_storable(content):
        raise BadRequest(
            "The message holds a character that cannot be stored (NUL, or a lone surrogate).",
            code="invalid_content",
        )
    if len(content) > settings.max_content_length:
        raise ContentTooLong(
            f"The message is {len(content)} characters long; "
            f"the limit is {settings.max_content_length}."
        )
    return content


def _history(reply: Message, assistant: Assistant | None, budget: int) -> list[dict[str, str]]:
    """The request's messages: the system prompt, then the turns up to the reply's question.

    Within ``budget`` estimated tokens the oldest turns are left out first; the system
    prompt and the question itself always go.
    """
    system = []
    if assistant and assistant.system_prompt:
        system.append({"role": "system", "content": assistant.system_prompt})
    rows = _HISTORY.rows(reply.conversation_id, reply.created_at)
    # Roles and empty replies are picked here, not in SQL: every reply runs this query,
    # and each condition costs more to build than the rows it would leave out.
    turns = [
        {"role": role, "content": content}
        for role, content in rows
        if role == Role.USER or (role == Role.ASSISTANT and content)
    ]
    spent = estimate_messages(system) + estimate_messages(turns[-1:])
    kept = len(turns) - 1
    while kept > 0 and spent + estimate_messages(turns[kept - 1 : kept]) <= budget:
        spent += estimate_messages(turns[kept - 1 : kept])
        kept -= 1
    return system + turns[kept:]


def _new_reply(
    conversation: Conversation, question: Message, assistant: Assistant | None, model: str
) -> Message:
    """An unsaved streaming reply to ``question``. Kept for as long as the reply streams,
    it holds ids, not the rows they name (the question may be long); the ending loads
    the conversation for ``reply_finished`` receivers, if there are any."""
    return Message(
        conversation_id=conversation.pk,
        role=Role.ASSISTANT,
        status=Status.STREAMING,
        reply_to_id=question.pk,
        assistant_id=assistant.pk if assistant else None,
        model=model,
        # After its question even where the clock's resolution is coarse.
        created_at=max(timezone.now(), question.created_at + timedelta(microseconds=1)),
    )


def _create_turn(
    conversation: Conversation, content: str, assistant: Assistant | None, model: str, budget: int
) -> Turn:
    now = timezone.now()
    try:
        with transaction.atomic():
            question = Message(
                conversation=conversation,
                role=Role.USER,
                content=content,
                status=Status.COMPLETE,
                created_at=now,
                finished_at=now,
            )
            reply = _new_reply(conversation, question, assistant, model)
            _MESSAGES.insert([question, reply])  # one INSERT for the turn
            changes: dict[str, Any] = {"updated_at": now}
            conversation.updated_at = now
            if not conversation.title:
                changes["title"] = conversation.title = " ".join(content.split())[:_TITLE_LENGTH]
            _CONVERSATION.update(changes, conversation.pk)
    except IntegrityError:
        raise ReplyInProgress() from None
    return question, reply, _history(reply, assistant, budget)


def _replace_reply(old: Message, assistant: Assistant | None, model: str, budget: int) -> Turn:
    try:
        with transaction.atomic():
            Message.objects.filter(pk=old.pk).update(superseded=True)
            question = Message.objects.get(replies=old)
            reply = _new_reply(old.conversation, question, assistant, model)
            reply.previous_id = old.pk
            reply.save(force_insert=True)
    except IntegrityError:
        raise ReplyInProgress() from None
    return question, reply, _history(reply, assistant, budget)


async def _recover_streaming(conversation_id: Any) -> bool:
    """Finalise the conversation's streaming reply if its generation died; True if so."""
    stuck = await Message.objects.filter(
        conversation_id=conversation_id, status=Status.STREAMING
    ).afirst()
    return stuck is not None and await recover(str(stuck.pk)) is not None


async def _begin(start: Start, undo: Callable[[Message, Message], None]) -> tuple[Message, Message]:
    """Check the owner's limits, create the rows (retrying once past a dead reply), start.

    Limits come first: a refused message stores nothing.
    """
    settings = get_settings()
    try:
        found, admitted, turn = await dbpool.run(_admit_and_create, start, settings)
    except limits.TooManyReplies as busy:
        # Only replies that are really alive count: orphans are finalised, then look again.
        if not await recover_all(busy.reply_ids):
            raise
        found, admitted, turn = await dbpool.run(_admit_and_create, start, settings)
    owner, conversation, create = found
    if turn is None:
        # A streaming reply holds the conversation: if its generation died, finalise it
        # and create the rows once more (the limits were counted already).
        if not await _recover_streaming(conversation.pk):
            raise ReplyInProgress()
        turn = await dbpool.run(_create, admitted, settings, create)
    question, reply, history = turn
    assistant, connection, model = admitted.assistant, admitted.connection, admitted.model
    request = ChatRequest(
        model=model,
        messages=history,
        temperature=assistant.temperature if assistant else None,
        max_tokens=assistant.max_output_tokens if assistant else None,
    )
    prompt_tokens = estimate_messages(history)
    spec = ReplySpec(
        str(reply.pk),
        connection,
        model,
        prompt_tokens,
        reply,
        owner.key,
        admitted.token_budget,
        price=admitted.price,
        cost_budget=_cost_budget(admitted, prompt_tokens),
    )
    try:
        await registry.start(spec, request)
    except Exception as exc:
        # Nothing half-started may stay behind: the reply would block the conversation.
        await dbpool.run(undo, question, reply)
        raise ServiceUnavailable(
            "The reply could not be started; try again shortly.", code="log_unavailable"
        ) from exc
    return question, reply


@dataclass(frozen=True)
class _Admission:
    """What ``_admit`` found: the limits left, and the reply's target."""

    token_budget: int | None
    money_left: Decimal | None
    assistant: Assistant | None
    connection: str
    model: str
    price: Price | None


def _admit_and_create(
    start: Start, settings: ChatstreamSettings
) -> tuple[tuple[Owner, Conversation, Create], _Admission, Turn | None]:
    """Who and where, the limits, then the rows, in one thread hop; under load each hop
    waits for a turn of a busy event loop. No turn while a reply streams."""
    owner, conversation, create = found = start()
    admitted = _admit(owner, conversation, settings)
    try:
        return found, admitted, _create(admitted, settings, create)
    except ReplyInProgress:
        return found, admitted, None


def _create(admitted: _Admission, settings: ChatstreamSettings, create: Create) -> Turn:
    assistant = admitted.assistant
    budget = context.history_budget(
        admitted.model,
        assistant=assistant.context_tokens if assistant else None,
        connection=settings.connections[admitted.connection].context_tokens,
        max_output=assistant.max_output_tokens if assistant else None,
    )
    return create(assistant, admitted.model, budget)


def _admit(owner: Owner, conversation: Conversation, settings: ChatstreamSettings) -> _Admission:
    """Limits, then the reply's target and its price."""
    limits.check_concurrent_replies(owner, settings)
    limits.check_message_rate(owner, settings)
    budget = limits.token_budget(owner, settings)
    money = limits.cost_left(owner, settings)
    assistant = conversation.assistant
    if assistant is None or not assistant.is_active:
        assistant = default_assistant()
    connection, model, _ = resolve_target(assistant, settings)
    return _Admission(budget, money, assistant, connection, model, pricing.price_for(model))


def _cost_budget(admitted: _Admission, prompt_tokens: int) -> int | None:
    """The money left today as output tokens, once the prompt is paid for."""
    price, money = admitted.price, admitted.money_left
    if price is None or money is None:
        return None
    prompt = price.cost({"prompt_tokens": prompt_tokens, "completion_tokens": 0})
    return price.tokens_for(money - (prompt or 0))


def _replace_question(
    old: Message, content: str, assistant: Assistant | None, model: str, budget: int
) -> Turn:
    """The edited question and a new reply; the old pair stays, superseded."""
    now = timezone.now()
    try:
        with transaction.atomic():
            Message.objects.filter(Q(pk=old.pk) | Q(reply_to_id=old.pk, superseded=False)).update(
                superseded=True
            )
            question = Message(
                conversation_id=old.conversation_id,
                role=Role.USER,
                content=content,
                status=Status.COMPLETE,
                previous_id=old.pk,
                created_at=max(now, old.created_at + timedelta(microseconds=1)),
                finished_at=now,
            )
            reply = _new_reply(old.conversation, question, assistant, model)
            Message.objects.bulk_create([question, reply])
            Conversation.objects.filter(pk=old.conversation_id).update(updated_at=now)
    except IntegrityError:
        raise ReplyInProgress() from None
    return question, reply, _history(reply, assistant, budget)


def _undo_turn(question: Message, reply: Message) -> None:
    Message.objects.filter(pk__in=[question.pk, reply.pk]).delete()


def _undo_replace(old: Message) -> Callable[[Message, Message], None]:
    def undo(question: Message, reply: Message) -> None:
        with transaction.atomic():
            reply.delete()
            Message.objects.filter(pk=old.pk).update(superseded=False)

    return undo


def _undo_edit(old: Message) -> Callable[[Message, Message], None]:
    def undo(question: Message, reply: Message) -> None:
        with transaction.atomic():
            Message.objects.filter(pk__in=[question.pk, reply.pk]).delete()
            # Back as it was: the old question, and the reply that was current with it.
            last = Message.objects.filter(reply_to_id=old.pk).order_by("-created_at").first()
            ids = [old.pk, *([last.pk] if last else [])]
            Message.objects.filter(pk__in=ids).update(superseded=False)

    return undo


async def astart_reply(
    owner: Owner, conversation: Conversation, content: str
) -> tuple[Message, Message]:
    return await astart_reply_from(lambda: (owner, conversation, content))


async def astart_reply_from(
    find: Callable[[], tuple[Owner, Conversation, str]],
) -> tuple[Message, Message]:
    """``astart_reply`` for the owner, conversation and content ``find`` returns.

    ``find`` runs on the pool in the hop that checks the limits and creates the rows,
    so a lookup that needs the database (a request's session and conversation) costs
    no hop of its own. It may raise, as a lookup does (``NotFound``, ``BadRequest``).
    """
    settings = get_settings()

    def start() -> tuple[Owner, Conversation, Create]:
        owner, conversation, content = find()
        _validate(content, settings)
        return owner, conversation, functools.partial(_create_turn, conversation, content)

    return await _begin(start, _undo_turn)


async def aregenerate(owner: Owner, old: Message) -> tuple[Message, Message]:
    if old.status == Status.STREAMING:
        raise ReplyInProgress()
    latest = await current_messages(old.conversation_id).filter(role=Role.ASSISTANT).alast()
    if latest is None or latest.pk != old.pk or old.reply_to_id is None:
        raise Conflict(
            "Only the conversation's last reply can be regenerated.", code="not_last_reply"
        )
    create = functools.partial(_replace_reply, old)
    return await _begin(lambda: (owner, old.conversation, create), _undo_replace(old))


async def aedit(owner: Owner, old: Message, content: str) -> tuple[Message, Message]:
    """Ask the conversation's last question again, edited: a new pair in place of the old."""
    _validate(content, get_settings())
    if old.role != Role.USER or old.superseded:
        raise Conflict(
            "Only the conversation's last question can be edited.", code="not_last_question"
        )
    current = current_messages(old.conversation_id)
    if await current.filter(status=Status.STREAMING).aexists():
        raise ReplyInProgress()
    latest = await current.filter(role=Role.USER).alast()
    if latest is None or latest.pk != old.pk:
        raise Conflict(
            "Only the conversation's last question can be edited.", code="not_last_question"
        )
    create = functools.partial(_replace_question, old, content)
    return await _begin(lambda: (owner, old.conversation, create), _undo_edit(old))


def versions(message: Message) -> list[Message]:
    """Every version of ``message`` (a question's edits, a reply's regenerations), oldest first."""
    first = message
    while first.previous_id is not None:
        first = Message.objects.get(pk=first.previous_id)
    chain = [first]
    while later := Message.objects.filter(previous_id=chain[-1].pk).order_by("created_at").first():
        chain.append(later)
    return chain


def reply_to(question: Message) -> Message | None:
    """The reply that answered this version of a question (its last)."""
    return Message.objects.filter(reply_to_id=question.pk).order_by("-created_at").first()


async def adelete_conversation(conversation: Conversation) -> None:
    """Delete it; a streaming reply is stopped by the deletion itself (``chatstream.deletion``)."""
    await conversation.adelete()
