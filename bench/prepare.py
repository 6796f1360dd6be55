"""Fill a fresh database with owners and conversations for the load client.

Run by ``bench/run.py`` once per run (``python -m bench.prepare COUNT OUT.json``),
so that creating conversations is not what the scenarios measure. Each owner is an
anonymous visitor with its own session, as a browser would be.
"""

from __future__ import annotations

import json
import secrets
import sys
import uuid

import django


def main() -> None:
    count, out = int(sys.argv[1]), sys.argv[2]
    django.setup()
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import transaction

    from chatstream.models import Assistant, Conversation
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
    for row, conversation in zip(rows, conversations, strict=True):
        row["conversation"] = str(conversation.id)
    with open(out, "w") as file:
        json.dump(rows, file)


if __name__ == "__main__":
    main()
