"""Random requests at every endpoint of the API: never a 5xx, errors always the JSON shape,
and a refused request stores nothing. On the suite's database, and on PostgreSQL too.

Hypothesis generates methods, ids (ours, someone else's, unknown, malformed), JSON
bodies of any shape (NUL, lone surrogates, huge strings, wrong types), raw bodies,
headers (Last-Event-ID, Content-Type, Accept) and query strings. A failure prints
the falsifying request and how to reproduce it (``--hypothesis-seed`` / the blob).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections
from django.test import AsyncClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatstream.generation import registry
from chatstream.models import Conversation, Message
from tests.conftest import ROOT, new_postgres_database

pytestmark = pytest.mark.django_db(transaction=True)

TEMPLATES = [
    "/api/conversations/",
    "/api/conversations/{conversation}/",
    "/api/conversations/{conversation}/messages/",
    "/api/conversations/{conversation}/export/",
    "/api/assistants/",
    "/api/health/",
    "/api/messages/{message}/",
    "/api/messages/{message}/stream/",
    "/api/messages/{message}/regenerate/",
    "/api/messages/{message}/stop/",
    "/api/messages/{message}/edit/",
    "/api/messages/{message}/versions/",
    "/api/{junk}",
]
METHODS = ["GET", "POST", "PATCH", "DELETE", "PUT", "OPTIONS"]
# The documented routes: most cases hit one, so that bodies reach the code behind it.
ROUTES = [
    ("GET", "/api/conversations/"),
    ("POST", "/api/conversations/"),
    ("GET", "/api/conversations/{conversation}/"),
    ("PATCH", "/api/conversations/{conversation}/"),
    ("POST", "/api/conversations/{conversation}/messages/"),
    ("POST", "/api/conversations/{conversation}/messages/"),
    ("GET", "/api/conversations/{conversation}/export/"),
    ("GET", "/api/messages/{message}/"),
    ("GET", "/api/messages/{message}/stream/"),
    ("POST", "/api/messages/{message}/regenerate/"),
    ("POST", "/api/messages/{message}/stop/"),
    ("POST", "/api/messages/{message}/edit/"),
    ("GET", "/api/messages/{message}/versions/"),
]

unstorable = st.sampled_from(["\x00", "\ud800", "\udfff", "a\x00b"])
texts = st.one_of(
    unstorable,
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    unstorable,
    st.builds(lambda n: "x" * n, st.sampled_from([0, 201, 16001, 70000])),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
bodies = st.one_of(
    st.fixed_dictionaries({"content": texts}),  # what the endpoints read, of any text
    st.fixed_dictionaries({}, optional={"title": texts, "assistant": texts}),
    st.fixed_dictionaries(
        {}, optional={"content": json_values, "title": json_values, "assistant": json_values}
    ),
    json_values,
    st.binary(max_size=64),
    st.none(),
)
ids = st.sampled_from(["ours", "ours", "ours", "question", "theirs", "unknown", "junk"])
headers = st.fixed_dictionaries(
    {},
    optional={
        "Last-Event-ID": st.one_of(st.integers().map(str), texts),
        "Content-Type": st.sampled_from(
            ["application/json", "text/plain", "multipart/form-data", "application/x-www"]
        ),
        "Accept": st.sampled_from(["text/event-stream", "application/json", "*/*"]),
    },
)
queries = st.fixed_dictionaries(
    {},
    optional={
        "last_event_id": st.one_of(st.integers().map(str), texts),
        "q": texts,
        "cursor": texts,
        "format": st.sampled_from(["md", "json", "pdf", ""]),
    },
)


@dataclass
class Case:
    method: str
    template: str
    target: str
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)


def _route_body(route: tuple[str, str]) -> st.SearchStrategy[Any]:
    """Mostly what the route reads, of any text; sometimes anything at all."""
    method, template = route
    if template.endswith(("/messages/", "/edit/")):
        read = st.fixed_dictionaries({"content": texts})
    elif method in ("POST", "PATCH") and template.startswith("/api/conversations/"):
        read = st.fixed_dictionaries({}, optional={"title": texts, "assistant": texts})
    else:
        return bodies
    return st.one_of(read, read, bodies)


documented = st.sampled_from(ROUTES).flatmap(
    lambda route: st.builds(
        lambda body, **rest: Case(route[0], route[1], body=body, **rest),
        body=_route_body(route),
        target=ids,
        headers=headers,
        query=queries,
    )
)
anything = st.builds(
    Case,
    method=st.sampled_from(METHODS),
    template=st.sampled_from(TEMPLATES),
    target=ids,
    body=bodies,
    headers=headers,
    query=queries,
)
cases = st.one_of(documented, documented, anything)


@dataclass
class World:
    client: AsyncClient
    ids: dict[str, str]


def _state() -> list[tuple[Any, ...]]:
    """Every stored row, field by field: what a refused request must leave alone."""
    rows = [tuple(r) for r in Conversation.objects.order_by("pk").values_list()]
    return rows + [tuple(r) for r in Message.objects.order_by("pk").values_list()]


async def _settle() -> None:
    """Let every reply a request started end, so the next snapshot is still."""
    for reply_id in list(registry._tasks):
        await registry.wait(reply_id, timeout=20)


async def _world() -> World:
    client, other = AsyncClient(), AsyncClient()
    ours = await client.post("/api/conversations/", "{}", content_type="application/json")
    conversation = ours.json()["id"]
    sent = await client.post(
        f"/api/conversations/{conversation}/messages/",
        json.dumps({"content": "hello"}),
        content_type="application/json",
    )
    theirs = await other.post("/api/conversations/", "{}", content_type="application/json")
    await _settle()
    return World(
        client,
        {
            "ours": conversation,
            "question": sent.json()["user_message"]["id"],
            "reply": sent.json()["assistant_message"]["id"],
            "theirs": theirs.json()["id"],
            "unknown": str(uuid.uuid4()),
            "junk": "not-an-id%00",
        },
    )


def _path(case: Case, world: World) -> str:
    target = world.ids[case.target]
    message = target
    if case.target == "ours":  # our own message of the kind the endpoint takes
        message = world.ids["question" if case.template.endswith("/edit/") else "reply"]
    return case.template.format(conversation=target, message=message, junk=target)


async def _request(case: Case, world: World) -> tuple[int, dict[str, str], bytes]:
    if isinstance(case.body, bytes):
        data: Any = case.body
    elif case.body is None:
        data = ""
    else:
        data = json.dumps(case.body)
    # Header values travel as bytes: any text, as its UTF-8 bytes read one to a character.
    sent = {
        k: v.encode("utf-8", "surrogatepass").decode("latin-1") for k, v in case.headers.items()
    }
    extra = {"headers": sent, "QUERY_STRING": _query(case.query)}
    content_type = sent.get("Content-Type", "application/json")
    client, path = world.client, _path(case, world)
    response = await client.generic(case.method, path, data, content_type, **extra)
    if response.streaming:
        body = b"".join([part async for part in response.streaming_content])
    else:
        body = response.content
    return response.status_code, dict(response.headers), body


def _query(query: dict[str, str]) -> str:
    return urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in query.items()})


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One loop for every example: replies started by one request end in the next steps."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(_settle())
    # The threads that ran the requests' queries keep their connections: close them, or
    # PostgreSQL refuses to drop the test database after.
    loop.run_until_complete(sync_to_async(connections.close_all)())
    loop.close()


def test_random_requests_never_fail_the_server(
    loop: asyncio.AbstractEventLoop,
) -> None:
    world = loop.run_until_complete(_world())

    @settings(
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(case=cases)
    def one(case: Case) -> None:
        before = loop.run_until_complete(sync_to_async(_state)())
        status, response_headers, body = loop.run_until_complete(_request(case, world))
        loop.run_until_complete(_settle())
        assert status < 500, (status, body[:300])
        if status >= 400:
            assert response_headers.get("Content-Type", "").startswith("application/json")
            error = json.loads(body)["error"]
            assert set(error) == {"code", "message"}
            assert isinstance(error["code"], str) and isinstance(error["message"], str)
            after = loop.run_until_complete(sync_to_async(_state)())
            assert after == before, f"a refused {case.method} changed stored data"

    one()


def test_the_same_fuzz_on_postgresql() -> None:
    """Run the fuzz above on a PostgreSQL of its own (NUL is refused only there)."""
    if connection.vendor == "postgresql":
        pytest.skip("the suite runs on PostgreSQL already: the test above is this one")
    with new_postgres_database(f"chatstream_fuzz_{os.getpid()}") as url:
        if url is None:
            pytest.skip("no PostgreSQL on 127.0.0.1:5432")
        test = "tests/test_fuzz.py::" + test_random_requests_never_fail_the_server.__name__
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
            cwd=ROOT,
            env={**os.environ, "TEST_DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
