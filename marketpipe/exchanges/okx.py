"""OKX v5 public: the protocol facts the connector, the parser and the simulator share.

Instruments (``/api/v5/public/instruments``, ``parse_instruments``): spot (and margin) ``instId``s
are named from ``baseCcy``/``quoteCcy``. SWAP and FUTURES are named from their metadata only
(``marketpipe/instruments.py``): base/quote from ``uly`` (else ``instFamily``), ``ctType``
linear/inverse, ``expTime`` for the date, so ``BTC-USDT-SWAP`` is ``BTC-USDT-PERP``,
``UNI-USD-SWAP`` (inverse) ``UNI-USD-PERP-INV`` and ``BTC-USD-220527`` ``BTC-USD-20220527-INV``;
the contract size is ``ctVal`` x ``ctMult`` of ``ctValCcy``. OPTION and unknown instTypes are
skipped (``unnamed_instrument``), never named ``-``.

Wire structs: a push ``{"arg":{"channel","instId"},"action","data":[...]}`` or an ``{"event"}``
reply decodes into ``Frame``; ``data`` is decoded by channel (``channel_data``) into the struct
of that channel. OKX sends every number as a string.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from marketpipe.instruments import Instruments, decimal_field, named, read_entries
from marketpipe.records import ContractType, Instrument, InstrumentKind
from marketpipe.wire import ParseError, json_object, ms_to_us

INSTRUMENTS_PATH = "/api/v5/public/instruments"
PUBLIC_WS_PATH = "/ws/v5/public"
"""books, trades, tickers and the derivative channels"""
BUSINESS_WS_PATH = "/ws/v5/business"
"""candles"""
BOOKS_CHANNEL = "books"
TRADES_CHANNEL = "trades"
TICKERS_CHANNEL = "tickers"
CANDLE_PREFIX = "candle"
"""``candle<bar>``: ``candle1m``, ``candle1Dutc``..."""
FUNDING_CHANNEL = "funding-rate"
MARK_CHANNEL = "mark-price"
INDEX_CHANNEL = "index-tickers"
"""keyed by the index (``BTC-USDT``), not by a contract"""
OPEN_INTEREST_CHANNEL = "open-interest"
LIQUIDATIONS_CHANNEL = "liquidation-orders"
"""subscribed per instType: it reports every contract of the type"""
SPOT_TYPES = frozenset({"SPOT", "MARGIN"})
DERIVATIVE_KINDS: dict[str, InstrumentKind] = {"SWAP": "perpetual", "FUTURES": "future"}
CONTRACT_TYPES: dict[str, ContractType] = {"linear": "linear", "inverse": "inverse"}
NOT_YET = {"OPTION": "okx options are not normalised yet"}


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """instruments -> {"BTC-USDT": "BTC-USDT", "BTC-USDT-SWAP": "BTC-USDT-PERP", ...} with the
    Instrument record of each. OPTION and unknown instTypes are skipped, never named ``-``."""
    info = json_object(body, "okx instruments response")
    if info.get("code") != "0" or not isinstance(info.get("data"), list):
        raise ParseError(f"okx instruments error {info.get('code')}: {info.get('msg')!r}")
    return read_entries(info["data"], _instrument, "okx instruments", ("instId",))


def _instrument(row: dict[str, Any], found: Instruments) -> None:
    inst_type = row.get("instType") or "SPOT"
    if inst_type in SPOT_TYPES:
        found.add_record(named(_spot(row)))
    elif inst_type in DERIVATIVE_KINDS:
        found.add_record(named(_derivative(row, DERIVATIVE_KINDS[inst_type])))
    else:
        why = NOT_YET.get(inst_type, f"unknown okx instType {inst_type!r}")
        raise ParseError(f"{inst_type} instrument: {why}", "unnamed_instrument")


def _spot(row: dict[str, Any]) -> Instrument:
    return Instrument(
        exchange="okx",
        symbol="",
        exchange_symbol=row["instId"],
        kind="spot",
        base=row["baseCcy"],
        quote=row["quoteCcy"],
        contract_size=1.0,
        contract_size_currency=row["baseCcy"],
        tick_size=decimal_field(row, "tickSz"),
        lot_size=decimal_field(row, "lotSz"),
        ts=0,
    )


def _derivative(row: dict[str, Any], kind: InstrumentKind) -> Instrument:
    base, quote = _underlying(row)
    contract_type = CONTRACT_TYPES.get(row["ctType"])
    if contract_type is None:
        raise ParseError(f"ctType {row['ctType']!r} is neither linear nor inverse")
    expiry = row.get("expTime")
    if kind == "future" and not expiry:
        raise ParseError("FUTURES instrument without expTime")
    return Instrument(
        exchange="okx",
        symbol="",
        exchange_symbol=row["instId"],
        kind=kind,
        contract_type=contract_type,
        base=base,
        quote=quote,
        settle_currency=_currency(row, "settleCcy"),
        contract_size=_contract_size(row),
        contract_size_currency=_currency(row, "ctValCcy"),
        expiry_ts=ms_to_us(expiry) if kind == "future" and expiry else None,
        tick_size=decimal_field(row, "tickSz"),
        lot_size=decimal_field(row, "lotSz"),
        ts=0,
    )


def _underlying(row: dict[str, Any]) -> tuple[str, str]:
    """(base, quote) of the contract's underlying index ``uly`` (``BTC-USD``), else its
    ``instFamily``; a derivative's ``baseCcy``/``quoteCcy`` are empty."""
    underlying = row.get("uly") or row.get("instFamily") or ""
    base, sep, quote = underlying.partition("-")
    if not (sep and base.isalnum() and quote.isalnum()):
        raise ParseError(f"underlying (uly/instFamily) {underlying!r} is not BASE-QUOTE")
    return base, quote


def _contract_size(row: dict[str, Any]) -> float:
    """``ctVal`` x ``ctMult`` (the multiplier is 1 on swaps and futures; options use it)."""
    try:
        size = Decimal(row["ctVal"]) * Decimal(row.get("ctMult") or "1")
    except InvalidOperation:
        raise ParseError(f"ctVal {row['ctVal']!r} / ctMult {row.get('ctMult')!r} not decimal") from None
    if not size.is_finite() or size <= 0:
        raise ParseError(f"contract size {size} is not positive")
    return float(size)


def _currency(row: dict[str, Any], field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value:
        raise ParseError(f"no {field}")
    return value


# -- wire structs (the fields read; OKX sends every number as a string) --------------------


class Arg(msgspec.Struct):
    channel: str
    instId: str = ""
    instType: str = ""


class Frame(msgspec.Struct):
    """A push (``arg`` + ``data``) or an event reply (``event``); ``data`` is decoded by channel."""

    arg: Arg | None = None
    event: str | None = None
    code: str | int = ""
    msg: str = ""
    action: str = ""
    data: msgspec.Raw = msgspec.Raw(b"[]")


class Book(msgspec.Struct):
    asks: list[list[str]]
    bids: list[list[str]]
    ts: str
    checksum: int = 0
    seqId: int | None = None
    prevSeqId: int | None = None


class Trade(msgspec.Struct):
    instId: str
    tradeId: str
    px: str
    sz: str
    side: str
    ts: str


class Ticker(msgspec.Struct):
    instId: str
    last: str
    ts: str
    instType: str = ""
    lastSz: str = ""
    bidPx: str = ""
    bidSz: str = ""
    askPx: str = ""
    askSz: str = ""
    open24h: str = ""
    high24h: str = ""
    low24h: str = ""
    vol24h: str = ""
    volCcy24h: str = ""


class Funding(msgspec.Struct):
    instId: str
    fundingRate: str
    fundingTime: str
    nextFundingTime: str = ""
    nextFundingRate: str = ""
    ts: str = ""


class MarkPrice(msgspec.Struct):
    instId: str
    markPx: str
    ts: str


class IndexTicker(msgspec.Struct):
    instId: str
    idxPx: str
    ts: str


class OpenInterest(msgspec.Struct):
    instId: str
    oi: str
    ts: str
    oiUsd: str = ""


class LiquidationDetail(msgspec.Struct):
    side: str
    bkPx: str
    sz: str
    ts: str


class Liquidations(msgspec.Struct):
    instId: str
    details: list[LiquidationDetail]


class BookFrame(msgspec.Struct):
    """A ``books`` push decoded in one pass (the hot path; ``Frame`` decodes ``data`` twice)."""

    arg: Arg
    action: str = ""
    data: list[Book] = []


BOOK_PUSH_PREFIX = b'{"arg":{"channel":"books",'
"""how OKX starts every ``books`` push (other key orders take the generic path)"""
FRAMES = msgspec.json.Decoder(Frame)
BOOK_FRAMES = msgspec.json.Decoder(BookFrame)
BOOKS = msgspec.json.Decoder(list[Book])
TRADES = msgspec.json.Decoder(list[Trade])
TICKERS = msgspec.json.Decoder(list[Ticker])
CANDLES = msgspec.json.Decoder(list[list[str]])
FUNDINGS = msgspec.json.Decoder(list[Funding])
MARKS = msgspec.json.Decoder(list[MarkPrice])
INDEXES = msgspec.json.Decoder(list[IndexTicker])
OPEN_INTERESTS = msgspec.json.Decoder(list[OpenInterest])
LIQUIDATIONS = msgspec.json.Decoder(list[Liquidations])


def channel_data(decoder: msgspec.json.Decoder[list[Any]], frame: Frame, channel: str) -> list[Any]:
    try:
        return decoder.decode(frame.data)
    except msgspec.ValidationError as exc:
        raise ParseError(f"malformed okx {channel} data: {exc}") from None
