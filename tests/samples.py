"""Real exchange frames from ../shared/exchange-protocols/samples, read at test time (never copied)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "shared/exchange-protocols/samples"


@cache
def _load(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


def load_sample(name: str) -> Any:
    """The parsed sample file ``name`` (e.g. ``"binance.json"``); skips the test when absent."""
    if not (SAMPLES / name).exists():
        pytest.skip(f"exchange samples not available: {SAMPLES / name} is missing")
    return _load(name)


def messages(name: str, kind: str) -> list[str]:
    """The frames (exact text) in ``messages[kind]`` of sample file ``name``."""
    found: list[str] = load_sample(name)["messages"][kind]
    return found


def large_frame(name: str) -> str:
    """The text of a large verbatim frame under samples/large."""
    path = SAMPLES / "large" / name
    if not path.exists():
        pytest.skip(f"exchange samples not available: {path} is missing")
    return path.read_text()
