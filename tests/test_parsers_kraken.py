"""Kraken WS v2 and v1 parsers on the real frames; checksums over the wire text."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from feed_helpers import KRAKEN_PAIRS_URL, Feed, empty, kraken_pairs, published
from samples import messages

from marketpipe.records import Level

PAIRS = kraken_pairs(
    ("XXMRZUSD", "XMR/USD", "XXMR", "ZUSD", ""),
    ("GRTETH", "GRT/ETH", "GRT", "XETH", ""),
    ("XETHZUSD", "ETH/USD", "XETH", "ZUSD", ""),
    ("XXBTZUSD", "XBT/USD", "XXBT", "ZUSD", ""),
)


def utc_us(*parts: int) -> int:
    stamp = datetime(*parts, tzinfo=UTC)
    return int((stamp - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000 + stamp.microsecond


def v2() -> Feed:
    feed = Feed("kraken")
    feed.open("wss://ws.kraken.com/v2", ["ETH/USD", "BTC/USD"])
    feed.rest(KRAKEN_PAIRS_URL, PAIRS)
    return feed


def v1() -> Feed:
    feed = Feed("kraken")
    feed.open("wss://ws.kraken.com", ["XMR/USD", "GRT/ETH"])
    feed.rest(KRAKEN_PAIRS_URL, PAIRS)
    return feed


def eth_snapshot() -> str:
    return messages("kraken.json", "book_snapshot")[0]


def eth_update() -> str:
    return messages("kraken.json", "book_update")[0]


def test_instrument_map_uses_wsname_and_aliases() -> None:
    from marketpipe.exchanges.kraken import parse_instruments

    found = parse_instruments(PAIRS.encode())
    assert found["XBT/USD"] == found["BTC/USD"] == "BTC-USD"
    assert found["XMR/USD"] == "XMR-USD" and found["GRT/ETH"] == "GRT-ETH"


def test_v2_trade_field_by_field() -> None:
    feed = v2()
    (trade,) = feed.recv(messages("kraken.json", "trade")[0]).trades
    assert (trade.exchange, trade.symbol, trade.exchange_symbol) == ("kraken", "BTC-USD", "BTC/USD")
    assert (trade.trade_id, trade.price, trade.size, trade.side) == ("72166031", 68580.0, 0.14225864, "buy")
    assert trade.ts == utc_us(2024, 7, 27, 21, 16, 0, 512060)
    assert trade.recv_ts == feed.recv_us(-1)


def test_v2_real_snapshot_and_update_checksums_verify() -> None:
    feed = v2()
    ack = feed.recv(messages("kraken.json", "ack")[1])
    assert empty(ack)
    out = feed.recv(eth_snapshot())
    assert not out.errors and not out.control
    (change,) = out.books
    wire = json.loads(eth_snapshot())["data"][0]
    assert change.snapshot and change.checksum == 2606672715 == wire["checksum"]
    assert change.bids == [Level(b["price"], b["qty"]) for b in wire["bids"]]
    assert change.asks == [Level(a["price"], a["qty"]) for a in wire["asks"]]
    assert change.ts == change.recv_ts  # this captured snapshot carries no timestamp
    (bbo,) = out.bbos
    assert (bbo.bid_price, bbo.bid_size, bbo.ask_price, bbo.ask_size) == (
        1797.24,
        0.43393711,
        1797.25,
        1.40355852,
    )

    out = feed.recv(eth_update())
    (change,) = out.books
    assert change.checksum == 3329440863 and not change.snapshot
    assert change.asks == [Level(1797.29, 0.0), Level(1797.52, 1.56601318)] and change.bids == []
    assert change.ts == utc_us(2025, 5, 6, 9, 17, 26, 208075)
    assert out.bbos == []  # best levels unchanged
    assert feed.proc.counters.checksums_verified == 2


def test_v2_doc_snapshot_checksum_verifies() -> None:
    feed = v2()
    out = feed.recv(messages("kraken.json", "book_snapshot")[1])
    assert not out.errors and out.books[0].checksum == 3310070434
    assert feed.proc.counters.checksums_verified == 1 and feed.proc.counters.checksum_failures == 0


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"qty":1.56601318', '"qty":1.56601319'),  # a different size
        ('"price":1797.52', '"price":1797.520'),  # the same number, different wire text
    ],
)
def test_v2_corrupted_update_fails_checksum_once_per_episode(old: str, new: str) -> None:
    feed = v2()
    feed.recv(eth_snapshot())
    corrupted = eth_update().replace(old, new)
    assert corrupted != eth_update()
    out = feed.recv(corrupted)
    assert not published(out)
    ((status),) = out.status
    assert (status.state, status.reason, status.checksum_failures) == ("unsynced", "checksum", 1)
    assert [(c.action, c.symbol, c.exchange_symbol) for c in out.control] == [
        ("resync", "ETH-USD", "ETH/USD")
    ]
    assert empty(feed.recv(eth_update()))  # unsynced: dropped, no new request
    out = feed.recv(eth_snapshot())
    assert [(s.state, s.reason) for s in out.status] == [("synced", "snapshot")]
    assert feed.proc.counters.checksum_failures == 1 and feed.proc.counters.resyncs == 1


def test_v2_truncates_to_subscribed_depth_and_publishes_the_dropped_level() -> None:
    feed = v2()
    feed.recv(eth_snapshot())
    wire = json.loads(eth_snapshot())["data"][0]
    worst_bid = min(b["price"] for b in wire["bids"])
    update = {
        "channel": "book",
        "type": "update",
        "data": [{"symbol": "ETH/USD", "bids": [{"price": 1797.245, "qty": 2.5}], "asks": [],
                  "timestamp": "2025-05-06T09:17:27.000000Z"}],
    }  # fmt: skip
    out = feed.recv(json.dumps(update))
    (change,) = out.books
    assert change.bids == [Level(1797.245, 2.5), Level(worst_bid, 0.0)]
    (bbo,) = out.bbos
    assert (bbo.bid_price, bbo.bid_size) == (1797.245, 2.5)


def test_v2_control_frames_are_counted() -> None:
    feed = v2()
    frames = [
        *messages("kraken.json", "ack"),
        *messages("kraken.json", "heartbeat"),
        *messages("kraken.json", "other_status"),
    ]
    out = feed.recv_all(frames)
    assert empty(out)
    assert (feed.proc.counters.acks, feed.proc.counters.heartbeats) == (3, 1)
    rejected = feed.recv(
        '{"method":"subscribe","success":false,"error":"Currency pair not supported","symbol":"X/Y"}'
    )
    assert "rejected" in rejected.errors[0][1]


def test_v2_name_used_directly_without_metadata() -> None:
    feed = Feed("kraken")
    (trade,) = feed.recv(messages("kraken.json", "trade")[0]).trades
    assert trade.symbol == "BTC-USD"


# ------------------------------------------------------------------------------------- v1


def test_v1_trades_field_by_field() -> None:
    feed = v1()
    out = feed.recv_all(messages("kraken_v1.json", "trade"))
    first, second = out.trades
    assert (first.symbol, first.exchange_symbol) == ("XMR-USD", "XMR/USD")
    assert (first.price, first.size, first.side, first.ts) == (354.11, 0.89594024, "sell", 1618678142557535)
    # no trade id in v1: the price, volume, time and side as sent identify the trade
    assert first.trade_id == "354.11000000:0.89594024:1618678142.557535:s"
    assert (second.side, second.price) == ("buy", 354.55)


def test_v1_trade_identity_is_the_same_on_every_connection_and_repeats_are_numbered() -> None:
    frame = json.loads(messages("kraken_v1.json", "trade")[0])
    row = frame[1][0]
    # one taker order filling two equal maker orders: two trades with the same four values
    doubled = json.dumps([frame[0], [row, row], "trade", "XMR/USD"])
    first = v1()
    ids = [t.trade_id for t in first.recv(doubled).trades]
    assert ids == [f"{':'.join(row[:4])}", f"{':'.join(row[:4])}#1"]
    # the same frame on a second connection of the same processor: nothing new
    second = Feed("kraken", conn="kraken.t1.1", processor=first.proc)
    second.open("wss://ws.kraken.com", ["XMR/USD"])
    second.rest(KRAKEN_PAIRS_URL, PAIRS)
    assert second.recv(doubled).trades == [] and first.proc.counters.duplicates_dropped == 2


def test_v1_pair_without_metadata_is_read_by_the_documented_rule() -> None:
    feed = Feed("kraken")
    (trade,) = feed.recv(messages("kraken_v1.json", "trade")[0]).trades
    assert (trade.symbol, trade.exchange_symbol) == ("XMR-USD", "XMR/USD")
    assert feed.proc.symbol_of("XBT/USD") == "BTC-USD"  # the documented v1 alias


def test_v1_snapshot_loads_full_depth() -> None:
    feed = v1()
    frame = messages("kraken_v1.json", "book_snapshot")[0]
    out = feed.recv(frame)
    payload = json.loads(frame)[1]
    (change,) = out.books
    assert change.snapshot and change.symbol == "GRT-ETH"
    assert change.asks == sorted(
        (Level(float(p), float(v)) for p, v, _ in payload["as"]), key=lambda lv: lv.price
    )
    assert change.bids == sorted(
        (Level(float(p), float(v)) for p, v, _ in payload["bs"]), key=lambda lv: -lv.price
    )
    assert change.ts == max(int(float(ts) * 1e6 + 0.5) for *_, ts in payload["as"] + payload["bs"])


def test_v1_updates_without_their_snapshot_request_one_resync() -> None:
    feed = v1()
    out = feed.recv_all(messages("kraken_v1.json", "book_update"))
    assert not published(out) and not out.errors
    assert [(c.symbol, c.reason) for c in out.control] == [("XMR-USD", "gap")]


def as_v1_frames() -> tuple[str, str]:
    """The real v2 ETH/USD snapshot and update re-expressed as v1 arrays with the same wire text."""
    import msgspec

    decode = msgspec.json.Decoder(float_hook=str).decode
    snap = decode(eth_snapshot())["data"][0]
    upd = decode(eth_update())["data"][0]

    def rows(levels: list[dict[str, str]]) -> list[list[str]]:
        return [[lv["price"], lv["qty"], "1746522646.208075"] for lv in levels]

    snapshot = [560, {"as": rows(snap["asks"]), "bs": rows(snap["bids"])}, "book-10", "ETH/USD"]
    update = [560, {"a": rows(upd["asks"]), "c": str(upd["checksum"])}, "book-10", "ETH/USD"]
    return json.dumps(snapshot), json.dumps(update)


def test_v1_checksum_path_verifies_the_real_checksum() -> None:
    snapshot, update = as_v1_frames()
    feed = v1()
    feed.recv(snapshot)
    out = feed.recv(update)
    assert not out.control and out.books[0].checksum == 3329440863
    assert feed.proc.counters.checksums_verified == 1
    corrupted = update.replace('"1.56601318"', '"1.566013180"')
    feed2 = v1()
    feed2.recv(snapshot)
    out = feed2.recv(corrupted)
    assert not published(out) and [s.reason for s in out.status] == ["checksum"]


def test_v1_control_frames_are_counted() -> None:
    feed = v1()
    out = feed.recv_all([*messages("kraken_v1.json", "ack"), *messages("kraken_v1.json", "heartbeat")])
    assert empty(out)
    assert (feed.proc.counters.acks, feed.proc.counters.heartbeats) == (3, 1)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (
            '{"channel":"book","type":"update","data":[{"symbol":"ETH/USD","bids":[{"price":1}]}]}',
            "missing field",
        ),
        ('[1,{"a":[]},"spread","XMR/USD"]', "unsupported kraken v1 channel 'spread'"),
        ('{"channel":"book","type":', "invalid JSON"),
        ("[1,2]", "not [channelID"),
    ],
)
def test_bad_frames(frame: str, reason: str) -> None:
    out = v2().recv(frame)
    assert len(out.errors) == 1 and reason in out.errors[0][1], out.errors
