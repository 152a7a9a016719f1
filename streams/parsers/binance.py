"""Binance spot, combined-stream payloads ``{"stream","data"}``.

Book sync is the documented REST-snapshot bridge (streams/bridge.py): diff events are
buffered until a depth snapshot (a ``rest`` record on the same connection) arrives; buffered
events with ``u <= lastUpdateId`` are dropped, the first remaining one must straddle
``lastUpdateId+1``, and from then on each event's ``U`` must not skip past the local update id + 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import msgspec

from marketpipe.exchanges.binance import (
    BOOK_TICKER_MARK,
    DEPTH_PATH,
    EVENTS,
    INSTRUMENTS_PATH,
    KLINE_INTERVALS,
    SERVER_SHUTDOWN,
    AggTrade,
    BookTicker,
    BookTickerFrame,
    DepthSnapshot,
    DepthUpdate,
    KlineEvent,
    ServerShutdown,
    StreamFrame,
    Ticker24h,
    Trade,
    parse_instruments,
)
from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side
from streams.bridge import Delta, SnapshotBridgeProcessor
from streams.parsers.base import (
    ConnectionState,
    FeedOutput,
    ParseError,
    json_object,
    ms_to_us,
    opt_float,
    url_param,
)

__all__ = ["BinanceProcessor", "depth_update", "parse_instruments", "typed_event"]

AGG_IDS = "#agg"
"""aggTrade ids (``a``) are numbered apart from trade ids (``t``): deduplicated apart"""

T = TypeVar("T")
Handler = Callable[[Any, ConnectionState, RawRecord, Any, FeedOutput], None]
"""a processor method reading one wire struct: (self, conn, raw, event, out)"""

_frames = msgspec.json.Decoder(StreamFrame, strict=False)  # strict=False: "0.01" -> 0.01 in depth levels
_book_tickers = msgspec.json.Decoder(BookTickerFrame)
_snapshots = msgspec.json.Decoder(DepthSnapshot, strict=False)
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


def stream_frame(frame: bytes | str | None) -> StreamFrame | BookTickerFrame | None:
    """Any combined-stream frame with a typed event, diff-depth levels straight into numbers (no
    dicts, no float() per level); None for what the typed decoder refuses (an unknown event, a
    malformed frame), which ``explain`` then reads."""
    if not frame:
        return None
    try:
        return _frames.decode(frame)
    except msgspec.DecodeError:  # ValidationError included
        pass
    if isinstance(frame, str):
        frame = frame.encode()
    if BOOK_TICKER_MARK not in frame:
        return None
    try:
        return _book_tickers.decode(frame)
    except msgspec.DecodeError:
        return None


def depth_update(frame: bytes | str | None) -> DepthUpdate | None:
    """The diff-depth event of a frame as the typed decoder reads it; None for any other frame."""
    found = stream_frame(frame)
    return found.data if found is not None and isinstance(found.data, DepthUpdate) else None


def typed_event(data: dict[str, Any], kind: type[T]) -> T:
    """An event the typed decoder refused, read again to say why: a missing field is reported as
    the KeyError the feed words as ``missing field``, anything else with msgspec's reason."""
    try:
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as exc:
        missing = _MISSING.match(str(exc))
        if missing:
            raise KeyError(missing.group(1)) from None
        raise ParseError(f"malformed binance {data.get('e')} event: {exc}") from None


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ParseError(f"binance kline flag x is {value!r}, not a boolean")
    return value


class BinanceProcessor(SnapshotBridgeProcessor):
    exchange = "binance"
    strict_chain = False  # the documented rule: U must not skip past the local id + 1
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)
    handlers: ClassVar[dict[type, Handler]]
    """wire struct -> the method that reads it (set below the class: the methods must exist)"""

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        frame = self.decode_frame(raw.data)
        if frame is None:
            self.explain(conn, raw, out)
            return
        event = frame.data
        if event is None:
            self._control_frame(frame, raw)
        elif isinstance(event, list):  # !ticker@arr (and !markPrice@arr on futures)
            for item in event:
                self._event(conn, raw, item, out)
        else:
            self._event(conn, raw, event, out)

    decode_frame: Callable[[bytes | str | None], Any] = staticmethod(stream_frame)
    """the frame as the exchange's ``StreamFrame`` struct, None when the typed decoder refuses it"""

    def explain(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        """A frame the typed decoder refused: bookTicker (no event name), or the reason it is bad."""
        msg = json_object(raw.data, f"{self.exchange} frame")
        data = msg.get("data")
        stream = msg.get("stream")
        if isinstance(data, list):
            self.explain_items(conn, raw, data, stream, out)
            return
        if not isinstance(data, dict):
            raise ParseError(f"{self.exchange} stream {stream!r} payload is not an object")
        event = data.get("e")
        if event is None and "A" in data and "u" in data:
            self.counters.tickers += 1  # bookTicker: the validated book's BBO is published instead
            return
        self._event(conn, raw, self.typed_event(event, data, stream), out)

    def explain_items(
        self, conn: ConnectionState, raw: RawRecord, items: list[Any], stream: object, out: FeedOutput
    ) -> None:
        """!ticker@arr: every changed symbol's 24hrTicker, read until the first bad one."""
        for item in items:
            if not isinstance(item, dict) or item.get("e") != "24hrTicker":
                raise ParseError(f"unsupported binance array item on stream {stream!r}")
            self._event(conn, raw, typed_event(item, Ticker24h), out)

    def typed_event(self, event: object, data: dict[str, Any], stream: object) -> Any:
        kind = EVENTS.get(event) if isinstance(event, str) else None
        if kind is None:
            raise ParseError(f"unsupported binance event {event!r} on stream {stream!r}")
        return typed_event(data, kind)

    def _control_frame(self, frame: StreamFrame, raw: RawRecord) -> None:
        if frame.result is not msgspec.UNSET and frame.id is not msgspec.UNSET:
            self.counters.acks += 1
        elif frame.e == SERVER_SHUTDOWN:
            self.counters.notices += 1
        elif frame.error is not msgspec.UNSET:
            raise ParseError(f"binance request error: {frame.error}")
        else:
            msg = json_object(raw.data, "binance frame")
            if "code" in msg:
                raise ParseError(f"binance request error: {msg}")
            raise ParseError(f"unrecognised binance frame with keys {sorted(msg)}")

    def _event(self, conn: ConnectionState, raw: RawRecord, event: Any, out: FeedOutput) -> None:
        handler = self.handlers.get(type(event))
        if handler is None:
            raise ParseError(f"unsupported binance event {type(event).__name__}")
        handler(self, conn, raw, event, out)

    def _agg_trade(self, conn: ConnectionState, raw: RawRecord, event: AggTrade, out: FeedOutput) -> None:
        self._trade(raw, event, event.a, out, AGG_IDS)

    def _plain_trade(self, conn: ConnectionState, raw: RawRecord, event: Trade, out: FeedOutput) -> None:
        self._trade(raw, event, event.t, out)

    def _trade(
        self, raw: RawRecord, event: AggTrade | Trade, trade_id: int, out: FeedOutput, id_space: str = ""
    ) -> None:
        # m: the buyer is the maker, so the taker sold
        side: Side = "sell" if event.m else "buy"
        price, size = float(event.p), float(event.q)
        self.trade(raw, out, event.s, str(trade_id), price, size, side, ms_to_us(event.T), id_space)

    def _notice(self, conn: ConnectionState, raw: RawRecord, event: ServerShutdown, out: FeedOutput) -> None:
        self.counters.notices += 1

    def _book_ticker(self, conn: ConnectionState, raw: RawRecord, event: Any, out: FeedOutput) -> None:
        self.counters.tickers += 1  # the validated book's BBO is published instead

    # ------------------------------------------------------------------ ticker, kline

    def _ticker(self, conn: ConnectionState, raw: RawRecord, event: Ticker24h, out: FeedOutput) -> None:
        self.ticker(
            raw,
            out,
            event.s,
            ms_to_us(event.E),
            last_price=float(event.c),
            last_size=opt_float(event.Q),
            bid_price=opt_float(event.b),
            bid_size=opt_float(event.B),
            ask_price=opt_float(event.a),
            ask_size=opt_float(event.A),
            open_24h=float(event.o),
            high_24h=float(event.h),
            low_24h=float(event.l),
            volume_24h=float(event.v),
            quote_volume_24h=float(event.q),
            trades_24h=event.n,
        )

    def _kline(self, conn: ConnectionState, raw: RawRecord, event: KlineEvent, out: FeedOutput) -> None:
        k = event.k
        if k.i not in KLINE_INTERVALS:
            raise ParseError(f"unsupported binance kline interval {k.i!r}")
        ids = (str(k.f), str(k.L)) if k.n > 0 and k.f >= 0 else (None, None)
        self.exchange_candle(
            conn,
            raw,
            out,
            k.s,
            k.i,
            ms_to_us(k.t),
            ms_to_us(k.T) + 1000,  # T is the window's last millisecond
            float(k.o),
            float(k.h),
            float(k.l),
            float(k.c),
            volume=float(k.v),
            quote_volume=float(k.q),
            trades=k.n,
            first_trade_id=ids[0],
            last_trade_id=ids[1],
            closed=_flag(k.x),
            ts=ms_to_us(event.E),
        )

    # ---------------------------------------------------------------------------- book

    def _depth(self, conn: ConnectionState, raw: RawRecord, update: DepthUpdate, out: FeedOutput) -> None:
        bids = [Level(price, size) for price, size in update.b]
        asks = [Level(price, size) for price, size in update.a]
        self.on_delta(conn, update.s, Delta(update.U, update.u, bids, asks, update.E * 1000, raw), out)

    def on_rest(self, conn: ConnectionState, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if not path.endswith(DEPTH_PATH):
            super().on_rest(conn, raw, path, out)
            return
        symbol = url_param(raw, "symbol", "binance depth snapshot")
        snapshot = _snapshot(raw)
        bids = [Level(price, size) for price, size in snapshot.bids]
        asks = [Level(price, size) for price, size in snapshot.asks]
        self.bridge(conn, symbol.upper(), raw, snapshot.lastUpdateId, bids, asks, out)


BinanceProcessor.handlers = {
    AggTrade: BinanceProcessor._agg_trade,
    Trade: BinanceProcessor._plain_trade,
    KlineEvent: BinanceProcessor._kline,
    Ticker24h: BinanceProcessor._ticker,
    DepthUpdate: BinanceProcessor._depth,
    ServerShutdown: BinanceProcessor._notice,
    BookTicker: BinanceProcessor._book_ticker,
}


def _snapshot(raw: RawRecord) -> DepthSnapshot:
    try:
        return _snapshots.decode(raw.payload or b"")
    except msgspec.DecodeError as exc:  # ValidationError included: say what is wrong as before
        snapshot = json_object(raw.payload, "binance depth snapshot")
        if "lastUpdateId" not in snapshot:
            raise ParseError(f"binance depth snapshot has no lastUpdateId: {raw.text()[:200]}") from None
        raise ParseError(f"malformed binance depth snapshot: {exc}") from None
