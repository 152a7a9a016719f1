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
"""

from __future__ import annotations

from typing import Any

from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side
from streams.bridge import Delta, SnapshotBridgeProcessor
from streams.instruments import Instruments, dashed_pair, read_entries, spot_name
from streams.parsers.base import Connection, FeedOutput, ParseError, json_object, levels, ms_to_us, url_param

INSTRUMENTS_PATH = "/api/v2/symbols"
INSTRUMENTS_PATHS = (INSTRUMENTS_PATH, "/api/v1/symbols")
SNAPSHOT_PATH = "/api/v1/market/orderbook/level2_100"
OK = "200000"
TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
CONTROL_ACKS = frozenset({"welcome", "ack"})


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
