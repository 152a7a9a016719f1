"""Synthetic market: per symbol a random-walk mid, a multi-level L2 book and Poisson trades.

Prices are integer ticks and sizes integer lots, so every exchange can format them exactly
(no float drift) and the same state always renders to the same wire text. A market's evolution
depends only on its seed and the number of steps taken, never on wall time.

Books are stored per side as a sorted list of *keys* (ask key = price, bid key = -price), so on
both sides "better" means "smaller key" and the top N levels are ``keys[:N]``.
"""

from __future__ import annotations

import math
import random
import zlib
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field

BID = 0
ASK = 1
_FAR = 1 << 62  # boundary of a view that holds the whole side
_DENSITY = 0.6  # share of ticks near the touch that hold a level

# Reference prices for well-known bases (quote-currency agnostic between USD and USDT).
_BASE_PRICES = {"BTC": 65000.0, "ETH": 1900.0, "SOL": 150.0, "XRP": 0.6, "DOGE": 0.12, "LTC": 80.0}


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One instrument: normalised name, start price and tick/lot granularity (decimals)."""

    symbol: str
    base: str
    quote: str
    start_price: float
    price_decimals: int
    qty_decimals: int

    @classmethod
    def for_symbol(cls, symbol: str) -> SymbolSpec:
        base, quote = symbol.split("-", 1)
        price = _BASE_PRICES.get(base, 100.0)
        if quote in _BASE_PRICES:  # crossed pair such as ETH-BTC
            price = price / _BASE_PRICES[quote]
        magnitude = math.floor(math.log10(price))
        return cls(
            symbol=symbol,
            base=base,
            quote=quote,
            start_price=price,
            price_decimals=min(max(5 - magnitude, 0), 8),
            qty_decimals=min(max(magnitude + 2, 0), 8),
        )

    @property
    def tick(self) -> float:
        return 10.0**-self.price_decimals


@dataclass(frozen=True, slots=True)
class MarketParams:
    """Shape of the synthetic flow; rates are per symbol."""

    book_rate: float = 10.0  # book steps per second
    trade_rate: float = 2.0  # trades per second (Poisson)
    levels: int = 500  # target levels per side
    volatility: float = 3e-5  # relative standard deviation of the mid per second
    changes_per_step: float = 3.0  # mean random level changes per step (besides re-centring)
    level_notional: float = 5000.0  # typical resting size, in quote currency
    trade_notional: float = 500.0  # typical trade size, in quote currency


@dataclass(slots=True)
class Trade:
    trade_id: int
    price: int  # ticks
    qty: int  # lots
    taker_buy: bool
    ts_ns: int = 0
    """when it happened (set by the feed's step): snapshots re-send it with this time, as exchanges do"""


@dataclass(slots=True)
class ViewDiff:
    """What a client holding the top ``depth`` levels must apply after one step."""

    bids: list[tuple[int, int]]  # (price ticks, qty lots; 0 = delete), best first
    asks: list[tuple[int, int]]
    bids_out: list[int]  # prices still resting but pushed out of the view (no explicit delete)
    asks_out: list[int]

    def empty(self, with_out: bool) -> bool:
        if self.bids or self.asks:
            return False
        return not (with_out and (self.bids_out or self.asks_out))


@dataclass(slots=True)
class Step:
    number: int
    first_update_id: int  # Binance-style id of the first level change in this step
    last_update_id: int
    seq: int  # cross sequence after this step (increases with every change and trade)
    bids: list[tuple[int, int]]  # full-book changes, best first
    asks: list[tuple[int, int]]
    trades: list[Trade]
    views: dict[int, ViewDiff] = field(default_factory=dict)

    @property
    def book_changed(self) -> bool:
        return bool(self.bids or self.asks)


class BookSide:
    __slots__ = ("keys", "qty", "sign")

    def __init__(self, sign: int) -> None:
        self.sign = sign  # +1 asks, -1 bids: key = sign * price
        self.keys: list[int] = []
        self.qty: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def set(self, key: int, qty: int) -> int:
        """Set the level at ``key`` (0 deletes); returns the previous quantity."""
        old = self.qty.get(key, 0)
        if qty > 0:
            if not old:
                insort(self.keys, key)
            self.qty[key] = qty
        elif old:
            del self.keys[bisect_left(self.keys, key)]
            del self.qty[key]
        return old

    def boundary(self, depth: int) -> int:
        return self.keys[depth - 1] if len(self.keys) >= depth else _FAR

    def top(self, depth: int | None = None) -> list[tuple[int, int]]:
        """(price, qty) of the best ``depth`` levels (all when None), best first."""
        keys = self.keys if depth is None else self.keys[:depth]
        sign, qty = self.sign, self.qty
        return [(sign * key, qty[key]) for key in keys]

    def view_diff(
        self, changed: dict[int, int], old_bound: int, depth: int
    ) -> tuple[list[tuple[int, int]], list[int]]:
        """Changes visible to a top-``depth`` view; ``changed`` maps key -> quantity before the step."""
        keys, qty, sign = self.keys, self.qty, self.sign
        new_bound = self.boundary(depth)
        updates: list[tuple[int, int]] = []
        pushed_out: list[int] = []
        for key, old in changed.items():
            new = qty.get(key, 0)
            if new and key <= new_bound:
                updates.append((key, new))
            elif old and key <= old_bound:
                if new:
                    pushed_out.append(sign * key)
                else:
                    updates.append((key, 0))
        if new_bound > old_bound:  # levels moved up into the view without changing themselves
            for key in keys[bisect_right(keys, old_bound) : depth]:
                if key not in changed:
                    updates.append((key, qty[key]))
        elif new_bound < old_bound:  # levels pushed below the view by better insertions
            for key in keys[depth : bisect_right(keys, old_bound)]:
                if key not in changed:
                    pushed_out.append(sign * key)
        updates.sort()
        return [(sign * key, q) for key, q in updates], pushed_out


class SymbolMarket:
    """One instrument's book and trade flow on one exchange."""

    def __init__(self, spec: SymbolSpec, params: MarketParams, seed: int, venue: str = "") -> None:
        self.spec = spec
        self.params = params
        self.rng = random.Random(zlib.crc32(f"{seed}:{venue}:{spec.symbol}".encode()))
        self.bids = BookSide(-1)
        self.asks = BookSide(+1)
        self.steps = 0
        self.update_id = 1_000_000 + self.rng.randrange(1_000_000)
        self.seq = 10_000_000 + self.rng.randrange(1_000_000)
        self.trade_id = 100_000 + self.rng.randrange(100_000)
        self.recent_trades: list[Trade] = []
        tick = spec.tick
        self.anchor = spec.start_price / tick
        self.mid = self.anchor
        self.sigma = params.volatility * self.anchor / math.sqrt(params.book_rate)
        self.trades_per_step = params.trade_rate / params.book_rate
        lot = 10.0**-spec.qty_decimals
        self.level_lots = max(params.level_notional / spec.start_price / lot, 1.0)
        self.trade_lots = max(params.trade_notional / spec.start_price / lot, 1.0)
        self._changed: tuple[dict[int, int], dict[int, int]] = ({}, {})
        self._seed_book()

    # -- public -------------------------------------------------------------------

    def side(self, side: int) -> BookSide:
        return self.asks if side == ASK else self.bids

    def step(self, depths: set[int] | frozenset[int] = frozenset()) -> Step:
        """Advance one step; ``depths`` lists the view depths whose diffs the caller needs."""
        old_bounds = {d: (self.bids.boundary(d), self.asks.boundary(d)) for d in depths}
        changed: tuple[dict[int, int], dict[int, int]] = ({}, {})
        self._changed = changed
        self.steps += 1
        self._move_mid()
        trades = self._trade()
        self._recentre()
        self._churn()
        self._keep_size()
        for side_changes, side in zip(changed, (self.bids, self.asks), strict=True):
            for key in [k for k, old in side_changes.items() if side.qty.get(k, 0) == old]:
                del side_changes[key]
        n_changes = len(changed[BID]) + len(changed[ASK])
        first = self.update_id + 1
        self.update_id += n_changes
        self.seq += n_changes + len(trades) + 1
        step = Step(
            number=self.steps,
            first_update_id=first,
            last_update_id=self.update_id,
            seq=self.seq,
            bids=[(-k, self.bids.qty.get(k, 0)) for k in sorted(changed[BID])],
            asks=[(k, self.asks.qty.get(k, 0)) for k in sorted(changed[ASK])],
            trades=trades,
        )
        for depth, (bid_bound, ask_bound) in old_bounds.items():
            bids, bids_out = self.bids.view_diff(changed[BID], bid_bound, depth)
            asks, asks_out = self.asks.view_diff(changed[ASK], ask_bound, depth)
            step.views[depth] = ViewDiff(bids, asks, bids_out, asks_out)
        if trades:
            self.recent_trades.extend(trades)
            del self.recent_trades[:-100]
        return step

    # -- evolution ----------------------------------------------------------------

    def _set(self, side: int, key: int, qty: int) -> None:
        book = self.asks if side == ASK else self.bids
        old = book.set(key, qty)
        self._changed[side].setdefault(key, old)

    def _level_qty(self) -> int:
        return max(1, int(self.level_lots * self.rng.lognormvariate(0.0, 1.0)))

    def _seed_book(self) -> None:
        self._changed = ({}, {})
        for side in (BID, ASK):
            self._extend(side, self.params.levels)

    def _extend(self, side: int, count: int) -> None:
        """Append ``count`` levels beyond the worst one (or from the mid when the side is empty)."""
        book = self.side(side)
        # an empty side starts strictly on its side of the mid
        start = math.floor(self.mid) if side == ASK else -math.ceil(self.mid)
        key = book.keys[-1] if book.keys else start
        for _ in range(count):
            key += 1 + int(self.rng.expovariate(_DENSITY / (1 - _DENSITY)))
            self._set(side, key, self._level_qty())

    def _move_mid(self) -> None:
        rng = self.rng
        self.mid += rng.gauss(0.0, self.sigma) + 0.001 * (self.anchor - self.mid)
        self.mid = max(self.mid, 10.0)

    def _trade(self) -> list[Trade]:
        trades: list[Trade] = []
        rng = self.rng
        count = _poisson(rng, self.trades_per_step)
        for _ in range(count):
            taker_buy = rng.random() < 0.5
            side = ASK if taker_buy else BID
            book = self.side(side)
            if not book.keys:
                continue
            key = book.keys[0]
            resting = book.qty[key]
            qty = min(resting, max(1, int(self.trade_lots * rng.lognormvariate(0.0, 1.0))))
            self._set(side, key, resting - qty)
            self.trade_id += 1
            trades.append(Trade(self.trade_id, book.sign * key, qty, taker_buy))
        return trades

    def _recentre(self) -> None:
        """Remove levels on the wrong side of the mid; keep a tight touch."""
        ask_floor = math.floor(self.mid) + 1
        bid_ceiling = math.ceil(self.mid) - 1
        while self.asks.keys and self.asks.keys[0] < ask_floor:
            self._set(ASK, self.asks.keys[0], 0)
        while self.bids.keys and -self.bids.keys[0] > bid_ceiling:
            self._set(BID, self.bids.keys[0], 0)
        self._fill(ASK, ask_floor, self.asks.keys[0] if self.asks.keys else ask_floor + 2)
        self._fill(BID, -bid_ceiling, self.bids.keys[0] if self.bids.keys else -bid_ceiling + 2)

    def _fill(self, side: int, inner: int, touch: int) -> None:
        """Re-populate the ticks the mid left behind between ``inner`` and the touch (keys)."""
        rng = self.rng
        for key in range(max(inner, touch - 200), touch):
            if rng.random() < _DENSITY:
                self._set(side, key, self._level_qty())
        book = self.side(side)
        if book.keys[0] - inner > 2:
            self._set(side, inner + rng.randrange(2), self._level_qty())

    def _churn(self) -> None:
        rng = self.rng
        for _ in range(1 + _poisson(rng, self.params.changes_per_step)):
            side = BID if rng.random() < 0.5 else ASK
            book = self.side(side)
            if not book.keys:
                continue
            index = min(int(rng.expovariate(1 / 15)), len(book.keys) - 1)
            key = book.keys[index]
            action = rng.random()
            if action < 0.55:
                self._set(side, key, self._level_qty())
            elif action < 0.8 and index > 0:
                self._set(side, key, 0)
            else:
                new_key = key + rng.randrange(-2, 3)
                touch = book.keys[0]
                if new_key >= touch and new_key not in book.qty:
                    self._set(side, new_key, self._level_qty())

    def _keep_size(self) -> None:
        target = self.params.levels
        for side in (BID, ASK):
            book = self.side(side)
            while len(book) > target + 5:
                self._set(side, book.keys[-1], 0)
            if len(book) < target - 5:
                self._extend(side, target - len(book))


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, product, count = math.exp(-mean), rng.random(), 0
    while product > limit:
        product *= rng.random()
        count += 1
    return count
