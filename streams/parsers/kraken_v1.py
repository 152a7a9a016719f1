"""Kraken WS v1 (legacy): array frames ``[channelID, payload..., channelName, pair]`` and
``{"event": ...}`` objects. Used by ``KrakenProcessor`` for connections on the v1 endpoint.

v1 pair names are AssetPairs ``wsname`` values (``XBT/USD``), resolved through the instrument
metadata; a pair it does not name is read by the documented rule (``BASE/QUOTE`` with the
XBT->BTC and XDG->DOGE aliases, ``KrakenProcessor.fallback_instrument``).

v1 trades carry no id. Their identity is built from what every connection receives alike:
the price, volume, time and side as sent (``"price:volume:time:side"``), plus ``#k`` for the
k-th row of the frame with exactly the same four values (one taker order filling two equal
maker orders at one price and time); so the same trade delivered on two connections has one id.
Book snapshots carry ``as``/``bs``; updates carry ``a``/``b`` (possibly in two objects)
with the checksum ``c`` in the last one; the subscribed depth is in the channel name.

The outer array arrives decoded into ``msgspec.Raw`` elements (streams/parsers/kraken.py); the
channel name picks the struct each payload element is decoded with (marketpipe.exchanges.kraken).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from marketpipe.exchanges.kraken import V1_TAKER_SIDES as TAKER_SIDES
from marketpipe.exchanges.kraken import V1BookLevel, V1BookPayload, V1Candle, V1Event, V1Ticker, V1TradeRow
from marketpipe.raw import RawRecord
from streams.parsers.base import (
    ConnectionState,
    FeedOutput,
    ParseError,
    TextRows,
    interval_name,
    kraken_levels,
    occurrences,
    seconds_text_to_us,
)

if TYPE_CHECKING:
    from streams.parsers.kraken import KrakenConnection, KrakenProcessor

T = TypeVar("T")

_name = msgspec.json.Decoder(str)
_trades_decoder = msgspec.json.Decoder(list[V1TradeRow])
_book_decoder = msgspec.json.Decoder(V1BookPayload)
_ticker_decoder = msgspec.json.Decoder(V1Ticker)
_candle_decoder = msgspec.json.Decoder(V1Candle)
_OHLC_SHAPE = "kraken v1 ohlc payload is not [time, etime, open, high, low, close, vwap, volume, count]"
_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_SHAPE = "kraken v1 array frame is not [channelID, payload..., channelName, pair]"


def learn_depth_from_request(conn: ConnectionState, msg: dict[str, Any]) -> None:
    subscription = msg.get("subscription")
    if (
        msg.get("event") == "subscribe"
        and isinstance(subscription, dict)
        and subscription.get("name") == "book"
    ):
        depths: dict[str, int] = getattr(conn, "depths", {})
        for pair in msg.get("pair", []):
            depths[pair] = int(subscription.get("depth", 10))


def on_event(proc: KrakenProcessor, conn: KrakenConnection, msg: dict[str, Any]) -> None:
    """``msg`` is the frame read generically (the v2 decoder refused it): read again as a v1 event."""
    try:
        event = msgspec.convert(msg, V1Event)
    except msgspec.ValidationError as exc:
        raise ParseError(f"malformed kraken v1 event: {exc}") from None
    if event.event in ("heartbeat", "pong"):
        proc.counters.heartbeats += 1
    elif event.event == "systemStatus":
        proc.counters.acks += 1
    elif event.event == "subscriptionStatus":
        if event.status == "error" or event.error_message is not None:
            raise ParseError(f"kraken v1 subscription rejected: {event.error_message!r} for {event.pair!r}")
        proc.counters.acks += 1
    elif event.event == "error":
        raise ParseError(f"kraken v1 error: {event.error_message!r}")
    else:
        raise ParseError(f"unsupported kraken v1 event {event.event!r}")


def on_array(
    proc: KrakenProcessor,
    conn: KrakenConnection,
    msg: list[msgspec.Raw],
    raw: RawRecord,
    out: FeedOutput,
) -> None:
    if len(msg) < 4:
        raise ParseError(_SHAPE)
    try:
        channel_name, pair = _name.decode(msg[-2]), _name.decode(msg[-1])
    except msgspec.DecodeError:
        raise ParseError(_SHAPE) from None
    if channel_name.startswith("book-"):
        try:
            payloads = [_book_decoder.decode(part) for part in msg[1:-2]]
        except msgspec.ValidationError as exc:
            raise _refused(exc, channel_name) from None
        _book(proc, conn, payloads, int(channel_name[5:]), pair, raw, out)
    elif channel_name == "trade":
        _trades(proc, _payload(_trades_decoder, msg[1], channel_name), pair, raw, out)
    elif channel_name == "ticker":
        _ticker(proc, _payload(_ticker_decoder, msg[1], channel_name), pair, raw, out)
    elif channel_name.startswith("ohlc-") and channel_name[5:].isdigit():
        candle = _payload(_candle_decoder, msg[1], channel_name, _OHLC_SHAPE)
        _ohlc(proc, conn, candle, int(channel_name[5:]), pair, raw, out)
    else:
        raise ParseError(f"unsupported kraken v1 channel {channel_name!r}")


def _payload(decoder: msgspec.json.Decoder[T], part: msgspec.Raw, channel_name: str, shape: str = "") -> T:
    """A payload element decoded with its channel's struct; a refusal is reported as before the
    structs: a missing field as the KeyError the feed words as ``missing field``."""
    try:
        return decoder.decode(part)
    except msgspec.ValidationError as exc:
        raise _refused(exc, channel_name, shape) from None


def _refused(exc: msgspec.ValidationError, channel_name: str, shape: str = "") -> Exception:
    reason = str(exc)
    missing = _MISSING.match(reason)
    if missing:
        return KeyError(missing.group(1))
    if shape:
        return ParseError(shape)
    if reason.startswith("Expected `object`, got"):
        return ParseError(f"kraken v1 {channel_name.partition('-')[0]} payload is not an object")
    return ParseError(f"malformed kraken v1 {channel_name} payload: {reason}")


def _trades(
    proc: KrakenProcessor, rows: list[V1TradeRow], pair: str, raw: RawRecord, out: FeedOutput
) -> None:
    parsed = [
        (
            trade_identity(row),
            float(row.price),
            float(row.volume),
            seconds_text_to_us(row.time),
            TAKER_SIDES.get(row.side, "unknown"),
        )
        for row in rows
    ]
    identities = occurrences([identity for identity, *_ in parsed])
    for identity, (_, price, size, ts, side) in zip(identities, parsed, strict=True):
        proc.trade(raw, out, pair, identity, price, size, side, ts)


def _ticker(proc: KrakenProcessor, payload: V1Ticker, pair: str, raw: RawRecord, out: FeedOutput) -> None:
    """The 24 h values are the second of each [today, last 24 h] pair. No time is sent."""
    proc.ticker(
        raw,
        out,
        pair,
        None,
        last_price=float(payload.c[0]),
        last_size=float(payload.c[1]),
        bid_price=float(payload.b[0]),
        bid_size=float(payload.b[2]),
        ask_price=float(payload.a[0]),
        ask_size=float(payload.a[2]),
        open_24h=float(payload.o[1]),
        high_24h=float(payload.h[1]),
        low_24h=float(payload.l[1]),
        volume_24h=float(payload.v[1]),
        trades_24h=payload.t[1],
    )


def _ohlc(
    proc: KrakenProcessor,
    conn: KrakenConnection,
    row: V1Candle,
    minutes: int,
    pair: str,
    raw: RawRecord,
    out: FeedOutput,
) -> None:
    """No final flag (the base's later-window rule closes a candle)."""
    close_time = seconds_text_to_us(row.etime)
    proc.exchange_candle(
        conn,
        raw,
        out,
        pair,
        interval_name(minutes * 60),
        close_time - minutes * 60_000_000,
        close_time,
        float(row.open),
        float(row.high),
        float(row.low),
        float(row.close),
        volume=float(row.volume),
        trades=row.count,
        ts=seconds_text_to_us(row.time),
    )


def trade_identity(row: V1TradeRow) -> str:
    """``price:volume:time:side`` as sent."""
    return f"{row.price}:{row.volume}:{row.time}:{row.side}"


def _book(
    proc: KrakenProcessor,
    conn: KrakenConnection,
    payloads: list[V1BookPayload],
    depth: int,
    pair: str,
    raw: RawRecord,
    out: FeedOutput,
) -> None:
    proc.counters.book_messages += 1
    state = proc.book_state(conn, pair)
    state.depth = depth
    first = payloads[0]
    if first.snapshot_asks is not None or first.snapshot_bids is not None:
        asks, bids, _ = _collect(payloads, True)
        proc.apply_snapshot(state, _levels(bids), _levels(asks), None, _latest(asks, bids, raw), raw, out)
        return
    asks, bids, checksum = _collect(payloads, False)
    proc.apply_update(state, _levels(bids), _levels(asks), checksum, _latest(asks, bids, raw), raw, out)


def _collect(
    payloads: list[V1BookPayload], snapshot: bool
) -> tuple[list[V1BookLevel], list[V1BookLevel], int | None]:
    """Both sides' levels and the checksum; an update may come split over two payloads."""
    if len(payloads) == 1:  # the usual frame: no copies
        (payload,) = payloads
        if snapshot:
            return payload.snapshot_asks or [], payload.snapshot_bids or [], None
        return payload.a, payload.b, None if payload.c is None else int(payload.c)
    asks: list[V1BookLevel] = []
    bids: list[V1BookLevel] = []
    checksum: int | None = None
    for payload in payloads:
        asks.extend((payload.snapshot_asks or ()) if snapshot else payload.a)
        bids.extend((payload.snapshot_bids or ()) if snapshot else payload.b)
        if payload.c is not None and not snapshot:
            checksum = int(payload.c)
    return asks, bids, checksum


def _levels(rows: list[V1BookLevel]) -> TextRows:
    return kraken_levels((row.price, row.volume) for row in rows)


def _latest(asks: list[V1BookLevel], bids: list[V1BookLevel], raw: RawRecord) -> int:
    stamps = [row.timestamp for row in asks] + [row.timestamp for row in bids]
    return max(seconds_text_to_us(stamp) for stamp in stamps) if stamps else raw.recv_ns // 1000
