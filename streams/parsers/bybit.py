"""Bybit v5 public (spot/linear): ``{"topic","ts","type","data"}`` pushes plus op replies.

Orderbook: a ``snapshot`` (any time) resets the book; each ``delta`` must have
``u == previous u + 1``; ``u == 1`` means the service restarted and the message replaces the
book. ``publicTrade`` ``S`` is the taker side.
"""

from __future__ import annotations

from typing import Any

from marketpipe.raw import RawRecord
from marketpipe.records import Side
from streams.instruments import Instruments, read_entries, spot_name
from streams.parsers.base import (
    Connection,
    FeedOutput,
    FeedProcessor,
    ParseError,
    apply_levels,
    json_object,
    levels,
    ms_to_us,
    opt_float,
)

INSTRUMENTS_PATH = "/v5/market/instruments-info"
TAKER_SIDES: dict[str, Side] = {"Buy": "buy", "Sell": "sell"}
KLINE_INTERVALS = {
    **{str(minutes): f"{minutes}m" for minutes in (1, 3, 5, 15, 30)},
    **{str(hours * 60): f"{hours}h" for hours in (1, 2, 4, 6, 12)},
    "D": "1d",
    "W": "1w",
    "M": "1M",
}
"""Bybit kline interval -> marketpipe's spelling"""


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """instruments-info -> {"BTCUSDT": "BTC-USDT", ...} from baseCoin/quoteCoin (an entry without
    them is skipped). The spot and linear ``BTCUSDT`` are different instruments (ids
    ``spot:BTCUSDT``, ``linear:BTCUSDT``): a processor seeing both never merges them."""
    info = json_object(body, "bybit instruments-info response")
    if info.get("retCode") != 0:
        raise ParseError(f"bybit instruments-info error {info.get('retCode')}: {info.get('retMsg')!r}")
    result = info.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("list"), list):
        raise ParseError(f"bybit instruments-info response has no result.list: {str(info)[:200]}")
    category = result.get("category") or "spot"

    def entry(row: dict[str, Any], found: Instruments) -> None:
        found.add(row["symbol"], spot_name(row["baseCoin"], row["quoteCoin"]), f"{category}:{row['symbol']}")

    return read_entries(result["list"], entry, "bybit instruments-info")


class BybitProcessor(FeedProcessor):
    exchange = "bybit"
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        msg = json_object(raw.data, "bybit frame")
        topic = msg.get("topic")
        if topic is None:
            self._op_reply(msg)
        elif topic.startswith("orderbook."):
            self._book(conn, msg, raw, out)
        elif topic.startswith("publicTrade."):
            self._trades(msg["data"], raw, out)
        elif topic.startswith("tickers."):
            self._ticker(conn, msg, raw, out)
        elif topic.startswith("kline."):
            self._klines(conn, topic, msg, raw, out)
        else:
            raise ParseError(f"unsupported bybit topic {topic!r}")

    def _op_reply(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if msg.get("success") is False:
            raise ParseError(f"bybit {op} rejected: {msg.get('ret_msg')!r}")
        if op in ("ping", "pong"):
            self.counters.heartbeats += 1
        elif op in ("subscribe", "unsubscribe"):
            self.counters.acks += 1
        else:
            raise ParseError(f"unrecognised bybit frame with keys {sorted(msg)}")

    def _trades(self, data: list[dict[str, Any]], raw: RawRecord, out: FeedOutput) -> None:
        rows = [
            (
                item["s"],
                str(item["i"]),
                float(item["p"]),
                float(item["v"]),
                TAKER_SIDES.get(item["S"], "unknown"),
                ms_to_us(item["T"]),
            )
            for item in data
        ]
        for symbol, trade_id, price, size, side, ts in rows:
            self.trade(raw, out, symbol, trade_id, price, size, side, ts)

    def _ticker(self, conn: Connection, msg: dict[str, Any], raw: RawRecord, out: FeedOutput) -> None:
        """Spot tickers are whole snapshots without bid/ask; linear ones send a snapshot, then
        deltas of the changed fields, merged here into the connection's latest snapshot."""
        data = msg["data"]
        if not isinstance(data, dict):
            raise ParseError("bybit tickers data is not an object")
        latest: dict[str, dict[str, Any]] = conn.__dict__.setdefault("tickers", {})
        symbol = data["symbol"]
        if msg.get("type") == "delta":
            if symbol not in latest:
                raise ParseError(f"bybit tickers delta for {symbol} before its snapshot")
            data = latest[symbol] = {**latest[symbol], **data}
        elif "bid1Price" in data:  # only linear tickers are deltas later: only they are kept
            latest[symbol] = data
        self.ticker(
            raw,
            out,
            symbol,
            ms_to_us(msg["ts"]),
            last_price=float(data["lastPrice"]),
            bid_price=opt_float(data.get("bid1Price")),
            bid_size=opt_float(data.get("bid1Size")),
            ask_price=opt_float(data.get("ask1Price")),
            ask_size=opt_float(data.get("ask1Size")),
            open_24h=opt_float(data.get("prevPrice24h")),
            high_24h=opt_float(data.get("highPrice24h")),
            low_24h=opt_float(data.get("lowPrice24h")),
            volume_24h=opt_float(data.get("volume24h")),
            quote_volume_24h=opt_float(data.get("turnover24h")),
        )

    def _klines(
        self, conn: Connection, topic: str, msg: dict[str, Any], raw: RawRecord, out: FeedOutput
    ) -> None:
        """``kline.{interval}.{symbol}``; one frame may carry several candles (a closed one and
        the next open one); ``confirm`` is the final flag."""
        _, interval_code, symbol = topic.split(".", 2)
        interval = KLINE_INTERVALS.get(interval_code)
        if interval is None:
            raise ParseError(f"unsupported bybit kline interval {interval_code!r}")
        ts = ms_to_us(msg["ts"]) if "ts" in msg else None
        for item in msg["data"]:
            confirm = item["confirm"]
            if not isinstance(confirm, bool):
                raise ParseError(f"bybit kline confirm is {confirm!r}, not a boolean")
            self.exchange_candle(
                conn,
                raw,
                out,
                symbol,
                interval,
                ms_to_us(item["start"]),
                ms_to_us(item["end"]) + 1000,  # end is the window's last millisecond
                float(item["open"]),
                float(item["high"]),
                float(item["low"]),
                float(item["close"]),
                volume=float(item["volume"]),
                quote_volume=opt_float(item.get("turnover")),
                closed=confirm,
                ts=ts,
            )

    def _book(self, conn: Connection, msg: dict[str, Any], raw: RawRecord, out: FeedOutput) -> None:
        self.counters.book_messages += 1
        data = msg["data"]
        update_id = int(data["u"])
        bids, asks = levels(data["b"]), levels(data["a"])
        ts = ms_to_us(msg.get("cts") or msg["ts"])
        state = self.book_state(conn, data["s"])
        book = state.book
        kind = msg["type"]
        if kind == "snapshot" or (kind == "delta" and update_id == 1):
            book.bids.load((level.price, level.size) for level in bids)
            book.asks.load((level.price, level.size) for level in asks)
            self.accept_snapshot(state, raw, out, ts, last_id=update_id)
        elif kind == "delta":
            if not state.synced:
                self.skip_unsynced(state, raw, out)
                return
            if state.last_id is not None and update_id != state.last_id + 1:
                self.unsync(state, "gap", f"delta u={update_id} after u={state.last_id}", raw, out)
                return
            apply_levels(book.bids, bids)
            apply_levels(book.asks, asks)
            self.accept_update(state, raw, out, ts, bids, asks, first_id=update_id, last_id=update_id)
        else:
            raise ParseError(f"bybit orderbook message type {kind!r}")
