from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from project import views

urlpatterns = [
    path("metrics", views.metrics, name="metrics"),  # Prometheus' default path, no slash
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("chatstream.urls")),
]
