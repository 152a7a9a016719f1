"""Values validated at the edge (real frames with poison values) and md.status after reconnects
and handovers (constructed sessions): nothing invalid reaches a trade, book or BBO; it goes to
the dead letters with its reason; the last status per symbol is the true current state."""

from __future__ import annotations

import json
from typing import Any

import pytest
from feed_helpers import (
    BYBIT_INFO_URL,
    OKX_INSTRUMENTS_URL,
    Feed,
    bybit_instruments,
    okx_instruments,
)
from samples import messages

from marketpipe.config import StreamSettings
from marketpipe.records import StatusEvent
from streams.feed import ClockWindow, FeedOutput

MS = 1_000_000
OKX_AT = 1652459224000 * MS
BYBIT_AT = 1786310815000 * MS


def okx(conn: str = "okx.v.0", processor: Any = None, clock: ClockWindow | None = None) -> Feed:
    feed = Feed("okx", conn=conn, processor=processor, clock=clock or ClockWindow(), base_ns=OKX_AT)
    feed.open("wss://ws.okx.com:8443/ws/v5/public", ["BTC-USDT"])
    feed.rest(OKX_INSTRUMENTS_URL, okx_instruments(("BTC-USDT", "BTC", "USDT")))
    return feed


def bybit(conn: str = "bybit.v.0", processor: Any = None) -> Feed:
    feed = Feed("bybit", conn=conn, processor=processor, clock=ClockWindow(), base_ns=BYBIT_AT)
    feed.open("wss://stream.bybit.com/v5/public/spot", ["BTCUSDT"])
    feed.rest(BYBIT_INFO_URL, bybit_instruments(("BTCUSDT", "BTC", "USDT")))
    return feed


def okx_trade(**changes: str) -> str:
    frame = json.loads(messages("okx.json", "trade")[0])
    frame["data"][0].update(changes)
    return json.dumps(frame)


DAY_MS = 86_400_000
TRADE_TS = 1652459224818


@pytest.mark.parametrize(
    ("changes", "category", "words"),
    [
        ({"px": "NaN"}, "invalid_value", "price nan"),
        ({"px": "inf"}, "invalid_value", "price inf"),
        ({"px": "-30236"}, "invalid_value", "price -30236"),
        ({"px": "0"}, "invalid_value", "price 0"),
        ({"sz": "0"}, "invalid_value", "size 0"),
        ({"sz": "-0.0002"}, "invalid_value", "size -0.0002"),
        ({"sz": "Infinity"}, "invalid_value", "size inf"),
        ({"ts": str(TRADE_TS + 10 * DAY_MS)}, "ts_out_of_range", "ahead of the receive time"),
        ({"ts": str(TRADE_TS // 1000)}, "ts_out_of_range", "behind the receive time"),  # seconds, not ms
    ],
)
def test_poison_trade_values_are_dead_lettered_with_the_reason(
    changes: dict[str, str], category: str, words: str
) -> None:
    feed = okx()
    out = feed.recv(okx_trade(**changes))
    assert out.trades == []
    ((raw, reason),) = out.errors
    assert words in reason and "338476307" in reason and raw.payload == feed.records[-1].payload
    assert feed.proc.counters.dead_letters == {category: 1} and feed.proc.counters.trades == 0
    # the good trade after it is published: one bad value costs only itself
    (good,) = feed.recv(messages("okx.json", "trade")[1]).trades
    assert good.trade_id == "338476308"


def test_a_poison_trade_does_not_take_the_good_trades_of_its_frame_with_it() -> None:
    frame = json.loads(messages("bybit.json", "trade")[0])
    good = frame["data"][0]
    bad = {**good, "i": "2290000001189048100", "p": "nan"}
    frame["data"] = [bad, good]
    feed = bybit()
    out = feed.recv(json.dumps(frame))
    assert [t.trade_id for t in out.trades] == [good["i"]] and len(out.errors) == 1


def test_the_future_timestamp_that_moved_the_watermark_never_reaches_a_trade() -> None:
    """The recorded failure: one trade ten days ahead moved the market's watermark and the next
    1,052 real trades were rejected as late. Here it is a dead letter; the real ones flow."""
    feed = okx()
    future = okx_trade(tradeId="338476306", ts=str(TRADE_TS + 10 * DAY_MS))
    out = feed.recv_all([future, *messages("okx.json", "trade")])
    assert [t.trade_id for t in out.trades] == ["338476307", "338476308", "338476309"]
    assert max(t.ts for t in out.trades) < (TRADE_TS + 60_000) * 1000
    assert feed.proc.counters.dead_letters == {"ts_out_of_range": 1}


def test_the_clock_window_is_configurable() -> None:
    streams = StreamSettings(max_ts_ahead_s=30 * 86_400.0)
    feed = okx(clock=ClockWindow.from_settings(streams))
    assert len(feed.recv(okx_trade(ts=str(TRADE_TS + 10 * DAY_MS))).trades) == 1
    feed.proc.set_clock(ClockWindow())  # a restored processor takes the current configuration
    assert feed.recv(okx_trade(tradeId="1", ts=str(TRADE_TS + 10 * DAY_MS))).trades == []


def bybit_book(
    kind: str, u: int, bids: list[list[str]], asks: list[list[str]], ts: int = 1786310818129
) -> str:
    frame = json.loads(messages("bybit.json", "book_snapshot")[0])
    frame.update(type=kind, ts=ts, cts=ts)
    frame["data"].update(u=u, b=bids, a=asks)
    return json.dumps(frame)


@pytest.mark.parametrize(
    ("level", "words"),
    [
        (["NaN", "1.0"], "price nan"),
        (["inf", "1.0"], "price inf"),
        (["-65000", "1.0"], "price -65000"),
        (["65000", "-1.0"], "size -1.0"),
        (["65000", "NaN"], "size nan"),
    ],
)
def test_poison_book_level_in_an_update_unsyncs_the_book_and_is_dead_lettered(
    level: list[str], words: str
) -> None:
    feed = bybit()
    snapshot = feed.recv(messages("bybit.json", "book_snapshot")[0])
    (book,) = snapshot.books
    u = json.loads(messages("bybit.json", "book_snapshot")[0])["data"]["u"]
    out = feed.recv(bybit_book("delta", u + 1, [level], []))
    assert out.books == [] and out.bbos == []
    ((_, reason),) = out.errors
    assert words in reason and feed.proc.counters.dead_letters == {"invalid_value": 1}
    assert [(s.state, s.reason) for s in out.status] == [("unsynced", "invalid")]
    assert [c.reason for c in out.control] == ["invalid"]
    # the next snapshot re-syncs it, without the bad level
    again = feed.recv(messages("bybit.json", "book_snapshot")[0])
    assert again.books[0].bids == book.bids and [s.state for s in again.status] == ["synced"]


def test_poison_level_in_a_snapshot_never_enters_a_book() -> None:
    feed = bybit()
    frame = json.loads(messages("bybit.json", "book_snapshot")[0])
    frame["data"]["a"].insert(0, ["nan", "3.0"])
    out = feed.recv(json.dumps(frame))
    assert out.books == [] and out.bbos == [] and len(out.errors) == 1
    assert feed.proc.counters.books_synced == set()


def test_book_update_with_a_future_timestamp_is_dead_lettered_and_unsyncs() -> None:
    feed = bybit()
    feed.recv(messages("bybit.json", "book_snapshot")[0])
    u = json.loads(messages("bybit.json", "book_snapshot")[0])["data"]["u"]
    out = feed.recv(bybit_book("delta", u + 1, [["65000", "1.0"]], [], ts=1786310818129 + 10 * DAY_MS))
    assert out.books == [] and "ahead of the receive time" in out.errors[0][1]
    assert feed.proc.counters.dead_letters == {"ts_out_of_range": 1}


def test_poison_okx_level_is_caught_before_the_checksum() -> None:
    feed = okx()
    feed.recv(messages("okx.json", "book_snapshot")[0])
    update = json.loads(messages("okx.json", "book_update")[0])
    update["data"][0]["bids"].insert(0, ["NaN", "1", "0", "1"])
    out = feed.recv(json.dumps(update))
    assert out.books == [] and feed.proc.counters.checksum_failures == 0
    assert feed.proc.counters.dead_letters == {"invalid_value": 1}


def test_crossed_snapshot_is_still_an_unsync() -> None:
    feed = bybit()
    frame = json.loads(messages("bybit.json", "book_snapshot")[0])
    best_bid = frame["data"]["b"][0][0]
    frame["data"]["a"].insert(0, [str(float(best_bid) - 1), "1.0"])
    out = feed.recv(json.dumps(frame))
    assert out.books == [] and [(s.state, s.reason) for s in out.status] == [("unsynced", "crossed")]


# ------------------------------------------------------------------------------ md.status


def last_status(events: list[StatusEvent]) -> dict[str, tuple[str, str, str]]:
    """What the compacted md.status keeps: the latest event per key."""
    return {e.key(): (e.state, e.reason, e.conn) for e in events}


def test_handover_the_old_connections_close_never_leaves_the_symbol_unsynced() -> None:
    """Make-before-break: the successor is synced before the old connection closes. With one shard
    key both connections share a raw partition, so the close arrives after the new snapshot; the
    close must not become the symbol's last status."""
    old = okx("okx.s.0")
    statuses: list[StatusEvent] = []
    statuses += old.recv(messages("okx.json", "book_snapshot")[0]).status
    new = okx("okx.s.1", processor=old.proc)
    statuses += new.recv(messages("okx.json", "book_snapshot")[0]).status
    statuses += old.close(1000, "planned reconnect").status
    assert last_status(statuses) == {"okx:BTC-USDT": ("synced", "snapshot", "okx.s.1")}
    # the resync request of the old connection still goes out (the producer ignores it: stale conn)
    assert [e.conn for e in statuses] == ["okx.s.0", "okx.s.1"]


def test_reconnect_after_a_gap_marker_ends_synced_and_a_lost_book_ends_unsynced() -> None:
    """A connection lost (the producer's gap marker is its close), then its successor's snapshot:
    the last status is synced. The successor's own failure then is the symbol's state."""
    first = bybit("bybit.r.0")
    out = FeedOutput()
    first.proc.process(first.record("recv", messages("bybit.json", "book_snapshot")[0]), out)
    gap = {"code": 4900, "reason": "gap: producer dropped 3 record(s)", "gap": {"dropped": 3}}
    first.proc.process(first.record("close", json.dumps(gap)), out)
    second = bybit("bybit.r.1", processor=first.proc)
    second.proc.process(second.record("recv", messages("bybit.json", "book_snapshot")[0]), out)
    assert [(s.state, s.reason, s.conn) for s in out.status] == [
        ("synced", "snapshot", "bybit.r.0"),
        ("unsynced", "close", "bybit.r.0"),
        ("synced", "snapshot", "bybit.r.1"),
    ]
    u = json.loads(messages("bybit.json", "book_snapshot")[0])["data"]["u"]
    lost = second.recv(bybit_book("delta", u + 5, [["65000", "1.0"]], []))
    assert last_status([*out.status, *lost.status]) == {"bybit:BTC-USDT": ("unsynced", "gap", "bybit.r.1")}


def test_a_connection_that_vanished_without_a_close_never_hides_the_current_state() -> None:
    """A killed producer leaves its connection without a close: it is not a live successor, so
    the new connection's loss of the book is the symbol's state; an hour later it is forgotten."""
    killed = bybit("bybit.k.0")
    killed.recv(messages("bybit.json", "book_snapshot")[0])  # synced, then never heard of again
    minute = 60 * 1_000_000_000
    restarted = Feed("bybit", conn="bybit.k2.0", processor=killed.proc, base_ns=BYBIT_AT + 5 * minute)
    restarted.open("wss://stream.bybit.com/v5/public/spot", ["BTCUSDT"])
    restarted.rest(BYBIT_INFO_URL, bybit_instruments(("BTCUSDT", "BTC", "USDT")))
    frame = json.loads(messages("bybit.json", "book_snapshot")[0])
    frame.update(ts=frame["ts"] + 5 * 60_000, cts=frame["ts"] + 5 * 60_000)
    restarted.recv(json.dumps(frame))
    u = frame["data"]["u"]
    lost = restarted.recv(bybit_book("delta", u + 5, [["65000", "1.0"]], [], ts=frame["ts"] + 1))
    assert [(s.state, s.reason, s.conn) for s in lost.status] == [("unsynced", "gap", "bybit.k2.0")]
    assert set(killed.proc._connections) == {"bybit.k.0", "bybit.k2.0"}
    later = Feed("bybit", conn="bybit.k2.1", processor=killed.proc, base_ns=BYBIT_AT + 65 * minute)
    later.open("wss://stream.bybit.com/v5/public/spot", ["BTCUSDT"])
    assert set(killed.proc._connections) == {"bybit.k2.0", "bybit.k2.1"}
