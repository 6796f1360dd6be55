"""The demo project's URLs, plus the baseline relay and the benchmark's counters."""

from __future__ import annotations

from django.urls import include, path

from bench import baseline, floor

urlpatterns = [
    path("bench/baseline/", baseline.stream),
    path("bench/stats/", baseline.stats),
    path("bench/floor/", floor.django_stream),
    path("", include("chatstream.urls")),
]
