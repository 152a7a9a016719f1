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

Instruments are named from exchangeInfo metadata only (``marketpipe/instruments.py``):
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

from typing import Any

import msgspec

from marketpipe.exchanges.binance_futures import (
    DEPTH_PATH,
    EVENTS,
    EXCHANGE,
    FILLED,
    INSTRUMENTS_PATH,
    OPEN_INTEREST_PATH,
    SIDES,
    DepthSnapshot,
    ForceOrder,
    FuturesBookTicker,
    FuturesDepthUpdate,
    FuturesStreamFrame,
    MarkPriceUpdate,
    OpenInterestAnswer,
    decoded,
    parse_instruments,
    typed,
)
from marketpipe.raw import RawRecord
from marketpipe.records import Level
from streams.bridge import Delta
from streams.parsers.base import (
    ClockWindow,
    ConnectionState,
    FeedOutput,
    FeedProcessor,
    ParseError,
    ms_to_us,
    url_param,
)
from streams.parsers.binance import BinanceProcessor, typed_event

__all__ = ["BinanceFuturesProcessor", "depth_update", "parse_instruments"]

SETTLE_PRICE_WINDOW_US = 3600 * 1_000_000
"""``P`` means something only in the last hour before delivery"""
OWN_EVENTS = frozenset(("markPriceUpdate", "forceOrder", "depthUpdate"))
"""events read with futures-only structs: a refused one is reported as ``binance-futures <event>: why``"""

_frames = msgspec.json.Decoder(FuturesStreamFrame, strict=False)  # strict=False: "0.01" -> 0.01
_snapshots = msgspec.json.Decoder(DepthSnapshot, strict=False)
_open_interest = msgspec.json.Decoder(OpenInterestAnswer)


def futures_stream_frame(frame: bytes | str | None) -> FuturesStreamFrame | None:
    """Any combined-stream frame with a typed event or list of them, diff-depth levels straight
    into numbers; None for what the typed decoder refuses, which ``explain`` then reads."""
    if not frame:
        return None
    try:
        return _frames.decode(frame)
    except msgspec.DecodeError:  # ValidationError included
        return None


def depth_update(frame: bytes | str | None) -> FuturesDepthUpdate | None:
    """The diff-depth event of a frame as the typed decoder reads it; None for any other frame."""
    found = futures_stream_frame(frame)
    return found.data if found is not None and isinstance(found.data, FuturesDepthUpdate) else None


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

    decode_frame = staticmethod(futures_stream_frame)

    def explain_items(
        self, conn: ConnectionState, raw: RawRecord, items: list[Any], stream: object, out: FeedOutput
    ) -> None:
        """!markPrice@arr, !ticker@arr: read until the first bad item."""
        for item in items:
            if not isinstance(item, dict):
                raise ParseError(f"binance-futures array item on {stream!r} is not an object")
            self._event(conn, raw, self.typed_event(item.get("e"), item, stream), out)

    def typed_event(self, event: object, data: dict[str, Any], stream: object) -> Any:
        if isinstance(event, str) and event in OWN_EVENTS:
            return typed(data, EVENTS[event], event)
        if event == "bookTicker":
            return typed_event(data, FuturesBookTicker)
        return super().typed_event(event, data, stream)

    def _depth(self, conn: ConnectionState, raw: RawRecord, update: Any, out: FeedOutput) -> None:
        bids = [Level(price, size) for price, size in update.b]
        asks = [Level(price, size) for price, size in update.a]
        delta = Delta(update.U, update.u, bids, asks, ms_to_us(update.E), raw, prev_id=update.pu)
        self.on_delta(conn, update.s, delta, out)

    # -- mark price, funding, liquidations ------------------------------------------------

    def _mark_price(
        self, conn: ConnectionState, raw: RawRecord, update: MarkPriceUpdate, out: FeedOutput
    ) -> None:
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

    def _force_order(self, conn: ConnectionState, raw: RawRecord, event: ForceOrder, out: FeedOutput) -> None:
        order = event.o
        if order.X != FILLED:
            self.counters.notices += 1  # not final: the filled order arrives in a later snapshot
            return
        side = SIDES.get(order.S)
        if side is None:
            raise ParseError(f"binance-futures forceOrder side {order.S!r} is neither BUY nor SELL")
        self.liquidation(
            raw, out, order.s, ms_to_us(order.T), side=side, price=float(order.ap), size=float(order.z)
        )

    # -- REST: depth snapshots, open interest ---------------------------------------------

    def on_rest(self, conn: ConnectionState, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if path.endswith(DEPTH_PATH):
            self._snapshot(conn, raw, out)
        elif path.endswith(OPEN_INTEREST_PATH):
            answer = decoded(_open_interest, raw.payload, "openInterest answer")
            ts = ms_to_us(answer.time)
            self.open_interest(raw, out, answer.symbol, ts, open_interest=float(answer.openInterest))
        else:
            FeedProcessor.on_rest(self, conn, raw, path, out)

    def _snapshot(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        symbol = url_param(raw, "symbol", "binance-futures depth snapshot").upper()
        snapshot = decoded(_snapshots, raw.payload, "depth snapshot")
        ts = ms_to_us(snapshot.E) if snapshot.E else None
        bids = [Level(price, size) for price, size in snapshot.bids]
        asks = [Level(price, size) for price, size in snapshot.asks]
        self.bridge(conn, symbol, raw, snapshot.lastUpdateId, bids, asks, out, ts)


BinanceFuturesProcessor.handlers = {
    **BinanceProcessor.handlers,  # aggTrade, trade, 24hrTicker, kline, serverShutdown
    MarkPriceUpdate: BinanceFuturesProcessor._mark_price,
    ForceOrder: BinanceFuturesProcessor._force_order,
    FuturesDepthUpdate: BinanceFuturesProcessor._depth,
    FuturesBookTicker: BinanceFuturesProcessor._book_ticker,
}
