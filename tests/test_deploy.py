"""Production settings and operations: check --deploy, health, and what logs never hold."""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.test import AsyncClient, override_settings

from chatstream.models import Message
from tests.conftest import POSTGRES, ROOT, new_postgres_database
from tests.fake_openai import FakeOpenAI, Script
from tests.settings import CHATSTREAM as TEST_CHATSTREAM
from tests.test_generation import upstream
from tests.test_views import finish, new_conversation, send


def test_check_deploy_is_clean_with_production_settings() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(60),
        "DJANGO_ALLOWED_HOSTS": "chat.example.com",
        "DJANGO_CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.fixture
def postgres_database() -> Iterator[tuple[str, str]]:
    """(URL, name) of a new PostgreSQL database of this test's own; skips without one."""
    name = f"chatstream_pool_{uuid.uuid4().hex}"
    with new_postgres_database(name) as url:
        if url is None:
            pytest.skip("no PostgreSQL on 127.0.0.1:5432")
        yield url, name


def _connections_to(name: str) -> int:
    with psycopg.connect(f"{POSTGRES}/test") as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [name]
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("pool_size", [3, 0])
def test_postgresql_connections_are_pooled(
    fresh_server: Any, fake_openai: FakeOpenAI, postgres_database: tuple[str, str], pool_size: int
) -> None:
    url, name = postgres_database
    server = fresh_server(DATABASE_URL=url, DJANGO_DB_POOL_SIZE=str(pool_size))
    with server.client() as client:
        for i in range(3):  # whole replies: the POST, the generation, the stream
            started = client.start(fake_openai.script(f"pool-{i}", Script(tokens=["a", "b"])))
            assert client.read_all(started["stream_url"])[-1].event == "done"
    held = _connections_to(name)
    if pool_size:
        assert 1 <= held <= pool_size  # kept open for the next requests, never more
    else:
        assert held == 0  # each request opened its own and closed it


def test_production_settings_refuse_to_start_without_a_secret_key() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "project.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Set DJANGO_SECRET_KEY" in result.stderr


def _python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "project.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("setting", ["12345", "0"])
def test_the_asgi_entry_point_freezes_what_it_loaded_and_sets_the_collectors_threshold(
    setting: str,
) -> None:
    pythons = int(_python("import gc; print(gc.get_threshold()[0])"))
    code = "import gc, project.asgi; print(gc.get_threshold()[0], gc.get_freeze_count())"
    threshold, frozen = map(
        int, _python(code, DJANGO_DEBUG="1", DJANGO_GC_THRESHOLD=setting).split()
    )
    assert threshold == (int(setting) or pythons)
    assert frozen > 50_000  # Django, the SDK and the app: left out of every collection


@pytest.mark.django_db(transaction=True)
async def test_health_reports_database_and_reply_log() -> None:
    response = await AsyncClient().get("/api/health/")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "reply_log": "ok"}}


@pytest.mark.django_db(transaction=True)
async def test_health_is_503_when_redis_is_unreachable() -> None:
    log = {
        "BACKEND": "chatstream.replylog.redis.RedisReplyLog",
        "LOCATION": "redis://127.0.0.1:9/0",
    }
    with override_settings(CHATSTREAM={**TEST_CHATSTREAM, "REPLY_LOG": log}):
        response = await AsyncClient().get("/api/health/")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "reply_log": "error"}


@pytest.mark.django_db(transaction=True)
async def test_logs_hold_neither_the_api_key_nor_message_text(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    secret_text = f"my private words {uuid.uuid4().hex}"
    reply_text = f"private reply {uuid.uuid4().hex}"
    ok = fake_openai.script(secret_text, Script(tokens=[reply_text]))
    refused = fake_openai.script(f"{secret_text} again", Script(status=401))
    settings = upstream(fake_openai)
    settings["CONNECTIONS"]["default"]["OPTIONS"]["api_key"] = "sk-live-SECRET-0123456789"
    caplog.set_level(logging.DEBUG, logger="chatstream")
    caplog.set_level(logging.INFO)
    with override_settings(CHATSTREAM=settings):
        client = AsyncClient()
        conversation = await new_conversation(client)
        await finish(await send(client, conversation, ok))
        failed = await send(client, conversation, refused)
        await finish(failed)
    reply = await Message.objects.aget(pk=failed["assistant_message"]["id"])
    assert reply.error_code == "upstream_auth"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "reply finished" in logged  # the per-reply line is there...
    assert '"status": "error"' in logged and '"error": "upstream_auth"' in logged
    for secret in ("sk-live-SECRET", "sk-secret", secret_text, reply_text):
        assert secret not in logged  # ...without the key, the prompt or the reply
    assert "sk-" not in reply.error_message
