"""Kraken spot, WS v2 (objects with ``channel``/``method``); WS v1 array frames are in kraken_v1.

Book prices and sizes in v2 are JSON numbers whose exact text matters for the CRC32
checksum, so frames are decoded with ``float_hook=str`` (every non-integer number stays
the text it was sent as). After each update each side is truncated to the subscribed
depth (Kraken sends no delete for levels that fall out of scope); the truncated levels
are published as deletes so downstream books match.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from marketpipe.exchanges.kraken import (
    CHANNELS,
    DEFAULT_DEPTH,
    DEPTHS,
    INSTRUMENTS_PATH,
    TAKER_SIDES,
    BookData,
    BookMessage,
    ChannelMessage,
    HeartbeatMessage,
    MethodResponse,
    OhlcData,
    OhlcMessage,
    StatusMessage,
    TickerData,
    TickerMessage,
    TradeData,
    TradeMessage,
    asset,
    parse_instruments,
)
from marketpipe.raw import RawRecord
from marketpipe.records import Level
from streams.book import BookSide
from streams.parsers import kraken_v1
from streams.parsers.base import (
    BookSync,
    ConnectionState,
    FeedOutput,
    FeedProcessor,
    ParseError,
    TextRows,
    apply_text_levels,
    decode_json,
    interval_name,
    kraken_checksum,
    kraken_levels,
    load_text_levels,
    opt_float,
    plain,
    rfc3339_to_us,
)

__all__ = ["KrakenConnection", "KrakenProcessor", "parse_instruments"]

T = TypeVar("T")

_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(float_hook=str)
_frames: msgspec.json.Decoder[ChannelMessage | list[msgspec.Raw]] = msgspec.json.Decoder(
    ChannelMessage | list[msgspec.Raw], float_hook=str
)
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


def _typed(value: Any, kind: type[T]) -> T:
    """A message the typed decoder refused, read again to say why: a missing field is reported as
    the KeyError the feed words as ``missing field``, anything else with msgspec's reason."""
    try:
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError as exc:
        missing = _MISSING.match(str(exc))
        if missing:
            raise KeyError(missing.group(1)) from None
        raise ParseError(f"malformed kraken message: {exc}") from None


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


class KrakenConnection(ConnectionState):
    def __init__(self, conn: str, url: str | None) -> None:
        super().__init__(conn, url)
        self.depths: dict[str, int] = {}
        """subscribed book depth per symbol, from the subscribe request or its ack"""


class KrakenProcessor(FeedProcessor):
    exchange = "kraken"
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)
    keep_text = True
    connection_type = KrakenConnection

    def fallback_instrument(self, exchange_symbol: str) -> tuple[str, str] | None:
        """``BASE/QUOTE`` (v2, and v1 with the documented XBT/XDG aliases) -> ``BASE-QUOTE``; the
        v1 and v2 names of one pair are one instrument."""
        base, slash, quote = exchange_symbol.partition("/")
        if not (slash and base.isalnum() and quote.isalnum()):
            return None
        base, quote = asset(base), asset(quote)
        return f"{base}-{quote}", f"{base}/{quote}"

    def on_sent(self, conn: ConnectionState, raw: RawRecord) -> None:
        assert isinstance(conn, KrakenConnection)
        try:
            msg = decode_json(raw.data, _decoder)
        except ParseError:
            return
        if isinstance(msg, dict):
            params = msg.get("params") or {}
            if msg.get("method") == "subscribe" and params.get("channel") == "book" and "depth" in params:
                for symbol in params.get("symbol", []):
                    conn.depths[symbol] = int(params["depth"])
            else:
                kraken_v1.learn_depth_from_request(conn, msg)

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        assert isinstance(conn, KrakenConnection)
        try:
            msg = _frames.decode(raw.data) if raw.data else None
        except msgspec.DecodeError:  # ValidationError included: read generically to say why
            msg = None
        if msg is None:
            self._untyped(conn, raw, out)
        elif isinstance(msg, list):
            kraken_v1.on_array(self, conn, msg, raw, out)
        else:
            self._channel(conn, msg, raw, out)

    def _untyped(self, conn: KrakenConnection, raw: RawRecord, out: FeedOutput) -> None:
        """Requests' answers, v1 events, and the reason a frame the typed decoder refused is bad."""
        msg = decode_json(raw.data, _decoder)
        if not isinstance(msg, dict):
            raise ParseError("kraken frame is neither an object nor an array")
        if "channel" in msg:
            kind = CHANNELS.get(msg["channel"])
            if kind is None:
                raise ParseError(f"unsupported kraken channel {msg['channel']!r}")
            self._channel(conn, _typed(msg, kind), raw, out)
        elif "method" in msg:
            self._method(conn, _typed(msg, MethodResponse))
        elif "event" in msg:
            kraken_v1.on_event(self, conn, msg)
        else:
            raise ParseError(f"unrecognised kraken frame with keys {sorted(msg)}")

    def _channel(self, conn: KrakenConnection, msg: ChannelMessage, raw: RawRecord, out: FeedOutput) -> None:
        if isinstance(msg, BookMessage):
            for item in msg.data:
                self._book(conn, msg.type, item, raw, out)
        elif isinstance(msg, TradeMessage):
            self._trades(msg.data, raw, out)
        elif isinstance(msg, TickerMessage):
            for row in msg.data:
                self._ticker(row, raw, out)
        elif isinstance(msg, OhlcMessage):
            sent = rfc3339_to_us(msg.timestamp) if msg.timestamp else None
            for candle in msg.data:
                self._ohlc(conn, candle, sent, raw, out)
        elif isinstance(msg, HeartbeatMessage):
            self.counters.heartbeats += 1
        elif isinstance(msg, StatusMessage):
            self.counters.acks += 1

    def _method(self, conn: KrakenConnection, msg: MethodResponse) -> None:
        if msg.success is False:
            raise ParseError(f"kraken {msg.method} rejected: {msg.error!r}")
        if msg.method == "pong":
            self.counters.heartbeats += 1
            return
        self.counters.acks += 1
        result = msg.result
        if isinstance(result, dict) and result.get("channel") == "book" and "depth" in result:
            conn.depths[result["symbol"]] = int(result["depth"])

    def _trades(self, data: list[TradeData], raw: RawRecord, out: FeedOutput) -> None:
        rows = [
            (
                item.symbol,
                str(item.trade_id),
                float(item.price),
                float(item.qty),
                TAKER_SIDES.get(item.side, "unknown"),
                rfc3339_to_us(item.timestamp),
            )
            for item in data
        ]
        for symbol, trade_id, price, size, side, ts in rows:
            self.trade(raw, out, symbol, trade_id, price, size, side, ts)

    def _ticker(self, item: TickerData, raw: RawRecord, out: FeedOutput) -> None:
        """No open price: ``last - change`` (24 h change in quote), in decimal so it stays the
        exchange's number; no quote volume, no trade count."""
        last, change = item.last, item.change
        self.ticker(
            raw,
            out,
            item.symbol,
            rfc3339_to_us(item.timestamp) if item.timestamp else None,
            last_price=float(last),
            bid_price=opt_float(item.bid),
            bid_size=opt_float(item.bid_qty),
            ask_price=opt_float(item.ask),
            ask_size=opt_float(item.ask_qty),
            open_24h=None if change is None else float(Decimal(_text(last)) - Decimal(_text(change))),
            high_24h=opt_float(item.high),
            low_24h=opt_float(item.low),
            volume_24h=opt_float(item.volume),
        )

    def _ohlc(
        self, conn: KrakenConnection, item: OhlcData, sent: int | None, raw: RawRecord, out: FeedOutput
    ) -> None:
        """No final flag: the base's later-window rule closes a candle. The item's own
        ``timestamp`` is deprecated (it is the interval end), so the envelope's send time is ``ts``."""
        minutes = item.interval
        if not isinstance(minutes, int):
            raise ParseError(f"kraken ohlc interval {minutes!r} is not a whole number of minutes")
        open_time = rfc3339_to_us(item.interval_begin)
        self.exchange_candle(
            conn,
            raw,
            out,
            item.symbol,
            interval_name(minutes * 60),
            open_time,
            open_time + minutes * 60_000_000,
            float(item.open),
            float(item.high),
            float(item.low),
            float(item.close),
            volume=opt_float(item.volume),
            trades=None if item.trades is None else int(item.trades),
            ts=sent,
        )

    def _book(
        self, conn: KrakenConnection, kind: str, item: BookData, raw: RawRecord, out: FeedOutput
    ) -> None:
        self.counters.book_messages += 1
        bids = kraken_levels((level.price, level.qty) for level in item.bids)
        asks = kraken_levels((level.price, level.qty) for level in item.asks)
        checksum = item.checksum
        ts = rfc3339_to_us(item.timestamp) if item.timestamp else raw.recv_ns // 1000
        symbol = item.symbol
        state = self.book_state(conn, symbol)
        if state.depth is None or kind == "snapshot":
            state.depth = conn.depths.get(symbol) or _depth_for(max(len(bids), len(asks)))
        if kind == "snapshot":
            self.apply_snapshot(state, bids, asks, checksum, ts, raw, out)
        elif kind == "update":
            self.apply_update(state, bids, asks, checksum, ts, raw, out)
        else:
            raise ParseError(f"kraken book message type {kind!r}")

    # ----------------------------------------------- shared by v2 and v1 book handling

    def apply_snapshot(
        self,
        state: BookSync,
        bids: TextRows,
        asks: TextRows,
        checksum: int | None,
        ts: int,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        book = state.book
        load_text_levels(book.bids, bids)
        load_text_levels(book.asks, asks)
        depth = state.depth or DEFAULT_DEPTH
        book.bids.truncate(depth)
        book.asks.truncate(depth)
        if checksum is not None and not self._verify(state, int(checksum), raw, out):
            return
        self.accept_snapshot(state, raw, out, ts, checksum=checksum)

    def apply_update(
        self,
        state: BookSync,
        bids: TextRows,
        asks: TextRows,
        checksum: int | None,
        ts: int,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        if not state.synced:
            self.skip_unsynced(state, raw, out)
            return
        book = state.book
        apply_text_levels(book.bids, bids)
        apply_text_levels(book.asks, asks)
        depth = state.depth or DEFAULT_DEPTH
        bid_changes = _with_truncation(plain(bids), book.bids, depth)
        ask_changes = _with_truncation(plain(asks), book.asks, depth)
        if checksum is not None and not self._verify(state, int(checksum), raw, out):
            return
        self.accept_update(state, raw, out, ts, bid_changes, ask_changes, checksum=checksum)

    def _verify(self, state: BookSync, expected: int, raw: RawRecord, out: FeedOutput) -> bool:
        actual = kraken_checksum(state.book)
        return self.checksum_result(state, actual == expected, expected, actual, raw, out)


def _with_truncation(changes: list[Level], side: BookSide, depth: int) -> list[Level]:
    dropped = side.truncate(depth)
    if not dropped:
        return changes
    return changes + [Level(price, 0.0) for price in dropped]


def _depth_for(levels: int) -> int:
    """The smallest subscribable depth holding a snapshot of ``levels`` (when no request/ack said)."""
    return next((depth for depth in DEPTHS if depth >= levels), DEPTHS[-1])
