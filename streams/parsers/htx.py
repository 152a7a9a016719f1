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

import zlib
from typing import Any

from marketpipe.raw import RawRecord
from marketpipe.records import Side
from streams.bridge import Delta, SnapshotBridgeProcessor
from streams.instruments import Instruments, read_entries, spot_name
from streams.parsers.base import (
    Connection,
    FeedOutput,
    ParseError,
    interval_span_us,
    json_object,
    levels,
    ms_to_us,
    opt_float,
)

INSTRUMENTS_PATH = "/v2/settings/common/symbols"
INSTRUMENTS_PATHS = (
    INSTRUMENTS_PATH,
    "/v1/settings/common/symbols",
    "/v1/settings/common/market-symbols",
    "/v1/common/symbols",
)
"""the v2 and v1 symbol settings (``sc``/``symbol``, ``bc``, ``qc``) and the older
``/v1/common/symbols`` (``symbol``, ``base-currency``, ``quote-currency``)"""
TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
_GZIP_MAGIC = b"\x1f\x8b"
PERIODS = {
    "1min": "1m", "5min": "5m", "15min": "15m", "30min": "30m", "60min": "1h", "4hour": "4h",
    "1day": "1d", "1week": "1w", "1mon": "1M", "1year": "12M",
}  # fmt: skip
"""HTX kline periods -> marketpipe's interval spelling"""


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """Any of ``INSTRUMENTS_PATHS`` -> {"btcusdt": "BTC-USDT", ...} from the base/quote currency
    (an entry without them is skipped)."""
    info = json_object(body, "htx symbols response")
    if info.get("status") != "ok" or not isinstance(info.get("data"), list):
        raise ParseError(f"htx symbols error: {str(info)[:200]}")
    return read_entries(info["data"], _symbol, "htx symbols", ("sc", "symbol"))


def _symbol(row: dict[str, Any], found: Instruments) -> None:
    symbol = row["sc"] if "sc" in row else row["symbol"]
    base = row["bc"] if "bc" in row else row["base-currency"]
    quote = row["qc"] if "qc" in row else row["quote-currency"]
    found.add(symbol, spot_name(base.upper(), quote.upper()))


def inflate(data: bytes | str | None) -> bytes | str | None:
    """A gzip frame as its JSON text; anything else is returned as is (decoded sample text)."""
    if isinstance(data, bytes) and data[:2] == _GZIP_MAGIC:
        try:
            return zlib.decompress(data, 31)
        except zlib.error as exc:
            raise ParseError(f"htx frame is not valid gzip: {exc}") from None
    return data


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


class HtxProcessor(SnapshotBridgeProcessor):
    exchange = "htx"
    instruments_path = INSTRUMENTS_PATH
    instruments_paths = INSTRUMENTS_PATHS
    instruments_parser = staticmethod(parse_instruments)
    id_name = "seqNum"

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        msg = json_object(inflate(raw.data), "htx frame")
        channel = msg.get("ch")
        if channel is not None:
            self._push(conn, channel, msg, raw, out)
        elif "ping" in msg:
            self.counters.heartbeats += 1
        elif "rep" in msg:
            self._reply(conn, msg, raw, out)
        elif msg.get("status") == "ok" and ("subbed" in msg or "unsubbed" in msg):
            self.counters.acks += 1
        elif msg.get("status") == "error":
            raise ParseError(f"htx error {msg.get('err-code')}: {msg.get('err-msg')!r}")
        else:
            raise ParseError(f"unrecognised htx frame with keys {sorted(msg)}")

    def _push(
        self, conn: Connection, channel: str, msg: dict[str, Any], raw: RawRecord, out: FeedOutput
    ) -> None:
        symbol, topic = _topic(channel)
        tick = msg["tick"]
        if topic == "trade.detail":
            self._trades(symbol, tick["data"], raw, out)
        elif topic.startswith("mbp."):
            self._update(conn, symbol, _mbp_depth(topic), msg, tick, raw, out)
        elif topic.startswith("depth.step"):
            self._full_book(conn, symbol, tick, ms_to_us(msg["ts"]), raw, out)
        elif topic in ("ticker", "detail"):
            self._ticker(symbol, tick, ms_to_us(msg["ts"]), raw, out)
        elif topic.startswith("kline."):
            self._kline(conn, symbol, topic[6:], tick, ms_to_us(msg["ts"]), raw, out)
        else:
            raise ParseError(f"unsupported htx channel {channel!r}")

    def _trades(self, symbol: str, data: list[dict[str, Any]], raw: RawRecord, out: FeedOutput) -> None:
        rows = [
            (
                str(item.get("tradeId", item["id"])),
                float(item["price"]),
                float(item["amount"]),
                TAKER_SIDES.get(item["direction"], "unknown"),
                ms_to_us(item["ts"]),
            )
            for item in data
        ]
        for trade_id, price, size, side, ts in rows:
            self.trade(raw, out, symbol, trade_id, price, size, side, ts)

    # -------------------------------------------------------------- tickers, klines

    def _ticker(self, symbol: str, tick: dict[str, Any], ts: int, raw: RawRecord, out: FeedOutput) -> None:
        count = tick.get("count")
        self.ticker(
            raw,
            out,
            symbol,
            ts,
            last_price=opt_float(tick.get("lastPrice", tick.get("close"))),
            last_size=opt_float(tick.get("lastSize")),
            bid_price=opt_float(tick.get("bid")),
            bid_size=opt_float(tick.get("bidSize")),
            ask_price=opt_float(tick.get("ask")),
            ask_size=opt_float(tick.get("askSize")),
            open_24h=opt_float(tick.get("open")),
            high_24h=opt_float(tick.get("high")),
            low_24h=opt_float(tick.get("low")),
            volume_24h=opt_float(tick.get("amount")),
            quote_volume_24h=opt_float(tick.get("vol")),
            trades_24h=None if count is None else _count(count),
        )

    def _kline(
        self,
        conn: Connection,
        symbol: str,
        period: str,
        tick: dict[str, Any],
        ts: int,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        interval = PERIODS.get(period)
        if interval is None:
            raise ParseError(f"unsupported htx kline period {period!r}")
        open_time = int(tick["id"]) * 1_000_000
        count = tick.get("count")
        self.exchange_candle(
            conn,
            raw,
            out,
            symbol,
            interval,
            open_time,
            interval_span_us(interval, open_time),
            float(tick["open"]),
            float(tick["high"]),
            float(tick["low"]),
            float(tick["close"]),
            volume=opt_float(tick.get("amount")),
            quote_volume=opt_float(tick.get("vol")),
            trades=None if count is None else _count(count),
            ts=ts,
        )

    # ------------------------------------------------------------------ full books

    def _full_book(
        self, conn: Connection, symbol: str, tick: dict[str, Any], ts: int, raw: RawRecord, out: FeedOutput
    ) -> None:
        self.counters.book_messages += 1
        bids, asks = levels(tick["bids"]), levels(tick["asks"])
        version = tick.get("version")
        state = self.book_state(conn, symbol)
        if version is not None and state.last_id is not None and int(version) < state.last_id:
            self.counters.stale_updates += 1
            return
        book = state.book
        book.bids.load((level.price, level.size) for level in bids)
        book.asks.load((level.price, level.size) for level in asks)
        self.accept_snapshot(state, raw, out, ts, last_id=None if version is None else int(version))

    # ------------------------------------------------------------------ MBP

    def _update(
        self,
        conn: Connection,
        symbol: str,
        depth: int,
        msg: dict[str, Any],
        tick: dict[str, Any],
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        # seqNum follows prevSeqNum: as an id range the update covers prevSeqNum+1..seqNum
        first, last = int(tick["prevSeqNum"]) + 1, int(tick["seqNum"])
        bids, asks = levels(tick.get("bids") or ()), levels(tick.get("asks") or ())
        self.book_state(conn, symbol).depth = depth
        self.on_delta(conn, symbol, Delta(first, last, bids, asks, ms_to_us(msg["ts"]), raw), out)

    def _reply(self, conn: Connection, msg: dict[str, Any], raw: RawRecord, out: FeedOutput) -> None:
        rep = msg["rep"]
        if msg.get("status") != "ok":
            raise ParseError(f"htx request {rep!r} failed {msg.get('err-code')}: {msg.get('err-msg')!r}")
        symbol, topic = _topic(rep)
        if not topic.startswith("mbp."):
            raise ParseError(f"unsupported htx request reply {rep!r}")
        data = msg["data"]
        bids, asks = levels(data["bids"]), levels(data["asks"])
        self.book_state(conn, symbol).depth = _mbp_depth(topic)
        ts = ms_to_us(msg["ts"]) if "ts" in msg else raw.recv_ns // 1000
        self.bridge(conn, symbol, raw, int(data["seqNum"]), bids, asks, out, ts)
