"""The environment of the benchmark's Django processes: its settings, a database, the upstream."""

from __future__ import annotations

from pathlib import Path


def django_environment(database: Path, upstream_port: int) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "DJANGO_SECRET_KEY": "bench-secret-key-not-for-production",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SECURE_COOKIES": "0",
        "DATABASE_URL": f"sqlite:///{database}",
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "CHATSTREAM_MODEL": "bench-model",
        "CHATSTREAM_ALLOW_ANONYMOUS": "1",
    }
