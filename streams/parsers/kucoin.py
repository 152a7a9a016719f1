"""KuCoin classic spot: ``{"type":"message","topic","subject","data"}`` pushes plus the
``welcome``/``ack``/``pong``/``error`` control frames (``{"id":..,"type":..}``).

Trades come from ``/market/match`` (``trade.l3match``: ``side`` is the taker's side, ``time``
in nanoseconds). The book is ``/market/level2`` (``trade.l2update``) bridged by the REST
snapshot ``/api/v1/market/orderbook/level2_100`` (a ``rest`` record on the same connection,
streams/bridge.py):
updates are buffered until the snapshot arrives; those with ``sequenceEnd <= sequence`` are
dropped; the first remaining one must start at or before ``sequence + 1`` (only its changes
with a change sequence above the snapshot's are applied), and from then on every update must
start at the previous ``sequenceEnd + 1``. Size 0 deletes a level; a ``["0","0",seq]`` entry
only advances the sequence.

Tickers come from two topics: ``/market/ticker`` (``trade.ticker``: last trade and best bid/ask,
``time`` in ms) and ``/market/snapshot`` (``trade.snapshot``: the 24 h open/high/low/close and base
``vol`` / quote ``volValue``, ``datetime`` in ms). Each publishes a Ticker of its own fields joined
with the latest of the other topic on the same connection (kept per symbol), so the compacted
ticker never loses the half the last frame did not carry. Candles (``/market/candles:<sym>_<type>``)
are ``[start s, open, close, high, low, volume, turnover]`` (close before high); there is no
final flag: ``trade.candles.add`` opens a new window, which makes the previous one final (the
later-window rule of ``FeedProcessor.exchange_candle``).
"""

from __future__ import annotations

import msgspec

from marketpipe.exchanges import kucoin as wire
from marketpipe.exchanges.kucoin import (
    CANDLE_TYPES,
    CONTROL_ACKS,
    INSTRUMENTS_PATH,
    INSTRUMENTS_PATHS,
    SNAPSHOT_PATH,
    Change,
    parse_instruments,
)
from marketpipe.instruments import dashed_pair
from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side, Ticker
from marketpipe.wire import decode_struct
from streams.bridge import Delta, SnapshotBridgeProcessor
from streams.parsers.base import (
    ConnectionState,
    FeedOutput,
    ParseError,
    interval_span_us,
    levels,
    ms_to_us,
    opt_float,
    url_param,
)

__all__ = ["KucoinProcessor", "changes", "parse_instruments"]  # parse_instruments: producers/base.py

TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
BBO_FIELDS = ("last_price", "last_size", "bid_price", "bid_size", "ask_price", "ask_size")
DAY_FIELDS = ("open_24h", "high_24h", "low_24h", "volume_24h", "quote_volume_24h")
TickerFields = dict[str, float | None]


def changes(rows: list[Change], after: int | None = None) -> list[Level]:
    """Levels of the changes, without the sequence-only ``["0","0",seq]`` entries and (when
    bridging a snapshot) without those at or below the snapshot's sequence."""
    return [Level(price, size) for price, size, seq in rows if price and (after is None or seq > after)]


class KucoinProcessor(SnapshotBridgeProcessor):
    exchange = "kucoin"
    id_name = "sequence"
    max_buffered_deltas = 20_000  # level2 pushes every book event
    instruments_path = INSTRUMENTS_PATH
    instruments_paths = INSTRUMENTS_PATHS
    instruments_parser = staticmethod(parse_instruments)

    def fallback_instrument(self, exchange_symbol: str) -> tuple[str, str] | None:
        name = dashed_pair(exchange_symbol)  # spot symbols are BASE-QUOTE already
        return None if name is None else (name, exchange_symbol)

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        msg = decode_struct(wire.frames, raw.data, "kucoin frame")
        kind = msg.type
        if kind == "message":
            subject = msg.subject
            data = _data(msg)
            if subject == wire.L2_UPDATE:
                self._update(conn, raw, decode_struct(wire.l2_updates, data), out)
            elif subject == wire.MATCH:
                self._trade(raw, decode_struct(wire.matches, data), out)
            elif subject == wire.TICKER or msg.topic_or(None) == wire.ALL_TICKERS_TOPIC:
                self._bbo_ticker(conn, raw, msg, decode_struct(wire.bbo_tickers, data), out)
            elif subject == wire.SNAPSHOT:
                stats = decode_struct(wire.day_snapshots, data).data
                self._day_ticker(conn, raw, stats, out)
            elif subject in wire.CANDLES:
                self._candle(conn, raw, msg, decode_struct(wire.candles, data), out)
            else:
                raise ParseError(f"unsupported kucoin subject {subject!r} on topic {msg.topic_or(None)!r}")
        elif kind in CONTROL_ACKS:
            self.counters.acks += 1
        elif kind == "pong":
            self.counters.heartbeats += 1
        elif kind == "notice":
            self.counters.notices += 1
        elif kind == "error":
            detail = msgspec.json.decode(msg.data) if msg.data else None
            raise ParseError(f"kucoin error {msg.code}: {detail!r}")
        else:
            raise ParseError(f"unsupported kucoin frame type {kind!r}")

    def _trade(self, raw: RawRecord, data: wire.Match, out: FeedOutput) -> None:
        side = TAKER_SIDES.get(data.side, "unknown")
        ts = data.time // 1000  # nanoseconds
        self.trade(raw, out, data.symbol, str(data.tradeId), data.price, data.size, side, ts)

    # -------------------------------------------------------------- tickers, candles

    def _bbo_ticker(
        self, conn: ConnectionState, raw: RawRecord, msg: wire.Frame, data: wire.BboTicker, out: FeedOutput
    ) -> None:
        topic = msg.topic_or("")
        # /market/ticker:all names the symbol in the subject
        if topic == wire.ALL_TICKERS_TOPIC:
            if msg.subject is None:
                raise KeyError("subject")
            symbol: str = msg.subject
        else:
            symbol = topic.rpartition(":")[2]
        fields: TickerFields = {
            "last_price": opt_float(data.price),
            "last_size": opt_float(data.size),
            "bid_price": opt_float(data.bestBid),
            "bid_size": opt_float(data.bestBidSize),
            "ask_price": opt_float(data.bestAsk),
            "ask_size": opt_float(data.bestAskSize),
        }
        self._joined_ticker(conn, raw, symbol, ms_to_us(data.time), fields, DAY_FIELDS, out)

    def _day_ticker(
        self, conn: ConnectionState, raw: RawRecord, data: wire.DayStats, out: FeedOutput
    ) -> None:
        last = data.close if data.lastTradedPrice is msgspec.UNSET else data.lastTradedPrice
        fields: TickerFields = {
            "last_price": opt_float(last),
            "open_24h": opt_float(data.open),
            "high_24h": opt_float(data.high),
            "low_24h": opt_float(data.low),
            "volume_24h": opt_float(data.vol),
            "quote_volume_24h": opt_float(data.volValue),
        }
        self._joined_ticker(conn, raw, data.symbol, ms_to_us(data.datetime), fields, BBO_FIELDS, out)

    def _joined_ticker(
        self,
        conn: ConnectionState,
        raw: RawRecord,
        symbol: str,
        ts: int,
        fields: TickerFields,
        kept: tuple[str, ...],
        out: FeedOutput,
    ) -> None:
        """This frame's fields plus the ``kept`` ones of the latest ticker of the symbol."""
        # exchange symbol -> the latest ticker published from this connection (either topic); set
        # on first use, so connections restored from an older checkpoint get one too
        joined: dict[str, Ticker] = conn.__dict__.setdefault("tickers", {})
        previous = joined.get(symbol)
        if previous is not None:
            own_last = fields.get("last_price")
            fields.update((name, getattr(previous, name)) for name in kept)
            if own_last is not None and "last_size" in kept and own_last != previous.last_price:
                # the snapshot saw a newer trade than the ticker topic: its size is unknown
                fields.update(last_price=own_last, last_size=None)
        get = fields.get
        if self.ticker(
            raw,
            out,
            symbol,
            ts,
            last_price=get("last_price"),
            last_size=get("last_size"),
            bid_price=get("bid_price"),
            bid_size=get("bid_size"),
            ask_price=get("ask_price"),
            ask_size=get("ask_size"),
            open_24h=get("open_24h"),
            high_24h=get("high_24h"),
            low_24h=get("low_24h"),
            volume_24h=get("volume_24h"),
            quote_volume_24h=get("quote_volume_24h"),
        ):
            joined[symbol] = out.tickers[-1]

    def _candle(
        self, conn: ConnectionState, raw: RawRecord, msg: wire.Frame, data: wire.Candle, out: FeedOutput
    ) -> None:
        topic = msg.topic_or("")
        kind = topic.rpartition("_")[2]
        interval = CANDLE_TYPES.get(kind)
        if interval is None:
            raise ParseError(f"unsupported kucoin candle type {kind!r} in topic {topic!r}")
        row = data.candles
        if len(row) != 7:
            raise ParseError(
                f"kucoin candle {str(row)[:100]} is not [start, open, close, high, low, vol, turnover]"
            )
        start, open_, close, high, low, volume, turnover = row
        open_time = int(start) * 1_000_000
        self.exchange_candle(
            conn,
            raw,
            out,
            data.symbol,
            interval,
            open_time,
            interval_span_us(interval, open_time),
            open_,
            high,
            low,
            close,
            volume=volume,
            quote_volume=turnover,
            ts=data.time // 1000,  # nanoseconds
        )

    # ---------------------------------------------------------------------------- book

    def _update(self, conn: ConnectionState, raw: RawRecord, data: wire.L2Update, out: FeedOutput) -> None:
        bids, asks = data.changes.bids, data.changes.asks
        # the 2021 frames carry no time; current ones have it in milliseconds
        stamp = data.time
        ts = ms_to_us(stamp) if stamp is not None else raw.recv_ns // 1000
        delta = Delta(
            data.sequenceStart, data.sequenceEnd, changes(bids), changes(asks), ts, raw, (bids, asks)
        )
        self.on_delta(conn, data.symbol, delta, out)

    def trim_straddling(self, delta: Delta, snapshot_id: int) -> Delta:
        """Only the changes numbered after the snapshot's sequence apply (KuCoin's documented rule)."""
        bids, asks = delta.changes
        return delta._replace(bids=changes(bids, snapshot_id), asks=changes(asks, snapshot_id))

    def on_rest(self, conn: ConnectionState, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if path.endswith(SNAPSHOT_PATH):
            self._snapshot(conn, raw, out)
        else:
            super().on_rest(conn, raw, path, out)

    def _snapshot(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        symbol = url_param(raw, "symbol", "kucoin level2 snapshot")
        body = decode_struct(wire.snapshots, raw.payload, "kucoin level2 snapshot")
        if body.code != wire.OK:
            raise ParseError(f"kucoin level2 snapshot error {body.code}: {body.msg!r}")
        data = body.data
        if data is None or data.sequence is None:
            raise ParseError(f"kucoin level2 snapshot has no sequence: {raw.text()[:200]}")
        stamp = data.time
        ts = ms_to_us(stamp) if stamp is not None else raw.recv_ns // 1000
        bids, asks = levels(_required(data.bids, "bids")), levels(_required(data.asks, "asks"))
        self.bridge(conn, symbol, raw, data.sequence, bids, asks, out, ts)


def _data(msg: wire.Frame) -> msgspec.Raw:
    if not msg.data:
        raise KeyError("data")
    return msg.data


def _required(rows: list[tuple[float, float]] | None, name: str) -> list[tuple[float, float]]:
    if rows is None:
        raise KeyError(name)
    return rows
