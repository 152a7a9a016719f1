"""One parser module per exchange; ``processor_for(exchange)`` gives a fresh processor."""

from __future__ import annotations

from streams.feed import FeedCounters, FeedOutput, FeedProcessor
from streams.parsers.binance import BinanceProcessor
from streams.parsers.bybit import BybitProcessor
from streams.parsers.coinbase import CoinbaseProcessor
from streams.parsers.kraken import KrakenProcessor
from streams.parsers.okx import OkxProcessor

PROCESSORS: dict[str, type[FeedProcessor]] = {
    cls.exchange: cls
    for cls in (BinanceProcessor, CoinbaseProcessor, KrakenProcessor, BybitProcessor, OkxProcessor)
}
EXCHANGES: tuple[str, ...] = tuple(PROCESSORS)


def processor_for(exchange: str) -> FeedProcessor:
    """A new processor (holding state for all of the exchange's connections and symbols)."""
    try:
        return PROCESSORS[exchange]()
    except KeyError:
        raise ValueError(f"no parser for exchange {exchange!r}; known: {', '.join(EXCHANGES)}") from None


__all__ = ["EXCHANGES", "PROCESSORS", "FeedCounters", "FeedOutput", "FeedProcessor", "processor_for"]
