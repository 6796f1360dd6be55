"""A host project's URLconf: chatstream under a prefix of its own."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [path("chat/", include("chatstream.urls"))]
