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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from marketpipe.exchanges.kraken import V1_TAKER_SIDES as TAKER_SIDES
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
    event = msg["event"]
    if event in ("heartbeat", "pong"):
        proc.counters.heartbeats += 1
    elif event == "systemStatus":
        proc.counters.acks += 1
    elif event == "subscriptionStatus":
        if msg.get("status") == "error" or "errorMessage" in msg:
            raise ParseError(
                f"kraken v1 subscription rejected: {msg.get('errorMessage')!r} for {msg.get('pair')!r}"
            )
        proc.counters.acks += 1
    elif event == "error":
        raise ParseError(f"kraken v1 error: {msg.get('errorMessage')!r}")
    else:
        raise ParseError(f"unsupported kraken v1 event {event!r}")


def on_array(
    proc: KrakenProcessor, conn: KrakenConnection, msg: list[Any], raw: RawRecord, out: FeedOutput
) -> None:
    if len(msg) < 4 or not isinstance(msg[-2], str) or not isinstance(msg[-1], str):
        raise ParseError("kraken v1 array frame is not [channelID, payload..., channelName, pair]")
    channel_name, pair = msg[-2], msg[-1]
    if channel_name == "trade":
        _trades(proc, msg[1], pair, raw, out)
    elif channel_name.startswith("book-"):
        _book(proc, conn, msg[1:-2], int(channel_name[5:]), pair, raw, out)
    elif channel_name == "ticker":
        _ticker(proc, msg[1], pair, raw, out)
    elif channel_name.startswith("ohlc-") and channel_name[5:].isdigit():
        _ohlc(proc, conn, msg[1], int(channel_name[5:]), pair, raw, out)
    else:
        raise ParseError(f"unsupported kraken v1 channel {channel_name!r}")


def _trades(proc: KrakenProcessor, rows: list[list[Any]], pair: str, raw: RawRecord, out: FeedOutput) -> None:
    parsed = [
        (
            trade_identity(row[:4]),
            float(row[0]),
            float(row[1]),
            seconds_text_to_us(_text(row[2])),
            TAKER_SIDES.get(row[3], "unknown"),
        )
        for row in rows
    ]
    identities = occurrences([identity for identity, *_ in parsed])
    for identity, (_, price, size, ts, side) in zip(identities, parsed, strict=True):
        proc.trade(raw, out, pair, identity, price, size, side, ts)


def _ticker(proc: KrakenProcessor, payload: Any, pair: str, raw: RawRecord, out: FeedOutput) -> None:
    """``{a,b,c,v,p,t,l,h,o}``; the 24 h values are the second of each [today, last 24 h] pair.
    No time is sent."""
    if not isinstance(payload, dict):
        raise ParseError("kraken v1 ticker payload is not an object")
    proc.ticker(
        raw,
        out,
        pair,
        None,
        last_price=float(payload["c"][0]),
        last_size=float(payload["c"][1]),
        bid_price=float(payload["b"][0]),
        bid_size=float(payload["b"][2]),
        ask_price=float(payload["a"][0]),
        ask_size=float(payload["a"][2]),
        open_24h=float(payload["o"][1]),
        high_24h=float(payload["h"][1]),
        low_24h=float(payload["l"][1]),
        volume_24h=float(payload["v"][1]),
        trades_24h=int(payload["t"][1]),
    )


def _ohlc(
    proc: KrakenProcessor,
    conn: KrakenConnection,
    row: Any,
    minutes: int,
    pair: str,
    raw: RawRecord,
    out: FeedOutput,
) -> None:
    """``[time, etime, open, high, low, close, vwap, volume, count]``: ``etime`` is the interval
    end; no final flag (the base's later-window rule closes a candle)."""
    if not isinstance(row, list) or len(row) < 9:
        raise ParseError(
            "kraken v1 ohlc payload is not [time, etime, open, high, low, close, vwap, volume, count]"
        )
    close_time = seconds_text_to_us(_text(row[1]))
    proc.exchange_candle(
        conn,
        raw,
        out,
        pair,
        interval_name(minutes * 60),
        close_time - minutes * 60_000_000,
        close_time,
        float(row[2]),
        float(row[3]),
        float(row[4]),
        float(row[5]),
        volume=float(row[7]),
        trades=int(row[8]),
        ts=seconds_text_to_us(_text(row[0])),
    )


def trade_identity(values: list[Any]) -> str:
    """``price:volume:time:side`` as sent."""
    return ":".join(_text(value) for value in values)


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _book(
    proc: KrakenProcessor,
    conn: KrakenConnection,
    payloads: list[Any],
    depth: int,
    pair: str,
    raw: RawRecord,
    out: FeedOutput,
) -> None:
    proc.counters.book_messages += 1
    state = proc.book_state(conn, pair)
    state.depth = depth
    if any(not isinstance(payload, dict) for payload in payloads):
        raise ParseError("kraken v1 book payload is not an object")
    if "as" in payloads[0] or "bs" in payloads[0]:
        asks, bids, _ = _collect(payloads, "as", "bs")
        ts = _latest(asks, bids, raw)
        proc.apply_snapshot(state, _levels(bids), _levels(asks), None, ts, raw, out)
        return
    asks, bids, checksum = _collect(payloads, "a", "b")
    ts = _latest(asks, bids, raw)
    proc.apply_update(state, _levels(bids), _levels(asks), checksum, ts, raw, out)


def _collect(
    payloads: list[dict[str, Any]], ask_key: str, bid_key: str
) -> tuple[list[Any], list[Any], int | None]:
    asks: list[Any] = []
    bids: list[Any] = []
    checksum: int | None = None
    for payload in payloads:
        asks.extend(payload.get(ask_key, ()))
        bids.extend(payload.get(bid_key, ()))
        if "c" in payload:
            checksum = int(payload["c"])
    return asks, bids, checksum


def _levels(rows: list[list[str]]) -> TextRows:
    return kraken_levels((row[0], row[1]) for row in rows)


def _latest(asks: list[list[str]], bids: list[list[str]], raw: RawRecord) -> int:
    stamps = [row[2] for row in asks] + [row[2] for row in bids]
    return max(seconds_text_to_us(stamp) for stamp in stamps) if stamps else raw.recv_ns // 1000
