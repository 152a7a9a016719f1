"""Instrument metadata read entry by entry: one unreadable entry is skipped and counted, never
fatal for the rest of the answer; and the one normalised naming scheme.

Every exchange module's ``parse_instruments(body, path)`` returns an :class:`Instruments`: a
dict of exchange symbol -> normalised name (the connectors use it as a plain dict) that also
carries what was skipped and why, which instrument each symbol names and, where the module
reads the full metadata, the :class:`~marketpipe.records.Instrument` record of each symbol.
The processor uses the instrument ids to keep its symbol resolution injective: two different
instruments never share one normalised name (``streams/feed.py``).

Names (:func:`instrument_name`), always built from metadata fields, never from the exchange's
wire name:

- spot ``BASE-QUOTE`` (``BTC-USDT``);
- perpetual ``BASE-QUOTE-PERP`` (``BTC-USDT-PERP``);
- dated future ``BASE-QUOTE-YYYYMMDD``, the UTC date of the expiry (``BTC-USD-20220527-INV``);
- option ``BASE-QUOTE-YYYYMMDD-STRIKE-C|P``, the strike a plain decimal (``BTC-USD-20260925-60000-C``);
- quote is the price currency; a linear contract has no suffix, an inverse one ends in
  ``-INV`` and a quanto one in ``-QUANTO``, so a linear and an inverse contract on one pair
  (OKX ``BTC-USD-SWAP`` is inverse) never share a name and their sizes (contracts of different
  currencies) are never merged by symbol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from marketpipe.records import ContractType, Instrument, OptionType
from marketpipe.wire import ParseError

CONTRACT_SUFFIX: dict[ContractType, str] = {"linear": "", "inverse": "-INV", "quanto": "-QUANTO"}
OPTION_LETTER: dict[OptionType, str] = {"call": "C", "put": "P"}
US_PER_S = 1_000_000

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
        self.records: dict[str, Instrument] = {}
        """exchange symbol -> its metadata (``ts`` 0: :meth:`stamped` gives the receive time)"""

    def add(self, exchange_symbol: str, name: str, instrument: str | None = None) -> None:
        self[exchange_symbol] = name
        if instrument is not None and instrument != exchange_symbol:
            self.ids[exchange_symbol] = instrument

    def add_record(self, record: Instrument) -> None:
        """A symbol named from its full metadata (the record's own ``symbol``)."""
        self.add(record.exchange_symbol, record.symbol)
        self.records[record.exchange_symbol] = record

    def stamped(self, ts: int) -> list[Instrument]:
        """The records, stamped with the receive time ``ts`` (µs) of the answer they came in."""
        return [msgspec.structs.replace(record, ts=ts) for record in self.records.values()]

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


def perpetual_name(base: object, quote: object, contract_type: ContractType) -> str:
    """``BASE-QUOTE-PERP`` (``-INV`` / ``-QUANTO`` appended for inverse / quanto contracts)."""
    return f"{spot_name(base, quote)}-PERP{CONTRACT_SUFFIX[contract_type]}"


def future_name(base: object, quote: object, expiry_us: int, contract_type: ContractType) -> str:
    """``BASE-QUOTE-YYYYMMDD``: the UTC date of the expiry, then the contract-type suffix."""
    return f"{spot_name(base, quote)}-{expiry_date(expiry_us)}{CONTRACT_SUFFIX[contract_type]}"


def option_name(
    base: object,
    quote: object,
    expiry_us: int,
    strike: str,
    option_type: OptionType,
    contract_type: ContractType,
) -> str:
    """``BASE-QUOTE-YYYYMMDD-STRIKE-C|P``; the strike as a plain decimal (``1.02``, ``60000``)."""
    dated = f"{spot_name(base, quote)}-{expiry_date(expiry_us)}"
    return f"{dated}-{plain_decimal(strike)}-{OPTION_LETTER[option_type]}{CONTRACT_SUFFIX[contract_type]}"


def instrument_name(record: Instrument) -> str:
    """The normalised name of the instrument ``record`` describes (its ``symbol`` is ignored)."""
    kind, contract_type = record.kind, record.contract_type
    if kind == "spot":
        return spot_name(record.base, record.quote)
    if contract_type is None:
        raise ParseError(f"{kind} {record.exchange_symbol!r} without a contract type (linear/inverse/quanto)")
    if kind == "perpetual":
        return perpetual_name(record.base, record.quote, contract_type)
    if record.expiry_ts is None:
        raise ParseError(f"{kind} {record.exchange_symbol!r} without an expiry")
    if kind == "future":
        return future_name(record.base, record.quote, record.expiry_ts, contract_type)
    if record.strike is None or record.option_type is None:
        raise ParseError(f"option {record.exchange_symbol!r} without strike or option type")
    return option_name(
        record.base, record.quote, record.expiry_ts, repr(record.strike), record.option_type, contract_type
    )


def named(record: Instrument) -> Instrument:
    """``record`` with ``symbol`` set to its normalised name."""
    return msgspec.structs.replace(record, symbol=instrument_name(record))


def expiry_date(expiry_us: int) -> str:
    """``YYYYMMDD`` of an expiry time in µs, in UTC."""
    if expiry_us <= 0:
        raise ParseError(f"expiry {expiry_us} is not a time")
    return datetime.fromtimestamp(expiry_us / US_PER_S, UTC).strftime("%Y%m%d")


def plain_decimal(text: str) -> str:
    """``60000`` -> ``60000``, ``1.020`` -> ``1.02``, ``6E+4`` -> ``60000``: no exponent, no
    trailing zeros; a positive finite number only."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ParseError(f"strike {text!r} is not a decimal number") from None
    if not value.is_finite() or value <= 0:
        raise ParseError(f"strike {text!r} is not a positive number")
    return format(value.normalize(), "f")


def decimal_field(row: dict[str, Any], field: str) -> float | None:
    """An optional positive decimal metadata field (``""`` or absent: None)."""
    text = row.get(field)
    if text in (None, ""):
        return None
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ParseError(f"{field} {text!r} is not a positive number")
    return value
