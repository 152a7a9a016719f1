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
    json_object,
    load_text_levels,
    ms_to_us,
    okx_checksum,
    okx_levels,
    plain,
)

INSTRUMENTS_PATH = "/api/v5/public/instruments"
TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
ACK_EVENTS = frozenset({"subscribe", "unsubscribe", "channel-conn-count"})


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
