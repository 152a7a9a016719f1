"""Trade identity on constructed sessions built from the real frames: each distinct trade once,
whatever the connections, reconnects, handovers and subscribe snapshots; bounded memory; the
processor survives pickling (the stream worker's checkpoint) and carries on identically."""

from __future__ import annotations

import json
import pickle
from typing import ClassVar

from feed_helpers import (
    BINANCE_INFO_URL,
    COINBASE_PRODUCTS_URL,
    OKX_INSTRUMENTS_URL,
    Feed,
    binance_info,
    coinbase_products,
    okx_instruments,
)
from samples import messages

from marketpipe.records import Trade
from streams.buckets import Bucketer
from streams.feed import ClockWindow, FeedOutput
from streams.parsers.okx import OkxProcessor

MS = 1_000_000
OKX_AT = 1652459224000 * MS  # the OKX sample session (2022-05-13)
HOUR_NS = 3600 * 1_000_000_000


def okx(conn: str, processor: OkxProcessor | None = None, at: int = OKX_AT) -> Feed:
    feed = Feed("okx", conn=conn, processor=processor, clock=ClockWindow(), base_ns=at)
    feed.open("wss://ws.okx.com:8443/ws/v5/public", ["BTC-USDT"])
    feed.rest(OKX_INSTRUMENTS_URL, okx_instruments(("BTC-USDT", "BTC", "USDT")))
    return feed


def ids(trades: list[Trade]) -> list[str]:
    return [t.trade_id for t in trades]


def test_okx_subscribe_replay_of_an_old_trade_on_a_second_connection_is_dropped() -> None:
    """OKX pushes the latest trade on subscribe, hours old on a quiet instrument: the recorded
    session published it again on every connection."""
    first = okx("okx.a.0")
    frames = messages("okx.json", "trade")
    published = first.recv_all(frames).trades
    assert ids(published) == ["338476307", "338476308", "338476309"]
    # a new connection 7.4 hours later: the subscribe replays the latest trade, then a new one
    second = okx("okx.a.1", processor=first.proc, at=OKX_AT + int(7.4 * HOUR_NS))  # type: ignore[arg-type]
    replay = second.recv(frames[-1])
    assert replay.trades == [] and replay.errors == []
    assert first.proc.counters.duplicates_dropped == 1
    fresh = json.loads(frames[-1])
    fresh["data"][0].update(tradeId="338476310", ts=str(1652459224000 + int(7.4 * 3600_000)))
    (new,) = second.recv(json.dumps(fresh)).trades
    assert new.trade_id == "338476310" and new.conn == "okx.a.1"
    assert first.proc.counters.trades == 4


def test_a_re_sent_trade_not_seen_yet_is_published() -> None:
    """A reconnect gap: the first connection missed a trade that the second one's subscribe
    replay delivers; it is published (once)."""
    first = okx("okx.b.0")
    frames = messages("okx.json", "trade")
    first.recv(frames[0])
    first.close()
    second = okx("okx.b.1", processor=first.proc)  # type: ignore[arg-type]
    out = second.recv_all(frames)
    assert ids(out.trades) == ["338476308", "338476309"]
    assert first.proc.counters.duplicates_dropped == 1


def test_two_overlapping_connections_publish_each_trade_once() -> None:
    """A make-before-break handover (or two connections to one symbol set): both deliver the
    same trades, interleaved; the session publishes as many trades as there are distinct ones."""
    old = Feed("binance", conn="binance.h.0", clock=ClockWindow(), base_ns=1633998520000 * MS)
    old.open("wss://stream.binance.com:9443/stream", ["NKNUSDT", "LRCBTC"])
    old.rest(BINANCE_INFO_URL, binance_info(("NKNUSDT", "NKN", "USDT"), ("LRCBTC", "LRC", "BTC")))
    new = Feed("binance", conn="binance.h.1", processor=old.proc, clock=ClockWindow(), base_ns=old.base_ns)
    new.open("wss://stream.binance.com:9443/stream", ["NKNUSDT", "LRCBTC"])
    new.rest(BINANCE_INFO_URL, binance_info(("NKNUSDT", "NKN", "USDT"), ("LRCBTC", "LRC", "BTC")))
    nkn, lrc = messages("binance.json", "trade")
    out = FeedOutput()
    for feed, frame in ((old, nkn), (new, nkn), (new, lrc), (old, lrc)):
        old.proc.process(feed.record("recv", frame), out)
    assert [(t.symbol, t.trade_id, t.conn) for t in out.trades] == [
        ("NKN-USDT", "15683430", "binance.h.0"),
        ("LRC-BTC", "9213679", "binance.h.1"),
    ]
    assert old.proc.counters.duplicates_dropped == 2 and old.proc.counters.trades == 2


def test_coinbase_market_trades_snapshot_on_reconnect_publishes_only_the_unseen() -> None:
    snapshot, update, later = messages("coinbase.json", "trade")[:3]
    at = 1786309540000 * MS  # 2026-08-09T21:05:40Z

    def connected(conn: str, processor: object = None) -> Feed:
        feed = Feed("coinbase", conn=conn, processor=processor, clock=ClockWindow(), base_ns=at)  # type: ignore[arg-type]
        feed.open("wss://advanced-trade-ws.coinbase.com", ["BTC-USD"])
        feed.rest(COINBASE_PRODUCTS_URL, coinbase_products(("BTC-USD", "BTC", "USD")))
        return feed

    first = connected("coinbase.c.0")
    from_snapshot = first.recv(snapshot).trades
    assert len(from_snapshot) == len(json.loads(snapshot)["events"][0]["trades"]) > 1
    first.recv(update)
    # reconnect: the new subscription's snapshot lists the same recent trades, plus one missed
    replay = json.loads(snapshot)
    missed = json.loads(later)["events"][0]["trades"][0]
    replay["events"][0]["trades"].insert(0, missed)
    second = connected("coinbase.c.1", first.proc)
    out = second.recv(json.dumps(replay))
    assert ids(out.trades) == [missed["trade_id"]]
    assert first.proc.counters.duplicates_dropped == len(from_snapshot)


class SmallMemory(OkxProcessor):
    trade_memory: ClassVar[int] = 3


def _okx_trade(trade_id: int, ts_ms: int) -> str:
    row = {"instId": "BTC-USDT", "tradeId": str(trade_id), "px": "30236", "sz": "0.0002", "side": "buy"}
    return json.dumps(
        {"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [{**row, "ts": str(ts_ms)}]}
    )


def test_memory_is_bounded_and_an_unknown_trade_older_than_it_is_dead_lettered() -> None:
    feed = okx("okx.m.0", processor=SmallMemory(ClockWindow()))
    base = 1652459224000
    for n in range(6):
        assert len(feed.recv(_okx_trade(n, base + n)).trades) == 1
    memory = feed.proc._trade_memories["BTC-USDT"]
    # three timestamps are kept when the memory reaches twice its limit (six)
    assert list(memory.times.values()) == ["3", "4", "5"] and memory.horizon == (base + 2) * 1000
    # trade 1 was forgotten: re-sent, it cannot be told apart from a new one: dead letter, not a duplicate
    out = feed.recv(_okx_trade(1, base + 1))
    assert out.trades == [] and "older than the dedup memory" in out.errors[0][1]
    assert feed.proc.counters.dead_letters == {"dedup_horizon": 1}
    # remembered ids are still dropped; newer ones published
    assert feed.recv(_okx_trade(4, base + 4)).trades == []
    assert ids(feed.recv(_okx_trade(6, base + 6)).trades) == ["6"]


def test_processor_with_books_instruments_and_dedup_state_survives_pickling() -> None:
    """The stream worker checkpoints one processor per raw partition with pickle: restored, it
    produces exactly what the original produces."""
    feed = okx("okx.p.0")
    feed.proc.bucketer = Bucketer(interval_us=100_000)  # as the stream worker runs it: journals on
    books = [*messages("okx.json", "book_snapshot"), *messages("okx.json", "book_update")[:2]]
    setup = feed.recv_all([*books, *messages("okx.json", "trade")[:2]])
    assert setup.errors == [] and setup.books and len(setup.trades) == 2
    clone = pickle.loads(pickle.dumps(feed.proc))
    assert clone.instruments == feed.proc.instruments and clone.counters == feed.proc.counters
    rest = [*messages("okx.json", "book_update")[2:], *messages("okx.json", "trade")]
    original_out, clone_out = FeedOutput(), FeedOutput()
    for frame in rest:
        raw = feed.record("recv", frame)
        feed.proc.process(raw, original_out)
        clone.process(raw, clone_out)
    assert original_out.books and original_out.bbos and original_out.buckets
    assert ids(original_out.trades) == ["338476309"]  # the first two were published before the checkpoint
    for name in ("trades", "books", "bbos", "buckets", "status", "control", "errors"):
        assert getattr(clone_out, name) == getattr(original_out, name), name
    assert clone.counters == feed.proc.counters


def test_trades_sharing_a_timestamp_are_told_apart_by_id() -> None:
    """One taker order filling several makers: several trades in one millisecond, each once."""
    feed = okx("okx.t.0")
    ts = 1652459224818
    burst = [_okx_trade(n, ts) for n in (7, 8, 9)]
    assert ids(feed.recv_all(burst).trades) == ["7", "8", "9"]
    again = okx("okx.t.1", processor=feed.proc)  # type: ignore[arg-type]
    assert again.recv_all([*reversed(burst), _okx_trade(10, ts)]).trades[0].trade_id == "10"
    assert feed.proc.counters.duplicates_dropped == 3 and feed.proc.counters.trades == 4
