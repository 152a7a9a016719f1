"""What the Binance, Coinbase, Kraken, Bybit and OKX dialects share for their ticker and kline
channels: when a window's final candle is due, and the number texts of klines and tickers.

The klines and 24 h figures themselves come from ``feed.stats`` (simulator/klines.py). A dialect
sends a step's trades first and then its ticker and kline frames, so a client that received
the trades can rebuild every number of those frames.
"""

from __future__ import annotations

from simulator.base import Decimals, Feed
from simulator.klines import Kline, MarketStats


class FinalCandles:
    """Per symbol, the newest window whose final candle a dialect has sent (exchanges with a
    final flag push it once, at the window's end or with the first trade after it)."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}

    def due(self, symbol: str, stats: MarketStats, now_ns: int) -> Kline | None:
        """The kline whose window has ended and whose final frame is not sent yet. A window that
        ended before the dialect first looked is not sent (nobody was subscribed then)."""
        current = stats.current
        if current is None:
            return None
        ended = current if now_ns >= current.close_ns else (stats.closed[-1] if stats.closed else None)
        if ended is None:  # the first window is still open: it is the first one due
            self.sent.setdefault(symbol, current.open_ns - 1)
            return None
        last = self.sent.get(symbol)
        self.sent[symbol] = ended.open_ns
        if last is None or last >= ended.open_ns:
            return None
        return ended


class StatsTexts:
    """Number texts for one feed's klines and tickers, at each market's precision: prices in
    ticks, volumes in lots and quote volumes in tick x lot units (``quote_units``)."""

    def __init__(self, feed: Feed, places: int | None = None, trim: bool = True) -> None:
        self.price: dict[str, Decimals] = {}
        self.qty: dict[str, Decimals] = {}
        self.quote: dict[str, Decimals] = {}
        for symbol, market in feed.markets.items():
            spec = market.spec
            quote_scale = spec.price_decimals + spec.qty_decimals
            self.price[symbol] = Decimals(spec.price_decimals, max(places or 0, spec.price_decimals), trim)
            self.qty[symbol] = Decimals(spec.qty_decimals, max(places or 0, spec.qty_decimals), trim)
            self.quote[symbol] = Decimals(quote_scale, max(places or 0, quote_scale), trim)
