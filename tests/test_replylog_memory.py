from __future__ import annotations

import gc
import tracemalloc
import uuid

import pytest
from django.test import AsyncClient, override_settings

from chatstream.generation import registry
from chatstream.replylog import get_reply_log
from chatstream.replylog.base import ANSWER, REASONING, Part, PartKind
from chatstream.replylog.memory import MemoryReplyLog
from tests.fake_openai import FakeOpenAI, Script
from tests.replylog_contract import ReplyLogContract
from tests.test_generation import upstream
from tests.test_views import new_conversation, send


class TestMemoryReplyLog(ReplyLogContract):
    @pytest.fixture
    def log(self) -> MemoryReplyLog:
        return MemoryReplyLog(ttl=60)

    @pytest.fixture
    def short_ttl_log(self) -> MemoryReplyLog:
        return MemoryReplyLog(ttl=0.05)


async def test_many_tiny_appends_are_kept_as_merged_blocks() -> None:
    log = MemoryReplyLog()
    writer = await log.open("r")
    for _ in range(10_000):
        await writer.append("ab")
    assert len(log._entries["r"].blocks) < 10_000 / 32


@pytest.mark.parametrize(
    "pieces",
    [
        [(REASONING, "thi"), (REASONING, "nk"), *[(ANSWER, "Hé"), (ANSWER, "llo ")] * 100],
        [(REASONING, "a"), (ANSWER, "b"), (REASONING, "c"), (ANSWER, "dé")] * 50,
    ],
    ids=["one-run-each", "interleaved"],
)
async def test_a_finished_reply_reads_back_exactly_from_every_offset(
    pieces: list[tuple[PartKind, str]],
) -> None:
    log = MemoryReplyLog()
    writer = await log.open("r")
    for kind, text in pieces:
        await writer.append(text, kind)
    parts = tuple(Part(kind, text) for kind, text in pieces)
    message = {
        "content": "".join(t for k, t in pieces if k == ANSWER),
        "reasoning": "".join(t for k, t in pieces if k == REASONING),
    }
    await writer.close({"status": "complete", "message": dict(message)})
    full = "".join(text for _, text in pieces)
    for offset in range(len(full) + 1):
        read = await log.read("r", offset, timeout=0)
        assert read is not None and read.final is not None
        assert (read.text, read.end) == (full[offset:], len(full))
        assert read.final == {"status": "complete", "message": message}
    whole = await log.read("r", 0, timeout=0)
    assert whole is not None and "".join(p.text for p in whole.parts) == full
    assert [p.kind for p in whole.parts] == [p.kind for p in _runs_of(parts)]


@pytest.mark.django_db(transaction=True)
async def test_a_finished_reply_keeps_its_text_once(fake_openai: FakeOpenAI) -> None:
    # A reply stays in the log for LOG_TTL after it ends, read or not: its final record
    # carries the persisted message, text and all, for readers' done. It held 3.8 times
    # the text: the blocks, the record's copy, and the UTF-8 copy sqlite3 caches in it.
    tokens = [f" wörd{i % 10}" for i in range(20_000)]  # 120 KB of text
    text_bytes = len("".join(tokens))  # one byte a character: all Latin-1
    with override_settings(CHATSTREAM=upstream(fake_openai, CHECKPOINT_INTERVAL=0)):
        await _reply(fake_openai, Script(tokens=["warm", "up"]))  # imports, caches, pools
        script = Script(tokens=tokens)
        gc.collect()
        tracemalloc.start()
        try:
            reply_id = await _reply(fake_openai, script)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        read = await get_reply_log().read(reply_id, 0, 0)
    assert read is not None and read.text == script.text and read.final is not None
    assert held < 1.5 * text_bytes, f"{held} bytes held for {text_bytes} of text"


def _runs_of(parts: tuple[Part, ...]) -> list[Part]:
    runs: list[Part] = []
    for part in parts:
        if runs and runs[-1].kind == part.kind:
            runs[-1] = Part(part.kind, runs[-1].text + part.text)
        else:
            runs.append(part)
    return runs


async def _reply(fake: FakeOpenAI, script: Script) -> str:
    """One reply through the view and its generation; its id once it has ended."""
    trigger = fake.script(f"m-{uuid.uuid4().hex}", script)
    client = AsyncClient()
    started = await send(client, await new_conversation(client), trigger)
    reply_id = started["assistant_message"]["id"]
    await registry.wait(reply_id, timeout=30)
    return reply_id
