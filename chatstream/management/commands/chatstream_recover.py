from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand

from chatstream.ending import recover_all
from chatstream.models import Message, Status
from chatstream.replylog import get_reply_log


class Command(BaseCommand):
    help = (
        "Finalise as 'interrupted' every streaming reply whose generation is gone. "
        "With the in-process reply log no other process can own one, so run it before "
        "starting the server; with Redis only replies whose lease expired are touched."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        ids = [
            str(pk)
            for pk in Message.objects.filter(status=Status.STREAMING).values_list("pk", flat=True)
        ]
        recovered = async_to_sync(self._recover)(ids)
        self.stdout.write(f"Recovered {recovered} of {len(ids)} streaming replies.")

    async def _recover(self, ids: list[str]) -> int:
        log = get_reply_log()
        try:
            return await recover_all(ids, log)
        finally:
            await log.aclose()
