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
)

INSTRUMENTS_PATH = "/v5/market/instruments-info"
TAKER_SIDES: dict[str, Side] = {"Buy": "buy", "Sell": "sell"}


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
