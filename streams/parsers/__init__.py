"""One parser module per registered exchange; ``processor_for(exchange)`` gives a fresh processor."""

from __future__ import annotations

import importlib

from marketpipe.exchanges import EXCHANGES, exchange
from streams.feed import ClockWindow, FeedCounters, FeedOutput, FeedProcessor


def processor_class(name: str) -> type[FeedProcessor]:
    """The processor class of exchange ``name`` (``streams.parsers.<row.module>``)."""
    row = exchange(name)
    found: type[FeedProcessor] = getattr(importlib.import_module(f"{__name__}.{row.module}"), row.processor)
    return found


def processor_for(exchange: str, clock: ClockWindow | None = None) -> FeedProcessor:
    """A new processor (holding state for all of the exchange's connections and symbols);
    ``clock`` bounds exchange timestamps around the receive time (default ``ClockWindow()``)."""
    return processor_class(exchange)(clock)


__all__ = [
    "EXCHANGES",
    "ClockWindow",
    "FeedCounters",
    "FeedOutput",
    "FeedProcessor",
    "processor_class",
    "processor_for",
]
