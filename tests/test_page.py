"""The chat page in a real browser: Debian's Chromium driven by Playwright, against a
real Daphne process and the fake OpenAI-compatible upstream.

Every test gets a fresh browser context (a fresh anonymous session) and fails on
any console error or uncaught page error. Waits are bounded and generous: the
machine is small and shared.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.template import Context, Template
from playwright.sync_api import Browser, BrowserContext, Page, Request, sync_playwright

from chatstream.models import Message
from tests.conftest import ROOT, LiveServer, make_live_server
from tests.fake_openai import FakeOpenAI, Script

ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT = 20_000  # ms, for every wait on the page
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Chromium logs a failed request as a console error; only a test that cuts the
# network on purpose may see these.
NETWORK_ERRORS = re.compile(
    r"ERR_EMPTY_RESPONSE|ERR_CONNECTION_|ERR_INCOMPLETE_CHUNKED|ERR_SOCKET_NOT_CONNECTED"
)

MARKDOWN_TOKENS = [
    "## Streaming ",
    "report\n\n",
    "The reply is **typed ",
    "out** as it ",
    "arrives, with [a link](https://example.org/docs) ",
    "and `inline code`.\n\n",
    "1. First item\n",
    "2. Second item\n\n",
    "| Setting | ",
    "Effect |\n",
    "| --- | --- |\n",
    "| `FLUSH_INTERVAL` | merges frames |\n",
    "| `RETRY_MS` | reconnect delay |\n\n",
    "```python\n",
    "def greet(name):\n",
    "    return f'hello {name}'\n",
    "```\n\n",
    "- a bullet\n",
    "- another ",
    "bullet\n\n",
    "That is all.",
]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def words(count: int, prefix: str = "w") -> list[str]:
    """Tokens whose text makes any gap or duplicate visible: ``w0 w1 w2 ...``."""
    return [f"{prefix}{i} " for i in range(count)]


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    live = make_live_server("daphne", tmp_path_factory.mktemp("page"), fake_openai)
    live.manage(
        "shell",
        "-c",
        "from chatstream.models import Assistant; "
        "Assistant.objects.get_or_create(slug='demo', defaults=dict("
        "name='Demo', connection='demo', is_default=False))",
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


class Problems:
    """Console errors and uncaught exceptions seen by one page."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: re.Pattern[str] | None = None

    def watch(self, page: Page) -> None:
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not (self.allowed and self.allowed.search(e))]


@pytest.fixture
def problems() -> Problems:
    return Problems()


def new_context(browser: Browser, **options: Any) -> BrowserContext:
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT)
    return context


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = new_context(browser, viewport={"width": 1280, "height": 800})
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext, problems: Problems) -> Iterator[Page]:
    page = context.new_page()
    problems.watch(page)
    yield page
    assert problems.unexpected() == []


class CuttableProxy:
    """A TCP proxy in front of the server whose connections a test can cut.

    ``cut()`` drops every open connection and refuses new ones (accepts, then closes
    at once, like a dead network) until ``restore()``. Playwright's offline mode does
    not end an EventSource that is already open; this does.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.refusing = False
        self.threads: list[threading.Thread] = []
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open.update((client, upstream))
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source, sink)

    def _close(self, *sockets: socket.socket) -> None:
        with self.lock:
            for sock in sockets:
                if sock in self.open:
                    self.open.discard(sock)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()

    def cut(self) -> None:
        self.refusing = True
        with self.lock:
            sockets = list(self.open)
        self._close(*sockets)

    def restore(self) -> None:
        self.refusing = False

    def stop(self) -> None:
        self.cut()
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)


@pytest.fixture
def proxy(server: LiveServer) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(server.port)
    yield proxy
    proxy.stop()


# --- helpers ----------------------------------------------------------------------------


def open_page(page: Page, site: LiveServer | str, path: str = "/") -> Any:
    response = page.goto((site if isinstance(site, str) else site.url) + path)
    page.wait_for_selector("#chat[data-ready='true']")
    return response


def send(page: Page, text: str) -> str:
    """Type ``text`` into the composer, press Enter; the new reply's message id."""
    before = page.eval_on_selector_all("article.assistant", "els => els.map(e => e.id)")
    page.fill("#content", text)
    page.press("#content", "Enter")
    page.wait_for_function(
        "before => [...document.querySelectorAll('article.assistant')]"
        ".some(e => !before.includes(e.id))",
        arg=before,
    )
    ids = page.eval_on_selector_all("article.assistant", "els => els.map(e => e.id)")
    return next(i for i in ids if i not in before)[2:]


def until(page: Page, expression: str) -> None:
    """Wait until a JavaScript expression is truthy (a function: the page's CSP forbids eval)."""
    page.wait_for_function(f"() => ({expression})")


def wait_typed(page: Page, selector: str, length: int) -> None:
    """Wait until the element shows more than ``length`` characters."""
    page.wait_for_function(
        "([s, n]) => (document.querySelector(s)?.textContent.length ?? 0) > n",
        arg=[selector, length],
    )


def reply(page: Page, message_id: str) -> Any:
    return page.locator(f"#m-{message_id}")


def wait_status(page: Page, message_id: str, status: str) -> None:
    page.wait_for_selector(f"#m-{message_id}.status-{status}")


def stored(page: Page, server: LiveServer, message_id: str) -> dict[str, Any]:
    response = page.request.get(f"{server.url}/api/messages/{message_id}/")
    assert response.status == 200
    return response.json()


def record_lengths(page: Page, message_id: str) -> None:
    """Record the revealed text's length on every animation frame, in the page."""
    page.evaluate(
        """id => {
          window.__lengths = [];
          const tick = () => {
            const body = document.querySelector(`#m-${id} .body`);
            if (body) window.__lengths.push(body.textContent.length);
            const done = document.querySelector(`#m-${id}[data-status='complete']`);
            if (!done) requestAnimationFrame(tick);
          };
          tick();
        }""",
        message_id,
    )


def record_requests(page: Page) -> list[Request]:
    """Every request the page makes to the API from now on."""
    seen: list[Request] = []
    page.on("request", lambda r: "/api/" in r.url and seen.append(r))
    return seen


def resumed_at(request: Request) -> int:
    """The offset a GET of a reply's stream resumed from: Last-Event-ID, else the query."""
    header = request.all_headers().get("last-event-id")
    if header is not None:
        return int(header)
    return int(re.search(r"last_event_id=(\d+)", request.url).group(1))


def rendered_equals_stored(page: Page, message_id: str, content: str) -> bool:
    """The reply's DOM is exactly what a fresh render of the stored text gives."""
    return page.evaluate(
        """async ([id, content]) => {
          const markdown = await import('/static/chatstream/markdown.js');
          const fresh = document.createElement('div');
          fresh.append(markdown.toFragment(content));
          return document.querySelector(`#m-${id} .body`).innerHTML === fresh.innerHTML;
        }""",
        [message_id, content],
    )


def thinking(page: Page, message_id: str) -> Any:
    """The reply's reasoning block."""
    return reply(page, message_id).locator(".cs-thinking")


def thought_words(block: Any) -> list[str]:
    """The words in a reasoning block, shown or folded away."""
    return (block.locator(".cs-thinking-body").text_content() or "").split()


def is_open(block: Any) -> bool:
    return block.evaluate("details => details.open")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


# --- tests ------------------------------------------------------------------------------


def test_reply_appears_progressively_and_ends_equal_to_the_stored_text(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    trigger = fake_openai.script(unique("progressive"), Script(MARKDOWN_TOKENS, interval=0.08))
    open_page(page, server)
    message_id = send(page, trigger)
    record_lengths(page, message_id)
    assert page.is_visible("#stop")
    assert page.is_hidden("#send")
    # Markdown renders while it streams: the table shows before the reply is over.
    page.wait_for_selector(f"#m-{message_id}.status-streaming .body table")
    screenshot(page, "desktop-light-streaming")
    wait_status(page, message_id, "complete")

    lengths = page.evaluate("window.__lengths")
    final = lengths[-1]
    intermediate = sorted({n for n in lengths if 0 < n < final})
    assert len(intermediate) >= 10, intermediate
    # Paced in the browser: no frame reveals a big piece at once (markup such as `**`
    # disappears as it renders, so the visible length may dip by a few characters).
    steps = [b - a for a, b in zip(lengths, lengths[1:], strict=False)]
    assert max(steps) < final / 5, steps

    message = stored(page, server, message_id)
    assert message["status"] == "complete"
    assert message["content"] == "".join(MARKDOWN_TOKENS)
    assert reply(page, message_id).get_attribute("data-raw") == message["content"]
    assert rendered_equals_stored(page, message_id, message["content"])
    body = reply(page, message_id).locator(".body")
    assert body.locator("h2").inner_text() == "Streaming report"
    assert body.locator("table tr").count() == 3
    assert body.locator("ol li").count() == 2
    assert body.locator(".cs-code .cs-copy").count() == 1
    assert "return f'hello {name}'" in body.locator("pre").inner_text()
    link = body.locator("a", has_text="a link")
    assert link.get_attribute("href") == "https://example.org/docs"
    assert link.get_attribute("rel") == "noopener noreferrer nofollow"

    details = reply(page, message_id).locator(".details").inner_text()
    assert re.fullmatch(
        rf"fake-model · 9 tokens in · {len(MARKDOWN_TOKENS)} out · first token \d+ ms · [\d.]+ s",
        details,
    ), details
    assert page.is_visible("#send") and page.is_enabled("#send")
    assert page.is_hidden("#stop")
    assert page.url == f"{server.url}/c/{message['conversation']}/"
    assert page.locator(".conversation-link[aria-current='page']").inner_text() == trigger
    # Announced once, politely, when finished: not character by character.
    until(page, "document.getElementById('announcer').textContent.startsWith('Assistant: Stream')")
    assert page.get_attribute("#announcer", "aria-live") == "polite"
    assert page.get_attribute("#messages", "aria-live") is None


def test_enter_sends_and_shift_enter_makes_a_new_line(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    first = unique("line-one")
    fake_openai.script(f"{first}\nline two", Script(words(60), interval=0.05))
    open_page(page, server)
    page.click("#content")
    page.keyboard.type(first)
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#content") == f"{first}\nline two"
    page.keyboard.press("Enter")
    page.wait_for_selector("article.user")
    assert page.locator("article.user .body").inner_text() == f"{first}\nline two"
    assert page.input_value("#content") == ""
    # While the reply streams, Enter does not send another message.
    page.wait_for_selector("article.assistant.status-streaming")
    page.keyboard.type("too soon")
    page.keyboard.press("Enter")
    assert page.is_disabled("#send")
    assert page.locator("article.user").count() == 1
    assert page.input_value("#content") == "too soon"
    page.wait_for_selector("article.assistant.status-complete")
    page.keyboard.press("Enter")
    until(page, "document.querySelectorAll('article.user').length === 2")


def test_stop_ends_the_reply_stopped_and_says_so(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    trigger = fake_openai.script(unique("stop"), Script(words(300), interval=0.05))
    open_page(page, server)
    message_id = send(page, trigger)
    wait_typed(page, f"#m-{message_id} .body", 20)
    page.click("#stop")
    wait_status(page, message_id, "stopped")
    assert reply(page, message_id).locator(".status-label").inner_text() == "Stopped"
    message = stored(page, server, message_id)
    assert message["status"] == "stopped"
    assert 0 < len(message["content"]) < len("".join(words(300)))
    assert reply(page, message_id).get_attribute("data-raw") == message["content"]
    assert rendered_equals_stored(page, message_id, message["content"])
    assert page.is_visible("#send") and page.is_hidden("#stop")
    assert fake_openai.wait_request(trigger).ended_event.wait(10)


def test_reload_mid_reply_reattaches_and_finishes(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    tokens = words(120)
    trigger = fake_openai.script(unique("reload"), Script(tokens, interval=0.04))
    open_page(page, server)
    message_id = send(page, trigger)
    wait_typed(page, f"#m-{message_id} .body", 40)
    stream_urls: list[str] = []
    page.on("request", lambda r: "/stream/" in r.url and stream_urls.append(r.url))
    page.reload()
    page.wait_for_selector("#chat[data-ready='true']")
    # The text so far is shown at once, and the stream resumes after it.
    page.wait_for_selector(f"#m-{message_id}.status-streaming")
    wait_status(page, message_id, "complete")
    assert stream_urls, "the page opened the reply's stream again"
    assert re.search(r"last_event_id=[1-9]\d*", stream_urls[0]), stream_urls
    message = stored(page, server, message_id)
    assert message["content"] == "".join(tokens)
    assert reply(page, message_id).get_attribute("data-raw") == message["content"]
    assert (
        reply(page, message_id).locator(".body").inner_text().strip() == message["content"].strip()
    )


def test_network_cut_shows_reconnecting_and_resumes_without_gap_or_duplicate(
    page: Page,
    server: LiveServer,
    proxy: CuttableProxy,
    fake_openai: FakeOpenAI,
    problems: Problems,
) -> None:
    problems.allowed = NETWORK_ERRORS
    tokens = words(150)
    trigger = fake_openai.script(unique("cut"), Script(tokens, interval=0.04))
    open_page(page, proxy.url)
    resumes: list[Request] = []
    page.on("request", lambda r: "/stream/" in r.url and resumes.append(r))
    message_id = send(page, trigger)
    wait_typed(page, f"#m-{message_id} .body", 30)
    assert resumes == []  # the POST that sent the message carries its reply
    proxy.cut()  # mid-reply: the POST's body fails
    page.wait_for_selector(f"#m-{message_id} .connection:not([hidden])")
    assert reply(page, message_id).locator(".connection").inner_text() == "Reconnecting…"
    assert page.locator(f"#m-{message_id}.status-streaming").count() == 1
    proxy.restore()
    wait_status(page, message_id, "complete")
    assert page.is_hidden(f"#m-{message_id} .connection")
    # It went on with GET stream from the last id it had: neither from 0 nor past the end.
    offsets = [resumed_at(r) for r in resumes]
    assert offsets and all(0 < n < len("".join(tokens)) for n in offsets), offsets
    assert resumes[0].method == "GET"
    message = stored(page, server, message_id)
    assert message["content"] == "".join(tokens)
    assert reply(page, message_id).get_attribute("data-raw") == message["content"]
    shown = reply(page, message_id).locator(".body").inner_text().split()
    assert shown == [t.strip() for t in tokens]


# --- one request per reply -------------------------------------------------------------


def reply_requests(requests: list[Request]) -> list[tuple[str, str]]:
    """The requests that started or read a reply: POSTs, and GETs of a stream."""
    return [(r.method, r.url) for r in requests if r.method == "POST" or "/stream/" in r.url]


def test_sending_streams_the_reply_in_the_one_request_that_sent_it(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    tokens = ["One **request** ", *words(60), "done."]
    trigger = fake_openai.script(unique("one-request"), Script(tokens, interval=0.02))
    open_page(page, server)
    conversation = api_post(page, server, "/api/conversations/", {})["id"]
    page.goto(f"{server.url}/c/{conversation}/")
    page.wait_for_selector("#chat[data-ready='true']")
    requests = record_requests(page)
    message_id = send(page, trigger)
    wait_status(page, message_id, "complete")
    made = reply_requests(requests)

    assert made == [("POST", f"{server.url}/api/conversations/{conversation}/messages/")]
    post = next(r for r in requests if r.method == "POST")
    assert post.headers["accept"] == "text/event-stream"
    assert post.response().headers["content-type"].startswith("text/event-stream")
    assert not any(message_id in r.url for r in requests)  # nor a GET of the message
    message = stored(page, server, message_id)
    assert message["content"] == "".join(tokens)
    assert reply(page, message_id).get_attribute("data-raw") == message["content"]
    assert rendered_equals_stored(page, message_id, message["content"])
    assert page.locator("article.user .body").inner_text() == trigger
    assert page.is_visible("#send") and page.is_hidden("#stop")


def test_regenerate_and_edit_each_stream_in_one_request(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    question = fake_openai.script(unique("regenerate me"), Script(["First ", "answer."]))
    open_page(page, server)
    first = send(page, question)
    wait_status(page, first, "complete")
    question_id = page.locator("article.user").get_attribute("id")[2:]
    again = words(40, "again")
    fake_openai.script(question, Script(again, interval=0.02))
    requests = record_requests(page)

    page.locator(f"#m-{first} .regenerate").click()
    page.wait_for_selector(f"#m-{first}", state="detached")
    regenerated = page.locator("article.assistant").get_attribute("id")[2:]
    wait_status(page, regenerated, "complete")
    assert reply_requests(requests) == [("POST", f"{server.url}/api/messages/{first}/regenerate/")]

    edited = words(40, "edited")
    second = fake_openai.script(unique("edited question"), Script(edited, interval=0.02))
    requests.clear()
    page.locator("article.user .edit").click()
    new_reply = start_editing_and_send(page, second)
    wait_status(page, new_reply, "complete")
    assert reply_requests(requests) == [("POST", f"{server.url}/api/messages/{question_id}/edit/")]

    assert stored(page, server, regenerated)["content"] == "".join(again)
    assert stored(page, server, new_reply)["content"] == "".join(edited)
    assert visible_text(page, f"#m-{new_reply}").split() == [w.strip() for w in edited]
    assert visible_text(page, "article.user") == second


def test_a_refusal_of_the_one_request_shows_the_same_error_as_before(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI, problems: Problems
) -> None:
    problems.allowed = re.compile(r"status of 409")
    first = fake_openai.script(unique("refused"), Script(["Fine."]))
    busy = fake_openai.script(unique("busy"), Script(words(400), interval=0.05))
    open_page(page, server)
    wait_status(page, send(page, first), "complete")
    conversation = page.url.rstrip("/").rsplit("/", 1)[-1]
    path = f"/api/conversations/{conversation}/messages/"
    # Another tab starts a reply here: this page does not know, so it may try to send.
    running = api_post(page, server, path, {"content": busy})["assistant_message"]["id"]
    token = page.evaluate("document.getElementById('chat').dataset.csrfToken")
    as_before = page.request.post(
        server.url + path,
        data={"content": "again"},
        headers={"X-CSRFToken": token, "Accept": "application/json"},
    )
    assert as_before.status == 409
    requests = record_requests(page)

    page.fill("#content", "again")
    page.press("#content", "Enter")
    page.wait_for_selector("#composer-error:not([hidden])")
    assert page.inner_text("#composer-error-text") == as_before.json()["error"]["message"]
    assert page.is_visible("#composer-retry")
    assert page.input_value("#content") == "again"  # kept, to send once the reply is over
    assert page.locator("article.user").count() == 1
    assert page.is_visible("#send") and page.is_enabled("#send")
    post = next(r for r in requests if r.method == "POST")
    assert post.headers["accept"] == "text/event-stream"
    assert post.response().status == 409
    page.request.post(
        f"{server.url}/api/messages/{running}/stop/", data={}, headers={"X-CSRFToken": token}
    )


# Observes what the page's one request brings in: the text of every SSE body it decodes.
RECORD_DECODED = """
  window.__decoded = "";
  const decode = TextDecoder.prototype.decode;
  TextDecoder.prototype.decode = function (...args) {
    const text = decode.apply(this, args);
    window.__decoded += text;
    return text;
  };
"""


def test_few_large_frames_still_type_out_in_many_small_steps(
    page: Page, fresh_server: Any, fake_openai: FakeOpenAI
) -> None:
    # A loaded server sends a frame at most every 250 ms, each with many tokens.
    server = fresh_server(TEST_FLUSH_INTERVAL="0.25")
    tokens = words(150)
    trigger = fake_openai.script(unique("coalesced"), Script(tokens, interval=0.02))
    page.add_init_script(RECORD_DECODED)
    open_page(page, server)
    message_id = send(page, trigger)
    record_lengths(page, message_id)
    wait_status(page, message_id, "complete")

    frames = page.evaluate("window.__decoded").count("event: delta\n")
    assert 2 <= frames <= len(tokens) / 4, frames  # few frames, each of several tokens
    lengths = page.evaluate("window.__lengths")
    steps = [b - a for a, b in zip(lengths, lengths[1:], strict=False) if b > a]
    # Each frame is revealed over many animation frames, a few characters at a time.
    assert len(steps) >= 4 * frames, (len(steps), frames)
    assert max(steps) < len("".join(tokens)) / frames, steps
    message = stored(page, server, message_id)
    assert message["content"] == "".join(tokens)
    assert reply(page, message_id).locator(".body").inner_text().split() == [
        t.strip() for t in tokens
    ]


# Every way of splitting one event stream into chunks must give the same events.
EVENT_STREAM = (
    "retry: 3000\r\n\r\n"
    ": keepalive\r\n\r\n"
    'event: started\r\ndata: {"a": 1}\r\n\r\n'
    'id: 5\nevent: delta\ndata: {"text": "h\u00e9llo \U0001f600"}\n\n'
    "data: line one\rdata:line two\r\r"
    ": a comment\n"
    "id: 9\r\nevent: done\r\ndata\r\n\r\n"
    "event: delta\ndata: cut off"
)
EVENTS = [
    {"type": "started", "data": '{"a": 1}', "lastEventId": ""},
    {"type": "delta", "data": '{"text": "h\u00e9llo \U0001f600"}', "lastEventId": "5"},
    {"type": "message", "data": "line one\nline two", "lastEventId": "5"},
    {"type": "done", "data": "", "lastEventId": "9"},
]


def test_read_events_parses_an_event_stream_however_its_chunks_split(
    page: Page, server: LiveServer
) -> None:
    open_page(page, server)
    parsed = page.evaluate(
        """async (text) => {
          const { readEvents } = await import('/static/chatstream/typewriter.js');
          const bytes = new TextEncoder().encode(text);
          const splits = [[bytes], [...bytes].flatMap((b) => [new Uint8Array(), Uint8Array.of(b)])];
          for (let at = 1; at < bytes.length; at++) {
            splits.push([bytes.slice(0, at), bytes.slice(at)]);
          }
          const results = [];
          for (const chunks of splits) {
            const body = new ReadableStream({
              start(controller) {
                for (const chunk of chunks) controller.enqueue(chunk);
                controller.close();
              },
            });
            const events = [];
            for await (const event of readEvents(body)) events.push(event);
            results.push(events);
          }
          return results;
        }""",
        EVENT_STREAM,
    )
    assert len(parsed) == len(EVENT_STREAM.encode()) + 1
    assert all(events == EVENTS for events in parsed), next(e for e in parsed if e != EVENTS)


def test_html_and_javascript_links_from_the_model_are_inert(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    payload = [
        "Look: <img src=x onerror=window.__xss=1> ",
        "and [click me](javascript:window.__xss=1) ",
        "and <script>window.__xss=1</script> ",
        '<a href="javascript:window.__xss=1" onclick="window.__xss=1">raw link</a> ',
        '<svg onload="window.__xss=1"></svg> ',
        "![pixel](https://tracker.example/p.png) ",
        '[ok](https://example.org/ "title" ) done.',
    ]
    trigger = fake_openai.script(unique("xss"), Script(payload, interval=0.05))
    open_page(page, server)
    message_id = send(page, trigger)
    wait_status(page, message_id, "complete")
    body = reply(page, message_id).locator(".body")
    body.locator("a", has_text="click me").click()
    assert page.evaluate("window.__xss") is None
    assert body.locator("img, script, svg, iframe").count() == 0
    hrefs = body.locator("a").evaluate_all("els => els.map(a => a.getAttribute('href'))")
    assert all(h is None or h.startswith("https://") for h in hrefs), hrefs
    handlers = body.evaluate(
        "b => [...b.querySelectorAll('*')].flatMap(e => [...e.attributes])"
        ".map(a => a.name).filter(n => n.startsWith('on'))"
    )
    assert handlers == []
    text = body.inner_text()
    assert "<img src=x onerror=window.__xss=1>" in text  # shown as text, never parsed
    assert "<script>" in text
    message = stored(page, server, message_id)
    assert rendered_equals_stored(page, message_id, message["content"])
    assert page.url.startswith(server.url)  # the javascript: link went nowhere


def test_error_is_shown_inline_and_retry_regenerates_the_reply(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    trigger = fake_openai.script(unique("fails"), Script(words(5), interval=0.02, error_after=3))
    open_page(page, server)
    failed = send(page, trigger)
    wait_status(page, failed, "error")
    problem = reply(page, failed).locator(".inline-error")
    assert problem.is_visible()
    assert reply(page, failed).locator(".status-label").inner_text() == "Failed"
    assert "sk-" not in problem.inner_text()
    fake_openai.script(trigger, Script(words(8, "ok"), interval=0.02))
    problem.locator(".retry").click()
    page.wait_for_selector(f"#m-{failed}", state="detached")
    page.wait_for_selector("article.assistant.status-complete")
    assert page.locator("article.assistant").count() == 1
    new_id = page.locator("article.assistant").get_attribute("id")[2:]
    assert stored(page, server, new_id)["content"] == "".join(words(8, "ok"))
    # The last reply can be regenerated again; the old one is replaced, not added to.
    page.locator(f"#m-{new_id} .regenerate").click()
    page.wait_for_selector(f"#m-{new_id}", state="detached")
    page.wait_for_selector("article.assistant.status-complete")
    assert page.locator("article.assistant").count() == 1
    assert page.locator("article.user").count() == 1


def test_sidebar_lists_newest_first_opens_renames_and_deletes(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI, problems: Problems
) -> None:
    problems.allowed = re.compile(r"status of 404")  # going back to the deleted chat
    open_page(page, server)
    first = unique("older")
    second = unique("newer")
    fake_openai.script(first, Script(["one"]))
    fake_openai.script(second, Script(["two"]))
    send(page, first)
    page.wait_for_selector("article.assistant.status-complete")
    older_url = page.url
    page.click("#new-chat")
    page.wait_for_url(f"{server.url}/")
    assert page.locator("article").count() == 0
    send(page, second)
    page.wait_for_selector("article.assistant.status-complete")
    until(page, f"document.querySelector('.conversation-link').textContent === '{second}'")
    assert page.locator(".conversation-link").all_inner_texts() == [second, first]

    page.locator(".conversation-link", has_text=first).click()
    page.wait_for_url(older_url)
    page.wait_for_selector(f"article.user >> text={first}")
    assert page.locator("#title").inner_text() == first

    item = page.locator(".conversation", has_text=first)
    item.locator(".rename").click()
    page.keyboard.press("Control+a")
    page.keyboard.type("Renamed chat")
    page.keyboard.press("Enter")
    page.wait_for_selector(".conversation-link >> text=Renamed chat")
    assert page.locator("#title").inner_text() == "Renamed chat"

    page.locator(".conversation", has_text="Renamed chat").locator(".delete").click()
    page.click(".confirm .danger")
    until(page, "document.querySelectorAll('.conversation').length === 1")
    page.wait_for_url(f"{server.url}/")
    assert page.locator(".conversation-link").all_inner_texts() == [second]
    page.go_back()
    page.wait_for_selector(".thread-notice")


def test_demo_model_is_clearly_labelled(page: Page, server: LiveServer) -> None:
    open_page(page, server)
    assert page.is_hidden("#demo-badge")
    page.select_option("#assistant", "demo")
    assert page.is_visible("#demo-badge")
    assert page.inner_text("#demo-badge") == "Offline demo"
    assert "offline demo" in page.inner_text("#assistant option:checked")
    message_id = send(page, "hello demo")
    wait_status(page, message_id, "complete")
    assert (
        "chatstream-demo (offline demo)" in reply(page, message_id).locator(".details").inner_text()
    )
    assert (
        reply(page, message_id).locator(".body strong").first.inner_text() == "offline demo model"
    )
    screenshot(page, "desktop-light-demo")


def test_page_has_a_strict_content_security_policy(page: Page, server: LiveServer) -> None:
    response = open_page(page, server)
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    html = response.text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "no inline script"
    assert " on" not in re.sub(r"\s+", " ", html).replace(" only-", "")  # no on*= handlers


def test_autoscroll_follows_until_the_reader_scrolls_up(
    browser: Browser, server: LiveServer, fake_openai: FakeOpenAI, problems: Problems
) -> None:
    context = new_context(browser, viewport={"width": 390, "height": 700})
    page = context.new_page()
    problems.watch(page)
    try:
        tokens = [f"Line {i} of a long reply.\n\n" for i in range(120)]
        trigger = fake_openai.script(unique("scroll"), Script(tokens, interval=0.05))
        open_page(page, server)
        message_id = send(page, trigger)
        at_bottom = (
            "() => { const m = document.getElementById('messages');"
            " return m.scrollHeight > m.clientHeight * 1.5"
            " && m.scrollHeight - m.scrollTop - m.clientHeight < 60; }"
        )
        page.wait_for_function(at_bottom)
        page.mouse.move(200, 300)
        page.mouse.wheel(0, -600)
        page.wait_for_selector("#jump:not([hidden])")
        top = page.evaluate("document.getElementById('messages').scrollTop")
        wait_typed(page, f"#m-{message_id} .body", 1500)
        assert page.evaluate("document.getElementById('messages').scrollTop") == top
        page.click("#jump")
        page.wait_for_function(at_bottom)
        wait_status(page, message_id, "complete")
        assert problems.unexpected() == []
    finally:
        context.close()


def open_host_page(page: Page, server: LiveServer, trigger: str) -> dict[str, Any]:
    """Start a reply through the API, then open another project's page that types it out:
    only the template tags, under the same strict CSP. Returns the 201's body."""
    open_page(page, server)
    token = page.evaluate("document.getElementById('chat').dataset.csrfToken")
    headers = {"X-CSRFToken": token, "Content-Type": "application/json"}
    created = page.request.post(f"{server.url}/api/conversations/", data={}, headers=headers)
    started = page.request.post(
        f"{server.url}/api/conversations/{created.json()['id']}/messages/",
        data={"content": trigger},
        headers=headers,
    ).json()
    html = Template(
        "{% load chatstream %}<!doctype html><html><head><link rel='icon' href='data:,'>"
        "{% chatstream_assets %}</head><body><h1>Host page</h1>"
        "{% chatstream_typewriter url %}</body></html>"
    ).render(Context({"url": started["stream_url"]}))
    page.route(
        f"{server.url}/host-page/",
        lambda route: route.fulfill(
            body=html,
            content_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src data:; script-src 'self'"
            },
        ),
    )
    page.goto(f"{server.url}/host-page/")
    return started


def test_embedded_typewriter_types_any_reply_on_another_page(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    tokens = ["Embedded **typewriter** ", *words(40), "done."]
    trigger = fake_openai.script(unique("embed"), Script(tokens, interval=0.04))
    started = open_host_page(page, server, trigger)
    box = page.locator(".chatstream-typewriter")
    wait_typed(page, ".chatstream-typewriter", 10)
    assert box.get_attribute("data-status") is None  # still typing
    page.wait_for_selector(".chatstream-typewriter[data-status='complete']")
    assert box.locator("strong").inner_text() == "typewriter"
    message = stored(page, server, started["assistant_message"]["id"])
    assert box.inner_text().replace("\n", "") == message["content"].replace("**", "")


def test_typewriter_tag_renders_a_message_with_its_text_so_far() -> None:
    html = Template("{% load chatstream %}{% chatstream_typewriter url 'text' 'mine' %}").render(
        Context({"url": "/chat/api/messages/x/stream/?a=1&b=2"})
    )
    assert html == (
        '<div class="chatstream-typewriter mine" '
        'data-chatstream-stream="/chat/api/messages/x/stream/?a=1&amp;b=2" '
        'data-chatstream-content="" data-chatstream-reasoning="" data-chatstream-offset="0" '
        'data-chatstream-format="text" aria-live="off">'
        '<div class="cs-text" data-chatstream-body></div></div>\n'
    )


def test_typewriter_tag_resumes_a_stored_reply_after_both_kinds_of_text() -> None:
    reply = Message(role="assistant", content="Hi <b>", reasoning="Think & greet")
    html = Template("{% load chatstream %}{% chatstream_typewriter reply %}").render(
        Context({"reply": reply})
    )
    assert 'data-chatstream-content="Hi &lt;b&gt;"' in html
    assert 'data-chatstream-reasoning="Think &amp; greet"' in html
    assert f'data-chatstream-offset="{len("Hi <b>") + len("Think & greet")}"' in html


# --- reasoning --------------------------------------------------------------------------

THOUGHT = re.compile(r"Thought for \d+(\.\d)? s")

REASONING_TOKENS = [
    "The person asks how ",
    "a reply reaches the page. ",
    "I should explain the **reader loop** first, ",
    "then how a dropped connection resumes.\n\n",
    "- offsets are the event ids\n",
    "- a reconnect sends `Last-Event-ID`\n",
    "- nothing is sent twice\n\n",
    "Keep it short, and show the ",
    "event format.",
]


def test_reasoning_streams_in_a_thinking_block_that_folds_when_the_answer_starts(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    thought, tokens = words(50, "r"), words(30, "a")
    trigger = fake_openai.script(unique("think"), Script(tokens, reasoning=thought, interval=0.04))
    open_page(page, server)
    message_id = send(page, trigger)
    block = thinking(page, message_id)
    # It thinks in the open, typed out like the answer, before any answer.
    page.wait_for_selector(f"#m-{message_id} .cs-thinking[open][data-state='thinking']")
    wait_typed(page, f"#m-{message_id} .cs-thinking-body", 30)
    assert block.locator("summary").inner_text() == "Thinking…"
    assert len(block.locator(".cs-thinking-body").inner_text()) < len("".join(thought)) - 20
    assert reply(page, message_id).locator(".body").inner_text() == ""
    # The answer starts: the block folds and says how long the model thought.
    wait_typed(page, f"#m-{message_id} .body", 3)
    until(page, f"!document.querySelector('#m-{message_id} .cs-thinking').open")
    wait_status(page, message_id, "complete")
    label = block.locator("summary").inner_text()
    assert THOUGHT.fullmatch(label), label
    assert float(label.split()[2]) >= 1.5  # 50 pieces, 40 ms apart
    assert not is_open(block)
    assert block.get_attribute("data-state") == "done"

    message = stored(page, server, message_id)
    assert message["reasoning"] == "".join(thought)
    assert message["content"] == "".join(tokens)
    assert thought_words(block) == [t.strip() for t in thought]
    assert reply(page, message_id).locator(".body").inner_text().split() == [
        t.strip() for t in tokens
    ]
    assert reply(page, message_id).get_attribute("data-raw") == message["content"]  # Copy
    assert rendered_equals_stored(page, message_id, message["content"])
    assert page.locator(f"#m-{message_id} .cs-thinking").count() == 1
    assert "(50 thinking)" in reply(page, message_id).locator(".details").inner_text()

    # The person unfolds it, and folds it again.
    block.locator("summary").click()
    assert is_open(block)
    assert block.locator(".cs-thinking-body").inner_text().split() == [t.strip() for t in thought]
    block.locator("summary").press("Enter")
    assert not is_open(block)

    # Another conversation and back: the block and its time are still there.
    page.click("#new-chat")
    page.wait_for_url(f"{server.url}/")
    page.locator(".conversation-link", has_text=trigger).click()
    page.wait_for_selector(f"#m-{message_id}.status-complete .cs-thinking")
    assert block.locator("summary").inner_text() == label
    assert not is_open(block)
    assert thought_words(block) == [t.strip() for t in thought]


def test_reasoning_is_kept_after_a_reload_mid_thinking_and_after(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    thought, tokens = words(100, "r"), words(20, "a")
    trigger = fake_openai.script(
        unique("think-reload"), Script(tokens, reasoning=thought, interval=0.04)
    )
    open_page(page, server)
    message_id = send(page, trigger)
    wait_typed(page, f"#m-{message_id} .cs-thinking-body", 40)
    page.reload()
    page.wait_for_selector("#chat[data-ready='true']")
    # Mid-thinking: the reasoning so far is shown at once, open, and goes on.
    page.wait_for_selector(f"#m-{message_id}.status-streaming .cs-thinking[open]")
    assert len(thought_words(thinking(page, message_id))) >= 5
    wait_status(page, message_id, "complete")
    block = thinking(page, message_id)
    assert not is_open(block)
    # This page did not see it start: it does not make up a time.
    assert block.locator("summary").inner_text() == "Thoughts"
    assert thought_words(block) == [t.strip() for t in thought]

    page.reload()
    page.wait_for_selector("#chat[data-ready='true']")
    page.wait_for_selector(f"#m-{message_id}.status-complete")
    block = thinking(page, message_id)
    assert block.count() == 1
    assert not is_open(block)
    assert block.locator("summary").inner_text() == "Thoughts"
    message = stored(page, server, message_id)
    assert thought_words(block) == message["reasoning"].split() == [t.strip() for t in thought]
    assert reply(page, message_id).locator(".body").inner_text().split() == [
        t.strip() for t in tokens
    ]
    block.locator("summary").click()
    assert block.locator(".cs-thinking-body").is_visible()


def test_html_and_script_in_reasoning_are_shown_as_text(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    thought = [
        "Consider <img src=x onerror=window.__xss=1> ",
        "and <script>window.__xss=1</script> ",
        '<svg onload="window.__xss=1"></svg> ',
        "and [click me](javascript:window.__xss=1) then stop.",
    ]
    trigger = fake_openai.script(
        unique("think-xss"), Script(["Safe ", "answer."], reasoning=thought, interval=0.05)
    )
    open_page(page, server)
    message_id = send(page, trigger)
    wait_status(page, message_id, "complete")
    for reloaded in (False, True):
        if reloaded:
            page.reload()
            page.wait_for_selector(f"#m-{message_id}.status-complete .cs-thinking")
        block = thinking(page, message_id)
        block.locator("summary").click()
        body = block.locator(".cs-thinking-body")
        body.locator("a", has_text="click me").click()
        assert page.evaluate("window.__xss") is None
        assert body.locator("img, script, svg, iframe").count() == 0
        assert body.locator("a").evaluate_all("els => els.map(a => a.getAttribute('href'))") == [
            None
        ]
        handlers = body.evaluate(
            "b => [...b.querySelectorAll('*')].flatMap(e => [...e.attributes])"
            ".map(a => a.name).filter(n => n.startsWith('on'))"
        )
        assert handlers == []
        text = body.inner_text()
        assert "<img src=x onerror=window.__xss=1>" in text
        assert "<script>window.__xss=1</script>" in text
        assert page.url.startswith(server.url)


def test_network_cut_mid_reasoning_resumes_both_kinds_without_gap_or_duplicate(
    page: Page,
    server: LiveServer,
    proxy: CuttableProxy,
    fake_openai: FakeOpenAI,
    problems: Problems,
) -> None:
    problems.allowed = NETWORK_ERRORS
    thought, tokens = words(200, "r"), words(40, "a")
    trigger = fake_openai.script(
        unique("think-cut"), Script(tokens, reasoning=thought, interval=0.04)
    )
    open_page(page, proxy.url)
    streams: list[Request] = []
    page.on("request", lambda r: "/stream/" in r.url and streams.append(r))
    message_id = send(page, trigger)
    wait_typed(page, f"#m-{message_id} .cs-thinking-body", 30)
    proxy.cut()
    page.wait_for_selector(f"#m-{message_id} .connection:not([hidden])")
    assert thinking(page, message_id).get_attribute("data-state") == "thinking"
    proxy.restore()
    wait_status(page, message_id, "complete")
    assert page.is_hidden(f"#m-{message_id} .connection")

    offsets = [resumed_at(r) for r in streams]
    assert offsets, "the page opened the stream again"
    # It came back mid-thinking, with the one id that counts both kinds of text.
    assert 0 < offsets[-1] < len("".join(thought)), offsets
    message = stored(page, server, message_id)
    assert message["reasoning"] == "".join(thought)
    assert message["content"] == "".join(tokens)
    block = thinking(page, message_id)
    assert thought_words(block) == [t.strip() for t in thought]
    assert reply(page, message_id).locator(".body").inner_text().split() == [
        t.strip() for t in tokens
    ]
    assert not is_open(block)
    assert THOUGHT.fullmatch(block.locator("summary").inner_text())


def test_stop_mid_reasoning_keeps_what_was_thought(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    thought = words(300, "r")
    trigger = fake_openai.script(
        unique("think-stop"), Script(words(10, "a"), reasoning=thought, interval=0.04)
    )
    open_page(page, server)
    message_id = send(page, trigger)
    wait_typed(page, f"#m-{message_id} .cs-thinking-body", 20)
    page.click("#stop")
    wait_status(page, message_id, "stopped")
    assert reply(page, message_id).locator(".status-label").inner_text() == "Stopped"
    assert page.is_visible("#send") and page.is_hidden("#stop")
    message = stored(page, server, message_id)
    assert message["status"] == "stopped"
    assert message["content"] == ""
    assert 0 < len(message["reasoning"]) < len("".join(thought))
    assert fake_openai.wait_request(trigger).ended_event.wait(10)
    for reloaded in (False, True):
        if reloaded:
            page.reload()
            page.wait_for_selector(f"#m-{message_id}.status-stopped")
        block = thinking(page, message_id)
        # No answer follows: the thinking stays open, and is over.
        assert is_open(block)
        assert block.get_attribute("data-state") == "done"
        assert THOUGHT.fullmatch(block.locator("summary").inner_text())
        assert (
            block.locator(".cs-thinking-body").inner_text().split() == message["reasoning"].split()
        )
        assert reply(page, message_id).locator(".body").inner_text() == ""


def test_a_reply_without_reasoning_has_no_thinking_block(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    trigger = fake_openai.script(unique("no-think"), Script(words(20), interval=0.02))
    open_page(page, server)
    message_id = send(page, trigger)
    wait_status(page, message_id, "complete")
    assert page.locator(".cs-thinking").count() == 0
    assert "thinking" not in reply(page, message_id).locator(".details").inner_text()
    page.reload()
    page.wait_for_selector(f"#m-{message_id}.status-complete")
    assert page.locator(".cs-thinking").count() == 0


def test_embedded_typewriter_shows_the_reasoning_too(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    thought, tokens = words(40, "r"), ["Embedded **answer** ", *words(10, "a")]
    trigger = fake_openai.script(
        unique("embed-think"), Script(tokens, reasoning=thought, interval=0.04)
    )
    started = open_host_page(page, server, trigger)
    block = page.locator(".chatstream-typewriter > .cs-thinking")
    page.wait_for_selector(".chatstream-typewriter > .cs-thinking[open][data-state='thinking']")
    wait_typed(page, ".cs-thinking-body", 10)
    assert page.locator("[data-chatstream-body]").inner_text() == ""
    page.wait_for_selector(".chatstream-typewriter[data-status='complete']")
    assert not is_open(block)
    assert THOUGHT.fullmatch(block.locator("summary").inner_text())
    assert thought_words(block) == [t.strip() for t in thought]
    # The block sits above the answer, inside the widget.
    assert block.evaluate("b => b.nextElementSibling.hasAttribute('data-chatstream-body')")
    message = stored(page, server, started["assistant_message"]["id"])
    body = page.locator("[data-chatstream-body]")
    assert body.locator("strong").inner_text() == "answer"
    assert body.inner_text().replace("\n", "") == message["content"].replace("**", "").strip()
    block.locator("summary").click()
    assert is_open(block)


SCREENS = [
    ("desktop-light", {"width": 1280, "height": 800}, "light"),
    ("desktop-dark", {"width": 1280, "height": 800}, "dark"),
    ("phone-light", {"width": 390, "height": 844}, "light"),
    ("phone-dark", {"width": 390, "height": 844}, "dark"),
]


@pytest.mark.parametrize(("name", "viewport", "scheme"), SCREENS)
def test_screenshots(
    browser: Browser,
    server: LiveServer,
    fake_openai: FakeOpenAI,
    problems: Problems,
    name: str,
    viewport: dict[str, int],
    scheme: str,
) -> None:
    # Reduced motion: no slide-in to wait out before the drawer's picture.
    context = new_context(browser, viewport=viewport, color_scheme=scheme, reduced_motion="reduce")
    page = context.new_page()
    problems.watch(page)
    try:
        trigger = fake_openai.script(unique("shot"), Script(MARKDOWN_TOKENS, interval=0.01))
        open_page(page, server)
        screenshot(page, f"{name}-empty")
        message_id = send(page, trigger)
        wait_status(page, message_id, "complete")
        page.evaluate("document.getElementById('messages').scrollTop = 0")
        screenshot(page, name)
        if viewport["width"] < 700:
            page.click("#open-sidebar")
            page.wait_for_selector("#sidebar .conversation-link", state="visible")
            screenshot(page, f"{name}-drawer")
        assert problems.unexpected() == []
    finally:
        context.close()


@pytest.mark.parametrize(("name", "viewport", "scheme"), SCREENS)
def test_screenshots_of_thinking(
    browser: Browser,
    server: LiveServer,
    fake_openai: FakeOpenAI,
    problems: Problems,
    name: str,
    viewport: dict[str, int],
    scheme: str,
) -> None:
    context = new_context(browser, viewport=viewport, color_scheme=scheme, reduced_motion="reduce")
    page = context.new_page()
    problems.watch(page)
    try:
        trigger = fake_openai.script(
            unique("shot-think"),
            Script(MARKDOWN_TOKENS[:8], reasoning=REASONING_TOKENS, interval=0.15),
        )
        open_page(page, server)
        message_id = send(page, trigger)
        wait_typed(page, f"#m-{message_id} .cs-thinking-body", 150)
        screenshot(page, f"{name}-thinking")
        wait_status(page, message_id, "complete")
        screenshot(page, f"{name}-thought")
        thinking(page, message_id).locator("summary").click()
        screenshot(page, f"{name}-thought-open")
        assert problems.unexpected() == []
    finally:
        context.close()


# --- signing in and out, every conversation findable, edit, export, keys -------------------

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def closed_server(
    fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A second server where only people who are signed in may chat, with one user, ada."""
    live = make_live_server(
        "daphne", tmp_path_factory.mktemp("closed"), fake_openai, CHATSTREAM_ALLOW_ANONYMOUS="0"
    )
    live.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        f"User.objects.create_user('ada', password={PASSWORD!r})",
    )
    yield live
    live.stop()


def sign_in(page: Page, username: str = "ada", password: str = PASSWORD) -> None:
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type='submit']")


def api_post(page: Page, site: LiveServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST as the page's own session, with its CSRF token."""
    token = page.evaluate("document.getElementById('chat').dataset.csrfToken")
    response = page.request.post(
        site.url + path,
        data=body,
        headers={"X-CSRFToken": token, "Content-Type": "application/json"},
    )
    assert response.status == 201, response.text()
    return response.json()


def test_sign_in_to_chat_links_to_the_login_page_and_back_to_the_chat(
    page: Page, closed_server: LiveServer
) -> None:
    conversation = closed_server.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "from chatstream.models import Conversation; "
        "print(Conversation.objects.create("
        "owner=User.objects.get(username='ada'), title='Ada notes').id)",
    ).split()[-1]  # after the shell's own line about its imports
    page.goto(f"{closed_server.url}/c/{conversation}/")
    link = page.locator(".notice a", has_text="Sign in to chat.")
    assert page.locator("#composer").count() == 0
    link.click()
    page.wait_for_url(re.compile(r"/accounts/login/\?next="))
    assert page.locator("h1").inner_text() == "Sign in"
    screenshot(page, "desktop-light-sign-in")
    sign_in(page)
    page.wait_for_url(f"{closed_server.url}/c/{conversation}/")
    page.wait_for_selector("#chat[data-ready='true']")
    assert page.locator("#title").inner_text() == "Ada notes"
    assert page.locator(".account-name").text_content() == "Signed in as ada"
    assert page.is_visible("#content")
    assert page.locator(".conversation-link").all_inner_texts() == ["Ada notes"]
    screenshot(page, "desktop-light-signed-in")


def test_sign_out_posts_to_the_logout_view_and_leaves_the_chat_closed(
    page: Page, closed_server: LiveServer
) -> None:
    page.goto(f"{closed_server.url}/accounts/login/?next=/")
    sign_in(page)
    page.wait_for_url(f"{closed_server.url}/")
    page.wait_for_selector("#chat[data-ready='true']")
    form = page.locator("form.sign-out")
    assert form.get_attribute("method") == "post"
    assert form.get_attribute("action") == "/accounts/logout/"
    assert form.locator("input[name='csrfmiddlewaretoken']").count() == 1
    page.click("#sign-out")
    page.wait_for_selector(".notice a >> text=Sign in to chat.")
    assert page.url == f"{closed_server.url}/"
    assert page.locator(".account-name").count() == 0
    assert page.locator("#composer").count() == 0
    # Signed out for real: the API refuses the next request.
    response = page.request.get(f"{closed_server.url}/api/conversations/")
    assert response.status == 403
    assert response.json()["error"]["code"] == "not_authenticated"


def test_sidebar_pages_past_fifty_conversations_when_scrolled_to_the_end(
    page: Page, server: LiveServer
) -> None:
    open_page(page, server)
    for i in range(55):
        api_post(page, server, "/api/conversations/", {"title": f"paged {i:02}"})
    page.reload()
    page.wait_for_selector("#chat[data-ready='true']")
    links = page.locator(".conversation-link")
    assert links.count() == 50
    assert page.is_visible("#more-conversations")
    page.eval_on_selector("#conversation-scroll", "box => { box.scrollTop = box.scrollHeight; }")
    until(page, "document.querySelectorAll('.conversation-link').length === 55")
    assert page.is_hidden("#more-conversations")
    assert links.all_inner_texts() == [f"paged {i:02}" for i in reversed(range(55))]
    # A refresh (here: a rename) keeps every page that was shown.
    item = page.locator(".conversation", has_text="paged 00")
    item.locator(".rename").click()
    page.keyboard.press("Control+a")
    page.keyboard.type("paged renamed")
    page.keyboard.press("Enter")
    page.wait_for_selector(".conversation-link >> text=paged renamed")
    assert links.count() == 55


def test_search_filters_as_you_type_and_highlights_the_words_safely(
    page: Page, server: LiveServer
) -> None:
    open_page(page, server)
    word = unique("zebra")
    api_post(page, server, "/api/conversations/", {"title": "Holiday plans in Lisbon"})
    api_post(page, server, "/api/conversations/", {"title": "<b>lisbon</b> & <img src=x>"})
    api_post(page, server, "/api/conversations/", {"title": "Something else"})
    noted = api_post(page, server, "/api/conversations/", {"title": "Trip notes"})
    api_post(page, server, f"/api/conversations/{noted['id']}/messages/", {"content": word})
    page.reload()
    page.wait_for_selector("#chat[data-ready='true']")
    until(page, "document.querySelectorAll('.conversation-link').length === 4")
    searches: list[str] = []
    page.on("request", lambda r: "q=" in r.url and searches.append(r.url))

    page.click("#search")
    page.keyboard.type("lisbon", delay=40)
    until(page, "document.querySelectorAll('.conversation-link').length === 2")
    assert len(searches) == 1, searches  # debounced: one request for six keys
    assert page.locator(".conversation-link").all_inner_texts() == [
        "<b>lisbon</b> & <img src=x>",
        "Holiday plans in Lisbon",
    ]
    assert page.locator(".conversation-link mark").all_inner_texts() == ["lisbon", "Lisbon"]
    # The title is text: its markup is shown, never parsed.
    assert page.locator(".conversation-link b, .conversation-link img").count() == 0

    page.fill("#search", word)  # found by the message's text, not the title
    page.wait_for_selector(".conversation-link >> text=Trip notes")
    until(page, "document.querySelectorAll('.conversation-link').length === 1")
    page.fill("#search", "nothing-like-this-anywhere")
    page.wait_for_selector("#no-matches:not([hidden])")
    assert page.locator(".conversation-link").count() == 0
    page.press("#search", "Escape")
    until(page, "document.querySelectorAll('.conversation-link').length === 4")
    assert page.locator(".conversation-link mark").count() == 0


def start_editing_and_send(page: Page, text: str) -> str:
    """Replace the text in the open edit box, send it; the new reply's message id."""
    before = page.eval_on_selector_all("article.assistant", "els => els.map(e => e.id)")
    page.fill(".edit-input", text)
    page.press(".edit-input", "Enter")
    page.wait_for_function(
        "before => [...document.querySelectorAll('article.assistant')]"
        ".some(e => !before.includes(e.id))",
        arg=before,
    )
    return page.locator("article.assistant").last.get_attribute("id")[2:]


def visible_text(page: Page, selector: str) -> str:
    """The text of the body on show in an article: an earlier version's, or the current."""
    return page.locator(selector).locator(":scope > .body:visible").inner_text()


def test_edit_and_resend_streams_a_new_pair_and_the_switch_shows_the_old_one(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    first = fake_openai.script(unique("first question"), Script(["First ", "answer."]))
    second = fake_openai.script(unique("second question"), Script(words(40, "new"), interval=0.03))
    open_page(page, server)
    old_reply = send(page, first)
    wait_status(page, old_reply, "complete")
    question = page.locator("article.user")
    assert question.locator(".versions").is_hidden()
    question.locator(".edit").click()
    assert page.input_value(".edit-input") == first
    assert question.locator("> .body").is_hidden()

    new_reply = start_editing_and_send(page, second)
    page.wait_for_selector(f"#m-{new_reply}.status-streaming")
    assert page.locator(f"#m-{old_reply}").count() == 0  # in place of the old pair
    wait_status(page, new_reply, "complete")
    assert page.locator("article.user").count() == 1
    assert page.locator("article.assistant").count() == 1
    assert visible_text(page, "article.user") == second
    assert stored(page, server, new_reply)["content"] == "".join(words(40, "new"))

    switch = question.locator(".versions")
    page.wait_for_selector("article.user .versions:visible")
    assert switch.locator(".versions-label").inner_text() == "2/2"
    assert switch.locator(".versions-next").is_disabled()
    switch.locator(".versions-previous").click()
    assert switch.locator(".versions-label").inner_text() == "1/2"
    assert visible_text(page, "article.user") == first
    assert visible_text(page, f"#m-{new_reply}") == "First answer."
    assert question.locator(".edit").is_hidden()  # an earlier version is only shown
    assert page.locator(f"#m-{new_reply} .regenerate").is_hidden()
    switch.locator(".versions-next").click()
    assert switch.locator(".versions-label").inner_text() == "2/2"
    assert visible_text(page, "article.user") == second
    assert visible_text(page, f"#m-{new_reply}").startswith("new0 new1")
    # The same after a reload: the versions come from the server.
    page.reload()
    page.wait_for_selector("#chat[data-ready='true']")
    page.wait_for_selector("article.user .versions:visible")
    assert page.locator("article.user .versions-label").inner_text() == "2/2"


def test_export_links_download_the_conversation_as_markdown_and_json(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    trigger = fake_openai.script(unique("export me"), Script(["Exported ", "**answer**."]))
    open_page(page, server)
    assert page.is_hidden("#export")  # nothing to export yet
    message_id = send(page, trigger)
    wait_status(page, message_id, "complete")
    conversation = stored(page, server, message_id)["conversation"]

    page.click("#export summary")
    with page.expect_download() as markdown:
        page.click("#export-md")
    assert markdown.value.suggested_filename.endswith(".md")
    text = Path(markdown.value.path()).read_text(encoding="utf-8")
    assert text.startswith(f"# {trigger}\n")
    assert trigger in text and "Exported **answer**." in text

    page.click("#export summary")
    with page.expect_download() as exported:
        page.click("#export-json")
    assert exported.value.suggested_filename.endswith(".json")
    data = json.loads(Path(exported.value.path()).read_text(encoding="utf-8"))
    shown = page.request.get(f"{server.url}/api/conversations/{conversation}/").json()
    assert data == shown
    assert [m["content"] for m in data["messages"]] == [trigger, "Exported **answer**."]


def test_up_arrow_in_the_empty_message_box_edits_the_last_question(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    first = fake_openai.script(unique("arrow one"), Script(["one"]))
    second = fake_openai.script(unique("arrow two"), Script(["two"]))
    edited = fake_openai.script(unique("arrow edited"), Script(["edited"]))
    open_page(page, server)
    wait_status(page, send(page, first), "complete")
    wait_status(page, send(page, second), "complete")
    page.fill("#content", "a draft")
    page.press("#content", "ArrowUp")  # not empty: the caret moves, nothing is edited
    assert page.locator(".edit-input").count() == 0
    page.fill("#content", "")
    page.press("#content", "ArrowUp")
    assert page.evaluate("document.activeElement.className") == "edit-input"
    assert page.input_value(".edit-input") == second  # the last question, not the first
    page.keyboard.press("Escape")  # leaves the box as it was
    assert page.locator(".edit-input").count() == 0
    assert visible_text(page, "article.user >> nth=1") == second
    page.press("#content", "ArrowUp")
    reply_id = start_editing_and_send(page, edited)
    wait_status(page, reply_id, "complete")
    assert page.locator("article.user .body:visible").all_inner_texts() == [first, edited]
    assert stored(page, server, reply_id)["content"] == "edited"


def test_escape_stops_a_streaming_reply(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    trigger = fake_openai.script(unique("escape"), Script(words(300), interval=0.05))
    open_page(page, server)
    message_id = send(page, trigger)
    wait_typed(page, f"#m-{message_id} .body", 20)
    page.click("#title")  # Escape works wherever the focus is, not only in the box
    page.keyboard.press("Escape")
    wait_status(page, message_id, "stopped")
    assert stored(page, server, message_id)["status"] == "stopped"
    assert fake_openai.wait_request(trigger).ended_event.wait(10)


def test_the_tab_title_says_the_assistant_is_typing_while_a_reply_streams(
    page: Page, server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    trigger = fake_openai.script(unique("tab title"), Script(words(60), interval=0.04))
    open_page(page, server)
    assert page.title() == "chatstream"
    message_id = send(page, trigger)
    page.wait_for_function("title => document.title === title", arg="● Assistant is typing")
    wait_status(page, message_id, "complete")
    until(page, "!document.title.startsWith('●')")
    assert page.title() == f"{page.locator('#title').inner_text()} · chatstream"


@pytest.mark.parametrize(("name", "viewport", "scheme"), SCREENS)
def test_screenshots_of_search_and_versions(
    browser: Browser,
    server: LiveServer,
    fake_openai: FakeOpenAI,
    problems: Problems,
    name: str,
    viewport: dict[str, int],
    scheme: str,
) -> None:
    context = new_context(browser, viewport=viewport, color_scheme=scheme, reduced_motion="reduce")
    page = context.new_page()
    problems.watch(page)
    try:
        first = fake_openai.script(unique("Plan a trip to Lisbon"), Script(MARKDOWN_TOKENS[:4]))
        second = fake_openai.script(unique("Plan a trip to Porto"), Script(MARKDOWN_TOKENS[:6]))
        open_page(page, server)
        for title in ["Lisbon restaurants", "Weekend in Lisbon", "Tax return", "Lisbon tram map"]:
            api_post(page, server, "/api/conversations/", {"title": title})
        wait_status(page, send(page, first), "complete")
        page.locator("article.user .edit").click()
        wait_status(page, start_editing_and_send(page, second), "complete")
        page.wait_for_selector("article.user .versions:visible")
        screenshot(page, f"{name}-versions")
        page.locator("article.user .versions-previous").click()
        screenshot(page, f"{name}-versions-old")
        if viewport["width"] < 700:
            page.click("#open-sidebar")
            page.wait_for_selector("#search", state="visible")
        page.fill("#search", "lisbon")
        until(page, "document.querySelectorAll('.conversation-link mark').length === 4")
        screenshot(page, f"{name}-search")
        assert problems.unexpected() == []
    finally:
        context.close()
