"""OKX v5 public: ``{"arg":{"channel","instId"},"action","data":[...]}`` pushes, ``{"event"}``
replies, and the literal text ``pong``.

Books: each update's ``prevSeqId`` must equal the previous ``seqId``, except the keep-alive
(``prevSeqId == seqId``, no levels) and the maintenance reset (``seqId < prevSeqId``).
A non-zero ``checksum`` (frames before the June 2026 deprecation) is verified: signed
CRC32 over the top 25 bid/ask levels interleaved, using the price/size strings as sent.

Trades: OKX pushes the latest trade of an instrument on every subscribe (hours old on a quiet
one); the feed's trade-id deduplication drops it when it was published already. Instruments:
spot (and margin) ``instId``s are named from ``baseCcy``/``quoteCcy`` or, without metadata, are
read as ``BASE-QUOTE``; swaps, futures and options are not normalised yet, so their frames are
dead-lettered (``unnamed_instrument``), each under its own id.
"""

from __future__ import annotations

from typing import Any

from marketpipe.raw import RawRecord
from marketpipe.records import Side
from streams.instruments import Instruments, dashed_pair, read_entries, spot_name
from streams.parsers.base import (
    BookState,
    Connection,
    FeedOutput,
    FeedProcessor,
    ParseError,
    TextRows,
    apply_text_levels,
    interval_name,
    interval_span_us,
    json_object,
    load_text_levels,
    ms_to_us,
    okx_checksum,
    okx_levels,
    opt_float,
    plain,
)

INSTRUMENTS_PATH = "/api/v5/public/instruments"
TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
ACK_EVENTS = frozenset({"subscribe", "unsubscribe", "channel-conn-count"})


BAR_SECONDS = {
    "1s": 1,
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1H": 3600,
    "2H": 7200,
    "4H": 14400,
    "6H": 21600,
    "12H": 43200,
    "1D": 86400,
    "2D": 172800,
    "3D": 259200,
    "5D": 432000,
    "1W": 604800,
}
MONTH_BARS = {"1M": 1, "3M": 3}
HONG_KONG = "+08:00"
HK_OFFSET_US = 8 * 3600 * 1_000_000
UTC_ALIGNED_BELOW_S = 21600
"""bars shorter than 6H start on UTC boundaries anyway; longer ones are Hong Kong aligned
unless they end in ``utc``"""


def okx_bar(bar: str) -> tuple[str, int]:
    """``candle<bar>`` suffix -> (marketpipe interval, offset of its boundaries from UTC in µs):
    ``1m`` -> ``1m``, ``1H`` -> ``1h``, ``1Dutc`` -> ``1d``, ``1D`` (Hong Kong aligned) ->
    ``1d+08:00``."""
    utc = bar.endswith("utc")
    base = bar[:-3] if utc else bar
    months = MONTH_BARS.get(base)
    seconds = BAR_SECONDS.get(base)
    if months is None and seconds is None:
        raise ParseError(f"unsupported okx candle bar {bar!r}")
    name = f"{months}M" if months is not None else interval_name(seconds or 0)
    if utc or (seconds is not None and seconds < UTC_ALIGNED_BELOW_S):
        return name, 0
    return name + HONG_KONG, HK_OFFSET_US


SPOT_TYPES = frozenset({"SPOT", "MARGIN"})
UNNAMED = "not normalised yet (derivatives)"


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """instruments -> {"BTC-USDT": "BTC-USDT", ...} from baseCcy/quoteCcy. SWAP, FUTURES and
    OPTION instruments (empty baseCcy/quoteCcy) are skipped, never named ``-``."""
    info = json_object(body, "okx instruments response")
    if info.get("code") != "0" or not isinstance(info.get("data"), list):
        raise ParseError(f"okx instruments error {info.get('code')}: {info.get('msg')!r}")
    return read_entries(info["data"], _instrument, "okx instruments", ("instId",))


def _instrument(row: dict[str, Any], found: Instruments) -> None:
    kind = row.get("instType") or "SPOT"
    if kind not in SPOT_TYPES:
        raise ParseError(f"{kind} instrument: {UNNAMED}", "unnamed_instrument")
    found.add(row["instId"], spot_name(row["baseCcy"], row["quoteCcy"]))


class OkxProcessor(FeedProcessor):
    exchange = "okx"
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)
    keep_text = True

    def fallback_instrument(self, exchange_symbol: str) -> tuple[str, str] | None:
        """Spot instIds are BASE-QUOTE already; swaps (``UNI-USD-SWAP``) and futures
        (``BTC-USD-220527``) are dead-lettered, each under its own id."""
        name = dashed_pair(exchange_symbol)
        if name is None:
            raise ParseError(
                f"okx instrument {exchange_symbol!r} is not a spot BASE-QUOTE id: {UNNAMED}",
                "unnamed_instrument",
            )
        return name, exchange_symbol

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        if raw.data in ("pong", b"pong"):
            self.counters.heartbeats += 1
            return
        msg = json_object(raw.data, "okx frame")
        event = msg.get("event")
        if event is not None:
            self._event(event, msg)
            return
        channel = msg["arg"]["channel"]
        if channel == "books":
            for item in msg["data"]:
                self._book(conn, msg["arg"]["instId"], msg["action"], item, raw, out)
        elif channel == "trades":
            self._trades(msg["data"], raw, out)
        elif channel == "tickers":
            for item in msg["data"]:
                self._ticker(item, raw, out)
        elif channel.startswith("candle"):
            self._candles(conn, channel[6:], msg["arg"]["instId"], msg["data"], raw, out)
        else:
            raise ParseError(f"unsupported okx channel {channel!r}")

    def _event(self, event: str, msg: dict[str, Any]) -> None:
        if event in ACK_EVENTS:
            self.counters.acks += 1
        elif event == "notice":
            self.counters.notices += 1  # 64008: service upgrade soon; the connector reconnects
        elif event == "error":
            raise ParseError(f"okx error {msg.get('code')}: {msg.get('msg')!r}")
        else:
            raise ParseError(f"unsupported okx event {event!r}")

    def _trades(self, data: list[dict[str, Any]], raw: RawRecord, out: FeedOutput) -> None:
        rows = [
            (
                item["instId"],
                item["tradeId"],
                float(item["px"]),
                float(item["sz"]),
                TAKER_SIDES.get(item["side"], "unknown"),
                ms_to_us(item["ts"]),
            )
            for item in data
        ]
        for symbol, trade_id, price, size, side, ts in rows:
            self.trade(raw, out, symbol, str(trade_id), price, size, side, ts)

    def _ticker(self, item: dict[str, Any], raw: RawRecord, out: FeedOutput) -> None:
        """Spot: ``vol24h`` is base and ``volCcy24h`` quote (derivatives differ, but they are not
        named yet, so their symbol dead-letters them first). Best ask/bid may be empty."""
        self.ticker(
            raw,
            out,
            item["instId"],
            ms_to_us(item["ts"]),
            last_price=float(item["last"]),
            last_size=opt_float(item.get("lastSz")),
            bid_price=opt_float(item.get("bidPx")),
            bid_size=opt_float(item.get("bidSz")),
            ask_price=opt_float(item.get("askPx")),
            ask_size=opt_float(item.get("askSz")),
            open_24h=opt_float(item.get("open24h")),
            high_24h=opt_float(item.get("high24h")),
            low_24h=opt_float(item.get("low24h")),
            volume_24h=opt_float(item.get("vol24h")),
            quote_volume_24h=opt_float(item.get("volCcy24h")),
        )

    def _candles(
        self, conn: Connection, bar: str, inst_id: str, rows: list[Any], raw: RawRecord, out: FeedOutput
    ) -> None:
        """``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]``; the older 7-field form has no
        ``confirm`` (the base's later-window rule closes those)."""
        interval, offset_us = okx_bar(bar)
        for row in rows:
            if not isinstance(row, list) or len(row) < 7:
                raise ParseError(f"okx candle is not [ts, o, h, l, c, vol, volCcy, ...]: {str(row)[:100]}")
            open_time = ms_to_us(row[0])
            self.exchange_candle(
                conn,
                raw,
                out,
                inst_id,
                interval,
                open_time,
                _bar_close(interval, open_time, offset_us),
                float(row[1]),
                float(row[2]),
                float(row[3]),
                float(row[4]),
                volume=float(row[5]),
                quote_volume=float(row[7] if len(row) >= 9 else row[6]),
                closed=_confirm(row[8]) if len(row) >= 9 else None,
            )

    def _book(
        self,
        conn: Connection,
        inst_id: str,
        action: str,
        item: dict[str, Any],
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        self.counters.book_messages += 1
        bids, asks = okx_levels(item["bids"]), okx_levels(item["asks"])
        seq_id, prev_id = item.get("seqId"), item.get("prevSeqId")
        checksum = int(item.get("checksum") or 0)
        ts = ms_to_us(item["ts"])
        state = self.book_state(conn, inst_id)
        if action == "snapshot":
            book = state.book
            load_text_levels(book.bids, bids)
            load_text_levels(book.asks, asks)
            if checksum and not self._verify(state, checksum, raw, out):
                return
            self.accept_snapshot(state, raw, out, ts, last_id=seq_id, checksum=checksum or None)
        elif action == "update":
            self._update(state, bids, asks, seq_id, prev_id, checksum, ts, raw, out)
        else:
            raise ParseError(f"okx books action {action!r}")

    def _update(
        self,
        state: BookState,
        bids: TextRows,
        asks: TextRows,
        seq_id: int | None,
        prev_id: int | None,
        checksum: int,
        ts: int,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        if not state.synced:
            self.skip_unsynced(state, raw, out)
            return
        if seq_id is not None and prev_id is not None:
            if prev_id == seq_id and not bids and not asks and seq_id == state.last_id:
                self.counters.heartbeats += 1  # keep-alive: no depth change for ~60 s
                return
            # seqId < prevSeqId: the documented maintenance reset, accepted as is
            if seq_id >= prev_id and prev_id != state.last_id:
                self.unsync(state, "gap", f"prevSeqId {prev_id} after seqId {state.last_id}", raw, out)
                return
        book = state.book
        apply_text_levels(book.bids, bids)
        apply_text_levels(book.asks, asks)
        if checksum and not self._verify(state, checksum, raw, out):
            return
        self.accept_update(
            state,
            raw,
            out,
            ts,
            plain(bids),
            plain(asks),
            first_id=prev_id,
            last_id=seq_id,
            checksum=checksum or None,
        )

    def _verify(self, state: BookState, expected: int, raw: RawRecord, out: FeedOutput) -> bool:
        actual = okx_checksum(state.book)
        return self.checksum_result(state, actual == expected, expected, actual, raw, out)


def _bar_close(interval: str, open_time: int, offset_us: int) -> int:
    plain_interval = interval.removesuffix(HONG_KONG)
    return interval_span_us(plain_interval, open_time + offset_us) - offset_us


def _confirm(value: object) -> bool:
    if value not in ("0", "1"):
        raise ParseError(f"okx candle confirm is {value!r}, not '0' or '1'")
    return value == "1"
