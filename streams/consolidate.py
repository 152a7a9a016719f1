"""Cross-exchange views per symbol (exchange ``"all"``): the pure logic of the consolidate stage.

* Spot symbols consolidate by name (derivatives are not consolidated:
  ``SymbolMap.consolidates``); with ``quote_equivalents`` (e.g. ``[["USD", "USDT", "USDC"]]``)
  the quote currencies of a group count as one, named by the group's first currency, so
  ``BTC-USDT`` and ``BTC-USD`` both go into ``BTC-USD``. ``markets`` lists what went in.
* Candles are merged exactly from the per-exchange candles of the same interval and
  ``open_time``: open from the one with the earliest first trade, close from the latest last
  trade, max/min, sums, ``vwap = quote_volume / volume``. The merged candle is closed once
  every included candle is, late when any is; its version counts its own publications.
* Bucket snapshots of the same boundary ``ts`` are summed per bucket. A boundary is
  published when every market seen recently has reported it, or when some market is
  ``BOUNDARY_LAG`` intervals past it (the laggards are then left out, and named by their
  absence from ``markets``). Bucket sizes differing between exchanges are re-bucketed into
  the smallest 1-2-5 step that is a multiple of all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from marketpipe.records import BookBuckets, Bucket, Candle
from streams.buckets import BAND_PCTS, bands_of, bucket_floor, next_step

ALL = "all"
BOUNDARY_LAG = 2
ACTIVE_BOUNDARIES = 10
"""a market that has not reported for this many boundaries is no longer waited for"""
WAITED_WINDOWS = 1000
"""a market that has not reported while this many windows of a candle series opened is no
longer waited for before the series forgets a window"""


class SymbolMap:
    """Normalised symbol -> consolidated symbol under the quote-equivalence groups."""

    def __init__(self, quote_equivalents: Sequence[Sequence[str]] = ()) -> None:
        self._quote: dict[str, str] = {}
        for group in quote_equivalents:
            for currency in group:
                self._quote[currency] = group[0]
        self._cache: dict[str, str] = {}

    @staticmethod
    def consolidates(symbol: str) -> bool:
        """Only spot markets are consolidated: a derivative's sizes are contracts, whose size
        differs between venues (SQL ``volume_by_underlying_1m`` adds them up in base units)."""
        return symbol.count("-") == 1

    def __call__(self, symbol: str) -> str:
        found = self._cache.get(symbol)
        if found is None:
            base, sep, quote = symbol.rpartition("-")
            found = f"{base}{sep}{self._quote.get(quote, quote)}" if sep else symbol
            self._cache[symbol] = found
        return found


# --------------------------------------------------------------------------------- candles


def merge_candles(symbol: str, candles: Sequence[Candle], version: int) -> Candle:
    """One candle of ``symbol`` (exchange "all") from per-market candles of one window."""
    ordered = sorted(candles, key=lambda c: (c.exchange, c.symbol))
    first = min(ordered, key=lambda c: c.first_trade_ts)
    last = max(ordered, key=lambda c: c.last_trade_ts)
    volume = math.fsum(c.volume for c in ordered)
    quote_volume = math.fsum(c.quote_volume for c in ordered)
    return Candle(
        exchange=ALL,
        symbol=symbol,
        interval=first.interval,
        open_time=first.open_time,
        close_time=first.close_time,
        open=first.open,
        high=max(c.high for c in ordered),
        low=min(c.low for c in ordered),
        close=last.close,
        volume=volume,
        quote_volume=quote_volume,
        buy_volume=math.fsum(c.buy_volume for c in ordered),
        sell_volume=math.fsum(c.sell_volume for c in ordered),
        trades=sum(c.trades for c in ordered),
        vwap=quote_volume / volume if volume else last.close,
        first_trade_ts=first.first_trade_ts,
        last_trade_ts=last.last_trade_ts,
        closed=all(c.closed for c in ordered),
        late=any(c.late for c in ordered),
        version=version,
        markets=[f"{c.exchange}:{c.symbol}" for c in ordered],
    )


class _Series:
    """The windows of one (consolidated symbol, interval), oldest first, and how far each market got."""

    __slots__ = ("created", "forgotten_through", "heard", "progress", "windows")

    def __init__(self) -> None:
        self.windows: dict[int, str] = {}
        """open_time -> state key, in arrival order"""
        self.progress: dict[str, int] = {}
        """market -> the latest open_time it reported"""
        self.heard: dict[str, int] = {}
        """market -> ``created`` when it last reported"""
        self.created = 0
        """windows opened so far"""
        self.forgotten_through = -(1 << 62)
        """the newest open_time forgotten: a candle at or before it is too late to merge"""


class CandleMerger:
    """Latest candle per market for each (symbol, interval, open_time); publishes merged ones.

    A window is forgotten once every candle in it is closed, it is published, and every market
    of its series (not only the ones in it: another market's candle of that window may still be
    on its way, as when one market's partition runs far ahead in a backlog) has reported a
    window past the late horizon. A market silent for ``WAITED_WINDOWS`` new windows is no
    longer waited for (a delisted market must not hold memory forever). A candle of a forgotten
    window is counted in ``ignored_late`` and dropped: merged alone, it would overwrite the
    consolidated candle with a partial one.
    """

    def __init__(self, symbols: SymbolMap, retention_us: int = 5 * 60_000_000) -> None:
        self.symbols = symbols
        self.retention_us = retention_us
        self.windows: dict[str, dict[str, Any]] = {}
        """state key -> {"v": version, "m": {market: Candle}}"""
        self.changed: set[str] = set()
        self.series: dict[tuple[str, str], _Series] = {}
        self.ignored_late = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Checkpoints of older versions kept the series in two dicts."""
        windows, progress = state.pop("_series", None), state.pop("_progress", {})
        self.__dict__.update(state)
        self.__dict__.setdefault("ignored_late", 0)
        if windows is not None:
            self.series = {}
            for series_key, opened in windows.items():
                series = self.series[series_key] = _Series()
                series.windows = opened
                series.progress = dict(progress.get(series_key, {}))
                series.heard = dict.fromkeys(series.progress, 0)

    def add(self, candle: Candle) -> None:
        if candle.exchange == ALL:
            return
        symbol = self.symbols(candle.symbol)
        series = self.series.get((symbol, candle.interval))
        if series is None:
            series = self.series[(symbol, candle.interval)] = _Series()
        open_time = candle.open_time
        if open_time <= series.forgotten_through:
            self.ignored_late += 1
            return
        key = f"{symbol}:{candle.interval}:{open_time}"
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = {"v": 0, "m": {}}
        market = f"{candle.exchange}:{candle.symbol}"
        held = window["m"].get(market)
        if held is not None and held.version >= candle.version:
            return  # a replayed or reordered older version
        window["m"][market] = candle
        self.changed.add(key)
        if open_time > series.progress.get(market, -(1 << 62)):
            series.progress[market] = open_time
        opened = open_time not in series.windows
        if opened:
            series.windows[open_time] = key
            series.created += 1
        series.heard[market] = series.created
        if opened:
            self._expire(series, candle.close_time - open_time)

    def _expire(self, series: _Series, length: int) -> None:
        """Forget the windows (oldest first) that no market can change any more."""
        for market in [m for m, heard in series.heard.items() if series.created - heard >= WAITED_WINDOWS]:
            del series.heard[market], series.progress[market]
        keep = max(length, self.retention_us) + length
        slowest = min(series.progress.values())
        windows = series.windows
        while windows:
            open_time, key = next(iter(windows.items()))
            if slowest < open_time + keep or key in self.changed:
                break
            if not all(c.closed or m not in series.heard for m, c in self.windows[key]["m"].items()):
                break  # a market gone for good leaves its last candle open
            del windows[open_time]
            del self.windows[key]
            series.forgotten_through = max(series.forgotten_through, open_time)

    def publish(self) -> list[Candle]:
        """Merged candles of every window changed since the last call (one version each)."""
        out = []
        for key in sorted(self.changed):
            window = self.windows[key]
            window["v"] += 1
            out.append(merge_candles(key.split(":", 1)[0], list(window["m"].values()), window["v"]))
        self.changed.clear()
        return out


# --------------------------------------------------------------------------------- buckets


def merge_buckets(symbol: str, ts: int, snapshots: Sequence[BookBuckets]) -> BookBuckets:
    """Sum per-market snapshots of one boundary into one (exchange "all")."""
    ordered = sorted(snapshots, key=lambda s: (s.exchange, s.symbol))
    size = common_bucket_size([s.bucket_size for s in ordered])
    bids: dict[float, list[float]] = {}
    asks: dict[float, list[float]] = {}
    for snapshot in ordered:
        _rebucket(snapshot.bids, size, bids)
        _rebucket(snapshot.asks, size, asks)
    best_bid = max(s.best_bid for s in ordered)
    best_ask = min(s.best_ask for s in ordered)
    n_bands = len(BAND_PCTS)
    bid_bands = [math.fsum(s.bands[b].bid_size for s in ordered if len(s.bands) > b) for b in range(n_bands)]
    ask_bands = [math.fsum(s.bands[b].ask_size for s in ordered if len(s.bands) > b) for b in range(n_bands)]
    return BookBuckets(
        exchange=ALL,
        symbol=symbol,
        ts=ts,
        mid=math.fsum(s.mid for s in ordered) / len(ordered),
        best_bid=best_bid,
        best_ask=best_ask,
        spread=best_ask - best_bid,  # negative when venues cross each other
        bucket_size=size,
        bids=[Bucket(p, v[0], v[1]) for p, v in sorted(bids.items(), reverse=True)],
        asks=[Bucket(p, v[0], v[1]) for p, v in sorted(asks.items())],
        bands=bands_of(bid_bands, ask_bands),
        markets=[f"{s.exchange}:{s.symbol}" for s in ordered],
    )


def common_bucket_size(sizes: Sequence[float]) -> float:
    """The largest size if every other divides it, else the next 1-2-5 step that they all divide."""
    size = max(sizes)
    while not all(_divides(s, size) for s in sizes):
        size = next_step(size)
    return size


def _divides(small: float, big: float) -> bool:
    ratio = big / small
    return abs(ratio - round(ratio)) < 1e-9 * max(1.0, ratio)


def _rebucket(buckets: Iterable[Bucket], size: float, into: dict[float, list[float]]) -> None:
    for bucket in buckets:
        lower = bucket_floor(bucket.price, size)
        found = into.get(lower)
        if found is None:
            into[lower] = [bucket.size, bucket.notional]
        else:
            found[0] += bucket.size
            found[1] += bucket.notional


class BucketMerger:
    """Collects per-market snapshots by boundary and releases merged ones when complete."""

    def __init__(self, symbols: SymbolMap, interval_us: int) -> None:
        self.symbols = symbols
        self.interval_us = interval_us
        self.pending: dict[str, dict[int, dict[str, BookBuckets]]] = {}
        self.last_seen: dict[str, dict[str, int]] = {}
        """symbol -> market -> latest boundary it reported"""
        self.published_through: dict[str, int] = {}
        self.ignored_late = 0

    def add(self, snapshot: BookBuckets) -> list[BookBuckets]:
        if snapshot.exchange == ALL:
            return []
        symbol = self.symbols(snapshot.symbol)
        market = f"{snapshot.exchange}:{snapshot.symbol}"
        seen = self.last_seen.setdefault(symbol, {})
        seen[market] = max(seen.get(market, snapshot.ts), snapshot.ts)
        if snapshot.ts <= self.published_through.get(symbol, -(1 << 62)):
            self.ignored_late += 1  # that boundary went out without this market
            return []
        self.pending.setdefault(symbol, {}).setdefault(snapshot.ts, {})[market] = snapshot
        return self._release(symbol)

    def _release(self, symbol: str) -> list[BookBuckets]:
        pending = self.pending[symbol]
        seen = self.last_seen[symbol]
        newest = max(seen.values())
        active_since = newest - ACTIVE_BOUNDARIES * self.interval_us
        active = {market for market, ts in seen.items() if ts >= active_since}
        out = []
        for ts in sorted(pending):
            reported = pending[ts]
            complete = active <= reported.keys()
            if not complete and ts + BOUNDARY_LAG * self.interval_us > newest:
                break
            out.append(merge_buckets(symbol, ts, list(reported.values())))
            del pending[ts]
            self.published_through[symbol] = ts
        return out
