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

from typing import Any

from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side, Ticker
from streams.bridge import Delta, SnapshotBridgeProcessor
from streams.instruments import Instruments, dashed_pair, read_entries, spot_name
from streams.parsers.base import (
    Connection,
    FeedOutput,
    ParseError,
    interval_span_us,
    json_object,
    levels,
    ms_to_us,
    opt_float,
    url_param,
)

INSTRUMENTS_PATH = "/api/v2/symbols"
INSTRUMENTS_PATHS = (INSTRUMENTS_PATH, "/api/v1/symbols")
SNAPSHOT_PATH = "/api/v1/market/orderbook/level2_100"
OK = "200000"
TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
CONTROL_ACKS = frozenset({"welcome", "ack"})
CANDLE_TYPES = {
    "1min": "1m", "3min": "3m", "5min": "5m", "15min": "15m", "30min": "30m", "1hour": "1h",
    "2hour": "2h", "4hour": "4h", "6hour": "6h", "8hour": "8h", "12hour": "12h", "1day": "1d",
    "1week": "1w", "1month": "1M",
}  # fmt: skip
"""KuCoin candle types -> marketpipe's interval spelling"""
BBO_FIELDS = ("last_price", "last_size", "bid_price", "bid_size", "ask_price", "ask_size")
DAY_FIELDS = ("open_24h", "high_24h", "low_24h", "volume_24h", "quote_volume_24h")
TickerFields = dict[str, float | None]


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """``/api/v2/symbols`` or ``/api/v1/symbols`` (a list), ``/api/v2/symbols/{symbol}`` (one
    object) -> {"BTC-USDT": "BTC-USDT", ...} from baseCurrency/quoteCurrency (both versions carry
    them; an entry without them is skipped)."""
    info = json_object(body, "kucoin symbols response")
    if info.get("code") != OK:
        raise ParseError(f"kucoin symbols error {info.get('code')}: {info.get('msg')!r}")
    data = info["data"]
    rows = [data] if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ParseError(f"kucoin symbols response data is {type(data).__name__}, not a list or object")
    return read_entries(rows, _symbol, "kucoin symbols")


def _symbol(row: dict[str, Any], found: Instruments) -> None:
    found.add(row["symbol"], spot_name(row["baseCurrency"], row["quoteCurrency"]))


def changes(rows: list[list[Any]], after: int | None = None) -> list[Level]:
    """Levels of the changes, without the sequence-only ``["0","0",seq]`` entries and (when
    bridging a snapshot) without those at or below the snapshot's sequence."""
    found = []
    for row in rows:
        price = float(row[0])
        if price and (after is None or int(row[2]) > after):
            found.append(Level(price, float(row[1])))
    return found


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

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        msg = json_object(raw.data, "kucoin frame")
        kind = msg.get("type")
        if kind == "message":
            subject = msg.get("subject")
            data = msg["data"]
            if subject == "trade.l2update":
                self._update(conn, raw, data, out)
            elif subject == "trade.l3match":
                self._trade(raw, data, out)
            elif subject == "trade.ticker" or msg.get("topic") == "/market/ticker:all":
                self._bbo_ticker(conn, raw, msg, out)
            elif subject == "trade.snapshot":
                self._day_ticker(conn, raw, data["data"], out)
            elif subject in ("trade.candles.add", "trade.candles.update"):
                self._candle(conn, raw, msg, out)
            else:
                raise ParseError(f"unsupported kucoin subject {subject!r} on topic {msg.get('topic')!r}")
        elif kind in CONTROL_ACKS:
            self.counters.acks += 1
        elif kind == "pong":
            self.counters.heartbeats += 1
        elif kind == "notice":
            self.counters.notices += 1
        elif kind == "error":
            raise ParseError(f"kucoin error {msg.get('code')}: {msg.get('data')!r}")
        else:
            raise ParseError(f"unsupported kucoin frame type {kind!r}")

    def _trade(self, raw: RawRecord, data: dict[str, Any], out: FeedOutput) -> None:
        side = TAKER_SIDES.get(data["side"], "unknown")
        price, size = float(data["price"]), float(data["size"])
        ts = int(data["time"]) // 1000  # nanoseconds
        self.trade(raw, out, data["symbol"], str(data["tradeId"]), price, size, side, ts)

    # -------------------------------------------------------------- tickers, candles

    def _bbo_ticker(self, conn: Connection, raw: RawRecord, msg: dict[str, Any], out: FeedOutput) -> None:
        data = msg["data"]
        topic = msg.get("topic", "")
        # /market/ticker:all names the symbol in the subject
        symbol = msg["subject"] if topic == "/market/ticker:all" else topic.rpartition(":")[2]
        fields: TickerFields = {
            "last_price": opt_float(data.get("price")),
            "last_size": opt_float(data.get("size")),
            "bid_price": opt_float(data.get("bestBid")),
            "bid_size": opt_float(data.get("bestBidSize")),
            "ask_price": opt_float(data.get("bestAsk")),
            "ask_size": opt_float(data.get("bestAskSize")),
        }
        self._joined_ticker(conn, raw, symbol, ms_to_us(data["time"]), fields, DAY_FIELDS, out)

    def _day_ticker(self, conn: Connection, raw: RawRecord, data: dict[str, Any], out: FeedOutput) -> None:
        fields: TickerFields = {
            "last_price": opt_float(data.get("lastTradedPrice", data.get("close"))),
            "open_24h": opt_float(data.get("open")),
            "high_24h": opt_float(data.get("high")),
            "low_24h": opt_float(data.get("low")),
            "volume_24h": opt_float(data.get("vol")),
            "quote_volume_24h": opt_float(data.get("volValue")),
        }
        self._joined_ticker(conn, raw, data["symbol"], ms_to_us(data["datetime"]), fields, BBO_FIELDS, out)

    def _joined_ticker(
        self,
        conn: Connection,
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

    def _candle(self, conn: Connection, raw: RawRecord, msg: dict[str, Any], out: FeedOutput) -> None:
        topic = msg.get("topic", "")
        kind = topic.rpartition("_")[2]
        interval = CANDLE_TYPES.get(kind)
        if interval is None:
            raise ParseError(f"unsupported kucoin candle type {kind!r} in topic {topic!r}")
        data = msg["data"]
        row = data["candles"]
        if not isinstance(row, list) or len(row) != 7:
            raise ParseError(
                f"kucoin candle {str(row)[:100]} is not [start, open, close, high, low, vol, turnover]"
            )
        start, open_, close, high, low, volume, turnover = row
        open_time = int(start) * 1_000_000
        self.exchange_candle(
            conn,
            raw,
            out,
            data["symbol"],
            interval,
            open_time,
            interval_span_us(interval, open_time),
            float(open_),
            float(high),
            float(low),
            float(close),
            volume=float(volume),
            quote_volume=float(turnover),
            ts=int(data["time"]) // 1000,  # nanoseconds
        )

    # ---------------------------------------------------------------------------- book

    def _update(self, conn: Connection, raw: RawRecord, data: dict[str, Any], out: FeedOutput) -> None:
        rows = data["changes"]
        bids, asks = rows["bids"], rows["asks"]
        # the 2021 frames carry no time; current ones have it in milliseconds
        stamp = data.get("time")
        ts = ms_to_us(stamp) if stamp is not None else raw.recv_ns // 1000
        first, last = int(data["sequenceStart"]), int(data["sequenceEnd"])
        delta = Delta(first, last, changes(bids), changes(asks), ts, raw, (bids, asks))
        self.on_delta(conn, data["symbol"], delta, out)

    def trim_straddling(self, delta: Delta, snapshot_id: int) -> Delta:
        """Only the changes numbered after the snapshot's sequence apply (KuCoin's documented rule)."""
        bids, asks = delta.changes
        return delta._replace(bids=changes(bids, snapshot_id), asks=changes(asks, snapshot_id))

    def on_rest(self, conn: Connection, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if path.endswith(SNAPSHOT_PATH):
            self._snapshot(conn, raw, out)
        else:
            super().on_rest(conn, raw, path, out)

    def _snapshot(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        symbol = url_param(raw, "symbol", "kucoin level2 snapshot")
        body = json_object(raw.payload, "kucoin level2 snapshot")
        if body.get("code") != OK:
            raise ParseError(f"kucoin level2 snapshot error {body.get('code')}: {body.get('msg')!r}")
        data = body["data"]
        if not isinstance(data, dict) or data.get("sequence") is None:
            raise ParseError(f"kucoin level2 snapshot has no sequence: {raw.text()[:200]}")
        stamp = data.get("time")
        ts = ms_to_us(stamp) if stamp is not None else raw.recv_ns // 1000
        bids, asks = levels(data["bids"]), levels(data["asks"])
        self.bridge(conn, symbol, raw, int(data["sequence"]), bids, asks, out, ts)
