"""Candle logic (streams/ohlcv.py) on known trade sequences."""

from __future__ import annotations

import random

from confluent_kafka import Message

from marketpipe.codec import AvroCodec
from marketpipe.config import StreamSettings
from marketpipe.records import Candle, Trade
from marketpipe.topics import Topology
from streams.aggregations import OhlcvStage
from streams.consolidate import SymbolMap
from streams.ohlcv import CandleBuilder

S = 1_000_000
T0 = 1_786_000_020 * S  # a multiple of 60 s: minute windows start here
assert T0 % (60 * S) == 0


def builder(
    intervals: tuple[str, ...] = ("1s", "1m"), grace: float = 2.0, every: float = 1.0
) -> CandleBuilder:
    return CandleBuilder(list(intervals), grace, every)


def feed(b: CandleBuilder, trades: list[tuple[float, float, float, str]], start_offset: int = 0) -> None:
    for i, (dt, price, size, side) in enumerate(trades):
        b.add("binance", "BTC-USDT", T0 + round(dt * S), price, size, side, 0, start_offset + i)


def final(candles: list[Candle]) -> dict[str, Candle]:
    """Highest version per key."""
    best: dict[str, Candle] = {}
    for candle in candles:
        held = best.get(candle.key())
        if held is None or candle.version > held.version:
            best[candle.key()] = candle
    return best


def key(interval: str, open_dt: float) -> str:
    return f"binance:BTC-USDT:{interval}:{T0 + round(open_dt * S)}"


TRADES = [
    (0.0, 100.0, 1.0, "buy"),
    (0.25, 103.0, 2.0, "sell"),
    (0.5, 99.0, 1.0, "buy"),
    (0.999999, 101.0, 0.5, "unknown"),
    (1.0, 102.0, 1.0, "buy"),  # exactly at the edge: opens the 1 s window at 1.0
    (1.5, 104.0, 3.0, "sell"),
    (4.0, 105.0, 1.0, "buy"),  # watermark 2.0: closes [0, 1) and [1, 2)
]


def test_exact_ohlcv_per_interval() -> None:
    b = builder()
    feed(b, TRADES)
    candles = final(b.take_published())
    first = candles[key("1s", 0)]
    assert (first.open, first.high, first.low, first.close) == (100.0, 103.0, 99.0, 101.0)
    assert first.volume == 4.5
    assert first.quote_volume == 100.0 + 206.0 + 99.0 + 50.5
    assert (first.buy_volume, first.sell_volume, first.trades) == (2.0, 2.0, 4)
    assert first.vwap == first.quote_volume / 4.5
    assert (first.first_trade_ts, first.last_trade_ts) == (T0, T0 + 999_999)
    assert first.closed and not first.late
    assert first.close_time - first.open_time == S
    edge = candles[key("1s", 1)]
    assert (edge.open, edge.close, edge.trades, edge.volume) == (102.0, 104.0, 2, 4.0)
    assert edge.closed
    assert not candles[key("1s", 4)].closed  # watermark 2.0 < 5.0
    minute = candles[key("1m", 0)]
    assert (minute.open, minute.high, minute.low, minute.close) == (100.0, 105.0, 99.0, 105.0)
    assert (minute.trades, minute.volume) == (7, 9.5)
    assert not minute.closed
    assert minute.markets == ["binance:BTC-USDT"]


def test_versions_increase_and_close_is_published_once() -> None:
    b = builder()
    feed(b, TRADES)
    published = [c for c in b.take_published() if c.key() == key("1s", 0)]
    assert [c.version for c in published] == list(range(1, len(published) + 1))
    assert [c.closed for c in published].count(True) == 1
    assert published[-1].closed


def test_intermediate_updates_are_throttled_in_event_time() -> None:
    b = builder(("1m",), every=1.0)
    feed(b, [(i * 0.1, 100.0 + i, 1.0, "buy") for i in range(30)])  # 3 s of trades
    versions = b.take_published()
    # first trade publishes, then one per event second (at 1.0 and 2.0)
    assert [c.trades for c in versions] == [1, 11, 21]


def test_late_trade_within_grace_is_not_late() -> None:
    b = builder()
    feed(b, [(1.5, 100.0, 1.0, "buy"), (2.5, 101.0, 1.0, "buy"), (0.5, 99.0, 1.0, "sell")])
    candles = final(b.take_published() + closing(b))
    assert not candles[key("1s", 0)].late
    assert candles[key("1s", 0)].trades == 1


def closing(b: CandleBuilder) -> list[Candle]:
    """A trade days ahead, to close everything open; returns what it published."""
    b.add("binance", "BTC-USDT", T0 + 3 * 86_400 * S, 1.0, 0.001, "buy", 0, 10_000)
    return b.take_published()


def test_late_trade_beyond_grace_updates_closed_candle() -> None:
    b = builder()
    feed(b, [(0.5, 100.0, 1.0, "buy"), (5.0, 101.0, 1.0, "buy")])  # closes [0, 1) at watermark 3
    before = final(b.take_published())[key("1s", 0)]
    assert before.closed and not before.late
    feed(b, [(0.2, 90.0, 2.0, "sell")], start_offset=2)
    after = [c for c in b.take_published() if c.key() == key("1s", 0)]
    assert len(after) == 1
    late = after[0]
    assert late.late and late.closed and late.version == before.version + 1
    assert (late.open, late.low, late.close, late.trades, late.volume) == (90.0, 90.0, 100.0, 2, 3.0)
    assert late.sell_volume == 2.0
    # the 1 m window is still open: the late trade is in it too
    minute = final(closing(b))[key("1m", 0)]
    assert (minute.open, minute.trades, minute.late) == (90.0, 3, False)


def test_late_trade_into_empty_closed_window_creates_it() -> None:
    b = builder(("1s",))
    feed(b, [(0.5, 100.0, 1.0, "buy"), (9.0, 101.0, 1.0, "buy"), (3.5, 95.0, 1.0, "buy")])
    created = final(b.take_published())[key("1s", 3)]
    assert created.closed and created.late and created.trades == 1 and created.version == 1


def test_trade_beyond_late_horizon_is_rejected_not_dropped() -> None:
    b = CandleBuilder(["1s"], 2.0, 1.0, late_horizon_us=10 * S)
    feed(b, [(0.5, 100.0, 1.0, "buy"), (60.0, 101.0, 1.0, "buy"), (1.5, 95.0, 1.0, "buy")])
    assert len(b.rejected) == 1
    assert "late horizon" in b.rejected[0].reason and b.rejected[0].offset == 2


def test_replayed_offsets_are_not_counted_twice() -> None:
    b = builder()
    feed(b, TRADES)
    feed(b, TRADES)  # same offsets again
    assert b.duplicates == len(TRADES)
    assert final(b.take_published())[key("1m", 0)].trades == len(TRADES)


def test_restore_mid_window_continues_without_loss_or_double_count() -> None:
    rng = random.Random(7)
    trades = [
        (i * 0.37 + rng.random() * 0.3, rng.uniform(90, 110), rng.uniform(0.1, 2), "buy") for i in range(400)
    ]
    # reference: one builder, no restart
    ref = builder(("1s", "1m", "5m"))
    feed(ref, trades)
    expected = ref.take_published()
    # restarted twice mid-stream; the second run re-sees trades it already persisted
    first = builder(("1s", "1m", "5m"))
    feed(first, trades[:150])
    got = first.take_published()
    state = {k: v for _, k, v in first.state_changes() if v is not None}
    feed(first, trades[150:170], start_offset=150)  # processed but never persisted: lost in the crash
    second = builder(("1s", "1m", "5m"))
    second.restore(state.items())
    for i, trade in enumerate(trades[140:], start=140):  # replay from before the persisted point
        second.add("binance", "BTC-USDT", T0 + round(trade[0] * S), trade[1], trade[2], trade[3], 0, i)
    got += second.take_published()
    assert second.duplicates == 10
    assert final(got) == final(expected)
    assert got == expected  # even intermediate versions are the same records


def test_replay_gives_identical_candles() -> None:
    rng = random.Random(1)
    trades = [(rng.uniform(0, 400), rng.uniform(90, 110), rng.uniform(0.1, 2), "sell") for _ in range(2000)]
    trades.sort(key=lambda t: t[0] + rng.uniform(-3, 0))  # roughly ordered, with late ones
    runs = []
    for _ in range(2):
        b = builder(("1s", "1m", "5m", "1h"))
        feed(b, trades)
        runs.append(b.take_published() + closing(b))
        assert not b.rejected
    assert runs[0] == runs[1]
    candles = [c for c in final(runs[0]).values() if c.closed]
    assert sum(c.trades for c in candles if c.interval == "1h") == len(trades)
    assert sum(c.trades for c in candles if c.interval == "1s") == len(trades)
    assert any(c.late for c in candles)


def test_all_default_intervals_get_every_trade() -> None:
    b = CandleBuilder(["1s", "1m", "5m", "15m", "1h", "4h", "1d"], 2.0, 1.0)
    feed(b, [(i * 7.3, 100.0, 1.0, "buy") for i in range(1000)])
    candles = [c for c in final(b.take_published() + closing(b)).values() if c.closed]
    for interval in ("1s", "1m", "5m", "15m", "1h", "4h", "1d"):
        assert sum(c.trades for c in candles if c.interval == interval) == 1000, interval


def test_latest_only_gives_each_candles_last_version_of_the_take() -> None:
    rng = random.Random(5)
    trades = [(rng.uniform(0, 300), rng.uniform(90, 110), rng.uniform(0.1, 2), "buy") for _ in range(3000)]
    trades.sort(key=lambda t: t[0] + rng.uniform(-3, 0))  # roughly ordered, with late ones
    every, latest = builder(("1s", "1m", "5m")), builder(("1s", "1m", "5m"))
    superseded = 0
    for start in range(0, len(trades), 400):
        feed(every, trades[start : start + 400], start)
        feed(latest, trades[start : start + 400], start)
        versions = every.take_published()
        last_of_each = list({c.key(): c for c in versions}.values())  # first position, last version
        assert latest.take_published(latest_only=True) == last_of_each
        superseded += len(versions) - len(last_of_each)
    assert superseded > 0
    assert final(every.take_published() + closing(every)) == final(latest.take_published() + closing(latest))


def test_the_stage_publishes_each_candles_last_version_of_a_batch() -> None:
    """A backlog batch spans many update intervals: md.ohlcv (and the consolidation topic) get
    each candle once per batch, as the record the event-time rules give for its last version."""
    codec, topology = AvroCodec(), Topology()
    stage = OhlcvStage(topology, codec, StreamSettings(), SymbolMap())
    state, reference = stage.new_state(topology.trades, 0), stage.new_state(topology.trades, 0)
    emitted: dict[str, list[Candle]] = {topology.ohlcv: [], topology.consolidate: []}

    def emit(topic: str, key: bytes, value: bytes) -> None:
        emitted[topic].append(codec.decode(value, Candle))

    expected: list[Candle] = []
    versions = 0
    for first in range(0, 4000, 1000):  # two markets, 10 trades per event-time second each
        trades = [
            Trade(
                exchange="binance",
                symbol=f"C{i % 2}-USDT",
                exchange_symbol=f"C{i % 2}USDT",
                trade_id=str(i),
                price=100.0 + i % 7,
                size=1.0,
                side="buy",
                ts=T0 + i * 50_000,
                recv_ts=T0 + i * 50_000,
                conn="c",
                seq=i,
            )
            for i in range(first, first + 1000)
        ]
        messages = [Message(topic=topology.trades, offset=t.seq, value=codec.encode(t)) for t in trades]
        stage.process(state, messages, emit)
        for t in trades:
            reference.add(t.exchange, t.symbol, t.ts, t.price, t.size, t.side)
        every = reference.take_published()
        versions += len(every)
        expected += {c.key(): c for c in every}.values()
    assert emitted[topology.ohlcv] == emitted[topology.consolidate] == expected
    assert versions > 3 * len(expected)
