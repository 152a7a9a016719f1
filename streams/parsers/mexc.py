"""MEXC spot v3: protobuf push frames (binary), JSON control frames (text).

Data frames are ``PushDataV3ApiWrapper`` messages (``streams/parsers/mexc_pb``) carrying
``publicAggreDepths`` (incremental book, ``fromVersion``/``toVersion``) or ``publicAggreDeals``
(trades). Subscription replies ``{"id":0,"code":0,"msg":"<channel>"}`` and ``PONG`` replies
are JSON text.

Book sync is MEXC's documented local-order-book procedure (streams/bridge.py): pushes are
buffered until a REST depth snapshot (a ``rest`` record on the same connection) arrives; buffered pushes with
``toVersion <= lastUpdateId`` are dropped, the first remaining one must not start after
``lastUpdateId + 1``, and from then on every push must start exactly at the previous
``toVersion + 1``. Anything else is a gap: unsynced, and the connector re-fetches a snapshot.

``publicMiniTicker`` (309): last ``price``, rolling ``high``/``low``, ``volume`` (the QUOTE turnover)
and ``quantity`` (base); no bid/ask, no open, no trade count. ``publicSpotKline`` (308): interval
(``Min1``...), ``windowStart``/``windowEnd`` in seconds, prices, base ``volume``, quote ``amount``;
no final flag (a later window on the connection makes a candle final).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side
from streams.bridge import Delta, SnapshotBridgeProcessor
from streams.instruments import Instruments, read_entries, spot_name
from streams.parsers.base import (
    Connection,
    FeedOutput,
    ParseError,
    interval_span_us,
    json_object,
    levels,
    occurrences,
    opt_float,
    url_param,
)
from streams.parsers.mexc_pb import PushDataV3ApiWrapper

INSTRUMENTS_PATH = "/api/v3/exchangeInfo"
DEPTH_PATH = "/api/v3/depth"
TAKER_SIDES: dict[int, Side] = {1: "buy", 2: "sell"}
_decode_push = PushDataV3ApiWrapper.FromString
INTERVALS = {
    "Min1": "1m", "Min5": "5m", "Min15": "15m", "Min30": "30m", "Min60": "1h", "Hour4": "4h",
    "Hour8": "8h", "Day1": "1d", "Week1": "1w", "Month1": "1M",
}  # fmt: skip
"""MEXC kline intervals -> marketpipe's interval spelling"""


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """exchangeInfo -> {"BTCUSDT": "BTC-USDT", ...} from baseAsset/quoteAsset (an entry without
    them is skipped). Concatenated names are never split without metadata."""
    info = json_object(body, "mexc exchangeInfo response")
    if not isinstance(info.get("symbols"), list):
        raise ParseError(f"mexc exchangeInfo response has no 'symbols' list: {str(info)[:200]}")
    return read_entries(info["symbols"], _symbol, "mexc exchangeInfo")


def _symbol(row: dict[str, Any], found: Instruments) -> None:
    found.add(row["symbol"], spot_name(row["baseAsset"], row["quoteAsset"]))


def _levels(items: Any) -> list[Level]:
    return [Level(float(item.price), float(item.quantity)) for item in items]


class MexcProcessor(SnapshotBridgeProcessor):
    exchange = "mexc"
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)
    id_name = "version"

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        data = raw.payload
        if data[:1] == b"{":
            self._control(json_object(data, "mexc control frame"))
            return
        if not data:
            raise ParseError("empty mexc frame")
        try:
            push = _decode_push(data)
        except DecodeError as exc:
            raise ParseError(f"mexc frame is neither JSON nor a protobuf push: {exc}") from None
        body = push.WhichOneof("body")
        if body == "publicAggreDepths":
            self._depth(conn, raw, push, out)
        elif body == "publicAggreDeals":
            self._deals(raw, push, out)
        elif body == "publicMiniTicker":
            self._ticker(raw, push, out)
        elif body == "publicSpotKline":
            self._kline(conn, raw, push, out)
        else:
            raise ParseError(f"unsupported mexc push on channel {push.channel!r} ({body or 'no known'} body)")

    def _control(self, msg: dict[str, Any]) -> None:
        reply = msg.get("msg")
        if "msg" not in msg and "channel" in msg:
            raise ParseError(
                f"unsupported mexc JSON push on channel {msg['channel']!r} (the pre-protobuf format)"
            )
        if msg.get("code", 0) != 0 or not isinstance(reply, str) or "Not Subscribed" in reply:
            raise ParseError(f"mexc request failed: {msg}")
        if reply == "PONG":
            self.counters.heartbeats += 1
        else:
            self.counters.acks += 1

    @staticmethod
    def _symbol(push: PushDataV3ApiWrapper, from_end: int = 1) -> str:
        """The wrapper's symbol, else the channel's ``from_end``-th last part (kline and miniTicker
        channels end with ``@<SYMBOL>@<interval or time zone>``)."""
        if push.HasField("symbol"):
            return push.symbol
        return push.channel.split("@")[-from_end]

    @staticmethod
    def _ts(push: PushDataV3ApiWrapper, raw: RawRecord) -> int:
        if push.HasField("sendTime"):
            return push.sendTime * 1000
        return push.createTime * 1000 if push.HasField("createTime") else raw.recv_ns // 1000

    def _deals(self, raw: RawRecord, push: PushDataV3ApiWrapper, out: FeedOutput) -> None:
        symbol = self._symbol(push)
        deals = push.publicAggreDeals.deals
        # aggregated deals carry no id: their content as sent is what every connection receives
        identities = occurrences([f"{d.time}:{d.price}:{d.quantity}:{d.tradeType}" for d in deals])
        for identity, deal in zip(identities, deals, strict=True):
            side = TAKER_SIDES.get(deal.tradeType, "unknown")
            price, size = float(deal.price), float(deal.quantity)
            self.trade(raw, out, symbol, identity, price, size, side, deal.time * 1000)

    # -------------------------------------------------------------- tickers, klines

    def _ticker(self, raw: RawRecord, push: PushDataV3ApiWrapper, out: FeedOutput) -> None:
        mini = push.publicMiniTicker
        self.ticker(
            raw,
            out,
            self._symbol(push, 2),
            self._ts(push, raw),
            last_price=opt_float(mini.price),
            high_24h=opt_float(mini.high),
            low_24h=opt_float(mini.low),
            volume_24h=opt_float(mini.quantity),
            quote_volume_24h=opt_float(mini.volume),
        )

    def _kline(self, conn: Connection, raw: RawRecord, push: PushDataV3ApiWrapper, out: FeedOutput) -> None:
        kline = push.publicSpotKline
        interval = INTERVALS.get(kline.interval)
        if interval is None:
            raise ParseError(f"unsupported mexc kline interval {kline.interval!r}")
        open_time = kline.windowStart * 1_000_000
        close_time = kline.windowEnd * 1_000_000 if kline.windowEnd else interval_span_us(interval, open_time)
        self.exchange_candle(
            conn,
            raw,
            out,
            self._symbol(push, 2),
            interval,
            open_time,
            close_time,
            float(kline.openingPrice),
            float(kline.highestPrice),
            float(kline.lowestPrice),
            float(kline.closingPrice),
            volume=opt_float(kline.volume),
            quote_volume=opt_float(kline.amount),
            ts=self._ts(push, raw),
        )

    # ---------------------------------------------------------------------------- book

    def _depth(self, conn: Connection, raw: RawRecord, push: PushDataV3ApiWrapper, out: FeedOutput) -> None:
        depths = push.publicAggreDepths
        first, last = int(depths.fromVersion), int(depths.toVersion)
        if last < first:
            raise ParseError(f"mexc depth push versions run backwards: {first}..{last}")
        delta = Delta(first, last, _levels(depths.bids), _levels(depths.asks), self._ts(push, raw), raw)
        self.on_delta(conn, self._symbol(push), delta, out)

    def on_rest(self, conn: Connection, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if not path.endswith(DEPTH_PATH):
            super().on_rest(conn, raw, path, out)
            return
        symbol = url_param(raw, "symbol", "mexc depth snapshot")
        snapshot = json_object(raw.payload, "mexc depth snapshot")
        if "lastUpdateId" not in snapshot:
            raise ParseError(f"mexc depth snapshot has no lastUpdateId: {raw.text()[:200]}")
        bids, asks = levels(snapshot["bids"]), levels(snapshot["asks"])
        self.bridge(conn, symbol.upper(), raw, int(snapshot["lastUpdateId"]), bids, asks, out)
