"""The aggregation agents through a real broker: a `marketpipe stream` worker as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from test_buckets import BASE_MS, book_frame

from marketpipe.codec import AvroCodec
from marketpipe.raw import RawRecord
from marketpipe.records import BookBuckets, Candle, Trade
from marketpipe.topics import Topology, describe_configs

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

S = 1_000_000
T0 = 1_786_000_020 * S  # a minute boundary
ROOT = Path(__file__).resolve().parents[1]
codec = AvroCodec()


class Worker:
    """`python -m marketpipe.cli stream` against the test topology; always stopped."""

    def __init__(self, bootstrap: str, topology: Topology, data_dir: Path, **env: str) -> None:
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "MARKETPIPE_KAFKA__TOPIC_PREFIX": topology.prefix,
            "MARKETPIPE_DATA_DIR": str(data_dir),
            **env,
        }
        self.log = data_dir / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "marketpipe.cli", "stream", "--loglevel", "warn"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        """A crash: no shutdown, no final commit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


@pytest.fixture
def worker_factory(kafka_bootstrap: str, tmp_path: Path) -> Iterator[list[Worker]]:
    workers: list[Worker] = []
    try:
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    for key, value in messages:
        producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0


def trade(exchange: str, symbol: str, n: int, dt: float, price: float, size: float, side: str) -> Trade:
    return Trade(exchange=exchange, symbol=symbol, exchange_symbol=symbol.replace("-", ""),
                 trade_id=str(n), price=price, size=size, side=side,  # type: ignore[arg-type]
                 ts=T0 + round(dt * S), recv_ts=T0 + round(dt * S), conn="c", seq=n)  # fmt: skip


def encoded(trades: list[Trade], topic: str) -> list[tuple[bytes, bytes]]:
    return [(t.key().encode(), codec.encode(t, topic)) for t in trades]


class Reader:
    """Consumes a topic from the beginning, decoding Avro records (while the worker lives)."""

    def __init__(self, bootstrap: str, topic: str, worker: Worker) -> None:
        self.worker = worker
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"test-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
            }
        )
        self.consumer.subscribe([topic])
        self.records: list[object] = []

    def until(self, done: object, timeout: float = 90.0) -> list[object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self.records):  # type: ignore[operator]
                return self.records
            proc = self.worker.proc
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"worker exited: {self.worker.log.read_text()[-3000:]}")
            for message in self.consumer.consume(500, timeout=0.5):
                if message.error() is None and message.value():
                    self.records.append(codec.decode(message.value()))
        tail = "\n".join(repr(r)[:300] for r in self.records[-15:])
        raise AssertionError(f"timed out; {len(self.records)} records read, the last:\n{tail}")

    def close(self) -> None:
        self.consumer.close()


def latest(records: list[object]) -> dict[str, Candle]:
    best: dict[str, Candle] = {}
    for record in records:
        assert isinstance(record, Candle)
        held = best.get(record.key())
        if held is None or record.version > held.version:
            best[record.key()] = record
    return best


def session_trades() -> tuple[list[Trade], list[Trade], Trade]:
    """Two halves inside one minute for binance and coinbase, then a closing trade per market."""
    first = [
        trade("binance", "BTC-USDT", i, i * 0.2, 100.0 + i % 7, 0.5 + i % 3, "buy" if i % 2 else "sell")
        for i in range(100)
    ]
    first += [trade("coinbase", "BTC-USD", i, 0.1 + i * 0.3, 101.0 - i % 5, 1.0, "buy") for i in range(50)]
    # a perpetual: its own candles, never consolidated (its contracts are not base units)
    first += [trade("okx", "BTC-USDT-PERP", i, 0.5 + i, 100.0, 7.0, "buy") for i in range(5)]
    second = [trade("binance", "BTC-USDT", i, i * 0.2, 100.0 + i % 11, 0.25, "sell") for i in range(100, 200)]
    second.append(trade("binance", "BTC-USDT", 200, 3 * 86_400, 99.0, 1.0, "buy"))
    close = trade("coinbase", "BTC-USD", 50, 3 * 86_400, 99.0, 1.0, "buy")
    return first, second, close


def run_session(
    bootstrap: str, topology: Topology, data_dir: Path, workers: list[Worker], crash: bool
) -> dict[str, Candle]:
    env = {"MARKETPIPE_STREAMS__QUOTE_EQUIVALENTS": '[["USD","USDT"]]'}
    worker = Worker(bootstrap, topology, data_dir, **env)
    workers.append(worker)
    first, second, close = session_trades()
    reader = Reader(bootstrap, topology.ohlcv, worker)
    try:
        worker.start()
        produce(bootstrap, topology.trades, encoded(first, topology.trades))
        minute = f"binance:BTC-USDT:1m:{T0}"
        reader.until(lambda rs: any(r.key() == minute and r.trades >= 90 for r in rs))  # type: ignore[attr-defined]
        if crash:
            worker.kill()  # mid-window: the 1 m candle is open
            worker.start()
        produce(bootstrap, topology.trades, encoded([*second, close], topology.trades))
        day = T0 - T0 % (86_400 * S)
        finals = {f"all:BTC-USD:1d:{day}", f"all:BTC-USD:1m:{T0}", f"binance:BTC-USDT:1d:{day}", minute}
        both = ["binance:BTC-USDT", "coinbase:BTC-USD"]

        def settled(rs: list[Candle]) -> bool:
            closed = {r.key() for r in rs if r.closed and (r.exchange != "all" or r.markets == both)}
            return finals <= closed

        records = reader.until(settled)
        return latest(records)
    finally:
        reader.close()
        worker.stop()


def test_ohlcv_restart_mid_window_and_replay_identical(
    kafka_bootstrap: str,
    kafka_admin: AdminClient,
    topics: Topology,
    tmp_path: Path,
    worker_factory: list[Worker],
) -> None:
    crashed = run_session(kafka_bootstrap, topics, tmp_path / "a", worker_factory, crash=True)
    minute = crashed[f"binance:BTC-USDT:1m:{T0}"]
    first, second, _ = session_trades()
    binance = [t for t in [*first, *second] if t.exchange == "binance" and t.ts < T0 + 60 * S]
    assert minute.closed and minute.trades == len(binance) == 200
    assert minute.volume == pytest.approx(sum(t.size for t in binance), rel=1e-12)
    assert minute.high == max(t.price for t in binance) and minute.low == min(t.price for t in binance)
    assert minute.open == binance[0].price and minute.close == binance[-1].price
    assert minute.buy_volume == pytest.approx(sum(t.size for t in binance if t.side == "buy"))
    seconds = [
        c
        for c in crashed.values()
        if c.exchange == "binance" and c.interval == "1s" and c.open_time < T0 + 60 * S
    ]
    assert sum(c.trades for c in seconds) == 200 and all(c.closed for c in seconds)
    consolidated = crashed[f"all:BTC-USD:1m:{T0}"]
    assert consolidated.markets == ["binance:BTC-USDT", "coinbase:BTC-USD"]
    assert consolidated.trades == 250 and consolidated.closed
    assert consolidated.volume == pytest.approx(minute.volume + 50.0)
    assert crashed[f"okx:BTC-USDT-PERP:1m:{T0}"].trades == 5
    assert not [key for key in crashed if key.startswith("all:") and "PERP" in key]

    # the same trades into a fresh namespace, without a crash: the same final candles
    fresh = Topology(prefix=f"t{uuid.uuid4().hex[:10]}.", exchanges=topics.exchanges, partitions=3)
    from marketpipe.topics import apply_topology

    apply_topology(kafka_admin, fresh.specs())
    replayed = run_session(kafka_bootstrap, fresh, tmp_path / "b", worker_factory, crash=False)
    per_exchange = {k: v for k, v in crashed.items() if not k.startswith("all:")}
    assert {k: v for k, v in replayed.items() if not k.startswith("all:")} == per_exchange


def test_book_buckets_through_the_worker(
    kafka_bootstrap: str, topics: Topology, tmp_path: Path, worker_factory: list[Worker]
) -> None:
    from feed_helpers import BASE_NS, BYBIT_INFO_URL, bybit_instruments

    frames = [
        ("rest", bybit_instruments(("BTCUSDT", "BTC", "USDT")), BYBIT_INFO_URL),
        ("recv", book_frame("snapshot", 1, BASE_MS + 100, [["65000", "1"]], [["65010", "2"]]), None),
        ("recv", book_frame("delta", 2, BASE_MS + 900, [["64990", "3"]], []), None),
        ("recv", book_frame("delta", 3, BASE_MS + 1000, [["65000", "0"]], [["65020", "5"]]), None),
        ("recv", book_frame("delta", 4, BASE_MS + 2500, [["64980", "1"]], []), None),
    ]
    raw = [
        RawRecord("bybit", "bybit.t.0", i, kind, BASE_NS + i, data, url)
        for i, (kind, data, url) in enumerate(frames)
    ]  # type: ignore[arg-type]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for record in raw:
        producer.produce(
            topics.raw("bybit"),
            value=record.payload,
            key=record.conn.encode(),
            headers=record.kafka_headers(),
        )
    assert producer.flush(30) == 0
    worker = Worker(kafka_bootstrap, topics, tmp_path, MARKETPIPE_STREAMS__BUCKET_SIZES='{"BTC-USDT": 10}')
    worker_factory.append(worker)
    worker.start()
    reader = Reader(kafka_bootstrap, topics.book_buckets, worker)
    try:
        records = reader.until(
            lambda rs: (
                sum(1 for r in rs if r.exchange == "bybit") >= 2 and any(r.exchange == "all" for r in rs)
            )  # type: ignore[attr-defined]
        )
    finally:
        reader.close()
        worker.stop()
    rows = [r for r in records if isinstance(r, BookBuckets) and r.exchange == "bybit"]
    boundary = BASE_MS * 1000
    assert [r.ts for r in rows] == [boundary + S, boundary + 2 * S]
    assert [(b.price, b.size) for b in rows[0].bids] == [(65000.0, 1.0), (64990.0, 3.0)]
    assert [(b.price, b.size) for b in rows[1].asks] == [(65010.0, 2.0), (65020.0, 5.0)]
    merged = [r for r in records if isinstance(r, BookBuckets) and r.exchange == "all"]
    assert merged[0].markets == ["bybit:BTC-USDT"] and merged[0].bids == rows[0].bids


def test_aggregate_topics_are_compacted(kafka_admin: AdminClient, topics: Topology) -> None:
    configs = describe_configs(kafka_admin, [topics.ohlcv, topics.book_buckets])
    for topic in (topics.ohlcv, topics.book_buckets):
        assert configs[topic]["cleanup.policy"] == "compact"
        assert int(configs[topic]["min.compaction.lag.ms"]) >= 60_000
