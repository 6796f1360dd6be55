"""Text every database we support can store, and the one test for it.

PostgreSQL refuses NUL in text columns, and no database can encode a lone UTF-16
surrogate (``json.loads`` makes one from ``"\\ud800"``). Requests that carry such
text are refused (400 ``invalid_content``); model output has each such character
replaced by U+FFFD before it reaches the reply log, one code point for one, so
offsets, what readers saw and what is stored stay identical.
"""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

REPLACEMENT = "\ufffd"


def is_storable(text: str) -> bool:
    """Whether every supported database stores ``text`` as it is."""
    return _UNSTORABLE.search(text) is None


def storable(text: str) -> str:
    """``text`` with each unstorable code point replaced by U+FFFD (same length)."""
    return text if _UNSTORABLE.search(text) is None else _UNSTORABLE.sub(REPLACEMENT, text)
