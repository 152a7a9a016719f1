"""OHLCV candles in exchange event time: the pure logic of the ohlcv stage (and its bench).

Rules (one market = one ``exchange:symbol``):

* A trade at ``ts`` belongs to the window ``open_time = floor(ts / interval) * interval`` of
  every configured interval (a trade exactly at an edge opens the window starting there).
* Open is the price of the trade with the smallest ``ts`` and close of the one with the
  largest (ties: the earlier processed trade keeps open, the later one takes close).
* Windows close on the market's watermark ``max(ts seen) - grace``: every window with
  ``close_time <= watermark`` is closed and published once more with ``closed=True``.
* A trade for an already closed window is *late*: it still updates that candle, which is
  republished at once with ``late=True`` (or created, when the window had no trade). Closed
  candles are kept for ``max(interval, late_horizon)`` past their close; a trade later than
  that cannot be applied correctly any more and is rejected (the agent dead-letters it).
* Intermediate versions are throttled in *event time*: a market publishes its changed open
  candles when a trade's ``ts`` reaches ``last publication + update interval``. So every
  output, version numbers included, is a pure function of the trade sequence: replaying the
  same trades publishes the same records. The stage takes only each candle's last version
  of a batch (``take_published(latest_only=True)``), so which versions reach Kafka depends
  on the batches, but each one that does is that same record, and the last one always does.
* The ohlcv stage (streams/aggregations.py) keeps one builder per md.trades partition and the
  stream runtime checkpoints it whole with the committed offsets, so it passes no offsets.
  Callers that persist state themselves can: each market then keeps the last offset applied
  per input partition and skips trades at or below it, and ``state_changes``/``restore``
  write and read that state entry by entry.

Hot path: a trade only updates a small accumulator ("chunk") for its slice of the finest
grid (the gcd of the intervals, 1 s by default); the chunk is merged into the candles of
every interval when the trade stream moves to another slice and before a publication or
close. Trades arrive in time order per market, so that is about one merge per interval per
grid slice instead of one per trade. Merge points depend only on the trades (never on
batch boundaries; a pending chunk is persisted as it is), so even the floating-point sums
come out bit-identical on a replay.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from math import gcd
from operator import attrgetter
from typing import Any

import msgspec
from msgspec.structs import replace

from marketpipe.config import interval_to_us
from marketpipe.records import Candle

LATE_HORIZON_US = 5 * 60_000_000
"""Closed candles accept late trades for at least this long (event time) after closing."""

_MARKET_PREFIX = b"m|"
_CLOSED_PREFIX = b"c|"


_ROW_FIELDS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "buy_volume",
    "sell_volume",
    "trades",
    "first_ts",
    "last_ts",
    "closed",
    "late",
    "version",
    "offsets",
)
"""a bar's persisted row (and publication snapshot), in order"""


class Bar:
    """A candle being built (also used as the per-slice trade accumulator)."""

    __slots__ = (
        "buy_volume",
        "changed",
        "close",
        "closed",
        "first_ts",
        "high",
        "last_ts",
        "late",
        "low",
        "offsets",
        "open",
        "open_time",
        "quote_volume",
        "sell_volume",
        "trades",
        "version",
        "volume",
    )

    def __init__(self, open_time: int, ts: int, price: float) -> None:
        self.open_time = open_time
        self.open = self.high = self.low = self.close = price
        self.volume = self.quote_volume = self.buy_volume = self.sell_volume = 0.0
        self.trades = 0
        self.first_ts = self.last_ts = ts
        self.closed = False
        self.late = False
        self.version = 0
        self.changed = False
        self.offsets: dict[int, int] | None = None
        """closed candles only: the last input offset applied per partition"""

    def add(self, ts: int, price: float, size: float, side: str) -> None:
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        if ts < self.first_ts:
            self.first_ts = ts
            self.open = price
        if ts >= self.last_ts:
            self.last_ts = ts
            self.close = price
        self.volume += size
        self.quote_volume += price * size
        if side == "buy":
            self.buy_volume += size
        elif side == "sell":
            self.sell_volume += size
        self.trades += 1
        self.changed = True

    def merge(self, other: Bar) -> None:
        """Fold ``other`` (later-processed trades of the same window) into this bar."""
        if other.high > self.high:
            self.high = other.high
        if other.low < self.low:
            self.low = other.low
        if other.first_ts < self.first_ts:
            self.first_ts = other.first_ts
            self.open = other.open
        if other.last_ts >= self.last_ts:
            self.last_ts = other.last_ts
            self.close = other.close
        self.volume += other.volume
        self.quote_volume += other.quote_volume
        self.buy_volume += other.buy_volume
        self.sell_volume += other.sell_volume
        self.trades += other.trades
        self.changed = True

    def copy_of(self, open_time: int) -> Bar:
        bar = Bar(open_time, self.first_ts, self.open)
        bar.high, bar.low, bar.close, bar.last_ts = self.high, self.low, self.close, self.last_ts
        bar.volume, bar.quote_volume = self.volume, self.quote_volume
        bar.buy_volume, bar.sell_volume, bar.trades = self.buy_volume, self.sell_volume, self.trades
        bar.changed = True
        return bar

    def candle(self, exchange: str, symbol: str, interval: str, length: int) -> Candle:
        template = _TEMPLATES.get((exchange, symbol, interval)) or _template(exchange, symbol, interval)
        volume = self.volume
        # two calls of at most 10 keywords: one call of 17 costs twice as much in CPython 3.11
        prices = replace(
            template,
            open_time=self.open_time,
            close_time=self.open_time + length,
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=volume,
            quote_volume=self.quote_volume,
        )
        return replace(
            prices,
            buy_volume=self.buy_volume,
            sell_volume=self.sell_volume,
            trades=self.trades,
            vwap=self.quote_volume / volume if volume else self.close,
            first_trade_ts=self.first_ts,
            last_trade_ts=self.last_ts,
            closed=self.closed,
            late=self.late,
            version=self.version,
            markets=[f"{exchange}:{symbol}"],
        )

    # -- persistence (a compact msgpack row) ------------------------------------------------

    def row(self) -> tuple[Any, ...]:
        return _row_of(self)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Bar:
        bar = cls(row[0], row[10], row[1])
        (_, _, bar.high, bar.low, bar.close, bar.volume, bar.quote_volume, bar.buy_volume) = row[:8]
        (bar.sell_volume, bar.trades, _, bar.last_ts, bar.closed, bar.late, bar.version) = row[8:15]
        bar.offsets = row[15]
        bar.changed = False
        return bar


_row_of = attrgetter(*_ROW_FIELDS)  # one C call builds the row: a publication snapshots its bar

_TEMPLATES: dict[tuple[str, str, str], Candle] = {}
"""a candle per (exchange, symbol, interval) that ``Bar.candle`` copies with its own values"""


def _template(exchange: str, symbol: str, interval: str) -> Candle:
    if len(_TEMPLATES) >= 65_536:
        _TEMPLATES.clear()
    found = _TEMPLATES[(exchange, symbol, interval)] = Candle(
        exchange=exchange,
        symbol=symbol,
        interval=interval,
        open_time=0,
        close_time=0,
        open=0.0,
        high=0.0,
        low=0.0,
        close=0.0,
        volume=0.0,
        quote_volume=0.0,
        buy_volume=0.0,
        sell_volume=0.0,
        trades=0,
        vwap=0.0,
        first_trade_ts=0,
        last_trade_ts=0,
        closed=False,
        version=0,
    )
    return found


class Market:
    """One market's candles: open ones per interval, recently closed ones, and its clocks."""

    __slots__ = (
        "chunk",
        "closed",
        "closed_through",
        "dirty",
        "exchange",
        "expired",
        "max_ts",
        "next_close",
        "next_pub",
        "offsets",
        "open",
        "partition",
        "symbol",
        "touched_closed",
    )

    def __init__(self, exchange: str, symbol: str, n_intervals: int) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.open: list[dict[int, Bar]] = [{} for _ in range(n_intervals)]
        self.closed: list[dict[int, Bar]] = [{} for _ in range(n_intervals)]
        self.chunk: Bar | None = None
        self.max_ts = -(1 << 62)
        self.closed_through = -(1 << 62)
        """every window with close_time <= this is closed"""
        self.next_close = 1 << 62
        self.next_pub = -(1 << 62)
        self.offsets: dict[int, int] = {}
        self.partition = 0
        """input partition of the market's trades (its state goes to the same changelog partition)"""
        self.dirty = False
        self.touched_closed: set[tuple[int, int]] = set()
        self.expired: set[tuple[int, int]] = set()

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}"


class Rejected(msgspec.Struct, frozen=True):
    exchange: str
    symbol: str
    ts: int
    partition: int
    offset: int
    reason: str


class CandleBuilder:
    """Feed trades with ``add``; collect ``take_published()``, ``rejected`` and ``state_changes()``."""

    def __init__(
        self,
        intervals: Iterable[str],
        grace_s: float,
        update_interval_s: float,
        late_horizon_us: int = LATE_HORIZON_US,
    ) -> None:
        self.intervals = list(intervals)
        self.lengths = [interval_to_us(interval) for interval in self.intervals]
        if not self.lengths:
            raise ValueError("at least one OHLCV interval is needed")
        grid = 0
        for length in self.lengths:
            grid = gcd(grid, length)
        self.grid = grid
        self.grace = int(grace_s * 1_000_000)
        self.update_every = int(update_interval_s * 1_000_000)
        self.retention = [max(length, late_horizon_us) for length in self.lengths]
        self.markets: dict[str, Market] = {}
        self.published: list[tuple[Market, int, Bar, tuple[Any, ...]]] = []
        """(market, interval index, bar, the bar's row) of every version published since the last take"""
        self.rejected: list[Rejected] = []
        self.duplicates = 0
        self.late_trades = 0

    # ------------------------------------------------------------------------------ input

    def market(self, exchange: str, symbol: str) -> Market:
        key = f"{exchange}:{symbol}"
        found = self.markets.get(key)
        if found is None:
            found = self.markets[key] = Market(exchange, symbol, len(self.lengths))
        return found

    def add(
        self,
        exchange: str,
        symbol: str,
        ts: int,
        price: float,
        size: float,
        side: str,
        partition: int = 0,
        offset: int = -1,
    ) -> None:
        """One trade. ``offset`` (with ``partition``) identifies it for replay de-duplication."""
        m = self.markets.get(f"{exchange}:{symbol}") or self.market(exchange, symbol)
        if offset >= 0:
            if offset <= m.offsets.get(partition, -1):
                self.duplicates += 1
                return
            m.offsets[partition] = offset
        m.partition = partition
        m.dirty = True
        if ts < m.closed_through:
            self._late(m, ts, price, size, side, partition, offset)
            return
        start = ts - ts % self.grid
        chunk = m.chunk
        if chunk is None:
            chunk = m.chunk = Bar(start, ts, price)
        elif chunk.open_time != start:
            self._flush_chunk(m)
            chunk = m.chunk = Bar(start, ts, price)
        chunk.add(ts, price, size, side)
        if ts > m.max_ts:
            m.max_ts = ts
            if ts - self.grace >= m.next_close:
                self._close(m, ts - self.grace)
        if ts >= m.next_pub:
            self._publish_open(m)
            m.next_pub = ts + self.update_every

    def flush_open(self) -> None:
        """Publish every open candle with unpublished trades now (``closed=False``), e.g. at end of input."""
        for m in self.markets.values():
            self._publish_open(m)
            m.dirty = True

    def take_published(self, latest_only: bool = False) -> list[Candle]:
        """The candle versions published since the last call, in publication order; with
        ``latest_only``, each candle's last version only (the ones it supersedes are never built)."""
        published, self.published = self.published, []
        if latest_only:  # a dict keeps each bar's first position and takes its last entry
            published = list({id(entry[2]): entry for entry in published}.values())
        return [
            Bar.from_row(row).candle(m.exchange, m.symbol, self.intervals[i], self.lengths[i])
            for m, i, _, row in published
        ]

    # --------------------------------------------------------------------------- internals

    def _flush_chunk(self, m: Market) -> None:
        chunk = m.chunk
        if chunk is None:
            return
        m.chunk = None
        start = chunk.open_time
        for i, length in enumerate(self.lengths):
            open_time = start - start % length
            windows = m.open[i]
            bar = windows.get(open_time)
            if bar is None:
                windows[open_time] = chunk.copy_of(open_time)
                close_time = open_time + length
                if close_time < m.next_close:
                    m.next_close = close_time
            else:
                bar.merge(chunk)

    def _publish_open(self, m: Market) -> None:
        self._flush_chunk(m)
        published = self.published
        for i, windows in enumerate(m.open):
            for bar in windows.values():
                if bar.changed:
                    bar.changed = False
                    bar.version += 1
                    published.append((m, i, bar, _row_of(bar)))

    def _close(self, m: Market, watermark: int) -> None:
        """Close every window ending at or before ``watermark``; expire old closed ones."""
        if m.chunk is not None and m.chunk.open_time < watermark:  # else it is in no closing window
            self._flush_chunk(m)
        m.closed_through = watermark
        next_close = 1 << 62
        for i, length in enumerate(self.lengths):
            windows = m.open[i]
            closed = m.closed[i]
            for open_time in [t for t in windows if t + length <= watermark]:
                bar = windows.pop(open_time)
                bar.closed = True
                bar.changed = False
                bar.version += 1
                bar.offsets = dict(m.offsets)
                self.published.append((m, i, bar, _row_of(bar)))
                closed[open_time] = bar
                m.touched_closed.add((i, open_time))
            for open_time in windows:
                if open_time + length < next_close:
                    next_close = open_time + length
            keep_after = watermark - self.retention[i] - length
            if closed and next(iter(closed)) <= keep_after:
                self._expire(m, i, keep_after)
        m.next_close = next_close

    def _expire(self, m: Market, i: int, keep_after: int) -> None:
        """Forget the closed windows of interval ``i`` opened at or before ``keep_after``."""
        closed = m.closed[i]
        while closed:
            open_time = next(iter(closed))
            if open_time > keep_after:
                break
            del closed[open_time]
            m.expired.add((i, open_time))
            m.touched_closed.discard((i, open_time))

    def _late(
        self, m: Market, ts: int, price: float, size: float, side: str, partition: int, offset: int
    ) -> None:
        """A trade at or before the closed-through watermark (it may still hit open windows)."""
        self._flush_chunk(m)
        watermark = m.closed_through
        targets: list[tuple[int, int, bool]] = []
        for i, length in enumerate(self.lengths):
            open_time = ts - ts % length
            is_closed = open_time + length <= watermark
            if is_closed and open_time + length + self.retention[i] <= watermark:
                self.rejected.append(
                    Rejected(
                        m.exchange,
                        m.symbol,
                        ts,
                        partition,
                        offset,
                        f"trade at {ts} is later than the {self.intervals[i]} candle's late horizon "
                        f"(watermark {watermark}, kept {self.retention[i] // 1_000_000} s after close)",
                    )
                )
                return
            targets.append((i, open_time, is_closed))
        self.late_trades += 1
        for i, open_time, is_closed in targets:
            if not is_closed:
                bar = m.open[i].get(open_time)
                if bar is None:
                    bar = m.open[i][open_time] = Bar(open_time, ts, price)
                    m.next_close = min(m.next_close, open_time + self.lengths[i])
                bar.add(ts, price, size, side)
                continue
            bar = m.closed[i].get(open_time)
            if bar is None:
                bar = m.closed[i][open_time] = Bar(open_time, ts, price)
                bar.closed = True
                bar.offsets = {}
            elif offset >= 0 and bar.offsets is not None and offset <= bar.offsets.get(partition, -1):
                continue  # already in this closed candle (persisted before a crash)
            bar.add(ts, price, size, side)
            bar.late = True
            bar.changed = False
            bar.version += 1
            if offset >= 0 and bar.offsets is not None:
                bar.offsets[partition] = offset
            self.published.append((m, i, bar, _row_of(bar)))
            m.touched_closed.add((i, open_time))

    # ------------------------------------------------------------------------- persistence

    def state_changes(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        """(partition, table key, value or None to delete) for everything changed since the last call.

        Closed candles come before their market's record: a market record (with its input
        offsets) that reached the changelog implies the closed candles written before it did.
        """
        for m in self.markets.values():
            if not m.dirty:
                continue
            prefix = f"{m.exchange}:{m.symbol}:"
            for i, open_time in m.expired:
                yield m.partition, _CLOSED_PREFIX + f"{prefix}{self.intervals[i]}:{open_time}".encode(), None
            for i, open_time in m.touched_closed:
                bar = m.closed[i][open_time]
                key = _CLOSED_PREFIX + f"{prefix}{self.intervals[i]}:{open_time}".encode()
                yield m.partition, key, msgspec.msgpack.encode(bar.row())
            m.expired.clear()
            m.touched_closed.clear()
            m.dirty = False
            yield m.partition, _MARKET_PREFIX + m.key.encode(), msgspec.msgpack.encode(self._market_row(m))

    def _market_row(self, m: Market) -> list[Any]:
        chunk = m.chunk.row() if m.chunk is not None else None
        open_bars = [
            [self.intervals[i], [[bar.row(), bar.changed] for bar in windows.values()]]
            for i, windows in enumerate(m.open)
        ]
        return [
            m.exchange,
            m.symbol,
            m.max_ts,
            m.closed_through,
            m.next_pub,
            m.offsets,
            open_bars,
            chunk,
            m.partition,
        ]

    def restore(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Rebuild every market from persisted table entries (replaces current state)."""
        self.markets.clear()
        closed_rows: list[tuple[str, str, Bar]] = []
        index = {interval: i for i, interval in enumerate(self.intervals)}
        for key, value in items:
            if key.startswith(_MARKET_PREFIX):
                self._restore_market(msgspec.msgpack.decode(value), index)
            elif key.startswith(_CLOSED_PREFIX):
                market, interval, _ = key[len(_CLOSED_PREFIX) :].decode().rsplit(":", 2)
                closed_rows.append((market, interval, Bar.from_row(msgspec.msgpack.decode(value))))
        for market_key, interval, bar in closed_rows:
            m = self.markets.get(market_key)
            i = index.get(interval)
            if m is None or i is None or bar.open_time in m.open[i]:
                continue  # the market record is older: replaying its trades rebuilds this candle
            m.closed[i][bar.open_time] = bar
        for m in self.markets.values():
            for closed in m.closed:
                ordered = sorted(closed.items())
                closed.clear()
                closed.update(ordered)

    def _restore_market(self, row: list[Any], index: dict[str, int]) -> None:
        exchange, symbol, max_ts, closed_through, next_pub, offsets, open_bars, chunk, partition = row
        m = self.market(exchange, symbol)
        m.partition = partition
        m.chunk = Bar.from_row(chunk) if chunk is not None else None
        m.max_ts, m.closed_through, m.next_pub = max_ts, closed_through, next_pub
        m.offsets = {int(p): o for p, o in offsets.items()}
        next_close = 1 << 62
        for interval, bars in open_bars:
            i = index.get(interval)
            if i is None:
                continue  # interval removed from the configuration
            for bar_row, changed in bars:
                bar = Bar.from_row(bar_row)
                bar.changed = changed
                m.open[i][bar.open_time] = bar
                next_close = min(next_close, bar.open_time + self.lengths[i])
        m.next_close = next_close
