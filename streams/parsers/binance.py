"""Binance spot, combined-stream payloads ``{"stream","data"}``.

Book sync is the documented REST-snapshot bridge (streams/bridge.py): diff events are
buffered until a depth snapshot (a ``rest`` record on the same connection) arrives; buffered
events with ``u <= lastUpdateId`` are dropped, the first remaining one must straddle
``lastUpdateId+1``, and from then on each event's ``U`` must not skip past the local update id + 1.
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side
from streams.bridge import Delta, SnapshotBridgeProcessor
from streams.instruments import Instruments, read_entries, spot_name
from streams.parsers.base import (
    Connection,
    FeedOutput,
    ParseError,
    json_object,
    levels,
    ms_to_us,
    opt_float,
    url_param,
)

INSTRUMENTS_PATH = "/api/v3/exchangeInfo"
DEPTH_PATH = "/api/v3/depth"
AGG_IDS = "#agg"
"""aggTrade ids (``a``) are numbered apart from trade ids (``t``): deduplicated apart"""


class DepthUpdate(msgspec.Struct):
    """The ``depthUpdate`` payload of a diff-depth stream (price and size strings as numbers)."""

    e: str
    E: int
    s: str
    U: int
    u: int
    b: list[tuple[float, float]]
    a: list[tuple[float, float]]


class DepthFrame(msgspec.Struct):
    stream: str
    data: DepthUpdate


_depth_frames = msgspec.json.Decoder(DepthFrame, strict=False)  # strict=False: "0.01" -> 0.01


def depth_update(frame: bytes | str | None) -> DepthUpdate | None:
    """A diff-depth frame decoded straight into numbers, the hot path (no dicts, no float() per
    level); None for any other frame, and for a malformed one, which the generic path reports."""
    if isinstance(frame, str):
        frame = frame.encode()
    if frame is None or b"depthUpdate" not in frame:
        return None
    try:
        update = _depth_frames.decode(frame).data
    except msgspec.DecodeError:  # ValidationError included
        return None
    return update if update.e == "depthUpdate" else None


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """exchangeInfo -> {"BTCUSDT": "BTC-USDT", ...} from baseAsset/quoteAsset (an entry without
    them is skipped). Concatenated names are never split without metadata."""
    info = json_object(body, "binance exchangeInfo response")
    if not isinstance(info.get("symbols"), list):
        raise ParseError(f"binance exchangeInfo response has no 'symbols' list: {str(info)[:200]}")
    return read_entries(info["symbols"], _entry, "binance exchangeInfo")


def _entry(row: dict[str, Any], found: Instruments) -> None:
    found.add(row["symbol"], spot_name(row["baseAsset"], row["quoteAsset"]))


KLINE_INTERVALS = frozenset(
    ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
)
"""Binance's kline intervals are spelled as marketpipe spells them"""


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ParseError(f"binance kline flag x is {value!r}, not a boolean")
    return value


class BinanceProcessor(SnapshotBridgeProcessor):
    exchange = "binance"
    strict_chain = False  # the documented rule: U must not skip past the local id + 1
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        update = depth_update(raw.data)
        if update is not None:
            bids = [Level(price, size) for price, size in update.b]
            asks = [Level(price, size) for price, size in update.a]
            self.on_delta(conn, update.s, Delta(update.U, update.u, bids, asks, update.E * 1000, raw), out)
            return
        msg = json_object(raw.data, "binance frame")
        data = msg.get("data")
        if data is None:
            self._control_frame(msg)
            return
        if isinstance(data, list):  # !ticker@arr: every changed symbol's 24hrTicker
            for item in data:
                if not isinstance(item, dict) or item.get("e") != "24hrTicker":
                    raise ParseError(f"unsupported binance array item on stream {msg.get('stream')!r}")
                self._ticker(raw, item, out)
            return
        if not isinstance(data, dict):
            raise ParseError(f"binance stream {msg.get('stream')!r} payload is not an object")
        self._event(conn, raw, data, msg.get("stream"), out)

    def _control_frame(self, msg: dict[str, Any]) -> None:
        if "result" in msg and "id" in msg:
            self.counters.acks += 1
        elif msg.get("e") == "serverShutdown":
            self.counters.notices += 1
        elif "error" in msg or "code" in msg:
            raise ParseError(f"binance request error: {msg.get('error', msg)}")
        else:
            raise ParseError(f"unrecognised binance frame with keys {sorted(msg)}")

    def _event(
        self, conn: Connection, raw: RawRecord, data: dict[str, Any], stream: object, out: FeedOutput
    ) -> None:
        event = data.get("e")
        if event == "depthUpdate":
            self._diff(conn, raw, data, out)
        elif event == "aggTrade":
            self._trade(raw, data, data["a"], out, AGG_IDS)
        elif event == "trade":
            self._trade(raw, data, data["t"], out)
        elif event is None and "A" in data and "u" in data:
            self.counters.tickers += 1  # bookTicker: the validated book's BBO is published instead
        elif event == "kline":
            self._kline(conn, raw, data, out)
        elif event == "24hrTicker":
            self._ticker(raw, data, out)
        elif event == "serverShutdown":
            self.counters.notices += 1
        else:
            raise ParseError(f"unsupported binance event {event!r} on stream {stream!r}")

    def _trade(
        self, raw: RawRecord, data: dict[str, Any], trade_id: object, out: FeedOutput, id_space: str = ""
    ) -> None:
        # m: the buyer is the maker, so the taker sold
        side: Side = "sell" if data["m"] else "buy"
        price, size = float(data["p"]), float(data["q"])
        self.trade(raw, out, data["s"], str(trade_id), price, size, side, ms_to_us(data["T"]), id_space)

    # ------------------------------------------------------------------ ticker, kline

    def _ticker(self, raw: RawRecord, data: dict[str, Any], out: FeedOutput) -> None:
        self.ticker(
            raw,
            out,
            data["s"],
            ms_to_us(data["E"]),
            last_price=float(data["c"]),
            last_size=opt_float(data.get("Q")),
            bid_price=opt_float(data.get("b")),
            bid_size=opt_float(data.get("B")),
            ask_price=opt_float(data.get("a")),
            ask_size=opt_float(data.get("A")),
            open_24h=float(data["o"]),
            high_24h=float(data["h"]),
            low_24h=float(data["l"]),
            volume_24h=float(data["v"]),
            quote_volume_24h=float(data["q"]),
            trades_24h=int(data["n"]),
        )

    def _kline(self, conn: Connection, raw: RawRecord, data: dict[str, Any], out: FeedOutput) -> None:
        k = data["k"]
        if not isinstance(k, dict):
            raise ParseError("binance kline payload has no 'k' object")
        interval = k["i"]
        if not isinstance(interval, str) or interval not in KLINE_INTERVALS:
            raise ParseError(f"unsupported binance kline interval {interval!r}")
        trades = int(k["n"])
        first, last = int(k["f"]), int(k["L"])
        ids = (str(first), str(last)) if trades > 0 and first >= 0 else (None, None)
        self.exchange_candle(
            conn,
            raw,
            out,
            k["s"],
            interval,
            ms_to_us(k["t"]),
            ms_to_us(k["T"]) + 1000,  # T is the window's last millisecond
            float(k["o"]),
            float(k["h"]),
            float(k["l"]),
            float(k["c"]),
            volume=float(k["v"]),
            quote_volume=float(k["q"]),
            trades=trades,
            first_trade_id=ids[0],
            last_trade_id=ids[1],
            closed=_flag(k["x"]),
            ts=ms_to_us(data["E"]),
        )

    # ---------------------------------------------------------------------------- book

    def _diff(self, conn: Connection, raw: RawRecord, data: dict[str, Any], out: FeedOutput) -> None:
        diff = Delta(
            int(data["U"]), int(data["u"]), levels(data["b"]), levels(data["a"]), ms_to_us(data["E"]), raw
        )
        self.on_delta(conn, data["s"], diff, out)

    def on_rest(self, conn: Connection, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if not path.endswith(DEPTH_PATH):
            super().on_rest(conn, raw, path, out)
            return
        symbol = url_param(raw, "symbol", "binance depth snapshot")
        snapshot = json_object(raw.payload, "binance depth snapshot")
        if "lastUpdateId" not in snapshot:
            raise ParseError(f"binance depth snapshot has no lastUpdateId: {raw.text()[:200]}")
        bids, asks = levels(snapshot["bids"]), levels(snapshot["asks"])
        self.bridge(conn, symbol.upper(), raw, int(snapshot["lastUpdateId"]), bids, asks, out)
