"""One parser module per exchange; ``processor_for(exchange)`` gives a fresh processor."""

from __future__ import annotations

import importlib

from streams.feed import ClockWindow, FeedCounters, FeedOutput, FeedProcessor

_MODULES = {
    "binance": ("streams.parsers.binance", "BinanceProcessor"),
    "binance-futures": ("streams.parsers.binance_futures", "BinanceFuturesProcessor"),
    "coinbase": ("streams.parsers.coinbase", "CoinbaseProcessor"),
    "kraken": ("streams.parsers.kraken", "KrakenProcessor"),
    "bybit": ("streams.parsers.bybit", "BybitProcessor"),
    "okx": ("streams.parsers.okx", "OkxProcessor"),
    "bitfinex": ("streams.parsers.bitfinex", "BitfinexProcessor"),
    "kucoin": ("streams.parsers.kucoin", "KucoinProcessor"),
    "gateio": ("streams.parsers.gateio", "GateioProcessor"),
    "htx": ("streams.parsers.htx", "HtxProcessor"),
    "mexc": ("streams.parsers.mexc", "MexcProcessor"),
    "deribit": ("streams.parsers.deribit", "DeribitProcessor"),
}
EXCHANGES: tuple[str, ...] = tuple(_MODULES)


def processor_class(exchange: str) -> type[FeedProcessor]:
    try:
        module, name = _MODULES[exchange]
    except KeyError:
        raise ValueError(f"no parser for exchange {exchange!r}; known: {', '.join(EXCHANGES)}") from None
    found: type[FeedProcessor] = getattr(importlib.import_module(module), name)
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
