"""The operator's side: assistants (with a connection check), conversations, messages,
replies streaming now (with a stop button) and usage totals.

Messages are read-only: they are the record of what was said and spent. The pages
that are not a model's (live replies, usage) hang off the Message admin's URLs and
are linked from its list and from the app's index.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from chatstream import admin_views
from chatstream.conf import get_settings
from chatstream.models import Assistant, Conversation, Message, ModelPrice, Status

_MESSAGE_FIELDS = (
    "role",
    "status",
    "reasoning",
    "content",
    "model",
    "finish_reason",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "usage_estimated",
    "cost",
    "cost_currency",
    "ttft_ms",
    "duration_ms",
    "error_code",
    "error_message",
    "created_at",
    "finished_at",
)


# --- assistants -------------------------------------------------------------------------


class AssistantForm(forms.ModelForm):
    temperature = forms.FloatField(
        required=False, min_value=0, max_value=2, help_text="Empty: the model's default."
    )

    class Meta:
        model = Assistant
        fields = "__all__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = sorted(get_settings().connections)
        choices = [(name, name) for name in names]
        current = self.instance.connection if self.instance.pk else ""
        if current and current not in names:
            choices.append((current, f"{current} (not configured)"))
        field = self.fields["connection"]
        field.widget = forms.Select(choices=choices)
        field.help_text = "A name from CHATSTREAM['CONNECTIONS'] (credentials stay in settings)."

    def clean_connection(self) -> str:
        name = self.cleaned_data["connection"]
        connections = get_settings().connections
        if name not in connections:
            raise forms.ValidationError(
                "The connection %(name)r is not configured: CHATSTREAM['CONNECTIONS'] has "
                "%(known)s.",
                code="unknown_connection",
                params={"name": name, "known": ", ".join(sorted(connections))},
            )
        return name

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        connection = get_settings().connections.get(data.get("connection", ""))
        if connection and not data.get("model") and not connection.model and not connection.is_demo:
            self.add_error(
                "model",
                f"Name a model: the connection {connection.name!r} has no MODEL of its own.",
            )
        return data

    def _get_validation_exclusions(self) -> set[str]:
        # Saving a new default unsets the old one (AssistantAdmin.save_model), so the
        # one-default constraint must not refuse the form before that can happen. Django
        # has no public hook between building the instance and checking its constraints.
        exclusions: set[str] = super()._get_validation_exclusions()  # type: ignore[misc]
        return {*exclusions, "is_default"}


@admin.register(Assistant)
class AssistantAdmin(admin.ModelAdmin):
    form = AssistantForm
    list_display = ("name", "slug", "connection", "model", "is_default", "is_active")
    list_filter = ("is_active", "is_default", "connection")
    prepopulated_fields = {"slug": ("name",)}
    search_fields = ("name", "slug", "model")
    actions = ["check_connection"]
    fieldsets = [
        (None, {"fields": ("name", "slug", "is_active", "is_default")}),
        ("Model", {"fields": ("connection", "model", "system_prompt")}),
        ("Parameters", {"fields": ("temperature", "max_output_tokens", "context_tokens")}),
    ]

    def save_model(self, request: HttpRequest, obj: Assistant, form: Any, change: bool) -> None:
        with transaction.atomic():
            previous = []
            if obj.is_default:
                previous = list(Assistant.objects.filter(is_default=True).exclude(pk=obj.pk))
                Assistant.objects.filter(pk__in=[a.pk for a in previous]).update(is_default=False)
            super().save_model(request, obj, form, change)
        for assistant in previous:
            messages.info(request, f"“{assistant}” is no longer the default assistant.")
        if obj.is_default and not obj.is_active:
            messages.warning(
                request,
                f"“{obj}” is the default but inactive: new conversations use the first "
                "active assistant instead.",
            )

    @admin.action(description="Check connection: does the model answer?", permissions=["change"])
    def check_connection(self, request: HttpRequest, queryset: QuerySet[Assistant]) -> None:
        admin_views.check_assistants(request, queryset)

    def get_urls(self) -> list[URLPattern]:
        urls = [
            path(
                "<path:object_id>/check-connection/",
                self.admin_site.admin_view(self.check_connection_view),
                name="chatstream_assistant_check",
            )
        ]
        return urls + super().get_urls()

    def check_connection_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's "Check connection" button (a POST: it sends a request)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        assistant = self.get_object(request, object_id)
        if assistant is None:
            messages.warning(request, f"There is no assistant with ID “{object_id}”.")
            changelist = f"{self.admin_site.name}:chatstream_assistant_changelist"
            return HttpResponseRedirect(reverse(changelist))
        if not self.has_change_permission(request, assistant):
            raise PermissionDenied
        admin_views.check_assistants(request, [assistant])
        return HttpResponseRedirect(
            reverse(f"{self.admin_site.name}:chatstream_assistant_change", args=[assistant.pk])
        )


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = (
        "model",
        "currency",
        "input_per_million",
        "cached_input_per_million",
        "output_per_million",
        "reasoning_per_million",
        "updated_at",
    )
    search_fields = ("model",)


# --- conversations ----------------------------------------------------------------------


class MessageStatusFilter(admin.SimpleListFilter):
    """Conversations that have a message with this status (a streaming or failed reply)."""

    title = "message status"
    parameter_name = "message_status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(Status.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() not in Status.values:
            return queryset
        having = Message.objects.filter(conversation=OuterRef("pk"), status=self.value())
        return queryset.filter(Exists(having))


class MessageInline(admin.TabularInline):
    model = Message
    fields = _MESSAGE_FIELDS
    readonly_fields = _MESSAGE_FIELDS
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _owner_search_fields() -> tuple[str, ...]:
    user_model = get_user_model()
    names = {user_model.USERNAME_FIELD, user_model.get_email_field_name()}
    fields = {f.name for f in user_model._meta.get_fields()}
    return tuple(f"owner__{name}" for name in sorted(names & fields))


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("__str__", "owner_display", "assistant", "created_at", "updated_at")
    list_filter = ("assistant", MessageStatusFilter, "created_at", "updated_at")
    list_select_related = ("owner", "assistant")
    search_fields = ("title", "anonymous_owner", *_owner_search_fields())
    date_hierarchy = "created_at"
    inlines = [MessageInline]
    fields = ("id", "title", "assistant", "owner", "anonymous_owner", "created_at", "updated_at")
    readonly_fields = ("id", "owner", "anonymous_owner", "created_at", "updated_at")

    @admin.display(description="owner", ordering="owner")
    def owner_display(self, obj: Conversation) -> str:
        return admin_views.owner_label(obj.owner, obj.anonymous_owner)

    def delete_model(self, request: HttpRequest, obj: Conversation) -> None:
        self._stop_streaming(request, Conversation.objects.filter(pk=obj.pk))
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        self._stop_streaming(request, queryset)
        super().delete_queryset(request, queryset)

    def _stop_streaming(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        """Stop replies still streaming there: deleting the rows would not stop the model."""
        ids = Message.objects.filter(conversation__in=queryset, status=Status.STREAMING)
        admin_views.request_stops(request, [str(pk) for pk in ids.values_list("pk", flat=True)])


# --- messages ---------------------------------------------------------------------------


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "conversation_link",
        "role",
        "status",
        "assistant",
        "model",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "ttft_ms",
        "duration_ms",
        "error_code",
        "created_at",
    )
    list_filter = (
        "status",
        "role",
        "finish_reason",
        "assistant",
        "usage_estimated",
        "error_code",
        "created_at",
    )
    list_select_related = ("conversation", "assistant")
    search_fields = ("id", "conversation__id", "model", "error_code")
    date_hierarchy = "created_at"
    readonly_fields = (
        "id",
        "conversation",
        "reply_to",
        "assistant",
        "superseded",
        *_MESSAGE_FIELDS,
    )

    @admin.display(description="conversation", ordering="conversation")
    def conversation_link(self, obj: Message) -> str:
        url = reverse(
            f"{self.admin_site.name}:chatstream_conversation_change", args=[obj.conversation_id]
        )
        return format_html('<a href="{}">{}</a>', url, obj.conversation)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        return False

    # Deleting stays with the permission: deleting a conversation cascades to its messages.

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        urls = [
            path("live/", wrap(self.live_view), name="chatstream_message_live"),
            path(
                "live/<uuid:reply_id>/stop/",
                wrap(self.stop_view),
                name="chatstream_message_stop",
            ),
            path("usage/", wrap(self.usage_view), name="chatstream_message_usage"),
        ]
        return urls + super().get_urls()

    def live_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.live_view(self, request)

    def stop_view(self, request: HttpRequest, reply_id: Any) -> HttpResponse:
        return admin_views.stop_view(self, request, str(reply_id))

    def usage_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.usage_view(self, request)
