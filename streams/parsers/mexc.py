"""MEXC spot v3: protobuf push frames (binary), JSON control frames (text).

Data frames are ``PushDataV3ApiWrapper`` messages (``marketpipe/exchanges/mexc_pb``) carrying
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

import msgspec
from google.protobuf.message import DecodeError

from marketpipe.exchanges import mexc as wire
from marketpipe.exchanges.mexc import (
    DEPTH_PATH,
    INSTRUMENTS_PATH,
    INTERVALS,
    PushDataV3ApiWrapper,
    parse_instruments,
)
from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side
from marketpipe.wire import decode_struct
from streams.bridge import Delta, SnapshotBridgeProcessor
from streams.parsers.base import (
    ConnectionState,
    FeedOutput,
    ParseError,
    interval_span_us,
    json_object,
    occurrences,
    opt_float,
    url_param,
)

__all__ = ["MexcProcessor", "parse_instruments"]  # parse_instruments: producers/base.py

TAKER_SIDES: dict[int, Side] = {1: "buy", 2: "sell"}
_decode_push = PushDataV3ApiWrapper.FromString


def _levels(items: Any) -> list[Level]:
    return [Level(float(item.price), float(item.quantity)) for item in items]


class MexcProcessor(SnapshotBridgeProcessor):
    exchange = "mexc"
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)
    id_name = "version"

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        data = raw.payload
        if data[:1] == b"{":
            self._control(decode_struct(wire.control_replies, data, "mexc control frame"), data)
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

    def _control(self, msg: wire.ControlReply, data: bytes) -> None:
        reply = msg.msg
        if reply is msgspec.UNSET and msg.channel is not msgspec.UNSET:
            raise ParseError(
                f"unsupported mexc JSON push on channel {msg.channel!r} (the pre-protobuf format)"
            )
        if msg.code != 0 or not isinstance(reply, str) or "Not Subscribed" in reply:
            raise ParseError(f"mexc request failed: {json_object(data, 'mexc control frame')}")
        if reply == wire.PONG:
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

    def _kline(
        self, conn: ConnectionState, raw: RawRecord, push: PushDataV3ApiWrapper, out: FeedOutput
    ) -> None:
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

    def _depth(
        self, conn: ConnectionState, raw: RawRecord, push: PushDataV3ApiWrapper, out: FeedOutput
    ) -> None:
        depths = push.publicAggreDepths
        first, last = int(depths.fromVersion), int(depths.toVersion)
        if last < first:
            raise ParseError(f"mexc depth push versions run backwards: {first}..{last}")
        delta = Delta(first, last, _levels(depths.bids), _levels(depths.asks), self._ts(push, raw), raw)
        self.on_delta(conn, self._symbol(push), delta, out)

    def on_rest(self, conn: ConnectionState, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if not path.endswith(DEPTH_PATH):
            super().on_rest(conn, raw, path, out)
            return
        symbol = url_param(raw, "symbol", "mexc depth snapshot")
        snapshot = decode_struct(wire.depth_snapshots, raw.payload, "mexc depth snapshot")
        if snapshot.lastUpdateId is msgspec.UNSET:
            raise ParseError(f"mexc depth snapshot has no lastUpdateId: {raw.text()[:200]}")
        bids, asks = _snapshot_levels(snapshot.bids, "bids"), _snapshot_levels(snapshot.asks, "asks")
        self.bridge(conn, symbol.upper(), raw, snapshot.lastUpdateId, bids, asks, out)


def _snapshot_levels(rows: list[tuple[float, float]] | None, name: str) -> list[Level]:
    if rows is None:
        raise KeyError(name)
    return [Level(price, size) for price, size in rows]
