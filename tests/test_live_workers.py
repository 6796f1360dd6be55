"""Several workers: two real server processes sharing one Redis and one database."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import LiveServer, RedisServer, make_live_server, make_worker_pair
from tests.fake_openai import FakeOpenAI, Script
from tests.sse_client import ApiClient
from tests.test_live_sse import message, read_deltas, text_of, wait_for


def pair(
    workdir: Path, fake: FakeOpenAI, redis_url: str, database_url: str
) -> tuple[LiveServer, LiveServer]:
    # A short lease: a killed worker's replies are seen dead within a second or two.
    return make_worker_pair(workdir, fake, redis_url, database_url, TEST_LEASE_TTL="1")


@pytest.fixture(scope="module")
def workers(
    fake_openai: FakeOpenAI,
    redis_url: str,
    shared_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveServer, LiveServer]]:
    a, b = pair(tmp_path_factory.mktemp("workers"), fake_openai, redis_url, shared_database_url)
    yield a, b
    a.stop()
    b.stop()


def on(server: LiveServer, client: ApiClient) -> ApiClient:
    """The same browser session, talking to another worker (as behind a load balancer)."""
    other = server.client()
    other.http.cookies = client.http.cookies
    other.token = client.token
    return other


def trigger(fake: FakeOpenAI, name: str, **script: object) -> str:
    return fake.script(f"{name}-{uuid.uuid4().hex[:8]}", Script(**script))


def test_post_on_one_worker_stream_from_another(
    workers: tuple[LiveServer, LiveServer], fake_openai: FakeOpenAI
) -> None:
    a, b = workers
    tokens = ["Hé", "llo ", "世界", " 👩‍👩‍👧"] * 10
    prompt = trigger(fake_openai, "cross", tokens=tokens, interval=0.01)
    with a.client() as on_a:
        started = on_a.start(prompt)
        with on(b, on_a) as on_b:
            events = on_b.read_all(started["stream_url"])
    assert text_of(events) == "".join(tokens)
    assert events[-1].data["status"] == "complete"
    assert events[-1].id == len("".join(tokens))


def test_disconnect_from_one_worker_resume_on_another(
    workers: tuple[LiveServer, LiveServer], fake_openai: FakeOpenAI
) -> None:
    a, b = workers
    tokens = [f"r{i} " for i in range(80)]
    prompt = trigger(fake_openai, "resume", tokens=tokens, interval=0.02)
    with a.client() as on_a:
        started = on_a.start(prompt)
        with on(b, on_a) as on_b:
            first = read_deltas(on_b, started["stream_url"], 5)
            rest = on_a.read_all(
                started["stream_url"], headers={"Last-Event-ID": str(first[-1].id)}
            )
    assert text_of(first) + text_of(rest) == "".join(tokens)


def test_stop_through_another_worker_closes_the_upstream(
    workers: tuple[LiveServer, LiveServer], fake_openai: FakeOpenAI
) -> None:
    a, b = workers
    prompt = trigger(fake_openai, "stop", tokens=["s "] * 400, interval=0.05)
    with a.client() as on_a:
        started = on_a.start(prompt)
        with on(b, on_a) as on_b:
            reply = started["assistant_message"]["id"]
            reader_a = on_a.events(started["stream_url"])
            reader_b = on_b.events(started["stream_url"])
            next(e for e in reader_a if e.event == "delta")
            next(e for e in reader_b if e.event == "delta")
            response = on_b.call("POST", f"/api/messages/{reply}/stop/")
            assert response.status_code == 202
            rest_a, rest_b = list(reader_a), list(reader_b)
            upstream = fake_openai.wait_request(prompt)
            assert upstream.ended_event.wait(10) and upstream.closed_early
            stored = message(on_b, reply)
    assert rest_a[-1].data["status"] == rest_b[-1].data["status"] == "stopped"
    assert stored["status"] == "stopped"
    assert rest_a[-1].id == rest_b[-1].id == len(stored["content"])


def test_killed_worker_reply_ends_interrupted_with_its_text(
    fake_openai: FakeOpenAI, redis_url: str, shared_database_url: str, tmp_path: Path
) -> None:
    a, b = pair(tmp_path, fake_openai, redis_url, shared_database_url)
    try:
        prompt = trigger(fake_openai, "kill", tokens=[f"k{i} " for i in range(500)], interval=0.02)
        with a.client() as on_a:
            started = on_a.start(prompt)
            with on(b, on_a) as on_b:
                reader = on_b.events(started["stream_url"])
                seen = [next(e for e in reader if e.event == "delta")]
                a.signal(signal.SIGKILL)
                seen += list(reader)  # the lease lapses; B finalises from the log
                stored = message(on_b, started["assistant_message"]["id"])
    finally:
        a.stop()
        b.stop()
    assert seen[-1].event == "done" and seen[-1].data["status"] == "interrupted"
    assert stored["status"] == "interrupted"
    assert stored["content"] == text_of(seen)
    assert len(stored["content"]) > 0


def test_redis_restart_mid_reply_loses_nothing(
    fake_openai: FakeOpenAI, own_redis: RedisServer, shared_database_url: str, tmp_path: Path
) -> None:
    a, b = pair(tmp_path, fake_openai, own_redis.url, shared_database_url)
    try:
        tokens = [f"t{i} " for i in range(150)]
        prompt = trigger(fake_openai, "restart", tokens=tokens, interval=0.02)
        with a.client() as on_a:
            started = on_a.start(prompt)
            with on(b, on_a) as on_b:
                url = started["stream_url"]
                reader = on_b.events(url)
                first = [next(e for e in reader if e.event == "delta")]
                own_redis.stop()
                first += list(reader)  # the rest of this response: cut short by an error event
                offset = max(e.id for e in first if e.event == "delta")
                down = on_b.read_all(url, headers={"Last-Event-ID": str(offset)})
                refused = on_a.call(
                    "POST",
                    f"/api/conversations/{started['user_message']['conversation']}/messages/",
                    {"content": "while down"},
                )
                own_redis.start()
                reply = started["assistant_message"]["id"]
                wait_for(lambda: message(on_a, reply)["status"] != "streaming", what="the reply")
                rest = on_b.read_all(url, headers={"Last-Event-ID": str(offset)})
                stored = message(on_a, reply)
    finally:
        a.stop()
        b.stop()
    assert first[-1].event == "error" and first[-1].data["code"] == "log_unavailable"
    assert [e.event for e in down] == ["error"]
    assert refused.status_code == 409  # the reply still streams, on A
    assert stored["status"] == "complete"
    assert stored["content"] == "".join(tokens)
    assert text_of(first) + text_of(rest) == "".join(tokens)


def test_redis_down_refuses_new_replies_with_503_and_stores_nothing(
    fake_openai: FakeOpenAI, own_redis: RedisServer, shared_database_url: str, tmp_path: Path
) -> None:
    a = make_live_server(
        "daphne", tmp_path, fake_openai, REDIS_URL=own_redis.url, DATABASE_URL=shared_database_url
    )
    try:
        with a.client() as client:
            conversation = client.conversation()["id"]
            own_redis.stop()
            response = client.call(
                "POST", f"/api/conversations/{conversation}/messages/", {"content": "hello"}
            )
            stored = client.call("GET", f"/api/conversations/{conversation}/").json()
            page = client.http.get("/")
    finally:
        a.stop()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "log_unavailable"
    assert stored["messages"] == []
    # The session came from the table (``project.sessions``): the conversation was still
    # the visitor's (above), and the page still loads.
    assert page.status_code == 200
    assert "Session cache read failed" in a.read_log()


def test_a_fresh_worker_ends_every_reply_of_a_first_burst(
    fake_openai: FakeOpenAI, redis_url: str, shared_database_url: str, tmp_path: Path
) -> None:
    """Short replies started at once on a new worker: each ends, none waits on Redis."""
    server = make_live_server(
        "daphne", tmp_path, fake_openai, REDIS_URL=redis_url, DATABASE_URL=shared_database_url
    )
    count = 8
    prompts = [
        trigger(fake_openai, f"burst{i}", tokens=["x "] * 20, keep_alive=True) for i in range(count)
    ]

    def one(prompt: str) -> tuple[str, str]:
        with server.client() as client:
            events = client.read_all(client.start(prompt)["stream_url"], timeout=15)
        return text_of(events), events[-1].data["status"]

    try:
        with ThreadPoolExecutor(count) as pool:
            results = list(pool.map(one, prompts))
    finally:
        server.stop()
    assert results == [("x " * 20, "complete")] * count
