"""An L2 order book: price -> size per side, with prices kept sorted via bisect.

Prices are floats (the same wire text always gives the same float, and different
spellings of one price such as ``"65140"`` and ``"65140.0"`` collapse to one level, as they
should). Exchanges whose checksum is computed over the wire text (Kraken, OKX) ask the
book to keep, per level, a checksum token built from the original price and size strings
when the level is set (so a checksum only joins the tokens of the top levels).

A side can keep a *journal* of what the current change overwrote (``start_journal``):
the feed takes price-bucket snapshots of the book as it was before the first change past
an event-time boundary, and the parsers apply a change before the feed sees its time.
The journal costs one list append per changed level and is off unless buckets are on.

A side refuses a level whose size is negative or not finite, or whose price (checked when a
level is created) is not a positive finite number: the level is left out and the first such
one is kept in ``invalid`` for the feed to dead-letter the frame and unsync the book
(``streams/feed.py``). The check is one float comparison per changed level.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from typing import Any

from marketpipe.records import Level

PriceSize = tuple[float, float]
TextLevel = tuple[float, float, str]
"""price, size, checksum token (built from the price and size as sent)"""
_INF = float("inf")


class BookSide:
    """One side of a book. ``prices`` is ascending for both sides; the best bid is the last."""

    __slots__ = ("invalid", "is_bid", "journal", "prices", "sizes", "texts")

    def __init__(self, is_bid: bool, keep_text: bool = False) -> None:
        self.is_bid = is_bid
        self.prices: list[float] = []
        self.sizes: dict[float, float] = {}
        self.texts: dict[float, str] | None = {} if keep_text else None
        self.journal: list[tuple[Any, Any]] | None = None
        """(price, previous size or None) per overwritten level; (None, old sizes) for a reload"""
        self.invalid: PriceSize | None = None
        """the first level refused since the last ``clear`` (a bad price or size)"""

    def __len__(self) -> int:
        return len(self.prices)

    def clear(self) -> None:
        self.prices.clear()
        self.sizes.clear()
        self.invalid = None
        if self.texts is not None:
            self.texts.clear()
        if self.journal is not None:
            self.journal.clear()

    def _refuse(self, price: float, size: float) -> None:
        if self.invalid is None:
            self.invalid = (price, size)

    def start_journal(self) -> None:
        if self.journal is None:
            self.journal = []

    def previous(self) -> tuple[list[float], dict[float, float]]:
        """(ascending prices, sizes) as they were before the journalled changes."""
        journal = self.journal
        if not journal:
            return self.prices, self.sizes
        sizes = self.sizes.copy()
        prices: list[float] | None = list(self.prices)
        for price, old in reversed(journal):
            if price is None:
                sizes = old.copy()
                prices = None
            elif old is None:
                if sizes.pop(price, None) is not None and prices is not None:
                    del prices[bisect_left(prices, price)]
            else:
                if price not in sizes and prices is not None:
                    insort(prices, price)
                sizes[price] = old
        return (prices if prices is not None else sorted(sizes)), sizes

    def set(self, price: float, size: float) -> None:
        """Absolute size at ``price``; 0 removes the level (a no-op when it is absent)."""
        sizes = self.sizes
        if size != 0.0 and not (0.0 < size < _INF and (price in sizes or 0.0 < price < _INF)):
            self._refuse(price, size)
            return
        if self.journal is not None:
            self.journal.append((price, sizes.get(price)))
        if size == 0.0:
            if price in sizes:
                del sizes[price]
                prices = self.prices
                del prices[bisect_left(prices, price)]
            return
        if price not in sizes:
            insort(self.prices, price)
        sizes[price] = size

    def set_text(self, price: float, size: float, token: str) -> None:
        self.set(price, size)
        texts = self.texts
        if texts is not None:
            if size == 0.0:
                texts.pop(price, None)
            elif price in self.sizes:
                texts[price] = token

    def apply(self, changes: Iterable[Level]) -> None:
        """``set`` for each change, inlined: this is the per-level hot path."""
        sizes, prices = self.sizes, self.prices
        if self.journal is not None:
            self._apply_journalled(changes)
            return
        inf = _INF
        for level in changes:
            price, size = level.price, level.size
            if size == 0.0:
                if price in sizes:
                    del sizes[price]
                    del prices[bisect_left(prices, price)]
            elif 0.0 < size < inf:
                if price not in sizes:
                    if not 0.0 < price < inf:
                        self._refuse(price, size)
                        continue
                    insort(prices, price)
                sizes[price] = size
            else:
                self._refuse(price, size)

    def _apply_journalled(self, changes: Iterable[Level]) -> None:
        sizes, prices = self.sizes, self.prices
        log = self.journal.append  # type: ignore[union-attr]
        for level in changes:
            price, size = level.price, level.size
            old = sizes.get(price)
            if size != 0.0 and not (0.0 < size < _INF and (old is not None or 0.0 < price < _INF)):
                self._refuse(price, size)
                continue
            log((price, old))
            if size == 0.0:
                if old is not None:
                    del sizes[price]
                    del prices[bisect_left(prices, price)]
            else:
                if old is None:
                    insort(prices, price)
                sizes[price] = size

    def apply_tokens(self, changes: Iterable[tuple[Level, str]]) -> None:
        """Like ``apply``, also keeping each level's checksum token."""
        sizes, prices = self.sizes, self.prices
        texts = self.texts if self.texts is not None else {}
        if self.journal is not None:
            log = self.journal.append
            changes = list(changes)
            for level, _ in changes:
                log((level.price, sizes.get(level.price)))
        inf = _INF
        for level, token in changes:
            price, size = level.price, level.size
            if size == 0.0:
                if price in sizes:
                    del sizes[price]
                    del texts[price]
                    del prices[bisect_left(prices, price)]
            elif 0.0 < size < inf:
                if price not in sizes:
                    if not 0.0 < price < inf:
                        self._refuse(price, size)
                        continue
                    insort(prices, price)
                sizes[price] = size
                texts[price] = token
            else:
                self._refuse(price, size)

    def _journal_reload(self) -> None:
        if self.journal is not None:
            self.journal.append((None, self.sizes))
            self.sizes = {}  # the journal keeps the old map as it was

    def load(self, levels: Iterable[PriceSize]) -> None:
        """Replace the side with ``levels`` (zero sizes are skipped)."""
        self._journal_reload()
        self.invalid = None
        self.prices.clear()
        self.sizes.clear()
        if self.texts is not None:
            self.texts.clear()
        sizes = self.sizes
        inf = _INF
        for price, size in levels:
            if size != 0.0:
                if 0.0 < size < inf and 0.0 < price < inf:
                    sizes[price] = size
                else:
                    self._refuse(price, size)
        self.prices = sorted(sizes)

    def load_text(self, levels: Iterable[TextLevel]) -> None:
        self._journal_reload()
        self.invalid = None
        self.prices.clear()
        self.sizes.clear()
        if self.texts is not None:
            self.texts.clear()
        sizes = self.sizes
        texts = self.texts
        inf = _INF
        for price, size, token in levels:
            if size != 0.0:
                if not (0.0 < size < inf and 0.0 < price < inf):
                    self._refuse(price, size)
                    continue
                sizes[price] = size
                if texts is not None:
                    texts[price] = token
        self.prices = sorted(sizes)

    def best(self) -> PriceSize | None:
        prices = self.prices
        if not prices:
            return None
        price = prices[-1] if self.is_bid else prices[0]
        return price, self.sizes[price]

    def top_prices(self, depth: int) -> list[float]:
        """The best ``depth`` prices, best first."""
        prices = self.prices
        if self.is_bid:
            return prices[: -depth - 1 : -1] if depth < len(prices) else prices[::-1]
        return prices[:depth]

    def levels(self) -> list[PriceSize]:
        """Every level, best first."""
        sizes = self.sizes
        ordered = reversed(self.prices) if self.is_bid else self.prices
        return [(price, sizes[price]) for price in ordered]

    def truncate(self, depth: int) -> list[float]:
        """Drop levels beyond ``depth`` (the worst ones); returns the dropped prices."""
        prices = self.prices
        excess = len(prices) - depth
        if excess <= 0:
            return []
        if self.is_bid:
            dropped = prices[:excess]
            del prices[:excess]
        else:
            dropped = prices[depth:]
            del prices[depth:]
        sizes = self.sizes
        texts = self.texts
        journal = self.journal
        for price in dropped:
            if journal is not None:
                journal.append((price, sizes[price]))
            del sizes[price]
            if texts is not None:
                texts.pop(price, None)
        return dropped


class OrderBook:
    __slots__ = ("asks", "bids")

    def __init__(self, keep_text: bool = False) -> None:
        self.bids = BookSide(is_bid=True, keep_text=keep_text)
        self.asks = BookSide(is_bid=False, keep_text=keep_text)

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()

    def bbo(self) -> tuple[float, float, float, float] | None:
        """(bid price, bid size, ask price, ask size), or None while a side is empty."""
        bid = self.bids.best()
        ask = self.asks.best()
        if bid is None or ask is None:
            return None
        return bid[0], bid[1], ask[0], ask[1]

    def is_crossed(self) -> bool:
        bids = self.bids.prices
        asks = self.asks.prices
        return bool(bids) and bool(asks) and bids[-1] >= asks[0]
