"""Binance USDⓈ-M futures (``fapi`` REST, ``fstream`` websocket), exchange ``binance-futures``.

Combined-stream payloads ``{"stream","data"}`` as on spot (``streams/parsers/binance.py``, whose
trade, 24 h ticker and kline readers this module reuses), from two routed paths per shard:
``/public`` (``@depth@100ms``) and ``/market`` (``@aggTrade``, ``@markPrice@1s``,
``@forceOrder``, ``@ticker``, ``@kline_1m``). REST answers on the same connections: the
instrument list (``/fapi/v1/exchangeInfo``), depth snapshots (``/fapi/v1/depth``) and the
polled open interest (``/fapi/v1/openInterest``).

Book sync, the futures rule (it differs from spot): diff events are buffered until the depth
snapshot; events with ``u <= lastUpdateId`` are dropped (the one with ``u == lastUpdateId`` is
contained in the snapshot); the first one kept must straddle the snapshot (``U <= lastUpdateId
<= u``) or continue it (``pu == lastUpdateId``); after that every event's ``pu`` must equal the
previous event's ``u``, else the book is unsynced and a fresh snapshot requested. ``U == prev
u + 1`` is never checked: update ids are not contiguous per symbol on futures.

Instruments are named from exchangeInfo metadata only (``streams/instruments.py``):
``PERPETUAL`` (and ``TRADIFI_PERPETUAL``) -> ``BTC-USDT-PERP``; ``CURRENT_QUARTER``,
``NEXT_QUARTER``, ``CURRENT_MONTH``, ``NEXT_MONTH`` -> a future ``BTC-USDT-20220624`` expiring at
``deliveryDate``; an empty ``contractType`` (a pending listing) or an unknown one is skipped
with the reason. USDⓈ-M contracts are linear, settle in ``marginAsset``, one contract = 1 base
unit (the answer has no ``contractSize``). An entry with ``contractSize`` (the COIN-M ``dapi``
shape) is read as inverse: ``contractSize`` quote units (USD) per contract.

Units: sizes in trades, books, klines, liquidations and open interest are contracts. USDⓈ-M
quantities are base units, which is one contract each, and COIN-M quantities are contracts
already, so no conversion is needed.

Derivative channels:

- ``markPriceUpdate`` -> MarkPrice (``p`` mark, ``i`` index; ``P``, the estimated settle
  price, only for a dated contract within the last hour before its delivery, else None) and,
  for perpetuals, FundingRate (``r`` the running period's rate, ``T`` the next funding time).
  Dated contracts send ``r`` empty or ``"0.00000000"`` with ``T`` 0: no funding record. There
  is no predicted rate (``P`` is a price, not a rate). The interval is the difference between
  two successive ``T`` values of the symbol (None until the first funding time passed).
- ``forceOrder`` -> Liquidation, only when the order's status ``X`` is ``FILLED``: the stream
  is a snapshot (at most the latest liquidation per symbol per second), and a partly filled or
  expired order's fills are not final. ``side`` is the liquidation order's side ``S`` (``SELL``:
  a long was liquidated), ``price`` its average fill price ``ap``, ``size`` the filled
  quantity ``z``. The stream is not a complete liquidation tape.
- ``/fapi/v1/openInterest`` answers -> OpenInterest (``openInterest`` in contracts, ``time``;
  no notional is stated).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from marketpipe.raw import RawRecord
from marketpipe.records import ContractType, Instrument, InstrumentKind, Level, Side
from streams.bridge import Delta
from streams.instruments import Instruments, named, read_entries
from streams.parsers.base import (
    ClockWindow,
    Connection,
    FeedOutput,
    FeedProcessor,
    ParseError,
    json_object,
    ms_to_us,
    url_param,
)
from streams.parsers.binance import BinanceProcessor

EXCHANGE = "binance-futures"
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
SETTLE_PRICE_WINDOW_US = 3600 * 1_000_000
"""``P`` means something only in the last hour before delivery"""

T = TypeVar("T")


# ---------------------------------------------------------------------------- wire structs


class FuturesDepthUpdate(msgspec.Struct):
    """``depthUpdate`` of a futures diff-depth stream: ``pu`` is the previous event's ``u``."""

    e: str
    E: int
    s: str
    U: int
    u: int
    pu: int
    b: list[tuple[float, float]]
    a: list[tuple[float, float]]


class FuturesDepthFrame(msgspec.Struct):
    stream: str
    data: FuturesDepthUpdate


class DepthSnapshot(msgspec.Struct):
    """``GET /fapi/v1/depth`` (``E`` message time, ``T`` transaction time)."""

    lastUpdateId: int
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]
    E: int | None = None


class MarkPriceUpdate(msgspec.Struct):
    """``<symbol>@markPrice[@1s]`` / ``!markPrice@arr`` items; ``r`` and ``P`` may be empty."""

    e: str
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


class ForceOrder(msgspec.Struct):
    e: str
    E: int
    o: LiquidationOrder


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


_depth_frames = msgspec.json.Decoder(FuturesDepthFrame, strict=False)  # strict=False: "0.01" -> 0.01
_snapshots = msgspec.json.Decoder(DepthSnapshot, strict=False)
_open_interest = msgspec.json.Decoder(OpenInterestAnswer)
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


def depth_update(frame: bytes | str | None) -> FuturesDepthUpdate | None:
    """A diff-depth frame decoded straight into numbers (the hot path); None for any other
    frame and for a malformed one, which the generic path reports."""
    if isinstance(frame, str):
        frame = frame.encode()
    if frame is None or b"depthUpdate" not in frame:
        return None
    try:
        update = _depth_frames.decode(frame).data
    except msgspec.DecodeError:
        return None
    return update if update.e == "depthUpdate" else None


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


# ---------------------------------------------------------------------------- processor


class BinanceFuturesProcessor(BinanceProcessor):
    exchange = EXCHANGE
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)

    def __init__(self, clock: ClockWindow | None = None) -> None:
        super().__init__(clock)
        self._funding_times: dict[str, int] = {}
        """exchange symbol -> the latest next-funding time ``T`` (ms)"""
        self._funding_intervals: dict[str, int] = {}
        """exchange symbol -> seconds between its last two funding times"""

    # -- book sync: the futures rule ----------------------------------------------------

    def breaks_chain(self, delta: Delta, local_id: int, bridging: bool) -> bool:
        """``pu`` must be the previous ``u``; right after a snapshot the event may instead
        straddle it (``U <= lastUpdateId``; deltas with ``u <= lastUpdateId`` never get here)."""
        if delta.prev_id == local_id:
            return False
        return not bridging or delta.first_id > local_id

    # -- frames -------------------------------------------------------------------------

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        update = depth_update(raw.data)
        if update is not None:
            self._depth(conn, raw, update, out)
            return
        msg = json_object(raw.data, "binance-futures frame")
        data = msg.get("data")
        if data is None:
            self._control_frame(msg)
        elif isinstance(data, list):  # !markPrice@arr, !ticker@arr
            for item in data:
                if not isinstance(item, dict):
                    raise ParseError(f"binance-futures array item on {msg.get('stream')!r} is not an object")
                self._event(conn, raw, item, msg.get("stream"), out)
        elif isinstance(data, dict):
            self._event(conn, raw, data, msg.get("stream"), out)
        else:
            raise ParseError(f"binance-futures stream {msg.get('stream')!r} payload is not an object")

    def _event(
        self, conn: Connection, raw: RawRecord, data: dict[str, Any], stream: object, out: FeedOutput
    ) -> None:
        event = data.get("e")
        if event == "markPriceUpdate":
            self._mark_price(raw, typed(data, MarkPriceUpdate, "markPriceUpdate"), out)
        elif event == "forceOrder":
            self._force_order(raw, typed(data, ForceOrder, "forceOrder"), out)
        elif event == "depthUpdate":  # one the typed hot path refused: read it to say why
            self._depth(conn, raw, typed(data, FuturesDepthUpdate, "depthUpdate"), out)
        elif event == "bookTicker":
            self.counters.tickers += 1  # the validated book's BBO is published instead
        else:
            super()._event(conn, raw, data, stream, out)  # aggTrade, trade, 24hrTicker, kline

    def _depth(self, conn: Connection, raw: RawRecord, update: FuturesDepthUpdate, out: FeedOutput) -> None:
        bids = [Level(price, size) for price, size in update.b]
        asks = [Level(price, size) for price, size in update.a]
        delta = Delta(update.U, update.u, bids, asks, ms_to_us(update.E), raw, prev_id=update.pu)
        self.on_delta(conn, update.s, delta, out)

    # -- mark price, funding, liquidations ------------------------------------------------

    def _mark_price(self, raw: RawRecord, update: MarkPriceUpdate, out: FeedOutput) -> None:
        ts = ms_to_us(update.E)
        record = self.instrument_record(update.s)
        expiry = record.expiry_ts if record is not None and record.kind == "future" else None
        settling = expiry is not None and expiry - SETTLE_PRICE_WINDOW_US <= ts
        settle = float(update.P) if update.P and settling else None
        index = float(update.i) if update.i else None
        if not self.mark_price(
            raw, out, update.s, ts, mark_price=float(update.p), index_price=index, settle_price=settle
        ):
            return
        if not update.r or update.T == 0 or (record is not None and record.kind != "perpetual"):
            return  # a dated contract: no funding
        self.funding(
            raw,
            out,
            update.s,
            ts,
            rate=float(update.r),
            next_funding_ts=ms_to_us(update.T),
            interval_s=self._funding_interval(update.s, update.T),
        )

    def _funding_interval(self, exchange_symbol: str, next_funding_ms: int) -> int | None:
        """Seconds between the symbol's last two funding times (it moves: 1, 4 or 8 h)."""
        previous = self._funding_times.get(exchange_symbol)
        if previous is not None and next_funding_ms > previous:
            self._funding_intervals[exchange_symbol] = (next_funding_ms - previous) // 1000
        if previous is None or next_funding_ms > previous:
            self._funding_times[exchange_symbol] = next_funding_ms
        return self._funding_intervals.get(exchange_symbol)

    def _force_order(self, raw: RawRecord, event: ForceOrder, out: FeedOutput) -> None:
        order = event.o
        if order.X != "FILLED":
            self.counters.notices += 1  # not final: the filled order arrives in a later snapshot
            return
        side = SIDES.get(order.S)
        if side is None:
            raise ParseError(f"binance-futures forceOrder side {order.S!r} is neither BUY nor SELL")
        self.liquidation(
            raw, out, order.s, ms_to_us(order.T), side=side, price=float(order.ap), size=float(order.z)
        )

    # -- REST: depth snapshots, open interest ---------------------------------------------

    def on_rest(self, conn: Connection, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if path.endswith(DEPTH_PATH):
            self._snapshot(conn, raw, out)
        elif path.endswith(OPEN_INTEREST_PATH):
            answer = decoded(_open_interest, raw.payload, "openInterest answer")
            ts = ms_to_us(answer.time)
            self.open_interest(raw, out, answer.symbol, ts, open_interest=float(answer.openInterest))
        else:
            FeedProcessor.on_rest(self, conn, raw, path, out)

    def _snapshot(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        symbol = url_param(raw, "symbol", "binance-futures depth snapshot").upper()
        snapshot = decoded(_snapshots, raw.payload, "depth snapshot")
        ts = ms_to_us(snapshot.E) if snapshot.E else None
        bids = [Level(price, size) for price, size in snapshot.bids]
        asks = [Level(price, size) for price, size in snapshot.asks]
        self.bridge(conn, symbol, raw, snapshot.lastUpdateId, bids, asks, out, ts)
