"""The ClickHouse sink end to end: a real Kafka broker, Avro records, chDB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from prometheus_client import REGISTRY

from marketpipe.codec import AvroCodec
from marketpipe.records import (
    BBO,
    BookBuckets,
    Bucket,
    Candle,
    DeadLetter,
    DepthBand,
    Record,
    StatusEvent,
    Trade,
)
from marketpipe.topics import Topology
from sinks.clickhouse import connect, parse_dsn
from sinks.migrate import migrate
from sinks.server import QueryServer, read_endpoint
from sinks.worker import SinkConfig, SinkWorker, group_id

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[1]
T0 = 1_714_560_000_000_000
CODEC = AvroCodec()


def _trade(i: int, exchange: str = "binance") -> Trade:
    return Trade(
        exchange=exchange,
        symbol="BTC-USDT",
        exchange_symbol="BTCUSDT",
        trade_id=str(10_000 + i),
        price=60_000.0 + i % 100,
        size=0.001 * (1 + i % 7),
        side="buy" if i % 2 else "sell",
        ts=T0 + i * 1000,
        recv_ts=T0 + i * 1000 + 700,
        conn=f"{exchange}.0",
        seq=i,
    )


def _candle(minute: int, version: int) -> Candle:
    open_time = T0 + minute * 60_000_000
    return Candle(
        exchange="okx",
        symbol="ETH-USDT",
        interval="1m",
        open_time=open_time,
        close_time=open_time + 60_000_000,
        open=3000.0,
        high=3000.0 + version,
        low=2999.0,
        close=3000.0 + version,
        volume=float(version),
        quote_volume=3000.0 * version,
        buy_volume=1.0,
        sell_volume=0.0,
        trades=version,
        vwap=3000.0,
        first_trade_ts=open_time,
        last_trade_ts=open_time + version,
        closed=False,
        version=version,
    )


def _buckets(i: int) -> BookBuckets:
    return BookBuckets(
        exchange="bybit",
        symbol="BTC-USDT",
        ts=T0 + i * 1_000_000,
        mid=60_000.5,
        best_bid=60_000.0,
        best_ask=60_001.0,
        spread=1.0,
        bucket_size=10.0,
        bids=[Bucket(60_000.0, 1.0 + i, 60_000.0 * (1 + i))],
        asks=[Bucket(60_000.0, 2.0, 120_002.0)],
        bands=[DepthBand(0.1, 1.0 + i, 2.0, 0.1)],
    )


def _bbo(i: int) -> BBO:
    return BBO(
        exchange="kraken",
        symbol="BTC-USD",
        exchange_symbol="XBT/USD",
        bid_price=60_000.0 + i,
        bid_size=1.0,
        ask_price=60_001.0 + i,
        ask_size=2.0,
        ts=T0 + i,
        recv_ts=T0 + i + 100,
    )


def _status(i: int) -> StatusEvent:
    return StatusEvent(
        exchange="coinbase",
        symbol="BTC-USD",
        ts=T0 + i,
        state="unsynced" if i % 2 else "synced",
        reason="gap" if i % 2 else "snapshot",
        conn="coinbase.0",
        gaps=i // 2,
    )


def _produce(bootstrap: str, items: list[tuple[str, bytes | None, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for topic, key, value in items:
        producer.produce(topic, key=key, value=value)
        if len(producer) > 50_000:
            producer.poll(0.1)
    assert producer.flush(30) == 0


def _encoded(topic: str, records: list[Record]) -> list[tuple[str, bytes | None, bytes]]:
    return [(topic, r.key().encode(), CODEC.encode(r, topic)) for r in records]


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _count(client: Client, sql: str) -> int:
    return int(client.query(sql).result_rows[0][0])


def _committed(bootstrap: str, topology: Topology) -> dict[str, int]:
    """Committed offsets of the sink group, summed per topic (topics with commits only).

    Read through a (non-subscribing) consumer of the group: librdkafka 2.16's AdminClient
    list_consumer_group_offsets can crash the process while a fresh broker's group
    coordinator is still loading.
    """
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group_id(topology), "enable.auto.commit": False}
    )
    try:
        metadata = consumer.list_topics(timeout=10).topics
        partitions = [TopicPartition(t, p) for t in topology.sink_tables() for p in metadata[t].partitions]
        result = consumer.committed(partitions, timeout=10)
    except KafkaException:
        return {}
    finally:
        consumer.close()
    totals: dict[str, int] = {}
    for tp in result:
        if tp.offset > 0:
            totals[tp.topic] = totals.get(tp.topic, 0) + tp.offset
    return totals


class _Running:
    def __init__(self, worker: SinkWorker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "sink worker did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def start_worker(kafka_bootstrap: str) -> Iterator[Callable[..., _Running]]:
    running: list[_Running] = []

    def start(topology: Topology, dsn: str, **config: float) -> _Running:
        worker = SinkWorker(
            {"bootstrap.servers": kafka_bootstrap},
            topology,
            dsn,
            SinkConfig(
                batch_rows=int(config.get("batch_rows", 500)),
                batch_seconds=config.get("batch_seconds", 0.2),
                backoff_max_s=config.get("backoff_max_s", 1.0),
            ),
        )
        running.append(_Running(worker))
        return running[-1]

    yield start
    for run in running:
        if run.thread.is_alive():
            run.stop()


def test_sink_streams_every_topic_into_its_table(
    kafka_bootstrap: str, topics: Topology, chdb_dsn: str, start_worker: Callable[..., _Running]
) -> None:
    trades = [_trade(i, exchange) for i in range(1500) for exchange in ("binance", "okx")]
    candles = [_candle(minute, version) for minute in range(20) for version in (1, 2, 3)]
    items = (
        _encoded(topics.trades, list(trades))
        + _encoded(topics.ohlcv, list(candles))
        + _encoded(topics.book_buckets, [_buckets(i) for i in range(40)])
        + _encoded(topics.bbo, [_bbo(i) for i in range(60)])
        + _encoded(topics.status, [_status(i) for i in range(10)])
    )
    rows_before = REGISTRY.get_sample_value("marketpipe_sink_rows_total", {"table": "trades"}) or 0.0
    _produce(kafka_bootstrap, items)

    run = start_worker(topics, chdb_dsn)
    expected = {
        topics.trades: 3000,
        topics.ohlcv: 60,
        topics.book_buckets: 40,
        topics.bbo: 60,
        topics.status: 10,
    }
    _wait_until(lambda: _committed(kafka_bootstrap, topics) == expected, 60, "all offsets committed")
    run.stop()

    client = connect(chdb_dsn)
    try:
        assert _count(client, "SELECT count() FROM trades FINAL") == 3000
        assert _count(client, "SELECT uniqExact(exchange, trade_id) FROM trades") == 3000
        sums = client.query("SELECT round(sum(price), 3), round(sum(size), 6) FROM trades").result_rows[0]
        assert sums == (round(sum(t.price for t in trades), 3), round(sum(t.size for t in trades), 6))
        finals = client.query("SELECT DISTINCT version, close FROM ohlcv_final").result_rows
        assert finals == [(3, 3003.0)]
        assert _count(client, "SELECT count() FROM ohlcv_final") == 20
        assert _count(client, "SELECT sum(length(bids.price)) FROM book_buckets") == 40
        assert _count(client, "SELECT count() FROM bbo") == 60
        assert _count(client, "SELECT sum(gaps) FROM status") == sum(i // 2 for i in range(10))
    finally:
        client.close()
    rows_after = REGISTRY.get_sample_value("marketpipe_sink_rows_total", {"table": "trades"}) or 0.0
    assert rows_after - rows_before == 3000


def _dead_letters(bootstrap: str, topic: str, expected: int) -> list[DeadLetter]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dlq-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    letters: list[DeadLetter] = []
    try:
        deadline = time.monotonic() + 30
        while len(letters) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=100, timeout=0.5):
                assert message.error() is None
                letters.append(CODEC.decode(message.value() or b"", DeadLetter))
        # and nothing more than expected arrives
        for message in consumer.consume(num_messages=100, timeout=1.0):
            letters.append(CODEC.decode(message.value() or b"", DeadLetter))
    finally:
        consumer.close()
    return letters


def test_undecodable_and_rejected_records_go_to_the_dlq(
    kafka_bootstrap: str, topics: Topology, chdb_dsn: str, start_worker: Callable[..., _Running]
) -> None:
    garbage = b"not avro at all"
    wrong_type = CODEC.encode(_bbo(1))  # valid Avro, but a BBO on the trades topic
    bad_candle = _candle(5, 1)
    unstorable = CODEC.encode(msgspec.structs.replace(bad_candle, version=-1))  # version is UInt64
    items = [
        *_encoded(topics.trades, [_trade(i) for i in range(10)]),
        (topics.trades, b"binance:BTC-USDT", garbage),
        (topics.trades, b"okx:BTC-USDT", wrong_type),
        *_encoded(topics.ohlcv, [_candle(m, 1) for m in range(4)]),
        (topics.ohlcv, b"okx:ETH-USDT:1m:x", unstorable),
    ]
    _produce(kafka_bootstrap, items)

    run = start_worker(topics, chdb_dsn)
    _wait_until(
        lambda: _committed(kafka_bootstrap, topics) == {topics.trades: 12, topics.ohlcv: 5},
        60,
        "offsets committed past the bad records",
    )
    run.stop()

    letters = sorted(_dead_letters(kafka_bootstrap, topics.dlq, 3), key=lambda d: d.payload)
    assert len(letters) == 3
    by_payload = {letter.payload: letter for letter in letters}
    assert "not an Avro record" in by_payload[garbage].reason
    assert by_payload[garbage].exchange == "binance" and by_payload[garbage].source_topic == topics.trades
    assert "undecodable" in by_payload[wrong_type].reason
    rejected = by_payload[unstorable]
    assert rejected.source_topic == topics.ohlcv and "rejected by ClickHouse table ohlcv" in rejected.reason
    assert rejected.stage == "sink" and rejected.offset >= 0

    client = connect(chdb_dsn)
    try:
        assert _count(client, "SELECT count() FROM trades") == 10
        assert _count(client, "SELECT count() FROM ohlcv") == 4
    finally:
        client.close()


def test_clickhouse_outage_pauses_and_resumes_without_loss(
    kafka_bootstrap: str, topics: Topology, chdb_dsn: str, start_worker: Callable[..., _Running]
) -> None:
    # The real embedded engine served over real HTTP; the outage is the endpoint going away
    # (connection refused on its port) and coming back on the same port.
    path = parse_dsn(chdb_dsn).path
    assert path is not None
    local = connect(chdb_dsn)
    migrate(local)
    password = uuid.uuid4().hex
    server = QueryServer(path, password=password)
    server.start()
    port = server.endpoint.port
    dsn = f"http://marketpipe:{password}@127.0.0.1:{port}/"
    try:
        run = start_worker(topics, dsn, backoff_max_s=0.5)
        _produce(kafka_bootstrap, _encoded(topics.trades, [_trade(i) for i in range(200)]))
        _wait_until(lambda: _committed(kafka_bootstrap, topics).get(topics.trades) == 200, 60, "first batch")

        server.stop()
        _produce(kafka_bootstrap, _encoded(topics.trades, [_trade(i) for i in range(200, 500)]))
        _wait_until(
            lambda: REGISTRY.get_sample_value("marketpipe_sink_clickhouse_up") == 0.0,
            30,
            "the sink to notice the outage",
        )
        time.sleep(2.0)
        assert _committed(kafka_bootstrap, topics)[topics.trades] == 200  # nothing committed while down
        assert _count(local, "SELECT count() FROM trades") == 200
        assert (REGISTRY.get_sample_value("marketpipe_sink_paused_partitions") or 0) > 0
        assert run.thread.is_alive()

        server = QueryServer(path, port=port, password=password)
        server.start()
        _wait_until(lambda: _committed(kafka_bootstrap, topics).get(topics.trades) == 500, 60, "resume")
        assert REGISTRY.get_sample_value("marketpipe_sink_clickhouse_up") == 1.0
        run.stop()
        assert _count(local, "SELECT count() FROM trades FINAL") == 500
        assert _count(local, "SELECT uniqExact(trade_id) FROM trades") == 500
    finally:
        server.stop()
        local.close()


def _sink_process(kafka_bootstrap: str, topics: Topology, dsn: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CLICKHOUSE_DSN": dsn,
        "MARKETPIPE_KAFKA__TOPIC_PREFIX": topics.prefix,
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "marketpipe.cli",
            "sink",
            "--batch-rows",
            "300",
            "--batch-seconds",
            "0.2",
            "--metrics-port",
            "0",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _owner_count(dsn: str, sql: str) -> int:
    client = connect(dsn)  # the sink process owns the directory: this goes through its endpoint
    try:
        return _count(client, sql)
    finally:
        client.close()


@pytest.mark.slow
def test_kill_and_restart_mid_stream_loses_and_duplicates_nothing(
    kafka_bootstrap: str, topics: Topology, chdb_dsn: str
) -> None:
    path = parse_dsn(chdb_dsn).path
    assert path is not None
    total = 20_000

    def produce_slowly() -> None:
        for start in range(0, total, 1000):
            _produce(
                kafka_bootstrap, _encoded(topics.trades, [_trade(i) for i in range(start, start + 1000)])
            )
            time.sleep(0.15)

    producing = threading.Thread(target=produce_slowly, daemon=True)
    first = _sink_process(kafka_bootstrap, topics, chdb_dsn)
    second: subprocess.Popen[bytes] | None = None
    try:
        _wait_until(lambda: read_endpoint(path) is not None, 60, "the first sink to serve the database")
        producing.start()
        _wait_until(lambda: _owner_count(chdb_dsn, "SELECT count() FROM trades") >= 3000, 60, "rows flowing")
        first.kill()  # SIGKILL: no flush, no commit, no cleanup
        first.wait(30)
        stored_at_kill = _owner_count(chdb_dsn, "SELECT count() FROM trades")  # reopened in this process
        assert stored_at_kill < total

        second = _sink_process(kafka_bootstrap, topics, chdb_dsn)
        _wait_until(lambda: read_endpoint(path) is not None, 60, "the second sink to serve the database")
        producing.join(60)
        _wait_until(
            lambda: _owner_count(chdb_dsn, "SELECT count() FROM trades FINAL") == total,
            90,
            "every trade stored",
        )
        assert _owner_count(chdb_dsn, "SELECT uniqExact(trade_id) FROM trades") == total
        assert _owner_count(chdb_dsn, "SELECT count() FROM trades") == total  # once, without FINAL

        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "marketpipe.cli",
                "sql",
                "SELECT count() AS n FROM trades FINAL",
                "--format",
                "csv",
            ],
            cwd=REPO,
            env={**os.environ, "CLICKHOUSE_DSN": chdb_dsn},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.splitlines() == ["n", str(total)]

        _wait_until(
            lambda: _committed(kafka_bootstrap, topics).get(topics.trades) == total,
            60,
            "offsets committed",
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, second.stderr.read().decode() if second.stderr else ""
        assert not (path / "marketpipe-endpoint.json").exists()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)
