"""Coinbase Advanced Trade: ``{"channel","timestamp","sequence_num","events":[...]}``.

``sequence_num`` is one counter per connection across every channel, so a gap anywhere
marks all of that connection's books unsynced. ``level2`` arrives as ``l2_data``: a
snapshot event replaces the product's book, updates carry absolute ``new_quantity``.
Public ``market_trades`` report the maker's side, so the taker side is the opposite. The
``snapshot`` event of ``market_trades`` lists recent trades again at every subscribe: the feed's
trade-id deduplication publishes only those not seen yet (oldest first).
"""

from __future__ import annotations

import msgspec

from marketpipe.exchanges.coinbase import (
    CANDLE_US,
    INSTRUMENTS_PATH,
    INSTRUMENTS_PATHS,
    TAKER_SIDE,
    ErrorMessage,
    Event,
    Message,
    parse_instruments,
)
from marketpipe.instruments import dashed_pair
from marketpipe.raw import RawRecord
from marketpipe.records import Level
from streams.parsers.base import (
    ConnectionState,
    FeedOutput,
    FeedProcessor,
    ParseError,
    apply_levels,
    opt_float,
    rfc3339_to_us,
)

__all__ = ["CoinbaseConnection", "CoinbaseProcessor", "parse_instruments"]

_decoder = msgspec.json.Decoder(Message)
_errors = msgspec.json.Decoder(ErrorMessage)


class CoinbaseConnection(ConnectionState):
    def __init__(self, conn: str, url: str | None) -> None:
        super().__init__(conn, url)
        self.last_seq: int | None = None


class CoinbaseProcessor(FeedProcessor):
    exchange = "coinbase"
    instruments_path = INSTRUMENTS_PATH
    instruments_paths = INSTRUMENTS_PATHS
    instruments_parser = staticmethod(parse_instruments)
    connection_type = CoinbaseConnection

    def fallback_instrument(self, exchange_symbol: str) -> tuple[str, str] | None:
        name = dashed_pair(exchange_symbol)  # spot product ids are BASE-QUOTE already
        return None if name is None else (name, exchange_symbol)

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        assert isinstance(conn, CoinbaseConnection)
        msg = self._decode(raw)
        self._check_sequence(conn, msg.sequence_num, raw, out)
        channel = msg.channel
        if channel == "l2_data":
            for event in msg.events:
                self._book_event(conn, raw, msg, event, out)
        elif channel == "market_trades":
            self._trades(raw, msg, out)
        elif channel in ("ticker", "ticker_batch"):
            self._tickers(raw, msg, out)
        elif channel == "candles":
            self._candles(conn, raw, msg, out)
        elif channel == "heartbeats":
            self.counters.heartbeats += 1
        elif channel == "subscriptions":
            self.counters.acks += 1
        else:
            raise ParseError(f"unsupported coinbase channel {channel!r}")

    def _decode(self, raw: RawRecord) -> Message:
        if not raw.data:
            raise ParseError("empty frame")
        try:
            return _decoder.decode(raw.data)
        except msgspec.ValidationError as exc:
            error = _error(raw.data)
            if error is not None:
                raise ParseError(f"coinbase error: {error.message!r} {error.reason}".strip()) from None
            raise ParseError(f"unrecognised coinbase frame: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ParseError(f"invalid JSON: {exc}") from None

    def _check_sequence(
        self, conn: CoinbaseConnection, seq: int | None, raw: RawRecord, out: FeedOutput
    ) -> None:
        if seq is None:
            return
        last = conn.last_seq
        conn.last_seq = seq
        if last is not None and seq != last + 1:
            self.connection_gap(conn, f"sequence_num {seq} after {last}", raw, out)

    def _trades(self, raw: RawRecord, msg: Message, out: FeedOutput) -> None:
        rows = []
        for event in msg.events:
            for trade in event.trades:
                side = TAKER_SIDE.get(trade.side, "unknown")
                rows.append((rfc3339_to_us(trade.time), trade, side))
        # frames list the newest first (snapshots and updates); reversed, a stable sort by time
        # keeps trades of one timestamp in the order they executed (the last sets a candle's close)
        rows.reverse()
        rows.sort(key=lambda row: row[0])
        for ts, trade, side in rows:
            self.trade(
                raw, out, trade.product_id, trade.trade_id, float(trade.price), float(trade.size), side, ts
            )

    def _tickers(self, raw: RawRecord, msg: Message, out: FeedOutput) -> None:
        ts = rfc3339_to_us(msg.timestamp) if msg.timestamp else None
        for event in msg.events:
            for row in event.tickers:
                self.ticker(
                    raw,
                    out,
                    row.product_id,
                    ts,
                    last_price=float(row.price),
                    bid_price=opt_float(row.best_bid),
                    bid_size=opt_float(row.best_bid_quantity),
                    ask_price=opt_float(row.best_ask),
                    ask_size=opt_float(row.best_ask_quantity),
                    high_24h=opt_float(row.high_24_h),
                    low_24h=opt_float(row.low_24_h),
                    volume_24h=opt_float(row.volume_24_h),
                )

    def _candles(self, conn: ConnectionState, raw: RawRecord, msg: Message, out: FeedOutput) -> None:
        """Five-minute candles (the only websocket granularity), no final flag: the base's
        later-window rule closes them. A snapshot lists recent ones oldest first."""
        ts = rfc3339_to_us(msg.timestamp) if msg.timestamp else None
        for event in msg.events:
            for row in sorted(event.candles, key=lambda candle: int(candle.start)):
                open_time = int(row.start) * 1_000_000
                self.exchange_candle(
                    conn,
                    raw,
                    out,
                    row.product_id,
                    "5m",
                    open_time,
                    open_time + CANDLE_US,
                    float(row.open),
                    float(row.high),
                    float(row.low),
                    float(row.close),
                    volume=float(row.volume),
                    ts=ts,
                )

    def _book_event(
        self, conn: ConnectionState, raw: RawRecord, msg: Message, event: Event, out: FeedOutput
    ) -> None:
        self.counters.book_messages += 1
        bids: list[Level] = []
        asks: list[Level] = []
        for update in event.updates:
            level = Level(float(update.price_level), float(update.new_quantity))
            if update.side == "bid":
                bids.append(level)
            elif update.side == "offer":
                asks.append(level)
            else:
                raise ParseError(f"coinbase l2_data level with side {update.side!r}")
        stamp = (
            event.updates[0].event_time if event.updates and event.updates[0].event_time else msg.timestamp
        )
        ts = rfc3339_to_us(stamp) if stamp else raw.recv_ns // 1000
        state = self.book_state(conn, event.product_id)
        book = state.book
        if event.type == "snapshot":
            book.bids.load((level.price, level.size) for level in bids)
            book.asks.load((level.price, level.size) for level in asks)
            self.accept_snapshot(state, raw, out, ts, last_id=msg.sequence_num)
        elif event.type == "update":
            if not state.synced:
                self.skip_unsynced(state, raw, out)
                return
            apply_levels(book.bids, bids)
            apply_levels(book.asks, asks)
            self.accept_update(state, raw, out, ts, bids, asks, last_id=msg.sequence_num)
        else:
            raise ParseError(f"coinbase l2_data event type {event.type!r}")


def _error(data: bytes | str) -> ErrorMessage | None:
    """The frame as an error message, None when it is not one."""
    try:
        found = _errors.decode(data)
    except msgspec.DecodeError:
        return None
    return found if found.type == "error" else None
