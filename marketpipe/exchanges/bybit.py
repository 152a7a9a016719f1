"""Bybit v5 public: the protocol facts the connector, the parser and the simulator share.

Endpoints: one websocket per category, ``/v5/public/{spot,linear,inverse}`` (``category_of_url``
reads a connection's category back from its URL); instrument metadata from
``/v5/market/instruments-info?category=<c>``, cursor-paged (``next_page_cursor``).

Instruments (``parse_instruments``): spot from ``baseCoin``/``quoteCoin``; linear and inverse from
``contractType`` (``LinearPerpetual``, ``LinearFutures``, ``InversePerpetual``, ``InverseFutures``),
``settleCoin`` and ``deliveryTime`` (the expiry of futures), tick size ``priceFilter.tickSize`` and
lot size ``lotSizeFilter.qtyStep`` (spot ``basePrecision``). Bybit has no multiplier field: a
linear contract is 1 base coin, an inverse one 1 USD (the quote). Spot and linear share wire
names (``BTCUSDT``), so the instrument ids are ``<category>:<symbol>``. Options are not normalised
(``unnamed_instrument``).

Wire structs: a push ``{"topic","type","ts","data"}`` or an op reply decodes into ``Frame``; its
``data`` is decoded by topic (``Trade``, ``BookData``, ``Kline``, ``TickerData``, ``Liquidation``,
``LegacyLiquidation``).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET, UnsetType

from marketpipe.instruments import Instruments, named, read_entries
from marketpipe.records import ContractType, Instrument, InstrumentKind
from marketpipe.wire import ParseError, ms_to_us

Category = Literal["spot", "linear", "inverse"]
CATEGORIES: tuple[Category, ...] = ("spot", "linear", "inverse")
INSTRUMENTS_PATH = "/v5/market/instruments-info"
WS_PATH = "/v5/public"
"""one endpoint per category: ``/v5/public/<category>``"""
BOOK_TOPIC = "orderbook"
"""``orderbook.<depth>.<symbol>``"""
TRADE_TOPIC = "publicTrade"
TICKERS_TOPIC = "tickers"
KLINE_TOPIC = "kline"
"""``kline.<interval>.<symbol>``"""
LIQUIDATION_TOPIC = "allLiquidation"
LEGACY_LIQUIDATION_TOPIC = "liquidation"
"""the 2023 form of ``allLiquidation``"""
CONTRACT_TYPES: dict[str, tuple[InstrumentKind, ContractType]] = {
    "LinearPerpetual": ("perpetual", "linear"),
    "LinearFutures": ("future", "linear"),
    "InversePerpetual": ("perpetual", "inverse"),
    "InverseFutures": ("future", "inverse"),
}


# -- wire structs -------------------------------------------------------------------------------


class PriceFilter(msgspec.Struct):
    tickSize: str = ""


class LotSizeFilter(msgspec.Struct):
    qtyStep: str = ""
    basePrecision: str = ""


class InstrumentRow(msgspec.Struct):
    """One ``result.list`` element of instruments-info (spot, linear or inverse)."""

    symbol: str
    baseCoin: str = ""
    quoteCoin: str = ""
    contractType: str = ""
    settleCoin: str = ""
    deliveryTime: str = "0"
    priceFilter: PriceFilter = msgspec.field(default_factory=PriceFilter)
    lotSizeFilter: LotSizeFilter = msgspec.field(default_factory=LotSizeFilter)


class InstrumentsResult(msgspec.Struct):
    category: str = "spot"
    rows: list[dict[str, Any]] = msgspec.field(default_factory=list, name="list")
    nextPageCursor: str = ""


class InstrumentsAnswer(msgspec.Struct):
    retCode: int
    retMsg: str = ""
    result: InstrumentsResult | None = None


class Cursor(msgspec.Struct):
    nextPageCursor: str = ""


class Page(msgspec.Struct):
    result: Cursor | None = None


class Frame(msgspec.Struct):
    """A push (``topic`` set; ``data`` decoded by topic) or an op reply."""

    topic: str = ""
    type: str = ""
    ts: int | None = None
    cts: int | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")
    op: str = ""
    success: bool | None = None
    ret_msg: str = ""


class Trade(msgspec.Struct):
    T: int
    s: str
    S: str
    v: str
    p: str
    i: str


class BookData(msgspec.Struct):
    s: str
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]
    u: int
    seq: int | None = None


class Kline(msgspec.Struct):
    start: int
    end: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    confirm: bool
    turnover: str = ""


class Liquidation(msgspec.Struct):
    """``allLiquidation`` entry; ``S`` is the liquidated position's side."""

    T: int
    s: str
    S: str
    v: str
    p: str


class LegacyLiquidation(msgspec.Struct):
    """The older ``liquidation.{symbol}`` data object (2023)."""

    updatedTime: int
    symbol: str
    side: str
    size: str
    price: str


Text = str | UnsetType


class TickerData(msgspec.Struct):
    """A tickers snapshot, or a delta holding only the fields that changed (the rest UNSET)."""

    symbol: str
    lastPrice: Text = UNSET
    bid1Price: Text = UNSET
    bid1Size: Text = UNSET
    ask1Price: Text = UNSET
    ask1Size: Text = UNSET
    prevPrice24h: Text = UNSET
    highPrice24h: Text = UNSET
    lowPrice24h: Text = UNSET
    volume24h: Text = UNSET
    turnover24h: Text = UNSET
    markPrice: Text = UNSET
    indexPrice: Text = UNSET
    openInterest: Text = UNSET
    openInterestValue: Text = UNSET
    fundingRate: Text = UNSET
    nextFundingTime: Text = UNSET
    fundingIntervalHour: Text = UNSET


FRAMES = msgspec.json.Decoder(Frame)
TRADES = msgspec.json.Decoder(list[Trade])
BOOK = msgspec.json.Decoder(BookData)
KLINES = msgspec.json.Decoder(list[Kline])
TICKER = msgspec.json.Decoder(TickerData)
LIQUIDATIONS = msgspec.json.Decoder(list[Liquidation])
LEGACY_LIQUIDATION = msgspec.json.Decoder(LegacyLiquidation)
_answer = msgspec.json.Decoder(InstrumentsAnswer)
_page = msgspec.json.Decoder(Page)
T = TypeVar("T")


def decode(decoder: msgspec.json.Decoder[T], data: bytes | str, what: str) -> T:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ParseError(f"malformed bybit {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ParseError(f"invalid JSON: {exc}") from None


# -- instruments --------------------------------------------------------------------------------


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """instruments-info -> {"BTCUSDT": "BTC-USDT-PERP", ...} with each entry's Instrument record,
    the instrument ids ``<category>:<symbol>``. One page of a cursor-paged answer names its own
    entries; an entry it cannot read is skipped with the reason."""
    answer = decode(_answer, body, "instruments-info response")
    if answer.retCode != 0:
        raise ParseError(f"bybit instruments-info error {answer.retCode}: {answer.retMsg!r}")
    result = answer.result
    if result is None:
        raise ParseError("bybit instruments-info response has no result")
    category = result.category

    def entry(fields: dict[str, Any], found: Instruments) -> None:
        row = msgspec.convert(fields, InstrumentRow)
        record = named(_record(category, row))
        found.add(row.symbol, record.symbol, f"{category}:{row.symbol}")
        found.records[row.symbol] = record

    return read_entries(result.rows, entry, "bybit instruments-info")


def _record(category: str, row: InstrumentRow) -> Instrument:
    if category == "spot":
        return _spot(row)
    if category in ("linear", "inverse"):
        return _contract(category, row)
    raise ParseError(f"bybit {category} instruments are not normalised", "unnamed_instrument")


def _spot(row: InstrumentRow) -> Instrument:
    return Instrument(
        exchange="bybit",
        symbol="",
        exchange_symbol=row.symbol,
        kind="spot",
        base=row.baseCoin,
        quote=row.quoteCoin,
        contract_size=1.0,
        contract_size_currency=row.baseCoin,
        tick_size=_positive(row.priceFilter.tickSize, "tickSize"),
        lot_size=_positive(row.lotSizeFilter.basePrecision, "basePrecision"),
        ts=0,
    )


def _contract(category: str, row: InstrumentRow) -> Instrument:
    found = CONTRACT_TYPES.get(row.contractType)
    if found is None:
        raise ParseError(f"contractType {row.contractType!r} is not a linear or inverse contract")
    kind, contract_type = found
    if contract_type != category:
        raise ParseError(f"{row.contractType} listed under category {category}")
    expiry = int(row.deliveryTime or 0)
    if kind == "future" and expiry <= 0:
        raise ParseError(f"{row.contractType} without a deliveryTime")
    if not row.settleCoin:
        raise ParseError("no settleCoin")
    return Instrument(
        exchange="bybit",
        symbol="",
        exchange_symbol=row.symbol,
        kind=kind,
        contract_type=contract_type,
        base=row.baseCoin,
        quote=row.quoteCoin,
        settle_currency=row.settleCoin,
        contract_size=1.0,  # no multiplier field: 1 base coin (linear), 1 USD (inverse)
        contract_size_currency=row.baseCoin if contract_type == "linear" else row.quoteCoin,
        expiry_ts=ms_to_us(expiry) if kind == "future" else None,
        tick_size=_positive(row.priceFilter.tickSize, "tickSize"),
        lot_size=_positive(row.lotSizeFilter.qtyStep, "qtyStep"),
        ts=0,
    )


def _positive(text: str, field: str) -> float | None:
    if not text:
        return None
    value = float(text)
    if not 0 < value < float("inf"):
        raise ParseError(f"{field} {text!r} is not a positive number")
    return value


def next_page_cursor(body: bytes) -> str:
    """``result.nextPageCursor`` of an instruments-info page: "" on the last one (and on an
    answer that is not a page: ``parse_instruments`` says what is wrong with it)."""
    try:
        page = _page.decode(body)
    except msgspec.DecodeError:
        return ""
    return page.result.nextPageCursor if page.result is not None else ""


def category_of_url(url: str | None) -> Category | None:
    """``wss://stream.bybit.com/v5/public/linear`` -> ``linear``; None when not a v5 public URL."""
    if not url:
        return None
    last = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    for category in CATEGORIES:
        if last == category:
            return category
    return None
