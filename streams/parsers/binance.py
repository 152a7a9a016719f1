"""Binance spot, combined-stream payloads ``{"stream","data"}``.

Book sync is the documented REST-snapshot bridge: diff events are buffered until a depth
snapshot (a ``rest`` record on the same connection) arrives; buffered events with
``u <= lastUpdateId`` are dropped, the first remaining one must straddle ``lastUpdateId+1``,
and from then on each event's ``U`` must not skip past the local update id + 1.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side
from streams.parsers.base import (
    BookState,
    Connection,
    FeedOutput,
    FeedProcessor,
    ParseError,
    apply_levels,
    json_object,
    levels,
    ms_to_us,
)

INSTRUMENTS_PATH = "/api/v3/exchangeInfo"
DEPTH_PATH = "/api/v3/depth"
MAX_BUFFERED_DIFFS = 2000
"""Diff events kept per book while waiting for a snapshot (10 s of 100 ms diffs is 100)."""


def parse_instruments(body: bytes) -> dict[str, str]:
    """exchangeInfo -> {"BTCUSDT": "BTC-USDT", ...} from baseAsset/quoteAsset."""
    info = json_object(body, "binance exchangeInfo response")
    if "symbols" not in info:
        raise ParseError(f"binance exchangeInfo response has no 'symbols': {str(info)[:200]}")
    return {item["symbol"]: f"{item['baseAsset']}-{item['quoteAsset']}" for item in info["symbols"]}


class Diff(NamedTuple):
    first_id: int
    last_id: int
    bids: list[Level]
    asks: list[Level]
    ts: int
    raw: RawRecord


class BinanceProcessor(FeedProcessor):
    exchange = "binance"
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        msg = json_object(raw.data, "binance frame")
        data = msg.get("data")
        if data is None:
            self._control_frame(msg)
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
            self._trade(raw, data, data["a"], out)
        elif event == "trade":
            self._trade(raw, data, data["t"], out)
        elif event is None and "A" in data and "u" in data:
            self.counters.tickers += 1  # bookTicker: the validated book's BBO is published instead
        elif event == "serverShutdown":
            self.counters.notices += 1
        else:
            raise ParseError(f"unsupported binance event {event!r} on stream {stream!r}")

    def _trade(self, raw: RawRecord, data: dict[str, Any], trade_id: object, out: FeedOutput) -> None:
        # m: the buyer is the maker, so the taker sold
        side: Side = "sell" if data["m"] else "buy"
        price, size = float(data["p"]), float(data["q"])
        self.trade(raw, out, data["s"], str(trade_id), price, size, side, ms_to_us(data["T"]))

    # ---------------------------------------------------------------------------- book

    def _diff(self, conn: Connection, raw: RawRecord, data: dict[str, Any], out: FeedOutput) -> None:
        self.counters.book_messages += 1
        diff = Diff(
            int(data["U"]), int(data["u"]), levels(data["b"]), levels(data["a"]), ms_to_us(data["E"]), raw
        )
        state = self.book_state(conn, data["s"])
        if state.synced:
            self._apply(state, diff, out)
        else:
            self._buffer(state, diff)

    def _buffer(self, state: BookState, diff: Diff) -> None:
        pending = state.pending
        if pending is None:
            pending = state.pending = deque(maxlen=MAX_BUFFERED_DIFFS)
        pending.append(diff)

    def _apply(self, state: BookState, diff: Diff, out: FeedOutput) -> None:
        local_id = state.last_id
        assert local_id is not None
        if diff.last_id <= local_id:
            self.counters.stale_updates += 1
            return
        if diff.first_id > local_id + 1:
            detail = f"depthUpdate U={diff.first_id} skips past local update id {local_id}"
            self.unsync(state, "gap", detail, diff.raw, out)
            self._buffer(state, diff)  # newer than what was missed: the next snapshot may bridge to it
            return
        book = state.book
        apply_levels(book.bids, diff.bids)
        apply_levels(book.asks, diff.asks)
        self.accept_update(
            state, diff.raw, out, diff.ts, diff.bids, diff.asks, first_id=diff.first_id, last_id=diff.last_id
        )

    def on_rest(self, conn: Connection, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if not path.endswith(DEPTH_PATH):
            super().on_rest(conn, raw, path, out)
            return
        symbols = parse_qs(urlsplit(raw.url or "").query).get("symbol")
        if not symbols:
            raise ParseError(f"binance depth snapshot url {raw.url!r} names no symbol")
        snapshot = json_object(raw.payload, "binance depth snapshot")
        if "lastUpdateId" not in snapshot:
            raise ParseError(f"binance depth snapshot has no lastUpdateId: {raw.text()[:200]}")
        last_id = int(snapshot["lastUpdateId"])
        bids, asks = levels(snapshot["bids"]), levels(snapshot["asks"])
        self.counters.book_messages += 1
        self._bridge(self.book_state(conn, symbols[0].upper()), raw, last_id, bids, asks, out)

    def _bridge(
        self,
        state: BookState,
        raw: RawRecord,
        last_id: int,
        bids: list[Level],
        asks: list[Level],
        out: FeedOutput,
    ) -> None:
        if state.synced and state.last_id is not None and last_id <= state.last_id:
            self.counters.stale_updates += 1  # the live book is already newer than this snapshot
            return
        pending = state.pending if state.pending is not None else deque()
        while pending and pending[0].last_id <= last_id:
            pending.popleft()
        if pending and pending[0].first_id > last_id + 1:
            detail = f"snapshot lastUpdateId={last_id} is older than buffered diff U={pending[0].first_id}"
            self.unsync(state, "gap", detail, raw, out)
            return
        book = state.book
        book.bids.load((level.price, level.size) for level in bids)
        book.asks.load((level.price, level.size) for level in asks)
        if not self.accept_snapshot(state, raw, out, raw.recv_ns // 1000, last_id=last_id):
            return
        while pending and state.synced:
            self._apply(state, pending.popleft(), out)
