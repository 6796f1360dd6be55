"""A reply's life across two workers: deleted while it streams, or its worker stalled.

Real processes throughout: two daphne workers on one Redis and one database, the
fake OpenAI server upstream, users and an admin signed in through the real forms.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import redis

from tests.conftest import LiveServer, make_worker_pair
from tests.fake_openai import FakeOpenAI
from tests.sse_client import ApiClient, Event
from tests.test_live_sse import message, text_of, wait_for
from tests.test_live_workers import on, trigger

LOG_TTL = 2  # seconds a finished reply's log stays in Redis, on the deletion workers
LIVE = "/admin/chatstream/message/live/"
METRICS_TOKEN = "live-lifecycle-metrics"


@pytest.fixture(scope="module")
def workers(
    fake_openai: FakeOpenAI,
    redis_url: str,
    shared_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveServer, LiveServer]]:
    a, b = make_worker_pair(
        tmp_path_factory.mktemp("lifecycle"),
        fake_openai,
        redis_url,
        shared_database_url,
        TEST_LOG_TTL=str(LOG_TTL),
    )
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def admin(workers: tuple[LiveServer, LiveServer]) -> Iterator[ApiClient]:
    """A superuser signed in to the admin of worker B."""
    _, b = workers
    username, password, _ = create_user(b, superuser=True)
    with b.client() as client:
        log_in(client, "/admin/login/", username, password)
        yield client


def create_user(server: LiveServer, *, superuser: bool = False) -> tuple[str, str, int]:
    """A new user in the shared database: (username, password, pk)."""
    username = f"{'admin' if superuser else 'user'}-{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    create = "create_superuser" if superuser else "create_user"
    code = (
        "from django.contrib.auth import get_user_model; "
        f"print(get_user_model().objects.{create}({username!r}, password={password!r}).pk)"
    )
    return username, password, int(server.manage("shell", "-c", code).split()[-1])


def log_in(client: ApiClient, path: str, username: str, password: str) -> None:
    """Sign in through a login form, as a browser does: its CSRF cookie, then the form."""
    assert client.http.get(path).status_code == 200
    form = {
        "username": username,
        "password": password,
        "csrfmiddlewaretoken": client.http.cookies["csrftoken"],
    }
    response = client.http.post(path, data=form)
    assert response.status_code == 302, response.text
    client.token = client.http.cookies["csrftoken"]  # a login rotates it


def delete_through(
    way: str, owner: ApiClient, admin: ApiClient, conversation: str, user: int
) -> httpx2.Response:
    """Delete the conversation (or its owner) the ``way`` given."""
    if way == "api":
        return owner.call("DELETE", f"/api/conversations/{conversation}/")
    form = {"csrfmiddlewaretoken": admin.csrf(), "post": "yes"}
    if way == "admin":
        path = f"/admin/chatstream/conversation/{conversation}/delete/"
    elif way == "admin-bulk":
        path = "/admin/chatstream/conversation/"
        form.update(action="delete_selected", index="0", _selected_action=conversation)
    else:
        assert way == "owner"
        path = f"/admin/auth/user/{user}/delete/"
    return admin.http.post(path, data=form)


def first_deltas(reader: Iterator[Event], count: int) -> list[Event]:
    """The reader's next ``count`` deltas; the reader stays open for the rest."""
    got: list[Event] = []
    for event in reader:
        if event.event == "delta":
            got.append(event)
            if len(got) == count:
                break
    return got


def keys_of(redis_url: str, reply: str, *, within: float) -> dict[str, int]:
    """The reply's keys in Redis with their TTLs, once none is left or ``within`` seconds."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + within
        while True:
            keys = {key: client.ttl(key) for key in client.scan_iter(match=f"chatstream:*{reply}*")}
            if not keys or time.monotonic() > deadline:
                return keys
            time.sleep(0.1)
    finally:
        client.close()


def replies_live(server: LiveServer) -> float:
    """The worker's own count of replies it generates now, from its /metrics."""
    response = httpx2.get(
        server.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5
    )
    assert response.status_code == 200, response.text
    line = next(x for x in response.text.splitlines() if x.startswith("chatstream_replies_live "))
    return float(line.split()[1])


@pytest.mark.parametrize(
    ("way", "status"), [("api", 204), ("admin", 302), ("admin-bulk", 302), ("owner", 302)]
)
def test_deleting_a_streaming_reply_stops_it_and_leaves_nothing_behind(
    workers: tuple[LiveServer, LiveServer],
    admin: ApiClient,
    fake_openai: FakeOpenAI,
    redis_url: str,
    way: str,
    status: int,
) -> None:
    a, b = workers
    prompt = trigger(
        fake_openai, f"delete-{way}", tokens=[f"d{i} " for i in range(400)], interval=0.02
    )
    username, password, user = create_user(a)
    with a.client() as on_a:
        log_in(on_a, "/accounts/login/", username, password)
        started = on_a.start(prompt)
        reply = started["assistant_message"]["id"]
        with on(b, on_a) as on_b:
            reader_a = on_a.events(started["stream_url"])  # on the generating worker
            reader_b = on_b.events(started["stream_url"])  # through Redis
            first_deltas(reader_a, 1)
            first_deltas(reader_b, 1)
            live_before = admin.http.get(LIVE).text
            response = delete_through(
                way, on_b, admin, started["user_message"]["conversation"], user
            )
            upstream = fake_openai.wait_request(prompt)
            closed = upstream.ended_event.wait(10) and upstream.closed_early
            rest_a, rest_b = list(reader_a), list(reader_b)
    live_after = admin.http.get(LIVE).text
    left = keys_of(redis_url, reply, within=LOG_TTL + 5)
    assert response.status_code == status, response.text
    assert closed
    assert rest_a[-1].event == rest_b[-1].event == "done"
    assert rest_a[-1].data["status"] == rest_b[-1].data["status"] == "stopped"
    assert f'data-reply="{reply}"' in live_before
    assert reply not in live_after
    assert left == {}


def test_stalled_worker_learns_it_lost_the_reply_and_closes_its_upstream(
    fake_openai: FakeOpenAI, redis_url: str, shared_database_url: str, tmp_path: Path
) -> None:
    a, b = make_worker_pair(
        tmp_path,
        fake_openai,
        redis_url,
        shared_database_url,
        TEST_LEASE_TTL="1",
        CHATSTREAM_METRICS_TOKEN=METRICS_TOKEN,
    )
    assert a.process is not None
    prompt = trigger(fake_openai, "stall", tokens=[f"p{i} " for i in range(600)], interval=0.02)
    try:
        with a.client() as on_a:
            started = on_a.start(prompt)
            reply = started["assistant_message"]["id"]
            with on(b, on_a) as on_b:
                reader = on_b.events(started["stream_url"])
                seen = first_deltas(reader, 3)
                os.kill(a.process.pid, signal.SIGSTOP)
                try:
                    stalled_at = time.monotonic()
                    seen += list(reader)  # the lease lapses; B recovers the reply from its log
                    ended_after = time.monotonic() - stalled_at
                    recovered = message(on_b, reply)
                finally:
                    os.kill(a.process.pid, signal.SIGCONT)
                resumed_at = time.monotonic()
                upstream = fake_openai.wait_request(prompt)
                closed = upstream.ended_event.wait(10) and upstream.closed_early
                assert upstream.ended is not None
                closed_after = upstream.ended - resumed_at
                print(
                    f"reader on B got done {ended_after:.3f} s after A stalled; "
                    f"A closed its upstream {closed_after:.3f} s after it resumed"
                )
                wait_for(lambda: replies_live(a) == 0, timeout=10, what="A's generation to end")
                stored = message(on_a, reply)
        events = [e for e in a.finished_events() + b.finished_events() if e["id"] == reply]
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            entries = client.xrange(f"chatstream:reply:{reply}")
        finally:
            client.close()
    finally:
        a.stop()
        b.stop()
    finals = [json.loads(fields["f"]) for _, fields in entries if "f" in fields]
    assert seen[-1].event == "done" and seen[-1].data["status"] == "interrupted"
    assert recovered["status"] == "interrupted"
    assert recovered["content"] == text_of(seen) != ""
    assert seen[-1].id == len(recovered["content"])
    assert closed
    assert closed_after < 5
    assert stored == recovered == seen[-1].data["message"]
    assert events == [{"id": reply, "status": "interrupted"}]
    assert [final["status"] for final in finals] == ["interrupted"]
    assert "f" in entries[-1][1]  # nothing after it: the stalled worker wrote no more
