"""Records every ``reply_finished`` of a server under test, one JSON line per call."""

from __future__ import annotations

import json
import os
from typing import Any

from django.apps import AppConfig


def record(sender: Any, message: Any, **kwargs: Any) -> None:
    path = os.environ.get("TEST_EVENTS_FILE")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"id": str(message.id), "status": message.status}) + "\n")


class RecorderConfig(AppConfig):
    name = "tests.recorder"

    def ready(self) -> None:
        from chatstream.signals import reply_finished  # noqa: PLC0415

        reply_finished.connect(record, dispatch_uid="tests-recorder")
