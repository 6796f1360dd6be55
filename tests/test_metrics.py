"""Prometheus metrics at /metrics: what a scripted run records, who may scrape, two workers."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import httpx2
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import AsyncClient, override_settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from project.admission import AdmissionLimit
from tests.conftest import ROOT, make_worker_pair
from tests.fake_openai import FakeOpenAI, Script
from tests.test_admission import settle
from tests.test_generation import upstream
from tests.test_live_sse import wait_for
from tests.test_views import finish, new_conversation, post, send, stream_text

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
MODEL = {"model": "fake-model"}
READERS = ("chatstream_readers_live", frozenset())

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    """A sample summed over all its label values."""
    return sum(v for (sample, _), v in samples.items() if sample == name)


async def scrape(client: AsyncClient | None = None) -> Samples:
    response = await (client or AsyncClient()).get("/metrics", headers=BEARER)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return parse(response.content.decode())


def trigger(fake: FakeOpenAI, **script: Any) -> str:
    return fake.script(f"metrics-{uuid.uuid4().hex}", Script(**script))


async def stop_while_streaming(client: AsyncClient, started: dict[str, Any]) -> None:
    """Read the reply's stream, ask to stop at its first delta, and read it to its end."""
    response = await client.get(started["stream_url"])
    seen, stopped = b"", False
    async for part in response.streaming_content:
        seen += part
        if not stopped and b"event: delta" in seen:
            reply = started["assistant_message"]["id"]
            assert (await post(client, f"/api/messages/{reply}/stop/")).status_code == 202
            stopped = True
    assert stopped and b'{"status":"stopped"' in seen


async def test_a_scripted_run_shows_in_counters_and_histograms(fake_openai: FakeOpenAI) -> None:
    with override_settings(CHATSTREAM=upstream(fake_openai), METRICS_TOKEN=TOKEN):
        client = AsyncClient()
        before = await scrape(client)

        complete = trigger(
            fake_openai,
            tokens=["Hel", "lo", " there", "!"],
            reasoning=["Hm", "m."],
            cached_tokens=5,
            interval=0.02,
        )
        started = await send(client, await new_conversation(client), complete)
        text, _ = await stream_text(client, started["stream_url"])
        await finish(started)
        assert text == "Hello there!"
        done = await scrape(client)

        stopping = trigger(fake_openai, tokens=["s "] * 400, interval=0.02)
        started = await send(client, await new_conversation(client), stopping)
        await stop_while_streaming(client, started)
        await finish(started)
        failing = trigger(fake_openai, status=500)
        await finish(await send(client, await new_conversation(client), failing))
        after = await scrape(client)

    def grew(samples: Samples, earlier: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(earlier, name, **labels)

    # The completed reply: its usage as the upstream reported it, its timings.
    assert grew(done, before, "chatstream_replies_started_total", **MODEL) == 1
    assert grew(done, before, "chatstream_replies_finished_total", **MODEL, status="complete") == 1
    assert grew(done, before, "chatstream_prompt_tokens_total", **MODEL) == 9
    assert grew(done, before, "chatstream_completion_tokens_total", **MODEL) == 6
    assert grew(done, before, "chatstream_reasoning_tokens_total", **MODEL) == 2
    assert grew(done, before, "chatstream_cached_tokens_total", **MODEL) == 5
    assert grew(done, before, "chatstream_time_to_first_token_seconds_count", **MODEL) == 1
    assert grew(done, before, "chatstream_reply_duration_seconds_count", **MODEL) == 1
    assert grew(done, before, "chatstream_reply_duration_seconds_sum", **MODEL) > 0.1
    assert grew(done, before, "chatstream_reader_frame_gap_seconds_count") >= 2
    # Then one stopped, one refused by the upstream (HTTP 500).
    assert grew(after, done, "chatstream_replies_started_total", **MODEL) == 2
    for status in ("stopped", "error"):
        assert grew(after, done, "chatstream_replies_finished_total", **MODEL, status=status) == 1
    assert grew(after, done, "chatstream_upstream_errors_total", code="upstream_unavailable") == 1
    errors = "chatstream_upstream_errors_total"
    assert total(after, errors) - total(done, errors) == 1  # and no other code
    assert grew(after, done, "chatstream_stop_to_upstream_closed_seconds_count") == 1
    assert 0 < grew(after, done, "chatstream_stop_to_upstream_closed_seconds_sum") < 1
    assert grew(after, done, "chatstream_time_to_first_token_seconds_count", **MODEL) == 1
    assert grew(after, done, "chatstream_reply_duration_seconds_count", **MODEL) == 2
    # Nothing is left live; a finalise that succeeded at once was never retried.
    assert value(after, "chatstream_replies_live") == value(before, "chatstream_replies_live")
    assert value(after, "chatstream_readers_live") == value(before, "chatstream_readers_live")
    assert grew(after, before, "chatstream_finalise_retries_total") == 0
    assert fake_openai.wait_request(stopping).closed_early


async def test_an_anonymous_scrape_is_refused_with_403_json() -> None:
    with override_settings(METRICS_TOKEN=TOKEN):
        response = await AsyncClient().get("/metrics")
    assert response.status_code == 403
    assert response.json() == {
        "error": {
            "code": "forbidden",
            "message": "Metrics need a staff session or the metrics bearer token.",
        }
    }


@pytest.mark.parametrize(
    ("token", "authorization"),
    [
        (TOKEN, f"Bearer {TOKEN[:-1]}"),
        (TOKEN, f"Bearer {TOKEN}x"),
        (TOKEN, f"Basic {TOKEN}"),
        (TOKEN, "Bearer "),
        ("", "Bearer "),
        ("", "Bearer"),
    ],
)
async def test_a_wrong_or_missing_token_is_refused(token: str, authorization: str) -> None:
    with override_settings(METRICS_TOKEN=token):
        response = await AsyncClient().get("/metrics", headers={"Authorization": authorization})
    assert response.status_code == 403


async def test_the_bearer_token_is_accepted_in_either_case_of_scheme() -> None:
    with override_settings(METRICS_TOKEN=TOKEN):
        response = await AsyncClient().get("/metrics", headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status_code == 200
    assert b"# TYPE chatstream_replies_started_total counter" in response.content


async def test_a_staff_session_may_scrape_and_another_user_may_not() -> None:
    staff = await sync_to_async(User.objects.create_user)("operator", is_staff=True)
    user = await sync_to_async(User.objects.create_user)("someone")
    as_staff, as_user = AsyncClient(), AsyncClient()
    await as_staff.aforce_login(staff)
    await as_user.aforce_login(user)
    with override_settings(METRICS_TOKEN=""):  # no token set: staff only
        assert (await as_staff.get("/metrics")).status_code == 200
        assert (await as_user.get("/metrics")).status_code == 403


async def test_only_get_and_head_are_allowed() -> None:
    with override_settings(METRICS_TOKEN=TOKEN):
        response = await AsyncClient().post("/metrics", headers=BEARER)
    assert response.status_code == 405


class HeldApp:
    """Requests wait until released; a scrape answers at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.scraped = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/metrics":
            self.scraped.set()
        else:
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app: AdmissionLimit, path: str) -> None:
    async def send(message: dict[str, Any]) -> None:
        pass

    await app({"type": "http", "method": "GET", "path": path, "headers": []}, None, send)


async def test_a_scrape_bypasses_a_full_admission_queue_which_it_measures() -> None:
    inner = HeldApp()
    app = AdmissionLimit(inner, 1)
    with override_settings(METRICS_TOKEN=TOKEN):
        before = await scrape()
        held = [asyncio.ensure_future(call(app, f"/api/{n}/")) for n in range(3)]
        await settle()  # the first takes the place, two wait
        await asyncio.wait_for(call(app, "/metrics"), timeout=5)
        waiting = await scrape()
        inner.release.set()
        await asyncio.wait_for(asyncio.gather(*held), timeout=5)
        after = await scrape()
    assert inner.scraped.is_set()
    queue = "chatstream_admission_queue_length"
    assert value(waiting, queue) - value(before, queue) == 2
    assert value(after, queue) == value(before, queue)
    count = "chatstream_admission_wait_seconds_count"
    assert value(after, count) - value(before, count) == 3  # the scrape is not counted
    at_once = "chatstream_admission_wait_seconds_bucket"
    assert value(after, at_once, le="0.001") - value(before, at_once, le="0.001") >= 1


def test_each_worker_counts_its_own_replies(
    fake_openai: FakeOpenAI, redis_url: str, shared_database_url: str, tmp_path: Path
) -> None:
    """Two workers on one Redis and one database: each is scraped as a target of its own."""
    a, b = make_worker_pair(
        tmp_path, fake_openai, redis_url, shared_database_url, CHATSTREAM_METRICS_TOKEN=TOKEN
    )

    def settled(url: str, count: int) -> Samples | None:
        """The worker's metrics once its ``count`` replies are counted and read to the end."""
        response = httpx2.get(f"{url}/metrics", headers=BEARER, timeout=10)
        assert response.status_code == 200, response.text
        samples = parse(response.text)
        finished = total(samples, "chatstream_replies_finished_total")
        return samples if finished == count and not samples[READERS] else None

    try:
        refused = httpx2.get(f"{a.url}/metrics", timeout=10)
        replies = {a.url: 1, b.url: 2}  # a different count on each, to tell them apart
        for server in (a, b):
            with server.client() as client:
                for _ in range(replies[server.url]):
                    prompt = trigger(fake_openai, tokens=["w "] * 30, interval=0.005)
                    events = client.read_all(client.start(prompt)["stream_url"])
                    assert events[-1].data["status"] == "complete"
        scraped = {
            url: wait_for(lambda url=url, count=count: settled(url, count), what=url)
            for url, count in replies.items()
        }
    finally:
        a.stop()
        b.stop()
    assert refused.status_code == 403
    for url, count in replies.items():
        samples = scraped[url]
        assert total(samples, "chatstream_replies_started_total") == count
        assert value(samples, "chatstream_replies_finished_total", **MODEL, status="complete") == (
            count
        )
        assert value(samples, "chatstream_completion_tokens_total", **MODEL) == 30 * count
        assert value(samples, "chatstream_reply_duration_seconds_count", **MODEL) == count
        assert value(samples, "chatstream_replies_live") == 0
        assert value(samples, "chatstream_readers_live") == 0
        # The Redis reply log: batched flushes, none failed.
        assert value(samples, "chatstream_reply_log_flush_seconds_count") >= count
        assert value(samples, "chatstream_reply_log_flush_failures_total") == 0
    both = sum(total(s, "chatstream_replies_finished_total") for s in scraped.values())
    assert both == 3


def test_the_sample_dashboard_uses_every_metric_and_only_those() -> None:
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    ours = [family for family in REGISTRY.collect() if family.name.startswith("chatstream_")]
    exposed = {family.name + suffix for family in ours for suffix in suffixes[family.type]}
    dashboard = (ROOT / "docs" / "grafana-dashboard.json").read_text()
    used = set(re.findall(r"\bchatstream_[a-z_]+", dashboard))
    assert sorted(used - exposed) == []
    assert sorted(exposed - used - {n for n in exposed if n.endswith(("_sum", "_count"))}) == []
