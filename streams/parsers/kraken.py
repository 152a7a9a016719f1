"""Kraken spot, WS v2 (objects with ``channel``/``method``); WS v1 array frames are in kraken_v1.

Book prices and sizes in v2 are JSON numbers whose exact text matters for the CRC32
checksum, so frames are decoded with ``float_hook=str`` (every non-integer number stays
the text it was sent as). After each update each side is truncated to the subscribed
depth (Kraken sends no delete for levels that fall out of scope); the truncated levels
are published as deletes so downstream books match.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side
from streams.book import BookSide
from streams.instruments import Instruments, read_entries, spot_name
from streams.parsers import kraken_v1
from streams.parsers.base import (
    BookState,
    Connection,
    FeedOutput,
    FeedProcessor,
    ParseError,
    TextRows,
    apply_text_levels,
    decode_json,
    interval_name,
    json_object,
    kraken_checksum,
    kraken_levels,
    load_text_levels,
    opt_float,
    plain,
    rfc3339_to_us,
)

INSTRUMENTS_PATH = "/0/public/AssetPairs"
DEFAULT_DEPTH = 10
DEPTHS = (10, 25, 100, 500, 1000)
ASSET_ALIASES = {"XBT": "BTC", "XDG": "DOGE"}
TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}

_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(float_hook=str)


def _asset(code: str) -> str:
    return ASSET_ALIASES.get(code, code)


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """AssetPairs -> v1 ``wsname`` and v2 names -> BASE-QUOTE, e.g. "XBT/USD" and "BTC/USD" -> "BTC-USD"
    (both names of the pair ``XXBTZUSD``). Pairs without a ``wsname`` (the dark-pool ``.d`` pairs,
    not on the websocket) and unreadable entries are skipped."""
    info = json_object(body, "kraken AssetPairs response")
    if info.get("error"):
        raise ParseError(f"kraken AssetPairs error: {info['error']}")
    result = info.get("result")
    if not isinstance(result, dict):
        raise ParseError(f"kraken AssetPairs response has no 'result' object: {str(info)[:200]}")
    found = Instruments()
    for key, pair in result.items():
        read_entries([(key, pair)], _pair, "kraken AssetPairs", found=found)
    return found


def _pair(entry: tuple[str, Any], found: Instruments) -> None:
    key, pair = entry
    wsname = pair.get("wsname")
    if not wsname:
        raise ParseError(f"{key}: no wsname (not traded on the websocket, e.g. a dark-pool '.d' pair)")
    base, slash, quote = wsname.partition("/")
    if not slash:
        raise ParseError(f"{key}: wsname {wsname!r} is not BASE/QUOTE")
    name = spot_name(_asset(base), _asset(quote))
    found.add(wsname, name, key)
    found.add(f"{_asset(base)}/{_asset(quote)}", name, key)


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


class KrakenConnection(Connection):
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
        base, quote = _asset(base), _asset(quote)
        return f"{base}-{quote}", f"{base}/{quote}"

    def on_sent(self, conn: Connection, raw: RawRecord) -> None:
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

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        assert isinstance(conn, KrakenConnection)
        msg = decode_json(raw.data, _decoder)
        if isinstance(msg, list):
            kraken_v1.on_array(self, conn, msg, raw, out)
        elif not isinstance(msg, dict):
            raise ParseError("kraken frame is neither an object nor an array")
        elif "channel" in msg:
            self._channel(conn, msg, raw, out)
        elif "method" in msg:
            self._method(conn, msg)
        elif "event" in msg:
            kraken_v1.on_event(self, conn, msg)
        else:
            raise ParseError(f"unrecognised kraken frame with keys {sorted(msg)}")

    def _channel(self, conn: KrakenConnection, msg: dict[str, Any], raw: RawRecord, out: FeedOutput) -> None:
        channel = msg["channel"]
        if channel == "book":
            for item in msg["data"]:
                self._book(conn, msg["type"], item, raw, out)
        elif channel == "trade":
            self._trades(msg["data"], raw, out)
        elif channel == "ticker":
            for item in msg["data"]:
                self._ticker(item, raw, out)
        elif channel == "ohlc":
            stamp = msg.get("timestamp")
            sent = rfc3339_to_us(stamp) if stamp else None
            for item in msg["data"]:
                self._ohlc(conn, item, sent, raw, out)
        elif channel == "heartbeat":
            self.counters.heartbeats += 1
        elif channel == "status":
            self.counters.acks += 1
        else:
            raise ParseError(f"unsupported kraken channel {channel!r}")

    def _method(self, conn: KrakenConnection, msg: dict[str, Any]) -> None:
        if msg.get("success") is False:
            raise ParseError(f"kraken {msg['method']} rejected: {msg.get('error')!r}")
        if msg["method"] == "pong":
            self.counters.heartbeats += 1
            return
        self.counters.acks += 1
        result = msg.get("result")
        if isinstance(result, dict) and result.get("channel") == "book" and "depth" in result:
            conn.depths[result["symbol"]] = int(result["depth"])

    def _trades(self, data: list[dict[str, Any]], raw: RawRecord, out: FeedOutput) -> None:
        rows = [
            (
                item["symbol"],
                str(item["trade_id"]),
                float(item["price"]),
                float(item["qty"]),
                TAKER_SIDES.get(item["side"], "unknown"),
                rfc3339_to_us(item["timestamp"]),
            )
            for item in data
        ]
        for symbol, trade_id, price, size, side, ts in rows:
            self.trade(raw, out, symbol, trade_id, price, size, side, ts)

    def _ticker(self, item: dict[str, Any], raw: RawRecord, out: FeedOutput) -> None:
        """No open price: ``last - change`` (24 h change in quote), in decimal so it stays the
        exchange's number; no quote volume, no trade count."""
        last = item["last"]
        change = item.get("change")
        stamp = item.get("timestamp")
        self.ticker(
            raw,
            out,
            item["symbol"],
            rfc3339_to_us(stamp) if stamp else None,
            last_price=float(last),
            bid_price=opt_float(item.get("bid")),
            bid_size=opt_float(item.get("bid_qty")),
            ask_price=opt_float(item.get("ask")),
            ask_size=opt_float(item.get("ask_qty")),
            open_24h=None if change is None else float(Decimal(_text(last)) - Decimal(_text(change))),
            high_24h=opt_float(item.get("high")),
            low_24h=opt_float(item.get("low")),
            volume_24h=opt_float(item.get("volume")),
        )

    def _ohlc(
        self, conn: KrakenConnection, item: dict[str, Any], sent: int | None, raw: RawRecord, out: FeedOutput
    ) -> None:
        """No final flag: the base's later-window rule closes a candle. The item's own
        ``timestamp`` is deprecated (it is the interval end), so the envelope's send time is ``ts``."""
        minutes = item["interval"]
        if not isinstance(minutes, int):
            raise ParseError(f"kraken ohlc interval {minutes!r} is not a whole number of minutes")
        open_time = rfc3339_to_us(item["interval_begin"])
        trades = item.get("trades")
        self.exchange_candle(
            conn,
            raw,
            out,
            item["symbol"],
            interval_name(minutes * 60),
            open_time,
            open_time + minutes * 60_000_000,
            float(item["open"]),
            float(item["high"]),
            float(item["low"]),
            float(item["close"]),
            volume=opt_float(item.get("volume")),
            trades=None if trades is None else int(trades),
            ts=sent,
        )

    def _book(
        self, conn: KrakenConnection, kind: str, item: dict[str, Any], raw: RawRecord, out: FeedOutput
    ) -> None:
        self.counters.book_messages += 1
        bids = kraken_levels((level["price"], level["qty"]) for level in item["bids"])
        asks = kraken_levels((level["price"], level["qty"]) for level in item["asks"])
        checksum = item.get("checksum")
        stamp = item.get("timestamp")
        ts = rfc3339_to_us(stamp) if stamp else raw.recv_ns // 1000
        symbol = item["symbol"]
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
        state: BookState,
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
        state: BookState,
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

    def _verify(self, state: BookState, expected: int, raw: RawRecord, out: FeedOutput) -> bool:
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
