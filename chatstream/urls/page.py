"""The chat page alone: ``include("chatstream.urls.page")``; it talks to the API's URLs,
so a host that takes the page takes the API too (``include("chatstream.urls")``)."""

from __future__ import annotations

from django.urls import path

from chatstream import views

app_name = "chatstream"

urlpatterns = [
    path("", views.page, name="page"),
    path("c/<uuid:conversation_id>/", views.page, name="conversation-page"),
]
