"""The JSON + Server-Sent Events API alone: ``include("chatstream.urls.api")``."""

from __future__ import annotations

from django.urls import path, re_path

from chatstream import views

app_name = "chatstream"

urlpatterns = [
    path("api/conversations/", views.conversations, name="conversations"),
    path("api/conversations/<str:conversation_id>/", views.conversation, name="conversation"),
    path("api/conversations/<str:conversation_id>/messages/", views.messages, name="messages"),
    path(
        "api/conversations/<str:conversation_id>/export/",
        views.export_conversation,
        name="export",
    ),
    path("api/assistants/", views.assistants, name="assistants"),
    path("api/health/", views.health, name="health"),
    path("api/messages/<str:message_id>/", views.message, name="message"),
    path("api/messages/<str:message_id>/stream/", views.stream, name="stream"),
    path("api/messages/<str:message_id>/regenerate/", views.regenerate, name="regenerate"),
    path("api/messages/<str:message_id>/stop/", views.stop, name="stop"),
    path("api/messages/<str:message_id>/edit/", views.edit, name="edit"),
    path("api/messages/<str:message_id>/versions/", views.versions, name="versions"),
    re_path(r"^api/(?P<path>.*)$", views.not_found),
]
