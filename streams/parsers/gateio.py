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

from marketpipe.raw import RawRecord
from marketpipe.records import Side
from streams.bridge import Delta, SnapshotBridgeProcessor
from streams.instruments import Instruments, dashed_pair, read_entries, spot_name
from streams.parsers.base import (
    Connection,
    FeedOutput,
    ParseError,
    decode_json,
    interval_span_us,
    json_object,
    levels,
    ms_to_us,
    opt_float,
    url_param,
)

INSTRUMENTS_PATH = "/api/v4/spot/currency_pairs"
ORDER_BOOK_PATH = "/api/v4/spot/order_book"
TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
ACK_EVENTS = frozenset({"subscribe", "unsubscribe"})
INTERVALS = {
    "10s": "10s", "1m": "1m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "1h", "4h": "4h",
    "8h": "8h", "1d": "1d", "7d": "7d", "30d": "1M",
}  # fmt: skip
"""Gate.io candlestick intervals -> marketpipe's spelling (``30d`` is the calendar month)"""


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """currency_pairs (a list) or currency_pairs/{pair} (one object) -> {"BTC_USDT": "BTC-USDT"}
    from the ``base``/``quote`` fields (an entry without them is skipped)."""
    found = decode_json(body)
    if isinstance(found, dict):
        if "label" in found:  # {"label":"INVALID_CURRENCY_PAIR","message":...}
            raise ParseError(f"gateio currency_pairs error {found['label']}: {found.get('message')!r}")
        found = [found]
    elif not isinstance(found, list):
        raise ParseError("gateio currency_pairs response is neither a list nor an object")
    return read_entries(found, _pair, "gateio currency_pairs", ("id",))


def _pair(row: dict[str, Any], found: Instruments) -> None:
    found.add(row["id"], spot_name(row["base"], row["quote"]))


def create_time_ms_to_us(text: str) -> int:
    """``"1619093543708.2642"`` (milliseconds with a decimal fraction, as text) -> µs."""
    millis, _, fraction = text.partition(".")
    return int(millis) * 1000 + (int((fraction + "000")[:3]) if fraction else 0)


class GateioProcessor(SnapshotBridgeProcessor):
    exchange = "gateio"
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)
    strict_chain = True  # U == previous u + 1 after the first update
    id_name = "order book id"

    def fallback_instrument(self, exchange_symbol: str) -> tuple[str, str] | None:
        name = dashed_pair(exchange_symbol, "_")  # pairs are BASE_QUOTE
        return None if name is None else (name, exchange_symbol)

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        msg = json_object(raw.data, "gateio frame")
        channel = msg.get("channel")
        if msg.get("event") == "update":
            result = msg["result"]
            if channel == "spot.order_book_update":
                self._update(conn, raw, result, out)
            elif channel == "spot.trades":
                self._trade(raw, result, out)
            elif channel == "spot.tickers":
                self._ticker(raw, msg, result, out)
            elif channel == "spot.candlesticks":
                self._candle(conn, raw, msg, result, out)
            else:
                raise ParseError(f"unsupported gateio channel {channel!r}")
            return
        self._control_frame(channel, msg)

    def _control_frame(self, channel: object, msg: dict[str, Any]) -> None:
        error = msg.get("error")
        event = msg.get("event")
        if error:
            detail = f"{error.get('code')}: {error.get('message')!r}" if isinstance(error, dict) else error
            raise ParseError(f"gateio {channel} {event} error {detail}")
        if channel == "spot.pong":
            self.counters.heartbeats += 1
        elif event in ACK_EVENTS:
            result = msg.get("result")
            status = result.get("status") if isinstance(result, dict) else None
            if status != "success":
                raise ParseError(f"gateio {channel} {event} not successful: {str(result)[:200]}")
            self.counters.acks += 1
        else:
            raise ParseError(f"unrecognised gateio frame: channel {channel!r}, event {event!r}")

    def _trade(self, raw: RawRecord, result: dict[str, Any], out: FeedOutput) -> None:
        side = TAKER_SIDES.get(result["side"], "unknown")
        price, size = float(result["price"]), float(result["amount"])
        ts = create_time_ms_to_us(result["create_time_ms"])
        self.trade(raw, out, result["currency_pair"], str(result["id"]), price, size, side, ts)

    # -------------------------------------------------------------- tickers, candles

    @staticmethod
    def _frame_time(msg: dict[str, Any]) -> int:
        stamp = msg.get("time_ms")
        return ms_to_us(stamp) if stamp is not None else int(msg["time"]) * 1_000_000

    def _ticker(self, raw: RawRecord, msg: dict[str, Any], result: dict[str, Any], out: FeedOutput) -> None:
        self.ticker(
            raw,
            out,
            result["currency_pair"],
            self._frame_time(msg),
            last_price=opt_float(result.get("last")),
            bid_price=opt_float(result.get("highest_bid")),
            ask_price=opt_float(result.get("lowest_ask")),
            high_24h=opt_float(result.get("high_24h")),
            low_24h=opt_float(result.get("low_24h")),
            volume_24h=opt_float(result.get("base_volume")),
            quote_volume_24h=opt_float(result.get("quote_volume")),
        )

    def _candle(
        self, conn: Connection, raw: RawRecord, msg: dict[str, Any], result: dict[str, Any], out: FeedOutput
    ) -> None:
        name = result["n"]
        kind, _, pair = name.partition("_")
        interval = INTERVALS.get(kind)
        if interval is None or not pair:
            raise ParseError(f"unsupported gateio candlestick name {name!r}")
        open_time = int(result["t"]) * 1_000_000
        self.exchange_candle(
            conn,
            raw,
            out,
            pair,
            interval,
            open_time,
            interval_span_us(interval, open_time),
            float(result["o"]),
            float(result["h"]),
            float(result["l"]),
            float(result["c"]),
            volume=opt_float(result.get("a")),
            quote_volume=float(result["v"]),
            closed=True if result.get("w") is True else None,
            ts=self._frame_time(msg),
        )

    # ---------------------------------------------------------------------------- book

    def _update(self, conn: Connection, raw: RawRecord, result: dict[str, Any], out: FeedOutput) -> None:
        bids, asks = levels(result["b"]), levels(result["a"])
        delta = Delta(int(result["U"]), int(result["u"]), bids, asks, ms_to_us(result["t"]), raw)
        self.on_delta(conn, result["s"], delta, out)

    def on_rest(self, conn: Connection, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if not path.endswith(ORDER_BOOK_PATH):
            super().on_rest(conn, raw, path, out)
            return
        pair = url_param(raw, "currency_pair", "gateio order_book")
        snapshot = json_object(raw.payload, "gateio order_book snapshot")
        if "id" not in snapshot:
            raise ParseError(f"gateio order_book snapshot has no id (with_id=true?): {raw.text()[:200]}")
        stamp = snapshot.get("update") or snapshot.get("current")
        ts = ms_to_us(stamp) if stamp else raw.recv_ns // 1000
        bids, asks = levels(snapshot["bids"]), levels(snapshot["asks"])
        self.bridge(conn, pair, raw, int(snapshot["id"]), bids, asks, out, ts)
