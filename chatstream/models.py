from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Assistant(models.Model):
    """An operator-managed profile; its connection names a key of ``CHATSTREAM['CONNECTIONS']``.

    Secrets never live here: the connection's credentials stay in settings.
    """

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    connection = models.CharField(max_length=100, default="default")
    model = models.CharField(max_length=200, blank=True, help_text="Empty: the connection's MODEL.")
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    context_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The most tokens of history to send (oldest turns are left out first; "
        "the system prompt and the new message always go). Empty: the connection's "
        "CONTEXT_TOKENS, else a budget safe for the model (see chatstream/context.py).",
    )
    is_default = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-is_default", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=Q(is_default=True),
                name="chatstream_one_default_assistant",
            )
        ]

    def __str__(self) -> str:
        return self.name


class ModelPrice(models.Model):
    """What a model costs per million tokens, in ``currency``; matched by exact model name.

    Cached input and reasoning are billed apart by some upstreams: empty, they cost
    what input and output cost.
    """

    model = models.CharField(max_length=200, unique=True, help_text="As replies name it.")
    currency = models.CharField(max_length=3, default="USD", help_text="ISO 4217, e.g. USD.")
    input_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    cached_input_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="Empty: as input."
    )
    output_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    reasoning_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="Empty: as output."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return f"{self.model} ({self.currency})"


class Conversation(models.Model):
    """Owned by a user, or (anonymous chat) by an id kept in the session's data."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="chatstream_conversations",
    )
    anonymous_owner = models.CharField(max_length=64, blank=True, db_index=True)
    assistant = models.ForeignKey(
        Assistant, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Role(models.TextChoices):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class Status(models.TextChoices):
    STREAMING = "streaming"
    COMPLETE = "complete"
    STOPPED = "stopped"
    ERROR = "error"
    INTERRUPTED = "interrupted"


TERMINAL_STATUSES = frozenset({Status.COMPLETE, Status.STOPPED, Status.ERROR, Status.INTERRUPTED})


class Message(models.Model):
    """One turn. An assistant reply is written O(1) times: created, checkpointed, finalised."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    #: The model's reasoning (or its summary), shown apart from the answer.
    reasoning = models.TextField(blank=True)
    #: The order of the reply's parts, ``[["reasoning", n], ["answer", m], ...]``; null when
    #: there is no reasoning. Offsets count both kinds in this order.
    layout = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    # The user message an assistant reply answers; regenerating supersedes the old reply.
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies"
    )
    superseded = models.BooleanField(default=False)
    #: The version this one replaced: an edited question's original, a regenerated
    #: reply's predecessor. The old versions stay, superseded, and reachable.
    previous = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="next_versions"
    )
    assistant = models.ForeignKey(
        Assistant, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages"
    )
    model = models.CharField(max_length=200, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_tokens = models.PositiveIntegerField(null=True, blank=True)
    cached_tokens = models.PositiveIntegerField(null=True, blank=True)
    usage_estimated = models.BooleanField(default=False)
    #: What the reply cost, computed once when it ended from its usage and its model's price.
    cost = models.DecimalField(max_digits=14, decimal_places=8, null=True, blank=True)
    cost_currency = models.CharField(max_length=3, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(status="streaming"),
                name="chatstream_one_streaming_reply_per_conversation",
            )
        ]
        indexes = [models.Index(fields=["status"], name="chatstream_msg_status")]

    def __str__(self) -> str:
        return f"{self.role} {self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES
