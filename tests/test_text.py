from __future__ import annotations

import pytest

from chatstream.text import is_storable, storable


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("plain", "plain"),
        ("a\x00b", "a\ufffdb"),
        ("\ud800 lone", "\ufffd lone"),
        ("pair 👩‍👩‍👧 kept", "pair 👩‍👩‍👧 kept"),
        ("\x00\udfff", "\ufffd\ufffd"),
    ],
)
def test_unstorable_code_points_are_replaced_one_for_one(text: str, stored: str) -> None:
    assert storable(text) == stored
    assert len(storable(text)) == len(text)
    assert is_storable(text) is (text == stored)
