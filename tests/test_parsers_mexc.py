"""MEXC spot v3 parser.

There are NO real MEXC frames in ../shared (MEXC pushes binary protobuf; nothing was captured);
mexc_ticker_kline.json holds only the docs' JSON renderings of the miniTicker and kline pushes.
These tests use (a) the JSON renderings of pushes published in MEXC's docs, re-encoded with our
protobuf classes, (b) frames hand-encoded byte by byte from the documented field numbers (so a
wrong number in our .proto fails here), and (c) constructed variants for the sync rules.
Nothing here is verified on real MEXC frames.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from feed_helpers import Feed, empty, published
from google.protobuf import json_format
from samples import messages

from marketpipe.exchanges.mexc import parse_instruments
from marketpipe.exchanges.mexc_pb import PushDataV3ApiWrapper
from marketpipe.records import Level

INFO_URL = "https://api.mexc.com/api/v3/exchangeInfo?symbols=BTCUSDT,ETHUSDT"
DEPTH_URL = "https://api.mexc.com/api/v3/depth?symbol=BTCUSDT&limit=5000"
DEPTH = "spot@public.aggre.depth.v3.api.pb@100ms"
DEALS = "spot@public.aggre.deals.v3.api.pb@100ms"
INFO = json.dumps(
    {
        "timezone": "CST",
        "serverTime": 1736409765000,
        "symbols": [
            {"symbol": "BTCUSDT", "status": "1", "baseAsset": "BTC", "quoteAsset": "USDT"},
            {"symbol": "ETHUSDT", "status": "1", "baseAsset": "ETH", "quoteAsset": "USDT"},
        ],
    }
)

# The documented sample pushes (spot v3 "Websocket Market Streams"), as MEXC renders them in JSON.
DOC_DEPTH = {
    "channel": f"{DEPTH}@BTCUSDT",
    "symbol": "BTCUSDT",
    "sendTime": "1778075380657",
    "publicAggreDepths": {
        "asks": [],
        "bids": [{"price": "100", "quantity": "4"}],
        "eventType": DEPTH,
        "fromVersion": "10023",
        "toVersion": "10023",
        "lastOrderCreateTime": "1778075380572",
    },
}
DOC_DEALS = {
    "channel": f"{DEALS}@BTCUSDT",
    "symbol": "BTCUSDT",
    "sendTime": 1736409765052,
    "publicAggreDeals": {
        "deals": [
            {"price": "93220.00", "quantity": "0.04438243", "tradeType": 2, "time": 1736409765051},
            {"price": "93220.01", "quantity": "0.01000000", "tradeType": 1, "time": 1736409765051},
        ],
        "eventType": DEALS,
    },
}


def from_doc(doc: Mapping[str, Any]) -> bytes:
    """A documented JSON rendering re-encoded as the binary frame (undocumented fields dropped)."""
    message = json_format.ParseDict(doc, PushDataV3ApiWrapper(), ignore_unknown_fields=True)
    return message.SerializeToString()


def depth_push(
    from_version: int,
    to_version: int,
    bids: tuple[tuple[str, str], ...] = (),
    asks: tuple[tuple[str, str], ...] = (),
    symbol: str = "BTCUSDT",
    send_ms: int = 1736411507002,
) -> bytes:
    push = PushDataV3ApiWrapper(channel=f"{DEPTH}@{symbol}", symbol=symbol, sendTime=send_ms)
    body = push.publicAggreDepths
    for price, qty in bids:
        body.bids.add(price=price, quantity=qty)
    for price, qty in asks:
        body.asks.add(price=price, quantity=qty)
    body.eventType = DEPTH
    body.fromVersion, body.toVersion = str(from_version), str(to_version)
    return push.SerializeToString()


def snapshot(last_id: int) -> str:
    return json.dumps(
        {
            "lastUpdateId": last_id,
            "bids": [["92877.58", "1.5"], ["92877.00", "2"]],
            "asks": [["92878.00", "0.5"], ["92879.10", "3"]],
            "timestamp": 1736411507000,
        }
    )


def connected() -> Feed:
    feed = Feed("mexc")
    feed.open("wss://wbs-api.mexc.com/ws", ["BTCUSDT", "ETHUSDT"])
    feed.rest(INFO_URL, INFO)
    feed.feed(
        "sent", json.dumps({"method": "SUBSCRIPTION", "params": [f"{DEPTH}@BTCUSDT", f"{DEALS}@BTCUSDT"]})
    )
    return feed


# -- hand-encoded wire bytes: the field numbers as documented, independent of our .proto --------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes | str | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def test_documented_field_numbers_decode() -> None:
    # wrapper: channel=1, symbol=3, sendTime=6, publicAggreDeals=314
    # deals item: price=1, quantity=2, tradeType=3, time=4
    item = _field(1, "93220.00") + _field(2, "0.04438243") + _field(3, 2) + _field(4, 1736409765051)
    deals = _field(1, item) + _field(2, DEALS)
    frame = (
        _field(1, f"{DEALS}@BTCUSDT") + _field(3, "BTCUSDT") + _field(6, 1736409765052) + _field(314, deals)
    )
    decoded_deals = PushDataV3ApiWrapper.FromString(frame)
    assert (
        decoded_deals.publicAggreDeals.deals[0]
        == PushDataV3ApiWrapper.FromString(from_doc(DOC_DEALS)).publicAggreDeals.deals[0]
    )
    assert decoded_deals.sendTime == 1736409765052 and decoded_deals.channel == f"{DEALS}@BTCUSDT"
    # depth body=313: asks=1, bids=2, eventType=3, fromVersion=4, toVersion=5
    level = _field(1, "92877.58") + _field(2, "0.00000000")
    body = _field(2, level) + _field(3, DEPTH) + _field(4, "10589632359") + _field(5, "10589632359")
    depth = (
        _field(1, f"{DEPTH}@BTCUSDT") + _field(3, "BTCUSDT") + _field(6, 1736411507002) + _field(313, body)
    )
    decoded = PushDataV3ApiWrapper.FromString(depth)
    assert decoded.WhichOneof("body") == "publicAggreDepths"
    assert decoded.publicAggreDepths.bids[0].price == "92877.58"
    assert decoded.publicAggreDepths.fromVersion == decoded.publicAggreDepths.toVersion == "10589632359"
    assert decoded.sendTime == 1736411507002 and decoded.symbol == "BTCUSDT"


# -- instruments, control frames, trades -----------------------------------------------------


def test_instruments_from_base_and_quote_assets() -> None:
    assert parse_instruments(INFO.encode()) == {"BTCUSDT": "BTC-USDT", "ETHUSDT": "ETH-USDT"}


def test_instruments_without_symbols_is_a_clear_error() -> None:
    feed = Feed("mexc")
    out = feed.rest(INFO_URL, json.dumps({"code": -1121, "msg": "Invalid symbol."}))
    assert len(out.errors) == 1 and "no 'symbols'" in out.errors[0][1]


def test_subscription_reply_and_pong_are_counted_not_published() -> None:
    feed = connected()
    ack = feed.recv(json.dumps({"id": 0, "code": 0, "msg": f"{DEPTH}@BTCUSDT"}))
    pong = feed.recv('{"id":0,"code":0,"msg":"PONG"}')
    assert empty(ack) and empty(pong)
    assert feed.proc.counters.acks == 1 and feed.proc.counters.heartbeats == 1


def test_failed_subscription_is_dead_lettered_with_the_reply() -> None:
    feed = connected()
    out = feed.recv('{"id":0,"code":0,"msg":"Not Subscribed successfully! [spot@x].  Reason: Blocked! "}')
    assert len(out.errors) == 1 and "Not Subscribed" in out.errors[0][1]


def test_documented_deals_push_field_by_field() -> None:
    feed = connected()
    out = feed.recv(from_doc(DOC_DEALS))
    assert not out.errors
    first, second = out.trades
    assert first.exchange == "mexc" and first.symbol == "BTC-USDT" and first.exchange_symbol == "BTCUSDT"
    assert first.price == 93220.00 and first.size == 0.04438243
    assert first.side == "sell" and second.side == "buy"  # tradeType 2 = sell, 1 = buy
    assert first.ts == second.ts == 1736409765051 * 1000
    # aggregated deals carry no id: time, price, quantity and taker type as sent identify them
    assert (first.trade_id, second.trade_id) == (
        "1736409765051:93220.00:0.04438243:2",
        "1736409765051:93220.01:0.01000000:1",
    )
    assert first.conn == feed.conn and first.seq == feed.records[-1].seq


def test_documented_depth_push_is_buffered_until_a_snapshot() -> None:
    feed = connected()
    out = feed.recv(from_doc(DOC_DEPTH))
    assert empty(out), "no book is published before the REST snapshot bridges it"
    assert feed.proc.counters.book_messages == 1


# -- the documented local-book procedure ---------------------------------------------------------


def test_snapshot_bridges_buffered_pushes_and_quantity_zero_deletes() -> None:
    feed = connected()
    feed.recv(depth_push(95, 99, bids=(("1.00", "1"),)))  # toVersion <= lastUpdateId: dropped
    feed.recv(depth_push(98, 102, bids=(("92877.58", "0.00000000"),)))  # straddles 101: applied
    feed.recv(depth_push(103, 103, asks=(("92878.00", "0.7"),)))
    out = feed.rest(DEPTH_URL, snapshot(100))
    assert not out.errors and [s.state for s in out.status] == ["synced"]
    snap, first, second = out.books
    assert snap.snapshot and snap.last_update_id == 100
    assert (first.first_update_id, first.last_update_id) == (98, 102)
    assert first.bids == [Level(92877.58, 0.0)]
    assert (second.first_update_id, second.last_update_id) == (103, 103)
    assert out.bbos[-1].bid_price == 92877.00 and out.bbos[-1].ask_price == 92878.00
    assert out.bbos[-1].ask_size == 0.7
    live = feed.recv(depth_push(104, 106, bids=(("92877.50", "1"),)))
    assert published(live) and live.books[0].last_update_id == 106
    assert live.books[0].ts == 1736411507002 * 1000


def test_a_skipped_version_unsyncs_once_and_a_new_snapshot_resyncs() -> None:
    feed = connected()
    feed.rest(DEPTH_URL, snapshot(100))
    assert published(feed.recv(depth_push(101, 102, bids=(("92877.10", "1"),))))
    out = feed.recv(depth_push(104, 105, bids=(("92877.20", "1"),)))  # 103 missing
    assert [s.state for s in out.status] == ["unsynced"] and out.status[0].reason == "gap"
    assert len(out.control) == 1 and out.control[0].action == "resync" and out.control[0].symbol == "BTC-USDT"
    assert feed.proc.counters.sequence_gaps == 1
    assert empty(feed.recv(depth_push(106, 107))), "one episode: nothing more, no second request"
    out = feed.rest(DEPTH_URL, snapshot(105))
    assert [s.state for s in out.status] == ["synced"]
    assert [b.last_update_id for b in out.books] == [105, 107]  # the buffered 106..107 follows


def test_an_overlapping_push_after_the_first_is_a_gap() -> None:
    feed = connected()
    feed.rest(DEPTH_URL, snapshot(100))
    assert published(feed.recv(depth_push(99, 102, bids=(("92877.10", "1"),))))  # first may straddle
    out = feed.recv(depth_push(102, 104))  # must start at 103 exactly
    assert out.status and out.status[0].reason == "gap" and len(out.control) == 1


def test_a_snapshot_older_than_the_buffered_pushes_asks_for_another() -> None:
    feed = connected()
    feed.recv(depth_push(200, 201))
    out = feed.rest(DEPTH_URL, snapshot(100))
    assert not out.books and [s.state for s in out.status] == ["unsynced"] and len(out.control) == 1
    out = feed.rest(DEPTH_URL, snapshot(200))
    assert [b.last_update_id for b in out.books] == [200, 201]


def test_stale_push_after_sync_is_ignored() -> None:
    feed = connected()
    feed.rest(DEPTH_URL, snapshot(100))
    assert empty(feed.recv(depth_push(90, 100)))
    assert feed.proc.counters.stale_updates == 1


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x0a\x05spot@\xd2\x13", "neither JSON nor a protobuf push"),  # truncated body
        (
            PushDataV3ApiWrapper(channel="spot@public.kline.v3.api.pb@BTCUSDT").SerializeToString(),
            "unsupported",
        ),
        (b'{"id":0,"code":0,', "invalid JSON"),
        (b"", "empty"),
    ],
)
def test_unreadable_frames_are_dead_lettered_with_a_reason(frame: bytes, reason: str) -> None:
    feed = connected()
    out = feed.recv(frame)
    assert len(out.errors) == 1 and reason in out.errors[0][1], out.errors


def test_depth_push_without_versions_is_dead_lettered() -> None:
    feed = connected()
    push = PushDataV3ApiWrapper(channel=f"{DEPTH}@BTCUSDT", symbol="BTCUSDT")
    push.publicAggreDepths.eventType = DEPTH
    out = feed.recv(push.SerializeToString())
    assert len(out.errors) == 1 and "malformed mexc recv record" in out.errors[0][1]


def test_push_for_an_unknown_symbol_is_dead_lettered() -> None:
    feed = connected()
    out = feed.recv(depth_push(1, 2, symbol="NOPEUSDT"))
    assert len(out.errors) == 1 and "unknown mexc symbol 'NOPEUSDT'" in out.errors[0][1]


# -- miniTicker and kline (mexc_ticker_kline.json: the docs' JSON renderings) ------------------------

TK = "mexc_ticker_kline.json"
_DOC_NAMES = {
    "publicspotkline": "publicSpotKline",
    "windowstart": "windowStart",
    "windowend": "windowEnd",
    "openingprice": "openingPrice",
    "closingprice": "closingPrice",
    "highestprice": "highestPrice",
    "lowestprice": "lowestPrice",
    "symbolid": "symbolId",
    "createtime": "createTime",
}


def doc_push(kind: str, index: int = 0) -> dict[str, Any]:
    """A documented rendering with the proto's field names (the kline doc lower-cases them)."""

    def named(value: Any) -> Any:
        if isinstance(value, dict):
            return {_DOC_NAMES.get(k, k): named(v) for k, v in value.items()}
        return value

    found: dict[str, Any] = named(json.loads(messages(TK, kind)[index]))
    return found


def ticker_feed() -> Feed:
    feed = connected()
    info = {"symbols": [{"symbol": "MXUSDT", "baseAsset": "MX", "quoteAsset": "USDT"}]}
    feed.rest("https://api.mexc.com/api/v3/exchangeInfo?symbols=MXUSDT", json.dumps(info))
    return feed


def test_documented_mini_ticker_field_by_field() -> None:
    feed = ticker_feed()
    out = feed.recv(from_doc(doc_push("ticker")))
    assert out.errors == []
    (ticker,) = out.tickers
    assert (ticker.symbol, ticker.exchange_symbol, ticker.ts) == ("MX-USDT", "MXUSDT", 1755076752201000)
    assert (ticker.last_price, ticker.high_24h, ticker.low_24h) == (2.5174, 2.6299, 2.302)
    assert (ticker.volume_24h, ticker.quote_volume_24h) == (4638390.17, 11336518.0264), (
        "volume is the quote turnover"
    )
    assert (ticker.bid_price, ticker.open_24h, ticker.last_size, ticker.trades_24h) == (
        None,
        None,
        None,
        None,
    )


def test_documented_kline_field_by_field() -> None:
    feed = ticker_feed()
    out = feed.recv(from_doc(doc_push("kline")))
    assert out.errors == []
    (candle,) = out.exchange_candles
    assert (candle.symbol, candle.interval) == ("BTC-USDT", "15m")
    assert (candle.open_time, candle.close_time) == (1736410500_000000, 1736411400_000000)
    assert (candle.open, candle.high, candle.low, candle.close) == (92925.0, 93158.47, 92800.0, 93158.47)
    assert (candle.volume, candle.quote_volume, candle.trades) == (36.83803224, 3424811.05, None)
    assert candle.ts == 1736410707571000, "createTime where the push has no sendTime"
    assert candle.closed is False


def test_kline_and_mini_ticker_field_numbers_decode() -> None:
    # wrapper: publicSpotKline=308; kline: interval=1, windowStart=2, opening=3, closing=4,
    # highest=5, lowest=6, volume=7, amount=8, windowEnd=9
    kline = (
        _field(1, "Min1") + _field(2, 1736410500) + _field(3, "1") + _field(4, "2") + _field(5, "3")
        + _field(6, "0.5") + _field(7, "10") + _field(8, "20") + _field(9, 1736410560)
    )  # fmt: skip
    decoded = PushDataV3ApiWrapper.FromString(_field(3, "BTCUSDT") + _field(308, kline))
    body = decoded.publicSpotKline
    assert (body.interval, body.windowStart, body.windowEnd) == ("Min1", 1736410500, 1736410560)
    prices = (body.openingPrice, body.closingPrice, body.highestPrice, body.lowestPrice)
    assert prices == ("1", "2", "3", "0.5") and (body.volume, body.amount) == ("10", "20")
    # publicMiniTicker=309: symbol=1, price=2, high=5, low=6, volume=7, quantity=8
    mini = (
        _field(1, "MXUSDT")
        + _field(2, "2.5")
        + _field(5, "3")
        + _field(6, "2")
        + _field(7, "100")
        + _field(8, "40")
    )
    ticker = PushDataV3ApiWrapper.FromString(_field(309, mini)).publicMiniTicker
    assert (ticker.price, ticker.high, ticker.low, ticker.volume, ticker.quantity) == (
        "2.5",
        "3",
        "2",
        "100",
        "40",
    )


def test_kline_is_final_once_a_later_window_arrives() -> None:
    feed = ticker_feed()
    doc = doc_push("kline")
    feed.recv(from_doc(doc))
    body = doc["publicSpotKline"]
    body.update(windowStart=body["windowEnd"], windowEnd=body["windowEnd"] + 900, openingprice="93158.47")
    final, current = feed.recv(from_doc(doc)).exchange_candles
    assert (final.open_time, final.closed) == (1736410500_000000, True)
    assert (current.open_time, current.closed) == (1736411400_000000, False)


def test_old_json_kline_push_is_unsupported() -> None:
    out = ticker_feed().recv(messages(TK, "kline")[1])
    assert len(out.errors) == 1 and "unsupported mexc JSON push on channel 'push.kline'" in out.errors[0][1]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"interval": "Min2"}, "unsupported mexc kline interval"),
        ({"lowestprice": "99999"}, "do not bound"),
        ({"volume": "-1"}, "not a finite number >= 0"),
        ({"openingprice": ""}, "could not convert"),
    ],
)
def test_bad_klines_are_dead_lettered_with_a_reason(change: dict[str, str], reason: str) -> None:
    doc = doc_push("kline")
    doc["publicSpotKline"].update({_DOC_NAMES.get(k, k): v for k, v in change.items()})
    out = ticker_feed().recv(from_doc(doc))
    assert len(out.errors) == 1 and reason in out.errors[0][1], out.errors
    assert out.exchange_candles == []


def test_kline_without_a_wrapper_symbol_reads_it_from_the_channel() -> None:
    doc = doc_push("kline")
    del doc["symbol"]
    (candle,) = ticker_feed().recv(from_doc(doc)).exchange_candles
    assert (candle.exchange_symbol, candle.symbol) == ("BTCUSDT", "BTC-USDT")
