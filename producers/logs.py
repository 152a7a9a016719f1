"""Structured log lines: ``event key=value ...`` in the text, the same fields as record extras."""

from __future__ import annotations

import logging
from typing import Any


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    if not logger.isEnabledFor(level):
        return
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    logger.log(level, "%s %s", event, text, extra=fields)
