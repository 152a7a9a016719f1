"""HTX (Huobi) spot: every server frame is gzip-compressed JSON.

Pushes are ``{"ch":"market.<sym>.<topic>","ts","tick"}``; request replies carry ``rep``;
subscribe acks ``subbed``; the server's ``{"ping":n}`` is a heartbeat (the connector answers).

Books, two channels:

* ``market.<sym>.mbp.<levels>`` (incremental MBP): each update carries ``seqNum`` and
  ``prevSeqNum``. Updates are buffered (streams/bridge.py, as the id range
  ``prevSeqNum+1..seqNum``, which is what BookChange ``first_update_id``/``last_update_id`` show)
  until the snapshot the connector requests on the same websocket
  (``{"req":"market.<sym>.mbp.<levels>"}``, reply ``{"rep",...,"data":{"seqNum",...}}``) arrives;
  buffered updates with ``seqNum <= snapshot seqNum`` are dropped, the first applied one
  must straddle the snapshot (``prevSeqNum <= seqNum_snapshot < seqNum``; the documented case
  is ``prevSeqNum == seqNum_snapshot``), then each ``prevSeqNum`` must equal the previous
  ``seqNum`` or the book is unsynced (gap). Size 0 deletes; the book keeps the channel's depth.
* ``market.<sym>.depth.step<n>``: every push is a complete top-N book, accepted as a snapshot
  (a smaller ``version`` than the last one is stale and dropped).

Trades: ``market.<sym>.trade.detail``, ``tick.data[]`` with ``tradeId``, ``price``, ``amount``,
``direction`` (the taker side) and ``ts`` (ms).

Tickers: ``market.<sym>.ticker`` (24 h ``open/high/low/close``, base ``amount``, quote ``vol``,
``count``, best ``bid/bidSize/ask/askSize`` and ``lastPrice/lastSize``) and ``market.<sym>.detail``
(the same 24 h fields without the book and last size). Klines ``market.<sym>.kline.<period>``:
``id`` (start, s), ``open/close/low/high``, base ``amount``, quote ``vol`` and the trade ``count``;
no final flag (a later window on the connection makes a candle final). Numbers are JSON doubles.
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketpipe.exchanges import htx as wire
from marketpipe.exchanges.htx import (
    INSTRUMENTS_PATH,
    INSTRUMENTS_PATHS,
    PERIODS,
    inflate,
    parse_instruments,
)
from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side
from marketpipe.wire import decode_json, decode_struct, ms_to_us
from streams.bridge import Delta, SnapshotBridgeProcessor
from streams.parsers.base import (
    ConnectionState,
    FeedOutput,
    ParseError,
    interval_span_us,
    opt_float,
)

__all__ = ["HtxProcessor", "inflate", "parse_instruments"]  # parse_instruments: producers/base.py

TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}


def _levels(rows: list[wire.Level] | None) -> list[Level]:
    return [Level(price, size) for price, size in rows] if rows else []


def _topic(channel: str) -> tuple[str, str]:
    """``market.btcusdt.mbp.150`` -> (``btcusdt``, ``mbp.150``)."""
    parts = channel.split(".", 2)
    if len(parts) != 3 or parts[0] != "market":
        raise ParseError(f"unsupported htx channel {channel!r}")
    return parts[1], parts[2]


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParseError(f"htx trade count {value!r} is not an integer")
    return value


def _mbp_depth(topic: str) -> int:
    try:
        return int(topic[4:])
    except ValueError:
        raise ParseError(f"htx mbp channel without a level count: {topic!r}") from None


Data = bytes | str | None


def _required(raw: msgspec.Raw, name: str) -> msgspec.Raw:
    if not raw:
        raise KeyError(name)
    return raw


class HtxProcessor(SnapshotBridgeProcessor):
    exchange = "htx"
    instruments_path = INSTRUMENTS_PATH
    instruments_paths = INSTRUMENTS_PATHS
    instruments_parser = staticmethod(parse_instruments)
    id_name = "seqNum"

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        text = inflate(raw.data)
        pushed = _leading_topic(text)
        if pushed is not None:  # a push as HTX writes it: decoded once, with its topic's struct
            self._push(conn, *pushed, text, raw, out)
            return
        msg = decode_struct(wire.frames, text, "htx frame")
        if msg.ch is not None:
            self._push(conn, *_topic(msg.ch), text, raw, out)
        elif msg.ping is not msgspec.UNSET:
            self.counters.heartbeats += 1
        elif not isinstance(msg.rep, msgspec.UnsetType):
            self._reply(conn, msg.rep, msg, raw, out)
        elif msg.status == "ok" and (msg.subbed is not msgspec.UNSET or msg.unsubbed is not msgspec.UNSET):
            self.counters.acks += 1
        elif msg.status == "error":
            raise ParseError(f"htx error {msg.err_code}: {msg.err_msg!r}")
        else:
            raise ParseError(f"unrecognised htx frame with keys {sorted(decode_json(text))}")

    def _push(
        self, conn: ConnectionState, symbol: str, topic: str, text: Data, raw: RawRecord, out: FeedOutput
    ) -> None:
        if topic == wire.TRADE_TOPIC:
            self._trades(symbol, decode_struct(wire.trades, text, "htx frame").tick.data, raw, out)
        elif topic.startswith("mbp."):
            update = decode_struct(wire.mbp_updates, text, "htx frame")
            self._update(conn, symbol, _mbp_depth(topic), _ts(update), update.tick, raw, out)
        elif topic.startswith("depth.step"):
            book = decode_struct(wire.full_books, text, "htx frame")
            self._full_book(conn, symbol, book.tick, _ts(book), raw, out)
        elif topic in wire.TICKER_TOPICS:
            ticker = decode_struct(wire.day_tickers, text, "htx frame")
            self._ticker(symbol, ticker.tick, _ts(ticker), raw, out)
        elif topic.startswith("kline."):
            kline = decode_struct(wire.klines, text, "htx frame")
            self._kline(conn, symbol, topic[6:], kline.tick, _ts(kline), raw, out)
        else:
            raise ParseError(f"unsupported htx channel {wire.channel(symbol, topic)!r}")

    def _trades(self, symbol: str, data: list[wire.Trade], raw: RawRecord, out: FeedOutput) -> None:
        rows = [
            (
                str(item.id if item.tradeId is msgspec.UNSET else item.tradeId),
                item.price,
                item.amount,
                TAKER_SIDES.get(item.direction, "unknown"),
                ms_to_us(item.ts),
            )
            for item in data
        ]
        for trade_id, price, size, side, ts in rows:
            self.trade(raw, out, symbol, trade_id, price, size, side, ts)

    # -------------------------------------------------------------- tickers, klines

    def _ticker(self, symbol: str, tick: wire.DayTicker, ts: int, raw: RawRecord, out: FeedOutput) -> None:
        count = tick.count
        last = tick.close if tick.lastPrice is msgspec.UNSET else tick.lastPrice
        self.ticker(
            raw,
            out,
            symbol,
            ts,
            last_price=opt_float(last),
            last_size=opt_float(tick.lastSize),
            bid_price=opt_float(tick.bid),
            bid_size=opt_float(tick.bidSize),
            ask_price=opt_float(tick.ask),
            ask_size=opt_float(tick.askSize),
            open_24h=opt_float(tick.open),
            high_24h=opt_float(tick.high),
            low_24h=opt_float(tick.low),
            volume_24h=opt_float(tick.amount),
            quote_volume_24h=opt_float(tick.vol),
            trades_24h=None if count is None else _count(count),
        )

    def _kline(
        self,
        conn: ConnectionState,
        symbol: str,
        period: str,
        tick: wire.Kline,
        ts: int,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        interval = PERIODS.get(period)
        if interval is None:
            raise ParseError(f"unsupported htx kline period {period!r}")
        open_time = tick.id * 1_000_000
        count = tick.count
        self.exchange_candle(
            conn,
            raw,
            out,
            symbol,
            interval,
            open_time,
            interval_span_us(interval, open_time),
            float(tick.open),
            float(tick.high),
            float(tick.low),
            float(tick.close),
            volume=opt_float(tick.amount),
            quote_volume=opt_float(tick.vol),
            trades=None if count is None else _count(count),
            ts=ts,
        )

    # ------------------------------------------------------------------ full books

    def _full_book(
        self,
        conn: ConnectionState,
        symbol: str,
        tick: wire.FullBook,
        ts: int,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        self.counters.book_messages += 1
        version = tick.version
        state = self.book_state(conn, symbol)
        if version is not None and state.last_id is not None and version < state.last_id:
            self.counters.stale_updates += 1
            return
        book = state.book
        book.bids.load(tick.bids)
        book.asks.load(tick.asks)
        self.accept_snapshot(state, raw, out, ts, last_id=version)

    # ------------------------------------------------------------------ MBP

    def _update(
        self,
        conn: ConnectionState,
        symbol: str,
        depth: int,
        ts: int,
        tick: wire.MbpUpdate,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        # seqNum follows prevSeqNum: as an id range the update covers prevSeqNum+1..seqNum
        first, last = tick.prevSeqNum + 1, tick.seqNum
        bids, asks = _levels(tick.bids), _levels(tick.asks)
        self.book_state(conn, symbol).depth = depth
        self.on_delta(conn, symbol, Delta(first, last, bids, asks, ts, raw), out)

    def _reply(
        self, conn: ConnectionState, rep: str, msg: wire.Frame, raw: RawRecord, out: FeedOutput
    ) -> None:
        if msg.status != "ok":
            raise ParseError(f"htx request {rep!r} failed {msg.err_code}: {msg.err_msg!r}")
        symbol, topic = _topic(rep)
        if not topic.startswith("mbp."):
            raise ParseError(f"unsupported htx request reply {rep!r}")
        data = decode_struct(wire.mbp_snapshots, _required(msg.data, "data"))
        self.book_state(conn, symbol).depth = _mbp_depth(topic)
        ts = ms_to_us(msg.ts) if msg.ts is not msgspec.UNSET else raw.recv_ns // 1000
        self.bridge(conn, symbol, raw, data.seqNum, _levels(data.bids), _levels(data.asks), out, ts)


def _ts(push: wire.Push[Any]) -> int:
    if push.ts is msgspec.UNSET:
        raise KeyError("ts")
    return ms_to_us(push.ts)


_PUSH_START = b'{"ch":"'


_known_channels: dict[bytes, tuple[str, str]] = {}
"""the (symbol, topic) of each push channel seen: a frame's channel is looked up, not parsed"""


def _leading_topic(text: Data) -> tuple[str, str] | None:
    """(symbol, topic) of a frame that starts ``{"ch":"market.<symbol>.<topic>"`` (every push HTX
    sends), read without decoding the frame; None for anything else."""
    if not isinstance(text, bytes) or not text.startswith(_PUSH_START):
        return None
    end = text.find(b'"', 7)
    if end < 0:
        return None
    name = text[7:end]
    found = _known_channels.get(name)
    if found is None:
        parts = name.decode(errors="replace").split(".", 2)
        if b"\\" in name or len(parts) != 3 or parts[0] != "market":
            return None
        if len(_known_channels) >= 10_000:
            _known_channels.clear()
        found = _known_channels[name] = (parts[1], parts[2])
    return found
