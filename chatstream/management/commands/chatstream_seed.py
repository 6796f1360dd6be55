from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from chatstream.models import Assistant


class Command(BaseCommand):
    help = "Create a default Assistant on the 'default' connection if there is none."

    def handle(self, *args: Any, **options: Any) -> None:
        if Assistant.objects.exists():
            self.stdout.write("Assistants exist already; nothing to do.")
            return
        Assistant.objects.create(
            name="Assistant",
            slug="assistant",
            connection="default",
            system_prompt="You are a helpful assistant. Answer clearly and concisely.",
            is_default=True,
        )
        self.stdout.write("Created the default assistant.")
