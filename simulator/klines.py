"""The simulator's own candles and 24 h ticker statistics, computed from the trades it sends.

Every dialect renders these in its exchange's kline and ticker formats, so marketpipe's candles
(built from the trades it received) can be checked against the "exchange's" candles exactly:
both sides see the same trades with the same timestamps. Prices are ticks, sizes lots (see
market.py); ``quote_units`` is the sum of price ticks x lots, i.e. quote volume / (tick x lot).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from simulator.market import SymbolSpec, Trade

NS = 1_000_000_000
DAY_NS = 86_400 * NS


@dataclass(slots=True)
class Kline:
    """One window's candle, as an exchange builds it from its trades."""

    open_ns: int
    interval_ns: int
    open: int
    high: int
    low: int
    close: int
    volume_lots: int
    quote_units: int
    trades: int
    first_trade_id: int
    last_trade_id: int
    last_trade_ns: int

    @property
    def close_ns(self) -> int:
        return self.open_ns + self.interval_ns

    def add(self, trade: Trade) -> None:
        self.high = max(self.high, trade.price)
        self.low = min(self.low, trade.price)
        self.close = trade.price
        self.volume_lots += trade.qty
        self.quote_units += trade.price * trade.qty
        self.trades += 1
        self.last_trade_id = trade.trade_id
        self.last_trade_ns = trade.ts_ns

    @classmethod
    def starting_with(cls, trade: Trade, interval_ns: int) -> Kline:
        return cls(
            open_ns=trade.ts_ns - trade.ts_ns % interval_ns,
            interval_ns=interval_ns,
            open=trade.price,
            high=trade.price,
            low=trade.price,
            close=trade.price,
            volume_lots=trade.qty,
            quote_units=trade.price * trade.qty,
            trades=1,
            first_trade_id=trade.trade_id,
            last_trade_id=trade.trade_id,
            last_trade_ns=trade.ts_ns,
        )


@dataclass(slots=True)
class Ticker24h:
    """Rolling 24 h statistics over the trades sent so far (the whole run, while it is shorter)."""

    last: int
    last_qty: int
    open: int
    high: int
    low: int
    volume_lots: int
    quote_units: int
    trades: int


class MarketStats:
    """One symbol's klines (one interval) and 24 h window, fed with every trade in time order.

    A window without trades has no kline (as on every exchange that builds them from trades).
    """

    def __init__(self, spec: SymbolSpec, interval_s: int = 60) -> None:
        self.spec = spec
        self.interval_ns = interval_s * NS
        self.current: Kline | None = None
        self.closed: deque[Kline] = deque(maxlen=100)
        """recent final klines, oldest first (what a subscribe snapshot re-sends)"""
        self._day: deque[Trade] = deque()
        self._volume_lots = 0
        self._quote_units = 0

    def add(self, trade: Trade) -> Kline | None:
        """Count one trade; returns the kline its window closed, when it starts a new window."""
        self._add_to_day(trade)
        current = self.current
        if current is not None and trade.ts_ns < current.close_ns:
            current.add(trade)
            return None
        self.current = Kline.starting_with(trade, self.interval_ns)
        if current is not None:
            self.closed.append(current)
        return current

    def close_due(self, now_ns: int) -> Kline | None:
        """The current kline once its window has ended (for exchanges that push a final frame on
        the boundary); it stays ``current`` until the next trade starts a new window."""
        current = self.current
        return current if current is not None and now_ns >= current.close_ns else None

    def ticker(self) -> Ticker24h | None:
        if not self._day:
            return None
        prices = [trade.price for trade in self._day]
        last = self._day[-1]
        return Ticker24h(
            last=last.price,
            last_qty=last.qty,
            open=self._day[0].price,
            high=max(prices),
            low=min(prices),
            volume_lots=self._volume_lots,
            quote_units=self._quote_units,
            trades=len(self._day),
        )

    def quote_volume(self, units: int) -> float:
        """``quote_units`` -> quote currency."""
        return units * 10.0 ** -(self.spec.price_decimals + self.spec.qty_decimals)

    def _add_to_day(self, trade: Trade) -> None:
        day = self._day
        day.append(trade)
        self._volume_lots += trade.qty
        self._quote_units += trade.price * trade.qty
        horizon = trade.ts_ns - DAY_NS
        while day[0].ts_ns <= horizon:
            old = day.popleft()
            self._volume_lots -= old.qty
            self._quote_units -= old.price * old.qty
