from __future__ import annotations

from django.apps import AppConfig


class ChatstreamConfig(AppConfig):
    name = "chatstream"
    verbose_name = "chatstream"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chatstream import checks, deletion, ownership, pricing  # noqa: F401, PLC0415 (registers receivers)
