"""One logging style for the product: ``event key=value ...`` in the text, the same fields as
record extras, so a line reads well and a handler can pick the fields out.

A field must not be named like a ``LogRecord`` attribute (``name``, ``message``, ``process``,
...): logging refuses such an extra.
"""

from __future__ import annotations

import logging
from typing import Any


def log_event(
    logger: logging.Logger, level: int, event: str, *, exc_info: bool = False, **fields: Any
) -> None:
    """Log ``event`` with its fields; ``exc_info=True`` adds the current traceback (not a field)."""
    if not logger.isEnabledFor(level):
        return
    text = " ".join([event, *(f"{key}={value}" for key, value in fields.items())])
    # stacklevel=2: the record names the caller's function and line, not this one
    logger.log(level, "%s", text, extra=fields, exc_info=exc_info, stacklevel=2)
