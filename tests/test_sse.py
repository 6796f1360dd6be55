from __future__ import annotations

import pytest

from chatstream import sse


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": "hi"}, b"data: hi\n\n"),
        ({"data": "a\nb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\r\nb"}, b"data: a\ndata: b\n\n"),
        ({"data": ""}, b"data: \n\n"),
        ({"data": "x", "event": "delta", "id": 5}, b"id: 5\nevent: delta\ndata: x\n\n"),
        ({"event": "ping"}, b"event: ping\n\n"),
        ({"data": "é😀"}, "data: é😀\n\n".encode()),
    ],
)
def test_encode_writes_exact_bytes(kwargs: dict, expected: bytes) -> None:
    assert sse.encode(**kwargs) == expected


def test_delta_carries_the_length_as_id_and_json_text() -> None:
    assert sse.delta('he said "hi"\n', 13) == (
        b'id: 13\nevent: delta\ndata: {"text":"he said \\"hi\\"\\n"}\n\n'
    )


def test_non_ascii_json_is_sent_as_utf8_not_escapes() -> None:
    assert sse.encode_json({"text": "世界"}, event="delta", id=2) == (
        'id: 2\nevent: delta\ndata: {"text":"世界"}\n\n'.encode()
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("keepalive", b": keepalive\n\n"), ("two\nlines", b": two\n: lines\n\n")],
)
def test_comment_lines(text: str, expected: bytes) -> None:
    assert sse.comment(text) == expected


def test_retry_line() -> None:
    assert sse.retry(3000) == b"retry: 3000\n\n"
