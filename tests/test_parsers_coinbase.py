"""Coinbase Advanced Trade parser on the real frames, incl. the full verbatim l2 snapshots."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from feed_helpers import COINBASE_PRODUCTS_URL, Feed, coinbase_products, empty, published
from samples import large_frame, messages

from marketpipe.records import Level

PRODUCTS = coinbase_products(("BTC-USD", "BTC", "USD"), ("ETH-USD", "ETH", "USD"))
ETH_SNAPSHOT = "coinbase_advanced_l2_snapshot_ETH-USD.json"
BTC_SNAPSHOT = "coinbase_advanced_l2_snapshot_BTC-USD.json"


def connected() -> Feed:
    feed = Feed("coinbase")
    feed.open("wss://advanced-trade-ws.coinbase.com", ["BTC-USD", "ETH-USD"])
    feed.rest(COINBASE_PRODUCTS_URL, PRODUCTS)
    return feed


def us(stamp: str) -> int:
    """Independent RFC 3339 -> µs (datetime keeps 6 fractional digits)."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(head + "+00:00")
    return int(whole.timestamp()) * 1_000_000 + int((frac + "000000")[:6])


def updates() -> dict[int, str]:
    return {json.loads(frame)["sequence_num"]: frame for frame in messages("coinbase.json", "book_update")}


def acks() -> dict[int, str]:
    return {json.loads(frame)["sequence_num"]: frame for frame in messages("coinbase.json", "ack")}


def side_levels(frame: str, side: str) -> list[Level]:
    rows = json.loads(frame)["events"][0]["updates"]
    return [Level(float(r["price_level"]), float(r["new_quantity"])) for r in rows if r["side"] == side]


def test_market_trades_snapshot_and_update_field_by_field() -> None:
    feed = connected()
    frames = messages("coinbase.json", "trade")
    out = feed.recv(frames[0])
    wire = json.loads(frames[0])["events"][0]["trades"]
    assert not out.errors and len(out.trades) == len(wire)
    assert [t.ts for t in out.trades] == sorted(us(t["time"]) for t in wire)  # oldest first
    newest = out.trades[-1]
    assert newest.trade_id == wire[0]["trade_id"] == "1068572090"
    assert (newest.symbol, newest.exchange_symbol) == ("BTC-USD", "BTC-USD")
    assert (newest.price, newest.size) == (65083.67, 0.002186)
    assert newest.side == "buy"  # Coinbase reports the maker side (SELL): the taker bought
    assert newest.ts == us("2026-08-09T21:05:42.514318Z")
    assert newest.recv_ts == feed.recv_us(-1) and newest.seq == feed.records[-1].seq
    out = feed.recv(frames[2])
    (trade,) = out.trades
    assert (trade.trade_id, trade.price, trade.size, trade.side) == (
        "1068572092",
        65083.66,
        0.00171442,
        "sell",
    )


def test_taker_side_agrees_with_the_real_book() -> None:
    """A trade at the best ask is a taker buy: the captured BTC book and trades confirm the mapping."""
    feed = connected()
    feed.recv(large_frame(BTC_SNAPSHOT))
    bbo = feed.proc._connections[feed.conn].books["BTC-USD"].book.bbo()  # type: ignore[attr-defined]
    assert bbo is not None
    trade = feed.recv(messages("coinbase.json", "trade")[1]).trades[0]
    assert trade.price == bbo[2] and trade.side == "buy"


def test_large_eth_snapshot_then_contiguous_updates() -> None:
    feed = connected()
    snapshot = large_frame(ETH_SNAPSHOT)
    out = feed.recv(snapshot)
    rows = json.loads(snapshot)["events"][0]["updates"]
    bids = sorted((float(r["price_level"]) for r in rows if r["side"] == "bid"), reverse=True)
    asks = sorted(float(r["price_level"]) for r in rows if r["side"] == "offer")
    (change,) = out.books
    assert change.snapshot and change.symbol == "ETH-USD"
    assert [level.price for level in change.bids] == bids and len(bids) == 6935
    assert [level.price for level in change.asks] == asks and len(asks) == 16399
    assert change.ts == us(rows[0]["event_time"])
    (bbo,) = out.bbos
    assert (bbo.bid_price, bbo.ask_price) == (1919.44, 1919.49)
    assert [(s.state, s.reason) for s in out.status] == [("synced", "snapshot")]

    upd, ack = updates(), acks()
    for seq in (22, 23, 24, 25, 26, 27):
        out = feed.recv(upd.get(seq) or ack[seq])
        assert not out.errors and not out.control, seq
        if seq in upd:
            (change,) = out.books
            assert change.bids == side_levels(upd[seq], "bid")
            assert change.asks == side_levels(upd[seq], "offer")
            assert change.last_update_id == seq
    assert feed.proc.counters.acks == 2


def test_missing_sequence_num_unsyncs_every_book_of_the_connection() -> None:
    feed = connected()
    feed.recv(large_frame(BTC_SNAPSHOT))
    out = feed.recv(large_frame(ETH_SNAPSHOT))  # sequence_num 13 then 21: the BTC book is suspect
    assert [(s.symbol, s.state, s.reason) for s in out.status] == [
        ("BTC-USD", "unsynced", "gap"),
        ("ETH-USD", "synced", "snapshot"),
    ]
    assert [(c.symbol, c.reason) for c in out.control] == [("BTC-USD", "gap")]
    assert [c.symbol for c in out.books] == ["ETH-USD"]
    upd, ack = updates(), acks()
    for seq in (22, 23, 24, 25, 26, 27):
        assert not feed.recv(upd.get(seq) or ack[seq]).control
    out = feed.recv(upd[29])  # 28 was not captured
    assert not published(out)
    # BTC is still in its first episode: no second request for it
    assert [(s.symbol, s.state, s.reason, s.gaps) for s in out.status] == [("ETH-USD", "unsynced", "gap", 1)]
    assert [c.symbol for c in out.control] == ["ETH-USD"]
    assert feed.proc.counters.sequence_gaps == 2
    heartbeat = json.loads(messages("coinbase.json", "heartbeat")[0])
    heartbeat["sequence_num"] = 30
    assert empty(feed.recv(json.dumps(heartbeat)))  # same episode: nothing more
    resnap = large_frame(ETH_SNAPSHOT).replace('"sequence_num":21', '"sequence_num":31', 1)
    out = feed.recv(resnap)
    assert [(s.symbol, s.state) for s in out.status] == [("ETH-USD", "synced")]
    assert out.books[0].snapshot


def test_no_gap_when_the_missing_frame_is_present() -> None:
    feed = connected()
    feed.recv(large_frame(ETH_SNAPSHOT))
    upd, ack = updates(), acks()
    for seq in (22, 23, 24, 25, 26, 27):
        feed.recv(upd.get(seq) or ack[seq])
    heartbeat = json.loads(messages("coinbase.json", "heartbeat")[0])
    heartbeat["sequence_num"] = 28
    assert empty(feed.recv(json.dumps(heartbeat)))
    out = feed.recv(upd[29])
    assert len(out.books) == 1 and not out.control
    assert feed.proc.counters.heartbeats == 1


def test_update_before_snapshot_asks_for_one_resync() -> None:
    feed = connected()
    out = feed.recv_all([updates()[22], updates()[23]])
    assert not published(out)
    assert [c.reason for c in out.control] == ["gap"]
    assert "before any snapshot" in out.status[0].detail


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"channel":"status","sequence_num":0,"events":[]}', "unsupported coinbase channel 'status'"),
        ('{"type":"error","message":"failure to subscribe"}', "coinbase error"),
        ('{"channel":"l2_data","sequence_num":0,"events":[{"type":"update","product_id":"ETH-USD",'
         '"updates":[{"side":"middle","price_level":"1","new_quantity":"1"}]}]}', "side 'middle'"),
        ("{not json", "invalid JSON"),
    ],
)  # fmt: skip
def test_bad_frames(frame: str, reason: str) -> None:
    out = connected().recv(frame)
    assert len(out.errors) == 1 and reason in out.errors[0][1]
