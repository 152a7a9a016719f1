"""Binance USDⓈ-M futures wire (exchange ``binance-futures``): fstream's routed paths and stream
names, the REST paths, the exchangeInfo reader (with the Instrument record of each contract) and
the msgspec structs of every message it sends. Events it shares with spot (aggTrade, trade,
24hrTicker, kline) are the spot structs (``marketpipe.exchanges.binance``).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from marketpipe.exchanges.binance import SUBSCRIBE as SUBSCRIBE  # the same combined-stream requests
from marketpipe.exchanges.binance import AggTrade, CombinedFrame, KlineEvent, ServerShutdown, Ticker24h, Trade
from marketpipe.exchanges.binance import DepthSnapshot as SpotDepthSnapshot
from marketpipe.instruments import Instruments, named, read_entries
from marketpipe.records import ContractType, Instrument, InstrumentKind, Side
from marketpipe.wire import ParseError, ms_to_us

EXCHANGE = "binance-futures"
WS_BASE = "wss://fstream.binance.com"
REST_BASE = "https://fapi.binance.com"
PUBLIC_STREAM_PATH = "/public/stream"
"""the high-frequency streams (depth, bookTicker, trade) are served here only"""
MARKET_STREAM_PATH = "/market/stream"
"""every other stream (aggTrade, markPrice, forceOrder, ticker, kline) is served here only"""
PUBLIC_STREAMS = ("depth@100ms",)
MARKET_STREAMS = ("aggTrade", "markPrice@1s", "forceOrder", "ticker", "kline_1m")
INSTRUMENTS_PATH = "/fapi/v1/exchangeInfo"
DEPTH_PATH = "/fapi/v1/depth"
OPEN_INTEREST_PATH = "/fapi/v1/openInterest"
KINDS: dict[str, InstrumentKind] = {
    "PERPETUAL": "perpetual",
    "TRADIFI_PERPETUAL": "perpetual",
    "CURRENT_QUARTER": "future",
    "NEXT_QUARTER": "future",
    "CURRENT_MONTH": "future",
    "NEXT_MONTH": "future",
}
SIDES: dict[str, Side] = {"BUY": "buy", "SELL": "sell"}
FILLED = "FILLED"
"""the forceOrder status of a final liquidation"""

T = TypeVar("T")


# ------------------------------------------------------------------------- stream events


class FuturesDepthUpdate(msgspec.Struct, tag_field="e", tag="depthUpdate"):
    """``depthUpdate`` of a futures diff-depth stream: ``pu`` is the previous event's ``u``."""

    E: int
    s: str
    U: int
    u: int
    pu: int
    b: list[tuple[float, float]]
    a: list[tuple[float, float]]


class MarkPriceUpdate(msgspec.Struct, tag_field="e", tag="markPriceUpdate"):
    """``<symbol>@markPrice[@1s]`` / ``!markPrice@arr`` items; ``r`` and ``P`` may be empty."""

    E: int
    s: str
    p: str
    i: str = ""
    P: str = ""
    r: str = ""
    T: int = 0


class LiquidationOrder(msgspec.Struct):
    s: str
    S: str
    q: str
    p: str
    ap: str
    X: str
    z: str
    T: int
    o: str = ""
    f: str = ""
    l: str = ""  # noqa: E741 - the wire name


class ForceOrder(msgspec.Struct, tag_field="e", tag="forceOrder"):
    E: int
    o: LiquidationOrder


class FuturesBookTicker(msgspec.Struct, tag_field="e", tag="bookTicker"):
    """``<symbol>@bookTicker`` on futures names itself (spot's does not)."""

    s: str = ""
    u: int = 0
    b: str = ""
    B: str = ""
    a: str = ""
    A: str = ""


FuturesEvent = (
    FuturesDepthUpdate
    | MarkPriceUpdate
    | ForceOrder
    | FuturesBookTicker
    | AggTrade
    | Trade
    | Ticker24h
    | KlineEvent
    | ServerShutdown
)
EVENTS: dict[str, type[FuturesEvent]] = {
    "depthUpdate": FuturesDepthUpdate,
    "markPriceUpdate": MarkPriceUpdate,
    "forceOrder": ForceOrder,
    "bookTicker": FuturesBookTicker,
    "aggTrade": AggTrade,
    "trade": Trade,
    "24hrTicker": Ticker24h,
    "kline": KlineEvent,
    "serverShutdown": ServerShutdown,
}


class FuturesStreamFrame(CombinedFrame):
    """A combined-stream frame with a typed event or a list of them (``!markPrice@arr``,
    ``!ticker@arr``)."""

    data: FuturesEvent | list[FuturesEvent] | None = None


# ---------------------------------------------------------------------------------- REST


class DepthSnapshot(SpotDepthSnapshot):
    """``GET /fapi/v1/depth``: the spot answer plus ``E``, the message time."""

    E: int | None = None


class OpenInterestAnswer(msgspec.Struct):
    """``GET /fapi/v1/openInterest?symbol=X``: open contracts (base units on USDⓈ-M)."""

    symbol: str
    openInterest: str
    time: int


class SymbolFilter(msgspec.Struct):
    filterType: str
    tickSize: str | None = None
    stepSize: str | None = None


class FuturesSymbol(msgspec.Struct):
    """One ``symbols[]`` element of exchangeInfo (fields the instrument record needs)."""

    symbol: str
    contractType: str
    deliveryDate: int
    baseAsset: str
    quoteAsset: str
    marginAsset: str
    contractSize: float | None = None
    filters: list[SymbolFilter] = []


class ExchangeInfo(msgspec.Struct):
    symbols: list[Any]


_exchange_info = msgspec.json.Decoder(ExchangeInfo)


def typed(value: Any, kind: type[T], what: str) -> T:
    """``value`` (decoded JSON) as the wire struct ``kind``; a ParseError naming what is wrong."""
    try:
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ParseError(f"binance-futures {what}: {exc}") from None


def decoded(decoder: msgspec.json.Decoder[T], body: bytes | str | None, what: str) -> T:
    if not body:
        raise ParseError(f"empty binance-futures {what}")
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ParseError(f"binance-futures {what}: {exc}") from None


# ----------------------------------------------------------------------------- metadata


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """exchangeInfo -> {"BTCUSDT": "BTC-USDT-PERP", "BTCUSDT_220624": "BTC-USDT-20220624", ...}
    with the Instrument record of each; unreadable entries are skipped with the reason."""
    info = decoded(_exchange_info, body, "exchangeInfo response")
    return read_entries(info.symbols, _entry, "binance-futures exchangeInfo")


def _entry(row: Any, found: Instruments) -> None:
    found.add_record(named(instrument(typed(row, FuturesSymbol, "exchangeInfo entry"))))


def instrument(entry: FuturesSymbol) -> Instrument:
    kind = KINDS.get(entry.contractType)
    if kind is None:
        why = "a pending listing" if not entry.contractType else "not a perpetual or dated future"
        raise ParseError(f"contractType {entry.contractType!r}: {why}", "unnamed_instrument")
    inverse = entry.contractSize is not None  # the COIN-M shape: contractSize USD per contract
    contract_type: ContractType = "inverse" if inverse else "linear"
    return Instrument(
        exchange=EXCHANGE,
        symbol="",
        exchange_symbol=entry.symbol,
        kind=kind,
        contract_type=contract_type,
        base=entry.baseAsset,
        quote=entry.quoteAsset,
        settle_currency=entry.marginAsset,
        contract_size=entry.contractSize if entry.contractSize is not None else 1.0,
        contract_size_currency=entry.quoteAsset if inverse else entry.baseAsset,
        expiry_ts=ms_to_us(entry.deliveryDate) if kind == "future" else None,
        tick_size=_filter_value(entry, "PRICE_FILTER", "tickSize"),
        lot_size=_filter_value(entry, "LOT_SIZE", "stepSize"),
        ts=0,
    )


def _filter_value(entry: FuturesSymbol, filter_type: str, field: str) -> float | None:
    for item in entry.filters:
        if item.filterType == filter_type:
            text = getattr(item, field)
            if not text:
                return None
            value = float(text)
            if not 0 < value < float("inf"):
                raise ParseError(f"{filter_type}.{field} {text!r} is not a positive number")
            return value
    return None
