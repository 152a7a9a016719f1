"""Deribit API v2 (JSON-RPC 2.0): the protocol facts the connector, the parser and the simulator
share.

Instruments (``/api/v2/public/get_instruments``, ``/api/v2/public/get_instrument``, the JSON-RPC
answer over HTTP; ``parse_instruments``): ``kind`` future with ``settlement_period`` ``perpetual``
is a perpetual, otherwise a dated future; options carry ``strike`` and ``option_type``; spot is
named ``BASE-QUOTE``; combos are skipped (``unnamed_instrument``). ``instrument_type``
``reversed`` is inverse, ``linear`` linear (older answers without it, as recorded in 2021, are
coin-margined when quoted in USD or in the base coin: Deribit's only inverse contracts). The
name's quote is the price currency (``quote_currency``), for options the strike's currency
(``counter_currency``, else the ``price_index`` quote, else USD for coin-quoted options, all
struck on the coin/USD index): BTC-PERPETUAL is ``BTC-USD-PERP-INV``, BTC-25MAR22
``BTC-USD-20220325-INV``, SOL_USDC-PERPETUAL ``SOL-USDC-PERP``, BTC-24JUN22-30000-C
``BTC-USD-20220624-30000-C-INV``. Contract size currency: USD for inverse perpetuals and futures,
the base coin otherwise. Lot size is ``min_trade_amount`` in contracts.

Wire structs: every frame decodes into ``Message`` (an answer, an error or a notification);
a notification's ``params.data`` is decoded by channel (``typed``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketpipe.instruments import Instruments, named, read_entries
from marketpipe.records import ContractType, Instrument, InstrumentKind, OptionType
from marketpipe.wire import ParseError, json_object, ms_to_us

WS_PATH = "/ws/api/v2"
BOOK_CHANNEL = "book"
TRADES_CHANNEL = "trades"
TICKER_CHANNEL = "ticker"
"""subscribed as ``<channel>.<instrument>.<interval>`` (``100ms``; ``raw`` needs an authorised connection)"""
CHART_PREFIX = "chart.trades."
"""``chart.trades.<instrument>.<resolution>``: exchange candles"""
INSTRUMENTS_PATH = "/api/v2/public/get_instruments"
INSTRUMENTS_PATHS = (INSTRUMENTS_PATH, "/api/v2/public/get_instrument")
BOOK_SUMMARY_PATHS = (
    "/api/v2/public/get_book_summary_by_instrument",
    "/api/v2/public/get_book_summary_by_currency",
)
CONTRACT_TYPES: dict[str, ContractType] = {"reversed": "inverse", "linear": "linear"}
OPTION_TYPES: dict[str, OptionType] = {"call": "call", "put": "put"}


# ----------------------------------------------------------------------------- wire structs


class Error(msgspec.Struct):
    code: int = 0
    message: str = ""


class Params(msgspec.Struct):
    channel: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")
    type: str = ""
    """heartbeat notifications: ``heartbeat`` or ``test_request``"""


NO_RESULT = msgspec.Raw(b"")


class Message(msgspec.Struct):
    jsonrpc: str = ""
    id: int | str | None = None
    method: str = ""
    params: Params | None = None
    result: msgspec.Raw = NO_RESULT
    """empty (length 0) when the frame has none"""
    error: Error | None = None


class Trade(msgspec.Struct):
    trade_id: str
    instrument_name: str
    timestamp: int
    price: float
    amount: float
    direction: str
    liquidation: str | None = None


class Book(msgspec.Struct):
    type: str
    timestamp: int
    instrument_name: str
    change_id: int
    prev_change_id: int | None = None
    bids: list[tuple[str, float, float]] = []
    asks: list[tuple[str, float, float]] = []


class Stats(msgspec.Struct):
    volume: float | None = None
    volume_usd: float | None = None
    high: float | None = None
    low: float | None = None


class Ticker(msgspec.Struct):
    instrument_name: str
    timestamp: int
    last_price: float | None = None
    best_bid_price: float | None = None
    best_bid_amount: float | None = None
    best_ask_price: float | None = None
    best_ask_amount: float | None = None
    mark_price: float | None = None
    index_price: float | None = None
    estimated_delivery_price: float | None = None
    open_interest: float | None = None
    current_funding: float | None = None
    stats: Stats | None = None


class Summary(msgspec.Struct):
    """One ``public/get_book_summary_by_*`` row (open interest, mark and funding)."""

    instrument_name: str
    creation_timestamp: int
    mark_price: float | None = None
    estimated_delivery_price: float | None = None
    open_interest: float | None = None
    current_funding: float | None = None


class Candle(msgspec.Struct):
    tick: int
    open: float
    high: float
    low: float
    close: float
    volume: float | None = None
    cost: float | None = None


MESSAGE = msgspec.json.Decoder(Message)
TRADES = msgspec.json.Decoder(list[Trade])
BOOK = msgspec.json.Decoder(Book)
TICKER = msgspec.json.Decoder(Ticker)
CANDLE = msgspec.json.Decoder(Candle)
SUMMARIES = msgspec.json.Decoder(list[Summary])
ANY = msgspec.json.Decoder()


# ------------------------------------------------------------------------------ instruments


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """``public/get_instruments`` (a list) or ``public/get_instrument`` (one) -> names with the
    Instrument record of each; combos and unreadable entries are skipped with the reason."""
    answer = json_object(body, "deribit instruments answer")
    error = answer.get("error")
    if error is not None:
        detail = error if not isinstance(error, dict) else f"{error.get('code')}: {error.get('message')!r}"
        raise ParseError(f"deribit instruments error {detail}")
    result = answer.get("result")
    rows = [result] if isinstance(result, dict) else result
    if not isinstance(rows, list):
        raise ParseError(f"deribit instruments answer has no result list: {str(answer)[:200]}")
    return read_entries(rows, _instrument, "deribit instruments", ("instrument_name",))


def _instrument(row: dict[str, Any], found: Instruments) -> None:
    kind = row["kind"]
    if kind == "future":
        perpetual = row.get("settlement_period") == "perpetual"
        found.add_record(named(_derivative(row, "perpetual" if perpetual else "future")))
    elif kind == "option":
        found.add_record(named(_derivative(row, "option")))
    elif kind == "spot":
        found.add_record(named(_spot(row)))
    else:
        raise ParseError(f"{kind} instrument: deribit combos are not normalised", "unnamed_instrument")


def _spot(row: dict[str, Any]) -> Instrument:
    return Instrument(
        exchange="deribit",
        symbol="",
        exchange_symbol=row["instrument_name"],
        kind="spot",
        base=row["base_currency"],
        quote=row["quote_currency"],
        contract_size=1.0,
        contract_size_currency=row["base_currency"],
        tick_size=_positive(row, "tick_size"),
        lot_size=_positive(row, "min_trade_amount"),
        ts=0,
    )


def _derivative(row: dict[str, Any], kind: InstrumentKind) -> Instrument:
    base = row["base_currency"]
    contract_type = _contract_type(row)
    quote = _strike_currency(row) if kind == "option" else row["quote_currency"]
    contract_size = _positive(row, "contract_size")
    if contract_size is None:
        raise ParseError("no contract_size")
    min_amount = _positive(row, "min_trade_amount")
    option_type = OPTION_TYPES.get(row.get("option_type") or "") if kind == "option" else None
    if kind == "option" and option_type is None:
        raise ParseError(f"option_type {row.get('option_type')!r} is neither call nor put")
    return Instrument(
        exchange="deribit",
        symbol="",
        exchange_symbol=row["instrument_name"],
        kind=kind,
        contract_type=contract_type,
        base=base,
        quote=quote,
        settle_currency=row.get("settlement_currency") or (base if contract_type == "inverse" else quote),
        contract_size=contract_size,
        contract_size_currency=quote if contract_type == "inverse" and kind != "option" else base,
        expiry_ts=ms_to_us(row["expiration_timestamp"]) if kind != "perpetual" else None,
        strike=float(row["strike"]) if kind == "option" else None,
        option_type=option_type,
        tick_size=_positive(row, "tick_size"),
        lot_size=min_amount / contract_size if min_amount is not None else None,
        ts=0,
    )


def _contract_type(row: dict[str, Any]) -> ContractType:
    declared = row.get("instrument_type") or row.get("future_type")
    if declared is None:
        # answers older than ``instrument_type``: coin-margined (inverse) when quoted in USD or in
        # the base coin itself, Deribit's only inverse contracts; USDC-quoted ones are linear
        quote = row["quote_currency"]
        return "inverse" if quote in ("USD", row["base_currency"]) else "linear"
    found = CONTRACT_TYPES.get(declared)
    if found is None:
        raise ParseError(f"instrument_type {declared!r} is neither linear nor reversed")
    return found


def _strike_currency(row: dict[str, Any]) -> str:
    """The currency an option's strike is stated in: ``counter_currency``, else the quote of its
    ``price_index`` (``btc_usd``), else USD for an option quoted in its own coin (Deribit's coin
    options are all struck on the coin/USD index)."""
    counter = row.get("counter_currency")
    if isinstance(counter, str) and counter:
        return counter
    index = row.get("price_index")
    if isinstance(index, str) and "_" in index:
        return index.rsplit("_", 1)[1].upper()
    if row["quote_currency"] == row["base_currency"]:
        return "USD"
    raise ParseError("option without counter_currency or price_index: strike currency unknown")


def _positive(row: dict[str, Any], field: str) -> float | None:
    value = row.get(field)
    if value is None:
        return None
    number = float(value)
    if not 0.0 < number < float("inf"):
        raise ParseError(f"{field} {value!r} is not a positive number")
    return number


def typed(decoder: msgspec.json.Decoder[Any], data: msgspec.Raw | bytes, what: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ParseError(f"malformed deribit {what} data: {exc}") from None
