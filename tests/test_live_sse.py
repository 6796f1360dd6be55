"""The SSE contract end to end: a real ASGI server process, the real openai SDK, a fake upstream."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.fake_openai import FakeOpenAI, Script
from tests.sse_client import ApiClient, Event, parse_events

TEXT_TOKENS = ["Hé", "llo ", "世界", " 👩‍👩‍👧", " and ", "🇺🇳", "!"]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def text_of(events: list[Event]) -> str:
    return "".join(e.data["text"] for e in events if e.event == "delta")


def wait_for(predicate: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def message(client: ApiClient, message_id: str) -> dict[str, Any]:
    response = client.call("GET", f"/api/messages/{message_id}/")
    assert response.status_code == 200
    return response.json()


def read_deltas(client: ApiClient, url: str, count: int, **kwargs: Any) -> list[Event]:
    """Read ``count`` deltas, then drop the connection."""
    got = []
    for event in client.events(url, **kwargs):
        if event.event == "delta":
            got.append(event)
            if len(got) >= count:
                break
    return got


def test_reply_streams_exact_text_with_code_point_offsets(
    asgi_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    trigger = fake_openai.script(unique("exact"), Script(tokens=TEXT_TOKENS, split_bytes=True))
    with asgi_server.client() as client:
        started = client.start(trigger)
        events = client.read_all(started["stream_url"])
        stored = message(client, started["assistant_message"]["id"])
    full = "".join(TEXT_TOKENS)
    assert text_of(events) == full
    seen = ""
    for event in events:
        if event.event == "delta":
            seen += event.data["text"]
            assert event.id == len(seen)
    done = events[-1]
    assert done.event == "done"
    assert done.id == len(full)
    assert done.data["status"] == "complete"
    assert done.data["finish_reason"] == "stop"
    assert done.data["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": len(TEXT_TOKENS),
        "reasoning_tokens": None,
        "cached_tokens": None,
        "estimated": False,
    }
    assert done.data["message"]["content"] == full
    assert stored["content"] == full
    assert stored["status"] == "complete"
    assert stored["offset"] == len(full)
    assert stored["ttft_ms"] is not None and stored["duration_ms"] is not None


def test_stream_sends_retry_line_before_the_first_token(
    asgi_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    trigger = fake_openai.script(unique("slow-start"), Script(first_delay=60))
    with asgi_server.client() as client:
        started = client.start(trigger)
        with client.http.stream("GET", started["stream_url"], timeout=10) as response:
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            first = next(response.iter_lines())
        assert first == "retry: 3000"
        assert client.call("POST", f"/api/messages/{started['assistant_message']['id']}/stop/")


@pytest.mark.parametrize("form", ["header", "query"])
def test_resume_mid_stream_has_no_gap_or_duplicate(
    asgi_server: LiveServer, fake_openai: FakeOpenAI, form: str
) -> None:
    tokens = [f"tok{i} " for i in range(60)]
    trigger = fake_openai.script(unique("resume"), Script(tokens=tokens, interval=0.02))
    with asgi_server.client() as client:
        started = client.start(trigger)
        url = started["stream_url"]
        first = read_deltas(client, url, 3)
        offset = first[-1].id
        if form == "header":
            rest = client.read_all(url, headers={"Last-Event-ID": str(offset)})
        else:
            rest = client.read_all(f"{url}?last_event_id={offset}")
    assert text_of(first) + text_of(rest) == "".join(tokens)
    assert rest[-1].event == "done" and rest[-1].data["status"] == "complete"


def test_resume_header_wins_over_query_and_works_after_the_end(
    asgi_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    trigger = fake_openai.script(unique("after"), Script(tokens=TEXT_TOKENS))
    full = "".join(TEXT_TOKENS)
    with asgi_server.client() as client:
        started = client.start(trigger)
        url = started["stream_url"]
        client.read_all(url)
        rest = client.read_all(f"{url}?last_event_id=0", headers={"Last-Event-ID": "5"})
        nothing_left = client.read_all(url, headers={"Last-Event-ID": str(len(full))})
        beyond = client.call("GET", url, headers={"Last-Event-ID": str(len(full) + 1)})
        negative = client.call("GET", f"{url}?last_event_id=-1")
        garbage = client.call("GET", url, headers={"Last-Event-ID": "abc"})
    assert text_of(rest) == full[5:]
    assert rest[-1].event == "done" and rest[-1].id == len(full)
    assert [e.event for e in nothing_left] == ["done"]
    for response in (beyond, negative, garbage):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_offset"


def test_stop_persists_partial_text_and_closes_the_upstream(
    asgi_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    tokens = [f"w{i} " for i in range(400)]
    trigger = fake_openai.script(unique("stop"), Script(tokens=tokens, interval=0.05))
    with asgi_server.client() as client:
        started = client.start(trigger)
        reply_id = started["assistant_message"]["id"]
        events = client.events(started["stream_url"])
        seen = [next(e for e in events if e.event == "delta")]
        response = client.call("POST", f"/api/messages/{reply_id}/stop/")
        assert response.status_code == 202
        assert response.json() == {"status": "stopping"}
        seen += list(events)
        upstream = fake_openai.wait_request(trigger)
        assert upstream.ended_event.wait(10), "the upstream request was never closed"
        assert upstream.closed_early and not upstream.completed
        stored = message(client, reply_id)
        again = client.call("POST", f"/api/messages/{reply_id}/stop/")
    done = seen[-1]
    assert done.event == "done" and done.data["status"] == "stopped"
    assert stored["status"] == "stopped"
    assert stored["content"] == text_of(seen)
    assert 0 < len(stored["content"]) < len("".join(tokens))
    assert stored["usage"]["estimated"] is True
    assert stored["usage"]["completion_tokens"] > 0
    assert again.status_code == 200
    assert again.json()["status"] == "stopped"


def test_reader_that_disconnects_leaves_the_reply_running(
    asgi_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    tokens = [f"t{i} " for i in range(40)]
    trigger = fake_openai.script(unique("leave"), Script(tokens=tokens, interval=0.02))
    with asgi_server.client() as client:
        started = client.start(trigger)
        read_deltas(client, started["stream_url"], 2)
        reply_id = started["assistant_message"]["id"]
        stored = wait_for(
            lambda: (m := message(client, reply_id))["status"] != "streaming" and m,
            what="the reply to finish",
        )
    assert stored["status"] == "complete"
    assert stored["content"] == "".join(tokens)
    upstream = fake_openai.wait_request(trigger)
    assert upstream.completed and not upstream.closed_early


@pytest.mark.parametrize(
    ("script", "status", "code"),
    [
        (Script(tokens=["a", "b", "c"]), "complete", None),
        (Script(tokens=["a", "b", "c"], error_after=2), "error", "upstream_error"),
        (Script(tokens=["a", "b", "c"], cut=True), "error", "upstream_incomplete"),
        (Script(tokens=["a", "b", "c"], finish_reason=None), "error", "upstream_incomplete"),
        (Script(tokens=["a", "b", "c"], finish_reason="length"), "complete", None),
        (Script(tokens=["a", "b"], finish_reason="content_filter"), "complete", None),
    ],
    ids=["complete", "error-event", "cut", "no-finish", "length", "content-filter"],
)
def test_every_ending_is_persisted_with_its_text_and_announced_once(
    asgi_server: LiveServer, fake_openai: FakeOpenAI, script: Script, status: str, code: str | None
) -> None:
    trigger = fake_openai.script(unique("ending"), script)
    with asgi_server.client() as client:
        started = client.start(trigger)
        reply_id = started["assistant_message"]["id"]
        events = client.read_all(started["stream_url"])
        stored = message(client, reply_id)
    expected_text = "".join(script.tokens[: script.error_after])
    assert text_of(events) == expected_text
    assert stored["content"] == expected_text
    assert stored["status"] == status
    assert events[-1].data["status"] == status
    if code is None:
        assert [e.event for e in events if e.event != "delta"] == ["done"]
        assert stored["finish_reason"] == script.finish_reason
    else:
        error = events[-2]
        assert error.event == "error"
        assert error.data["code"] == code
        assert "sk-" not in error.data["message"] and "Traceback" not in error.data["message"]
        assert stored["error"]["code"] == code
    wait_for(lambda: any(e["id"] == reply_id for e in asgi_server.finished_events()))
    announced = [e for e in asgi_server.finished_events() if e["id"] == reply_id]
    assert announced == [{"id": reply_id, "status": status}]


def test_another_session_gets_404_for_everything(
    asgi_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    trigger = fake_openai.script(unique("mine"), Script(tokens=["x"] * 50, interval=0.05))
    with asgi_server.client() as owner, asgi_server.client() as stranger:
        started = owner.start(trigger)
        conversation = started["user_message"]["conversation"]
        reply = started["assistant_message"]["id"]
        calls = [
            ("GET", f"/api/conversations/{conversation}/", None),
            ("PATCH", f"/api/conversations/{conversation}/", {"title": "x"}),
            ("DELETE", f"/api/conversations/{conversation}/", None),
            ("POST", f"/api/conversations/{conversation}/messages/", {"content": "hi"}),
            ("GET", f"/api/messages/{reply}/", None),
            ("GET", f"/api/messages/{reply}/stream/", None),
            ("POST", f"/api/messages/{reply}/stop/", None),
            ("POST", f"/api/messages/{reply}/regenerate/", None),
        ]
        for method, path, body in calls:
            response = stranger.call(method, path, body)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["code"] == "not_found"
        assert stranger.call("GET", "/api/conversations/").json() == {
            "conversations": [],
            "next": None,
        }
        assert message(owner, reply)["status"] == "streaming"
        owner.call("POST", f"/api/messages/{reply}/stop/")


def test_post_without_csrf_token_is_403_json(asgi_server: LiveServer) -> None:
    with asgi_server.client() as client:
        client.csrf()
        response = client.http.post("/api/conversations/", json={})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"content": ""}, "empty_content"),
        ({"content": "   \n"}, "empty_content"),
        ({"content": "x" * 16001}, "content_too_long"),
        ({"content": 5}, "invalid_content"),
        ({}, "invalid_content"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
def test_bad_message_bodies_are_400_json_and_store_nothing(
    asgi_server: LiveServer, body: Any, code: str
) -> None:
    with asgi_server.client() as client:
        conversation = client.conversation()["id"]
        response = client.call("POST", f"/api/conversations/{conversation}/messages/", body)
        stored = client.call("GET", f"/api/conversations/{conversation}/").json()
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert stored["messages"] == []


def test_regenerate_with_a_seeded_assistant_streams_a_new_reply(
    asgi_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    trigger = fake_openai.script(unique("again"), Script(tokens=["one", " two"]))
    with asgi_server.client() as client:
        started = client.start(trigger)
        client.read_all(started["stream_url"])
        response = client.call(
            "POST", f"/api/messages/{started['assistant_message']['id']}/regenerate/"
        )
        assert response.status_code == 201, response.text
        again = response.json()
        events = client.read_all(again["stream_url"])
    assert again["user_message"]["id"] == started["user_message"]["id"]
    assert again["assistant_message"]["id"] != started["assistant_message"]["id"]
    assert text_of(events) == "one two"
    assert len(fake_openai.requests_for(trigger)) == 2


def server_threads(server: LiveServer) -> int:
    assert server.process is not None
    with open(f"/proc/{server.process.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def test_an_open_stream_keeps_no_thread_of_its_own(
    asgi_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    """Django keeps a worker thread per request; a stream lets its go once it streams."""
    count = 12
    trigger = fake_openai.script(unique("idle"), Script(tokens=["a", "b"], interval=30))
    clients = [asgi_server.client() for _ in range(count + 1)]
    streams: list[tuple[ApiClient, str, Iterator[Event]]] = []
    try:
        for client in clients:
            started = client.start(trigger)
            events = client.events(started["stream_url"])
            assert next(events).data == {"text": "a"}  # open, and idle from here on
            streams.append((client, started["assistant_message"]["id"], events))
            if len(streams) == 1:
                before = server_threads(asgi_server)
        grown = server_threads(asgi_server) - before
        assert grown < count // 2, f"{grown} more threads for {count} more open streams"
    finally:
        for client, reply_id, events in streams:
            client.call("POST", f"/api/messages/{reply_id}/stop/")
            events.close()
        for client in clients:
            client.close()


def test_one_request_per_reply_streams_from_the_post(
    asgi_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    tokens = ["one ", "request, ", "whole ", "reply"]
    trigger = fake_openai.script(unique("single"), Script(tokens=tokens, interval=0.02))
    with asgi_server.client() as client:
        conversation = client.conversation()["id"]
        headers = {
            "X-CSRFToken": client.csrf(),
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        with client.http.stream(
            "POST",
            f"/api/conversations/{conversation}/messages/",
            content=json.dumps({"content": trigger}),
            headers=headers,
        ) as response:
            assert response.status_code == 200
            events = list(parse_events(response.iter_lines()))
    assert events[0].event == "started"
    assert text_of(events) == "".join(tokens)
    assert (events[-1].event, events[-1].data["status"]) == ("done", "complete")
