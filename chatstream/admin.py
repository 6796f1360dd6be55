from __future__ import annotations

from django.contrib import admin

from chatstream.models import Assistant, Conversation, Message

_MESSAGE_FIELDS = (
    "role",
    "status",
    "content",
    "model",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "usage_estimated",
    "ttft_ms",
    "duration_ms",
    "error_code",
    "error_message",
    "created_at",
    "finished_at",
)


@admin.register(Assistant)
class AssistantAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "connection", "model", "is_default", "is_active")
    list_filter = ("is_active", "connection")
    prepopulated_fields = {"slug": ("name",)}
    search_fields = ("name", "slug", "model")


class MessageInline(admin.TabularInline):
    model = Message
    fields = _MESSAGE_FIELDS
    readonly_fields = _MESSAGE_FIELDS
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("__str__", "owner", "anonymous_owner", "assistant", "updated_at")
    list_filter = ("assistant", "updated_at")
    search_fields = ("title", "owner__username", "anonymous_owner")
    inlines = [MessageInline]
    readonly_fields = ("id", "created_at", "updated_at")


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "role", "status", "model", "completion_tokens", "created_at")
    list_filter = ("status", "role", "finish_reason")
    search_fields = ("id",)
    readonly_fields = ("id", "conversation", "reply_to", "assistant", *_MESSAGE_FIELDS)

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False
