"""Bybit v5 spot parser on the real frames (orderbook.200 snapshot + deltas, publicTrade)."""

from __future__ import annotations

import json

import pytest
from feed_helpers import BYBIT_INFO_URL, Feed, bybit_instruments, empty, published
from samples import messages

from marketpipe.records import Level

INFO = bybit_instruments(("BTCUSDT", "BTC", "USDT"), ("ETHUSDT", "ETH", "USDT"))


def connected() -> Feed:
    feed = Feed("bybit")
    feed.open("wss://stream.bybit.com/v5/public/spot", ["BTCUSDT"])
    feed.rest(BYBIT_INFO_URL, INFO)
    feed.feed("sent", '{"op":"subscribe","args":["orderbook.200.BTCUSDT"]}')
    return feed


def snapshot() -> str:
    return messages("bybit.json", "book_snapshot")[0]


def deltas() -> list[str]:
    return messages("bybit.json", "book_update")


def rows_to_levels(rows: list[list[str]]) -> list[Level]:
    return [Level(float(p), float(q)) for p, q in rows]


def replay(frames: list[str]) -> tuple[dict[float, float], dict[float, float]]:
    """Independent book: plain dicts, absolute sizes, 0 deletes."""
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    for frame in frames:
        data = json.loads(frame)["data"]
        for side, rows in ((bids, data["b"]), (asks, data["a"])):
            for price, size in rows:
                if float(size) == 0:
                    side.pop(float(price), None)
                else:
                    side[float(price)] = float(size)
    return bids, asks


def test_public_trades_field_by_field() -> None:
    feed = connected()
    out = feed.recv_all(messages("bybit.json", "trade"))
    assert len(out.trades) == 3 and not out.errors
    first = out.trades[0]
    assert (first.exchange, first.symbol, first.exchange_symbol) == ("bybit", "BTC-USDT", "BTCUSDT")
    assert (first.trade_id, first.price, first.size, first.side) == (
        "2290000001189048101",
        65140.5,
        0.002705,
        "buy",
    )
    assert first.ts == 1786310822605 * 1000 and first.recv_ts == feed.records[-3].recv_ns // 1000


def test_snapshot_then_contiguous_deltas() -> None:
    feed = connected()
    out = feed.recv(snapshot())
    (change,) = out.books
    wire = json.loads(snapshot())
    assert change.snapshot and change.last_update_id == wire["data"]["u"]
    assert change.bids == sorted(rows_to_levels(wire["data"]["b"]), key=lambda lv: -lv.price)
    assert change.ts == wire["cts"] * 1000
    out = feed.recv_all(deltas())
    assert not out.errors and not out.control and len(out.books) == 5
    for change, frame in zip(out.books, deltas(), strict=True):
        data = json.loads(frame)["data"]
        assert change.bids == rows_to_levels(data["b"]) and change.asks == rows_to_levels(data["a"])
        assert change.first_update_id == change.last_update_id == data["u"]
    bids, asks = replay([snapshot(), *deltas()])
    last = out.bbos[-1]
    best_bid, best_ask = max(bids), min(asks)
    assert (last.bid_price, last.bid_size, last.ask_price, last.ask_size) == (
        best_bid,
        bids[best_bid],
        best_ask,
        asks[best_ask],
    )


def test_gap_unsyncs_until_the_next_snapshot() -> None:
    feed = connected()
    feed.recv(snapshot())
    feed.recv(deltas()[0])
    out = feed.recv(deltas()[2])  # u=62505427 after 62505425
    assert not published(out)
    assert [(s.state, s.reason) for s in out.status] == [("unsynced", "gap")]
    assert "u=62505427 after u=62505425" in out.status[0].detail
    assert [(c.action, c.symbol) for c in out.control] == [("resync", "BTC-USDT")]
    assert empty(feed.recv_all(deltas()[3:]))
    out = feed.recv(snapshot())
    assert out.books[0].snapshot and [s.state for s in out.status] == ["synced"]


def test_restart_delta_with_u_1_overwrites_the_book() -> None:
    feed = connected()
    feed.recv(snapshot())
    restart = json.loads(deltas()[0])
    restart["data"]["u"] = 1
    restart["data"]["b"] = [["65000", "1"]]
    restart["data"]["a"] = [["65001", "2"]]
    out = feed.recv(json.dumps(restart))
    (change,) = out.books
    assert change.snapshot and change.bids == [Level(65000.0, 1.0)] and change.asks == [Level(65001.0, 2.0)]
    assert not out.control


def test_crossed_book_is_never_published() -> None:
    feed = connected()
    feed.recv(snapshot())
    crossing = json.loads(deltas()[0])
    crossing["data"]["b"] = [["65300", "1"]]  # above the best ask
    out = feed.recv(json.dumps(crossing))
    assert not published(out)
    ((status),) = out.status
    assert (status.state, status.reason, status.crossed) == ("unsynced", "crossed", 1)
    assert [c.reason for c in out.control] == ["crossed"]
    assert empty(feed.recv(deltas()[1]))
    assert feed.recv(snapshot()).books


def test_acks_and_pong_are_counted() -> None:
    feed = connected()
    out = feed.recv_all([*messages("bybit.json", "ack"), *messages("bybit.json", "heartbeat")])
    assert empty(out)
    assert (feed.proc.counters.acks, feed.proc.counters.heartbeats) == (3, 1)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"success":false,"ret_msg":"Invalid topic","op":"subscribe"}', "subscribe rejected"),
        ('{"topic":"liquidation.BTCUSDT","type":"snapshot","data":{}}', "unsupported bybit topic"),
        ('{"topic":"orderbook.200.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT"}}', "missing field"),
        ('{"topic":"orderbook.200.DOGEUSDT","type":"snapshot","ts":1,"data":{"s":"DOGEUSDT","b":[],"a":[],"u":5}}',
         "unknown bybit symbol 'DOGEUSDT'"),
    ],
)  # fmt: skip
def test_bad_frames(frame: str, reason: str) -> None:
    out = connected().recv(frame)
    assert len(out.errors) == 1 and reason in out.errors[0][1], out.errors
