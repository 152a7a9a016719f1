"""Binance spot parser on the real captured frames (NKNUSDT diff depth + REST snapshot, aggTrades)."""

from __future__ import annotations

import json

import pytest
from feed_helpers import BINANCE_INFO_URL, Feed, binance_info, empty, published
from samples import messages

from marketpipe.records import Level
from streams.parsers.binance import depth_update

DEPTH_URL = "https://api.binance.com/api/v3/depth?symbol=NKNUSDT&limit=1000"
INFO = binance_info(("NKNUSDT", "NKN", "USDT"), ("LRCBTC", "LRC", "BTC"))


def connected() -> Feed:
    feed = Feed("binance")
    feed.open("wss://stream.binance.com:9443/stream", ["NKNUSDT", "LRCBTC"])
    feed.rest(BINANCE_INFO_URL, INFO)
    feed.feed("sent", '{"method":"SUBSCRIBE","params":["nknusdt@depth@100ms","nknusdt@aggTrade"],"id":1}')
    return feed


def snapshot_text() -> str:
    return messages("binance.json", "book_snapshot")[0]


def diffs() -> list[str]:
    return messages("binance.json", "book_update")


def test_agg_trades_field_by_field() -> None:
    feed = connected()
    frames = messages("binance.json", "trade")
    out = feed.recv_all(frames)
    assert not out.errors
    assert len(out.trades) == 2
    first, second = out.trades
    payload = json.loads(frames[0])["data"]
    assert first.exchange == "binance"
    assert first.symbol == "NKN-USDT" and first.exchange_symbol == "NKNUSDT"
    assert first.trade_id == str(payload["a"]) == "15683430"
    assert first.price == 0.3528 and first.size == 58.0
    assert first.side == "buy"  # m=false: the buyer was the taker
    assert first.ts == 1633998523963 * 1000
    assert first.recv_ts == feed.records[-2].recv_ns // 1000
    assert first.conn == feed.conn and first.seq == feed.records[-2].seq
    assert second.symbol == "LRC-BTC" and second.price == 0.00000638 and second.size == 177.0
    assert feed.proc.counters.trades == 2


def test_trade_stream_payload_maker_flag_gives_taker_side() -> None:
    feed = connected()
    frame = {
        "stream": "nknusdt@trade",
        "data": {
            "e": "trade",
            "E": 1,
            "s": "NKNUSDT",
            "t": 12345,
            "p": "0.35",
            "q": "10",
            "T": 2,
            "m": True,
            "M": True,
        },
    }
    out = feed.recv(json.dumps(frame))
    (trade,) = out.trades
    assert (trade.trade_id, trade.side, trade.ts, trade.price, trade.size) == (
        "12345",
        "sell",
        2000,
        0.35,
        10.0,
    )


def test_unknown_symbol_is_dead_lettered_not_guessed() -> None:
    feed = Feed("binance")
    out = feed.recv(messages("binance.json", "trade")[0])
    assert not out.trades
    ((raw, reason),) = out.errors
    assert "unknown binance symbol 'NKNUSDT'" in reason
    assert raw.seq == 0
    assert feed.proc.counters.parse_errors == 1


def test_snapshot_bridging_on_real_frames_drops_first_diff_applies_next() -> None:
    feed = connected()
    assert empty(feed.recv(diffs()[0]))  # buffered: no snapshot yet
    out = feed.rest(DEPTH_URL, snapshot_text())
    snapshot = json.loads(snapshot_text())
    assert not out.errors
    (change,) = out.books  # the snapshot; the buffered diff (u == lastUpdateId) was dropped
    assert change.snapshot and change.last_update_id == 499869752
    assert change.bids == [Level(float(p), float(q)) for p, q in snapshot["bids"]]
    assert change.asks == [Level(float(p), float(q)) for p, q in snapshot["asks"]]
    assert change.symbol == "NKN-USDT" and change.ts == change.recv_ts == feed.recv_us(-1)
    ((status),) = out.status
    assert (status.state, status.reason) == ("synced", "snapshot")
    (bbo,) = out.bbos
    assert (bbo.bid_price, bbo.bid_size) == (float(snapshot["bids"][0][0]), float(snapshot["bids"][0][1]))
    assert (bbo.ask_price, bbo.ask_size) == (float(snapshot["asks"][0][0]), float(snapshot["asks"][0][1]))

    out = feed.recv(diffs()[1])
    (change,) = out.books
    payload = json.loads(diffs()[1])["data"]
    assert not change.snapshot
    assert (change.first_update_id, change.last_update_id) == (499869753, 499869754)
    assert change.bids == [Level(0.3517, 4265.0)] and change.asks == [Level(0.3529, 10968.0)]
    assert change.ts == payload["E"] * 1000
    assert feed.proc.counters.books_synced == {"NKN-USDT"}


def test_snapshot_before_any_diff_gives_the_same_book() -> None:
    buffered, live = connected(), connected()
    buffered.recv(diffs()[0])
    buffered.rest(DEPTH_URL, snapshot_text())
    live.rest(DEPTH_URL, snapshot_text())
    assert not published(live.recv(diffs()[0]))  # u <= lastUpdateId: stale, ignored
    assert live.proc.counters.stale_updates == 1
    a, b = buffered.recv_all(diffs()[1:]), live.recv_all(diffs()[1:])
    assert [c.bids for c in a.books] == [c.bids for c in b.books] and len(a.books) == 7


def test_book_after_all_diffs_matches_the_real_book_ticker() -> None:
    """bookTicker u=499869769 (captured in the same session) is the BBO after the last diff."""
    feed = connected()
    feed.rest(DEPTH_URL, snapshot_text())
    out = feed.recv_all(diffs())
    assert not out.errors and not out.control
    ticker = json.loads(messages("binance.json", "other_bookTicker")[1])["data"]
    assert ticker["u"] == out.books[-1].last_update_id
    last = out.bbos[-1]
    expected = (float(ticker["b"]), float(ticker["B"]), float(ticker["a"]), float(ticker["A"]))
    assert (last.bid_price, last.bid_size, last.ask_price, last.ask_size) == expected
    assert feed.recv(messages("binance.json", "other_bookTicker")[1]).errors == []
    assert feed.proc.counters.tickers == 1


def test_gap_unsyncs_requests_one_resync_and_a_new_snapshot_bridges() -> None:
    feed = connected()
    feed.rest(DEPTH_URL, snapshot_text())
    feed.recv(diffs()[1])
    out = feed.recv(diffs()[3])  # diff 2 (U=499869755) missed
    assert not published(out)
    ((status), (control)) = (out.status[0], out.control[0])
    assert (status.state, status.reason, status.gaps, status.resyncs) == ("unsynced", "gap", 1, 1)
    assert (control.action, control.symbol, control.exchange_symbol, control.conn) == (
        "resync",
        "NKN-USDT",
        "NKNUSDT",
        feed.conn,
    )
    assert control.ts == feed.recv_us(-1)
    later = feed.recv_all(diffs()[4:6])
    assert empty(later)  # buffered, no second request for the same episode
    resnap = json.loads(snapshot_text())
    resnap["lastUpdateId"] = 499869759
    out = feed.rest(DEPTH_URL, json.dumps(resnap))
    assert [c.snapshot for c in out.books] == [True, False, False]
    assert [c.first_update_id for c in out.books[1:]] == [499869760, 499869761]
    assert out.status[0].state == "synced"
    counters = feed.proc.counters
    assert (counters.sequence_gaps, counters.resyncs) == (1, 1)


def test_a_resync_snapshot_still_older_than_the_buffered_diffs_asks_again() -> None:
    feed = connected()
    feed.rest(DEPTH_URL, snapshot_text())
    feed.recv(diffs()[1])
    assert len(feed.recv(diffs()[3]).control) == 1  # the gap's request
    too_old = json.loads(snapshot_text())
    too_old["lastUpdateId"] = 499869700  # answered before the buffered diff from 499869757
    out = feed.rest(DEPTH_URL, json.dumps(too_old))
    assert not published(out)
    assert [c.reason for c in out.control] == ["gap"], "without a second request the book stays unsynced"
    assert "older than the buffered delta" in out.status[0].detail
    resnap = json.loads(snapshot_text())
    resnap["lastUpdateId"] = 499869757
    out = feed.rest(DEPTH_URL, json.dumps(resnap))
    assert out.status[0].state == "synced" and out.books[0].snapshot
    assert feed.proc.counters.resyncs == 2


def test_acks_shutdown_and_sent_are_recognised_not_dead_lettered() -> None:
    feed = connected()
    out = feed.recv(messages("binance.json", "ack")[0])
    out2 = feed.recv(messages("binance.json", "other_serverShutdown_doc")[0])
    assert empty(out) and empty(out2)
    counters = feed.proc.counters
    assert (counters.acks, counters.notices, counters.sent, counters.parse_errors) == (1, 1, 1, 0)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"stream":"nknusdt@aggTrade","data":{"e":"aggTrade"', "invalid JSON"),
        ('{"stream":"nknusdt@depth","data":{"e":"depthUpdate","s":"NKNUSDT","U":1}}', "missing field"),
        (
            '{"stream":"nknusdt@miniTicker","data":{"e":"24hrMiniTicker","s":"NKNUSDT"}}',
            "unsupported binance event '24hrMiniTicker'",
        ),
        ("[1,2]", "not a JSON object"),
        ("", "empty frame"),
    ],
)
def test_bad_frames_are_errors_with_a_reason(frame: str, reason: str) -> None:
    feed = connected()
    out = feed.recv(frame)
    ((raw, found),) = out.errors
    assert reason in found and raw.data == frame
    assert not published(out)


def test_close_unsyncs_the_book() -> None:
    feed = connected()
    feed.rest(DEPTH_URL, snapshot_text())
    out = feed.close()
    assert [(s.state, s.reason) for s in out.status] == [("unsynced", "close")]
    assert [c.reason for c in out.control] == ["close"]


def test_real_diff_frames_take_the_typed_path_with_the_same_numbers() -> None:
    """The hot path decodes depth frames straight into numbers; on every real frame it must
    read what the generic JSON path reads."""
    for frame in diffs():
        update = depth_update(frame)
        assert update is not None, frame[:120]
        data = json.loads(frame)["data"]
        assert (update.s, update.U, update.u, update.E) == (data["s"], data["U"], data["u"], data["E"])
        assert update.b == [(float(p), float(q)) for p, q in data["b"]]
        assert update.a == [(float(p), float(q)) for p, q in data["a"]]


@pytest.mark.parametrize(
    "frame",
    [
        '{"stream":"x@depth","data":{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[["1","2","3"]],"a":[]}}',
        '{"stream":"x@depth","data":{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[["one","2"]],"a":[]}}',
        '{"stream":"x@trade","data":{"e":"trade","note":"depthUpdate"}}',
        '{"stream":"x@depth","data":{"e":"depthUpdate"',
    ],
)
def test_odd_depth_frames_leave_the_typed_path_for_the_generic_one(frame: str) -> None:
    assert depth_update(frame) is None
