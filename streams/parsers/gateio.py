"""Gate.io v4 spot: ``{"time","channel","event","result"}`` frames on ``spot.trades`` and
``spot.order_book_update``, subscribe acks, ``spot.pong`` and ``"error"`` replies.

Book sync is the documented REST bridge (streams/bridge.py, verified on the 2021 capture):
updates are buffered until a ``GET /api/v4/spot/order_book?...&with_id=true`` snapshot (a
``rest`` record on the same connection) arrives; buffered updates with ``u <= id`` are dropped,
the first applied one must straddle ``id+1`` (``U <= id+1 <= u``) and every later one must
continue exactly (``U == previous u + 1``). Sizes are absolute; ``"0"`` deletes the level.

``spot.tickers``: last, best bid/ask prices (no sizes), 24 h high/low and base/quote volume; no
open (only a rounded percentage change) and no trade count. ``spot.candlesticks``: ``t`` (start,
s), ``o/h/l/c``, ``v`` the QUOTE volume and ``a`` the base amount (``a x c ~ v`` on real frames; the
2021 frames have no ``a``), ``n`` = ``<interval>_<pair>``, ``w`` true once the window is closed
("may be missing": without it a later window on the connection makes a candle final).
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketpipe.exchanges import gateio as wire
from marketpipe.exchanges.gateio import (
    ACK_EVENTS,
    INSTRUMENTS_PATH,
    INTERVALS,
    ORDER_BOOK_PATH,
    create_time_ms_to_us,
    parse_instruments,
)
from marketpipe.instruments import dashed_pair
from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side
from marketpipe.wire import decode_struct
from streams.bridge import Delta, SnapshotBridgeProcessor
from streams.parsers.base import (
    ConnectionState,
    FeedOutput,
    ParseError,
    interval_span_us,
    ms_to_us,
    opt_float,
    url_param,
)

__all__ = ["GateioProcessor", "create_time_ms_to_us", "parse_instruments"]  # producers/base.py, tests

TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}


def _levels(rows: list[tuple[float, float]]) -> list[Level]:
    return [Level(price, size) for price, size in rows]


class GateioProcessor(SnapshotBridgeProcessor):
    exchange = "gateio"
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)
    strict_chain = True  # U == previous u + 1 after the first update
    id_name = "order book id"

    def fallback_instrument(self, exchange_symbol: str) -> tuple[str, str] | None:
        name = dashed_pair(exchange_symbol, "_")  # pairs are BASE_QUOTE
        return None if name is None else (name, exchange_symbol)

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        msg = decode_struct(wire.frames, raw.data, "gateio frame")
        channel = msg.channel
        if msg.event == wire.UPDATE:
            result = msg.result
            if not result:
                raise KeyError("result")
            if channel == wire.BOOK_CHANNEL:
                self._update(conn, raw, decode_struct(wire.book_updates, result), out)
            elif channel == wire.TRADES_CHANNEL:
                self._trade(raw, decode_struct(wire.trades, result), out)
            elif channel == wire.TICKERS_CHANNEL:
                self._ticker(raw, msg, decode_struct(wire.tickers, result), out)
            elif channel == wire.CANDLES_CHANNEL:
                self._candle(conn, raw, msg, decode_struct(wire.candles, result), out)
            else:
                raise ParseError(f"unsupported gateio channel {channel!r}")
            return
        self._control_frame(channel, msg)

    def _control_frame(self, channel: object, msg: wire.Frame) -> None:
        error = msg.error
        event = msg.event
        if error:
            detail = f"{error.get('code')}: {error.get('message')!r}" if isinstance(error, dict) else error
            raise ParseError(f"gateio {channel} {event} error {detail}")
        if channel == wire.PONG_CHANNEL:
            self.counters.heartbeats += 1
        elif event in ACK_EVENTS:
            result: Any = msgspec.json.decode(msg.result) if msg.result else None
            status = result.get("status") if isinstance(result, dict) else None
            if status != "success":
                raise ParseError(f"gateio {channel} {event} not successful: {str(result)[:200]}")
            self.counters.acks += 1
        else:
            raise ParseError(f"unrecognised gateio frame: channel {channel!r}, event {event!r}")

    def _trade(self, raw: RawRecord, result: wire.Trade, out: FeedOutput) -> None:
        side = TAKER_SIDES.get(result.side, "unknown")
        ts = create_time_ms_to_us(result.create_time_ms)
        self.trade(raw, out, result.currency_pair, str(result.id), result.price, result.amount, side, ts)

    # -------------------------------------------------------------- tickers, candles

    @staticmethod
    def _frame_time(msg: wire.Frame) -> int:
        stamp = msg.time_ms
        if stamp is not None:
            return ms_to_us(stamp)
        if msg.time is None:
            raise KeyError("time")
        return int(msg.time) * 1_000_000

    def _ticker(self, raw: RawRecord, msg: wire.Frame, result: wire.Ticker, out: FeedOutput) -> None:
        self.ticker(
            raw,
            out,
            result.currency_pair,
            self._frame_time(msg),
            last_price=opt_float(result.last),
            bid_price=opt_float(result.highest_bid),
            ask_price=opt_float(result.lowest_ask),
            high_24h=opt_float(result.high_24h),
            low_24h=opt_float(result.low_24h),
            volume_24h=opt_float(result.base_volume),
            quote_volume_24h=opt_float(result.quote_volume),
        )

    def _candle(
        self, conn: ConnectionState, raw: RawRecord, msg: wire.Frame, result: wire.Candle, out: FeedOutput
    ) -> None:
        name = result.n
        kind, _, pair = name.partition("_")
        interval = INTERVALS.get(kind)
        if interval is None or not pair:
            raise ParseError(f"unsupported gateio candlestick name {name!r}")
        open_time = result.t * 1_000_000
        self.exchange_candle(
            conn,
            raw,
            out,
            pair,
            interval,
            open_time,
            interval_span_us(interval, open_time),
            float(result.o),
            float(result.h),
            float(result.l),
            float(result.c),
            volume=opt_float(result.a),
            quote_volume=float(result.v),
            closed=True if result.w is True else None,
            ts=self._frame_time(msg),
        )

    # ---------------------------------------------------------------------------- book

    def _update(
        self, conn: ConnectionState, raw: RawRecord, result: wire.BookUpdate, out: FeedOutput
    ) -> None:
        delta = Delta(result.U, result.u, _levels(result.b), _levels(result.a), ms_to_us(result.t), raw)
        self.on_delta(conn, result.s, delta, out)

    def on_rest(self, conn: ConnectionState, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if not path.endswith(ORDER_BOOK_PATH):
            super().on_rest(conn, raw, path, out)
            return
        pair = url_param(raw, "currency_pair", "gateio order_book")
        snapshot = decode_struct(wire.snapshots, raw.payload, "gateio order_book snapshot")
        if snapshot.id is msgspec.UNSET:
            raise ParseError(f"gateio order_book snapshot has no id (with_id=true?): {raw.text()[:200]}")
        stamp = snapshot.update or snapshot.current
        ts = ms_to_us(stamp) if stamp else raw.recv_ns // 1000
        bids, asks = _required(snapshot.bids, "bids"), _required(snapshot.asks, "asks")
        self.bridge(conn, pair, raw, snapshot.id, _levels(bids), _levels(asks), out, ts)


def _required(rows: list[tuple[float, float]] | None, name: str) -> list[tuple[float, float]]:
    if rows is None:
        raise KeyError(name)
    return rows
