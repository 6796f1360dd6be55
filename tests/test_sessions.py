"""The project's session store: read from Redis, kept in the table, served when Redis is down."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.sessions.models import Session
from django.core.cache import caches

from project import sessions
from project.sessions import SessionStore

pytestmark = pytest.mark.django_db

DOWN = "redis://127.0.0.1:1/0"  # nothing listens: every command fails at once


@pytest.fixture
def redis_sessions(settings: Any, redis_url: str) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "sessions": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": "chatstream-test-sessions",
        },
    }
    settings.SESSION_CACHE_ALIAS = "sessions"


@pytest.fixture
def redis_down(settings: Any) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "sessions": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": DOWN},
    }
    settings.SESSION_CACHE_ALIAS = "sessions"


def saved(**data: Any) -> str:
    store = SessionStore()
    store.update(data)
    store.save(must_create=True)
    assert store.session_key is not None
    return store.session_key


@pytest.mark.usefixtures("redis_sessions")
def test_a_session_is_read_from_redis_without_a_query(django_assert_num_queries: Any) -> None:
    key = saved(owner="abc")
    with django_assert_num_queries(0):
        assert SessionStore(key).load() == {"owner": "abc"}
        assert SessionStore().exists(key)
    caches["sessions"].delete(SessionStore.cache_key_prefix + key)
    with django_assert_num_queries(1):  # a miss reads the table once and refills the cache
        assert SessionStore(key).load() == {"owner": "abc"}
    with django_assert_num_queries(0):
        assert SessionStore(key).load() == {"owner": "abc"}


@pytest.mark.usefixtures("redis_sessions")
def test_cached_copies_expire_within_the_bound_and_a_sign_out_removes_them() -> None:
    key = saved(owner="abc")
    ttl = caches["sessions"].ttl(SessionStore.cache_key_prefix + key)
    assert 0 < ttl <= sessions.CACHE_SECONDS
    store = SessionStore(key)
    store.flush()  # what logout() does
    assert not Session.objects.filter(session_key=key).exists()
    assert caches["sessions"].get(SessionStore.cache_key_prefix + key) is None
    assert SessionStore(key).load() == {}


@pytest.mark.usefixtures("redis_sessions")
def test_a_new_key_at_sign_in_keeps_the_data_and_drops_the_old_copy() -> None:
    key = saved(owner="abc")  # the anonymous owner's id, handed over at sign-in
    store = SessionStore(key)
    store.cycle_key()  # what login() does
    assert store.session_key not in (None, key)
    assert SessionStore(store.session_key).load() == {"owner": "abc"}
    assert caches["sessions"].get(SessionStore.cache_key_prefix + key) is None
    assert SessionStore(key).load() == {}


@pytest.mark.usefixtures("redis_down")
def test_with_redis_down_the_table_answers_and_the_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = saved(owner="abc")  # written to the table, the cache's failure logged
    assert Session.objects.filter(session_key=key).exists()
    assert SessionStore(key).load() == {"owner": "abc"}
    assert SessionStore().exists(key) and not SessionStore().exists("x" * 32)
    SessionStore(key).flush()
    assert not Session.objects.filter(session_key=key).exists()
    failures = [r.getMessage() for r in caplog.records if r.name == "project.sessions"]
    assert any(m.startswith("Session cache write failed") for m in failures)
    assert any(m.startswith("Session cache read failed") for m in failures)
    assert any(m.startswith("Session cache delete failed") for m in failures)


@pytest.mark.usefixtures("redis_down")
def test_the_async_variants_ride_out_redis_down_too() -> None:
    async def round_trip() -> tuple[dict[str, Any], bool, bool]:
        store = SessionStore()
        await store.aset("owner", "abc")
        await store.asave(must_create=True)
        key = store.session_key
        assert key is not None
        loaded = await SessionStore(key).aload()
        there = await SessionStore().aexists(key)
        await SessionStore(key).adelete()
        return loaded, there, await SessionStore().aexists(key)

    assert async_to_sync(round_trip)() == ({"owner": "abc"}, True, False)
