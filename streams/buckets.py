"""Order-book price buckets (heatmap rows): the pure logic, used by the normalise stage.

A snapshot groups one side's levels into buckets of ``bucket_size`` (lower edge =
``floor(price / size) * size``) out to ``max_distance_pct`` from mid, and measures the
imbalance within 0.1, 0.5, 1 and 5 % of mid. Bid buckets are listed best (highest) first,
ask buckets best (lowest) first.

Bucket size: ``bucket_sizes[symbol]`` when configured, else ``default_bucket_size(mid)``:
the largest step of the 1-2-5 series (…, 0.1, 0.2, 0.5, 1, 2, 5, 10, …) not above
``mid * 1e-4`` (1 basis point of mid): BTC at 65 000 gets 5, ETH at 3 500 gets 0.2.

When snapshots are taken is the feed's business (``streams/feed.py``): at boundaries of
exchange event time, from the book as it was at the boundary.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from marketpipe.records import BookBuckets, Bucket, DepthBand

BAND_PCTS = (0.1, 0.5, 1.0, 5.0)
_STEPS = (1, 2, 5)
_EDGE_EPS = 1e-9
"""relative slack when flooring price/size: 0.3 / 0.1 is 2.9999999999999996 in floats"""


def default_bucket_size(mid: float) -> float:
    """Largest 1-2-5 step not above ``mid * 1e-4`` (1 bp of mid)."""
    target = mid * 1e-4
    if not target > 0 or math.isinf(target):
        raise ValueError(f"cannot derive a bucket size from mid {mid!r}")
    exponent = math.floor(math.log10(target))
    best = _step(1, exponent)
    for mantissa in _STEPS:
        size = _step(mantissa, exponent)
        if size <= target * (1 + _EDGE_EPS):
            best = size
    return best


def next_step(size: float) -> float:
    """The 1-2-5 step above ``size`` (``size`` itself need not be on the series)."""
    exponent = math.floor(math.log10(size))
    for e in (exponent, exponent + 1):
        for mantissa in _STEPS:
            step = _step(mantissa, e)
            if step > size * (1 + _EDGE_EPS):
                return step
    return _step(1, exponent + 2)


def _step(mantissa: int, exponent: int) -> float:
    # dividing by a power of ten gives the nearest float to the decimal (2/10 == 0.2)
    return mantissa * 10**exponent if exponent >= 0 else mantissa / 10**-exponent


def bucket_floor(price: float, size: float) -> float:
    return round(math.floor(price / size + _EDGE_EPS) * size, 12)


@dataclass(frozen=True)
class Bucketer:
    """Snapshot settings: bucket sizes per symbol, distance, interval (event time, µs)."""

    interval_us: int = 1_000_000
    max_distance_pct: float = 5.0
    sizes: Mapping[str, float] = field(default_factory=dict)

    def size_for(self, symbol: str, mid: float) -> float:
        return self.sizes.get(symbol) or default_bucket_size(mid)

    def snapshot(
        self,
        exchange: str,
        symbol: str,
        ts: int,
        bid_prices: Sequence[float],
        bid_sizes: Mapping[float, float],
        ask_prices: Sequence[float],
        ask_sizes: Mapping[float, float],
    ) -> BookBuckets | None:
        """Buckets of a book given as ascending price lists + size maps; None when a side is empty."""
        if not bid_prices or not ask_prices:
            return None
        best_bid, best_ask = bid_prices[-1], ask_prices[0]
        mid = (best_bid + best_ask) / 2
        size = self.size_for(symbol, mid)
        reach = max(self.max_distance_pct, BAND_PCTS[-1]) / 100
        limit = self.max_distance_pct / 100
        # bids: walk from the best (highest) price down
        lo = bisect_left(bid_prices, mid * (1 - reach))
        bid_walk = [(p, bid_sizes[p]) for p in reversed(bid_prices[lo:])]
        bids, bid_bands = _side(bid_walk, size, mid * (1 - limit), mid, is_bid=True)
        hi = bisect_right(ask_prices, mid * (1 + reach))
        ask_walk = [(p, ask_sizes[p]) for p in ask_prices[:hi]]
        asks, ask_bands = _side(ask_walk, size, mid * (1 + limit), mid, is_bid=False)
        return BookBuckets(
            exchange=exchange,
            symbol=symbol,
            ts=ts,
            mid=mid,
            best_bid=best_bid,
            best_ask=best_ask,
            spread=best_ask - best_bid,
            bucket_size=size,
            bids=bids,
            asks=asks,
            bands=bands_of(bid_bands, ask_bands),
            markets=[f"{exchange}:{symbol}"],
        )


def _side(
    levels: list[tuple[float, float]], size: float, limit: float, mid: float, is_bid: bool
) -> tuple[list[Bucket], list[float]]:
    """Buckets (best first) of levels ordered best first, and the size within each band."""
    buckets: list[Bucket] = []
    n_bands = len(BAND_PCTS)
    in_band = [0.0] * n_bands  # size first reached in each band (levels come in distance order)
    thresholds = [mid * (1 - pct / 100) if is_bid else mid * (1 + pct / 100) for pct in BAND_PCTS]
    band = 0
    edge: float | None = None
    edge_index: int | None = None  # bucket_floor(price, size) == round(edge_index * size, 12)
    bucket_size = notional = 0.0
    floor = math.floor
    for price, amount in levels:
        while band < n_bands and (price < thresholds[band] if is_bid else price > thresholds[band]):
            band += 1
        if band < n_bands:
            in_band[band] += amount
        if price < limit if is_bid else price > limit:
            continue
        index = floor(price / size + _EDGE_EPS)
        if index != edge_index:
            if edge is not None:
                buckets.append(Bucket(edge, bucket_size, notional))
            edge_index, edge, bucket_size, notional = index, round(index * size, 12), 0.0, 0.0
        bucket_size += amount
        notional += price * amount
    if edge is not None:
        buckets.append(Bucket(edge, bucket_size, notional))
    band_sizes = []
    running = 0.0
    for amount in in_band:
        running += amount
        band_sizes.append(running)
    return buckets, band_sizes


def bands_of(bid_sizes: Sequence[float], ask_sizes: Sequence[float]) -> list[DepthBand]:
    return [
        DepthBand(pct=pct, bid_size=bid, ask_size=ask, imbalance=imbalance(bid, ask))
        for pct, bid, ask in zip(BAND_PCTS, bid_sizes, ask_sizes, strict=True)
    ]


def imbalance(bid: float, ask: float) -> float:
    total = bid + ask
    return (bid - ask) / total if total > 0 else 0.0
