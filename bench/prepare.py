"""Fill a fresh database with owners and conversations for the load client.

Run by ``bench/run.py`` once per run (``python -m bench.prepare COUNT OUT.json``),
so that creating conversations is not what the scenarios measure. Each owner is an
anonymous visitor with its own session, as a browser would be. A third argument
gives every conversation that many earlier turns (``earlier_turns``).
"""

from __future__ import annotations

import json
import secrets
import sys
import uuid
from datetime import timedelta

import django


def earlier_turns(count: int) -> list[dict[str, str]]:
    """``count`` question-and-answer pairs of everyday length, as the model is sent them."""
    turns = []
    for i in range(count):
        question = f"Question {i}: " + "how would you explain this part again, briefly? " * 6
        answer = f"Answer {i}: " + "Here is the idea, step by step, with an example. " * 12
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return turns


def main() -> None:
    count, out = int(sys.argv[1]), sys.argv[2]
    history = earlier_turns(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    django.setup()
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import transaction
    from django.utils import timezone

    from chatstream.models import Assistant, Conversation, Message, Status
    from chatstream.ownership import ANONYMOUS_OWNER_KEY

    assistant = Assistant.objects.get(is_default=True)
    rows = []
    with transaction.atomic():
        conversations = []
        for _ in range(count):
            owner = uuid.uuid4().hex
            session = SessionStore()
            session[ANONYMOUS_OWNER_KEY] = owner
            session.create()
            conversation = Conversation(assistant=assistant, anonymous_owner=owner)
            conversations.append(conversation)
            rows.append({"session": session.session_key, "csrf": secrets.token_hex(16)})
        Conversation.objects.bulk_create(conversations)
        began = timezone.now() - timedelta(hours=1)
        Message.objects.bulk_create(
            Message(
                conversation=conversation,
                role=turn["role"],
                content=turn["content"],
                status=Status.COMPLETE,
                created_at=began + timedelta(seconds=i),
                finished_at=began + timedelta(seconds=i),
            )
            for conversation in conversations
            for i, turn in enumerate(history)
        )
    for row, conversation in zip(rows, conversations, strict=True):
        row["conversation"] = str(conversation.id)
    with open(out, "w") as file:
        json.dump(rows, file)


if __name__ == "__main__":
    main()
