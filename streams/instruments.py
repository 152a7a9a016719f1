"""Instrument metadata read entry by entry: one unreadable entry is skipped and counted, never
fatal for the rest of the answer.

Every exchange module's ``parse_instruments(body, path)`` returns an :class:`Instruments`: a
dict of exchange symbol -> normalised ``BASE-QUOTE`` name (the connectors use it as a plain
dict) that also carries what was skipped and why, and which instrument each symbol names.
The processor uses the instrument ids to keep its symbol resolution injective: two different
instruments never share one normalised name (``streams/feed.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from streams.feed import ParseError

READ_ERRORS = (ParseError, KeyError, TypeError, ValueError, AttributeError, IndexError)


class Instruments(dict[str, str]):
    """Exchange symbol -> normalised name from one instrument-list answer.

    ``skipped``: entry (exchange symbol where known) -> why it has no name.
    ``ids``: exchange symbol -> the instrument it names, where that is not the symbol itself:
    several symbols of one instrument (Kraken's v1 ``XBT/USD`` and v2 ``BTC/USD``) share an id,
    and one symbol in two scopes (Bybit ``BTCUSDT`` spot and linear) gets two.
    """

    def __init__(self) -> None:
        super().__init__()
        self.skipped: dict[str, str] = {}
        self.ids: dict[str, str] = {}

    def add(self, exchange_symbol: str, name: str, instrument: str | None = None) -> None:
        self[exchange_symbol] = name
        if instrument is not None and instrument != exchange_symbol:
            self.ids[exchange_symbol] = instrument

    def skip(self, entry: str, reason: str) -> None:
        self.skipped[entry] = reason

    def instrument(self, exchange_symbol: str) -> str:
        return self.ids.get(exchange_symbol, exchange_symbol)


def read_entries(
    rows: Iterable[Any],
    read: Callable[[Any, Instruments], None],
    what: str,
    key_fields: tuple[str, ...] = ("symbol",),
    found: Instruments | None = None,
) -> Instruments:
    """``read(row, found)`` for every row; a row it cannot read is skipped with the reason."""
    found = Instruments() if found is None else found
    for row in rows:
        try:
            read(row, found)
        except READ_ERRORS as exc:
            detail = str(exc) if isinstance(exc, ParseError) else f"{type(exc).__name__}: {exc}"
            found.skip(entry_name(row, key_fields), f"{what} entry skipped: {detail}")
    return found


def entry_name(row: Any, key_fields: tuple[str, ...]) -> str:
    """The entry's exchange symbol when it has one, else a short rendering of it."""
    if isinstance(row, dict):
        for field in key_fields:
            value = row.get(field)
            if isinstance(value, str) and value:
                return value
    if isinstance(row, str) and row:
        return row
    if isinstance(row, tuple) and row and isinstance(row[0], str):
        return row[0]  # (key, entry) pairs of an object keyed by symbol
    return repr(row)[:60]


def spot_name(base: object, quote: object) -> str:
    """``BASE-QUOTE``; both parts must be non-empty text without the separator."""
    if not isinstance(base, str) or not isinstance(quote, str) or not base or not quote:
        raise ParseError(f"no base/quote currency (base {base!r}, quote {quote!r})")
    if "-" in base or "-" in quote:
        raise ParseError(f"currency code with '-' ({base!r}, {quote!r}) cannot form BASE-QUOTE")
    return f"{base}-{quote}"


def dashed_pair(exchange_symbol: str, separator: str = "-") -> str | None:
    """The documented fallback for exchanges whose wire names are ``BASE<sep>QUOTE``: exactly two
    non-empty alphanumeric parts give ``BASE-QUOTE``; anything else (a derivative such as
    ``BTC-USD-220527``) has no name without metadata."""
    base, sep, quote = exchange_symbol.partition(separator)
    if sep and base.isalnum() and quote.isalnum():
        return f"{base}-{quote}"
    return None
