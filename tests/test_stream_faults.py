"""Kill -9 the stream worker again and again: nothing lost, nothing duplicated, candles exact.

The simulator feeds four exchanges through the real connectors into Kafka while the stream
worker is SIGKILLed at random points and restarted at once (as the supervisor does). When
the producers have stopped and every stage has drained, the outputs are checked against an
independent run of the same parsers over the raw topics (one processor per raw partition,
as offline `marketpipe normalize` does per capture): every trade once, and every closed
candle equal to the candle of those trades.
"""

from __future__ import annotations

import json
import random
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from kafka_helpers import replay_book
from pipeline_support import Pipeline, pipeline, read_topic
from test_e2e import GRACE_US, STREAMS, _assert_candle, _by_market, _candle_of, _windows

from marketpipe.codec import AvroCodec
from marketpipe.config import LocalBrokerSettings, interval_to_us
from marketpipe.exchanges import subset
from marketpipe.kafka_local import LocalKafka, free_port
from marketpipe.raw import RawRecord
from marketpipe.records import BookChange, Candle, Trade
from streams.feed import FeedOutput, FeedProcessor
from streams.parsers import processor_for

pytestmark = pytest.mark.slow
EXCHANGES = subset("binance", "bybit", "okx", "coinbase")
SYMBOLS = "BTC-USDT,ETH-USDT,BTC-USD"
KILLS = 5
CONNECTOR_KILLS = 3
CODEC = AvroCodec()


def _offline_trades(p: Pipeline) -> list[Trade]:
    return _offline(p)[0]


def _offline(p: Pipeline) -> tuple[list[Trade], int]:
    """The same parsers over the raw log, one processor per raw partition, without Kafka
    transactions: the trades, and how many re-delivered trades they dropped."""
    out = FeedOutput()
    processors: dict[tuple[str, int], FeedProcessor] = {}
    for exchange in EXCHANGES:
        for partition, raw in _raw_records(p, exchange):
            key = (exchange, partition)
            processor = processors.get(key) or processors.setdefault(key, processor_for(exchange))
            processor.process(raw, out)
    return out.trades, sum(processor.counters.duplicates_dropped for processor in processors.values())


def _raw_records(p: Pipeline, exchange: str) -> list[tuple[int, RawRecord]]:
    """The exchange's raw log: (partition, record), in order per partition."""
    return [
        (message.partition() or 0, RawRecord.from_kafka(message.value(), message.headers()))  # type: ignore[arg-type]
        for message in read_topic(p.bootstrap, p.topics.raw(exchange))
    ]


def _identity(trade: Trade) -> tuple[object, ...]:
    return (trade.exchange, trade.symbol, trade.trade_id, trade.price, trade.size, trade.side, trade.ts)


def test_stream_worker_killed_repeatedly_loses_and_duplicates_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    rng = random.Random(20261206)
    with pipeline(kafka_bootstrap, tmp_path, EXCHANGES, SYMBOLS, prefix="k") as p:
        # small batches: the backlog each restart leaves fills them, so the worker carries
        # rounds over running commits (TransactionalLoop._carry) while it is being killed
        p.env["MARKETPIPE_STREAMS__BATCH_SIZE"] = "50"
        p.start_sim(trade_rate=20, seed=5)
        p.start("stream", "stream", "--worker-id", "w1")
        p.start("produce", "produce")
        _kill_repeatedly(p, rng, KILLS, (2.0, 6.0), "stream", "stream", "--worker-id", "w1")
        time.sleep(6.0)  # the last worker runs past a checkpoint too
        p.stop("produce")
        p.wait_drained(sink=False, timeout_s=120)
        _assert_exactly_once(p)
        p.check_alive("stream")


def test_two_workers_one_killed_hands_over_without_loss(kafka_bootstrap: str, tmp_path: Path) -> None:
    with pipeline(kafka_bootstrap, tmp_path, EXCHANGES, SYMBOLS, prefix="s") as p:
        p.env["MARKETPIPE_STREAMS__SESSION_TIMEOUT_S"] = "6"
        p.start_sim(trade_rate=20, seed=9)
        p.start("stream-a", "stream", "--worker-id", "a")
        p.start("stream-b", "stream", "--worker-id", "b")
        p.start("produce", "produce")
        time.sleep(8.0)
        _kill(p, "stream-a")  # for good: its partitions move to b after the session timeout
        del p.processes["stream-a"]
        time.sleep(14.0)
        p.stop("produce")
        p.wait_drained(sink=False, timeout_s=120)
        _assert_exactly_once(p)
        p.check_alive("stream-b")


def test_connector_killed_repeatedly_publishes_each_trade_once_and_valid_books(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The connector process SIGKILLed mid-stream and started again: what reached raw is each
    frame once, and md.* holds each of its trades once, exact candles and books that are never
    crossed (frames in flight when a process dies are gone with it: the count is against raw)."""
    rng = random.Random(20261207)
    with pipeline(kafka_bootstrap, tmp_path, EXCHANGES, SYMBOLS, prefix="c") as p:
        p.start_sim(trade_rate=20, seed=21)
        p.start("stream", "stream", "--worker-id", "w1")
        p.start("produce", "produce")
        _kill_repeatedly(p, rng, CONNECTOR_KILLS, (3.0, 6.0), "produce", "produce")
        time.sleep(6.0)
        p.stop("produce")
        p.wait_drained(sink=False, timeout_s=120)
        _assert_exactly_once(p)
        for exchange in EXCHANGES:
            raw = [record for _, record in _raw_records(p, exchange)]
            frames = Counter((r.conn, r.seq) for r in raw)
            assert [frame for frame, n in frames.items() if n > 1] == [], exchange
            runs = {r.conn.split(".")[1] for r in raw if r.kind == "open"}
            assert len(runs) == CONNECTOR_KILLS + 1, f"{exchange}: a connection from every process run"
        for message_key, changes in _books_by_key(p).items():
            for change, bids, asks in replay_book(changes):
                if bids and asks:
                    assert max(bids) < min(asks), (message_key, change.conn, change.seq)
        p.check_alive("stream")


def _books_by_key(p: Pipeline) -> dict[bytes, list[BookChange]]:
    books: dict[bytes, list[BookChange]] = {}
    for message in read_topic(p.bootstrap, p.topics.book):
        books.setdefault(message.key() or b"", []).append(CODEC.decode(message.value() or b"", BookChange))
    return books


def _supervise(p: Pipeline, name: str, seconds: float) -> None:
    """As `marketpipe run` does: a worker that exits 70 (a stage stuck in a client call) starts again."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if p.processes[name].poll() == 70:
            p.start(name, "stream", "--worker-id", "w1")
        time.sleep(0.5)


def _kill_repeatedly(
    p: Pipeline, rng: random.Random, times: int, between_s: tuple[float, float], name: str, *command: str
) -> None:
    """SIGKILL process ``name`` ``times`` times at random moments, each time started again at once
    (as the supervisor does), every other process checked alive first."""
    for _ in range(times):
        time.sleep(rng.uniform(*between_s))
        p.check_alive()
        _kill(p, name)
        p.start(name, *command)


def _kill(p: Pipeline, name: str) -> None:
    p.check_alive(name)
    p.processes[name].send_signal(signal.SIGKILL)
    p.processes[name].wait(10)


def _assert_exactly_once(p: Pipeline) -> None:
    published = [CODEC.decode(m.value() or b"", Trade) for m in read_topic(p.bootstrap, p.topics.trades)]
    candles = [CODEC.decode(m.value() or b"", Candle) for m in read_topic(p.bootstrap, p.topics.ohlcv)]
    expected = _offline_trades(p)
    assert len(expected) > 500, "the run made too few trades to mean anything"
    keys = Counter((t.exchange, t.symbol, t.trade_id) for t in published)
    assert [k for k, n in keys.items() if n > 1] == []
    assert Counter(map(_identity, published)) == Counter(map(_identity, expected))
    assert {t.exchange for t in published} == set(EXCHANGES)

    latest: dict[str, Candle] = {}
    for candle in candles:
        if candle.exchange != "all":
            held = latest.get(candle.key())
            if held is None or candle.version > held.version:
                latest[candle.key()] = candle
    compared = 0
    for market, trades in _by_market(published).items():
        watermark = max(t.ts for t in trades) - GRACE_US
        for interval in STREAMS.ohlcv_intervals:
            length = interval_to_us(interval)
            for open_time, in_window in _windows(trades, length).items():
                if open_time + length > watermark:
                    continue
                candle = latest[f"{market}:{interval}:{open_time}"]
                assert candle.closed
                row = (market, "", interval, open_time, candle.open, candle.high, candle.low, candle.close)
                row += (candle.volume, candle.quote_volume, candle.buy_volume, candle.sell_volume)
                row += (candle.trades, candle.vwap, candle.first_trade_ts, candle.last_trade_ts)
                _assert_candle(row, _candle_of(in_window))
                compared += 1
    assert compared > 30


def test_broker_restart_mid_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Its own broker (the session's is shared): stopped and started again while data flows."""
    broker = LocalKafka(
        tmp_path / "kafka", LocalBrokerSettings(port=free_port(), controller_port=free_port())
    )
    broker.start()
    try:
        with pipeline(broker.bootstrap, tmp_path, EXCHANGES, SYMBOLS, prefix="b") as p:
            p.start_sim(trade_rate=20, seed=13)
            p.start("stream", "stream", "--worker-id", "w1")
            p.start("produce", "produce")
            time.sleep(8.0)
            broker.stop()
            time.sleep(3.0)
            broker.start()
            # the default stall timeout (60 s) is longer than this: a stage stuck in a client call
            # across the restart exits 70 in time only as that call outlives its own timeout
            _supervise(p, "stream", seconds=45.0)
            p.stop("produce")
            p.wait_drained(sink=False, timeout_s=120)
            _assert_exactly_once(p)
            p.check_alive("stream")
    finally:
        broker.stop()


def test_reconnects_and_handovers_publish_each_trade_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Planned make-before-break handovers every few seconds, plus dropped connections: the
    overlapping and re-subscribed connections deliver some trades twice; md.trades has each once."""
    with pipeline(kafka_bootstrap, tmp_path, EXCHANGES, SYMBOLS, prefix="h") as p:
        for exchange in EXCHANGES:
            p.env[f"MARKETPIPE_PRODUCERS__{exchange.upper()}__MAX_CONNECTION_AGE_S"] = "4"
        p.start_sim(trade_rate=20, seed=17)
        p.start("stream", "stream", "--worker-id", "w1")
        p.start("produce", "produce")
        for _ in range(3):
            time.sleep(4.0)
            for exchange in EXCHANGES:
                _sim_fault(p, exchange, "disconnect")
        time.sleep(4.0)
        p.stop("produce")
        p.wait_drained(sink=False, timeout_s=120)
        _assert_exactly_once(p)
        opens = [
            m
            for m in read_topic(p.bootstrap, p.topics.raw("okx"))
            if ("kind", b"open") in (m.headers() or [])
        ]
        assert len(opens) >= 4, "too few reconnects and handovers to mean anything"
        assert _offline(p)[1] > 0, "no trade was delivered twice: the test proves nothing"


def _sim_fault(p: Pipeline, exchange: str, fault: str) -> None:
    body = json.dumps({"exchange": exchange, "fault": fault}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{p.sim_port}/_sim/fault", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
