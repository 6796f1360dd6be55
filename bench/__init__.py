"""The benchmark: chatstream against a straightforward Django relay (see bench/run.py)."""

from __future__ import annotations
