"""Deleting a reply that streams stops it, however it is deleted.

Its conversation deleted (the API, the admin, a bulk delete) or its owner
deleted: the rows go by cascade, and a cascade sends ``post_delete`` for each
message while a receiver listens. The stop is asked once the deletion commits;
the generation then closes its upstream and ends its log (its row's final write
finds no row, which is fine), so readers get ``done`` and nothing is left behind.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from chatstream.models import Message, Role, Status
from chatstream.replylog import get_reply_log

logger = logging.getLogger(__name__)


@receiver(post_delete, sender=Message, dispatch_uid="chatstream-stop-deleted-replies")
def _stop_deleted_reply(sender: type[Message], instance: Message, **kwargs: Any) -> None:
    if instance.role == Role.ASSISTANT and instance.status == Status.STREAMING:
        stop = functools.partial(_request_stop, str(instance.pk))
        transaction.on_commit(stop, using=kwargs.get("using"))


def _request_stop(reply_id: str) -> None:
    try:
        async_to_sync(get_reply_log().request_stop)(reply_id)
    except Exception as exc:  # the deletion stands; the reply ends at its own pace
        logger.warning("Could not stop deleted reply %s: %s", reply_id, exc)
