"""The sink stores each record once (``count()`` without FINAL), whatever a crash interrupts.

Each partition's batch is recorded (committed offset metadata) before its insert; after a
restart the recorded range is re-formed record for record and inserted again with the same
``insert_deduplication_token``, which ClickHouse drops when the earlier attempt got through.
Real broker, real embedded chDB, the real ``marketpipe sink`` process for the kill test.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec
import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka_helpers import marketpipe_process, worker_env
from pipeline_support import end_offsets, lag, read_topic, sink_group
from prometheus_client import REGISTRY
from test_sink import _bbo, _buckets, _candle, _status, _trade

from marketpipe.codec import AvroCodec
from marketpipe.config import EXCHANGES, LocalBrokerSettings
from marketpipe.kafka_local import LocalKafka, free_port
from marketpipe.records import Record
from marketpipe.topics import Topology, apply_topology
from sinks.clickhouse import connect, endpoint_client, parse_dsn
from sinks.server import read_endpoint
from sinks.tables import BatchDecoder, sink_tables
from sinks.worker import ClickHouseLink, RecordedRange, Replay, SinkConfig, SinkWorker, batch_token

CODEC = AvroCodec()
TABLES = sink_tables(CODEC)


def _count(client: Client, sql: str) -> int:
    return int(client.query(sql).result_rows[0][0])


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _columns(table_name: str, records: Sequence[Record]) -> list[list[object]]:
    table = TABLES[table_name]
    decoded = BatchDecoder(CODEC, table.record_type).decode([CODEC.encode(r) for r in records])
    assert not decoded.failures
    return table.to_columns(decoded.rows)


# -- the tables honour the token ----------------------------------------------------------


@pytest.fixture
def link(chdb_dsn: str) -> Iterator[ClickHouseLink]:
    link = ClickHouseLink(chdb_dsn)
    link.open()
    yield link
    link.close()


def test_the_same_block_with_the_same_token_is_stored_once_in_every_table(link: ClickHouseLink) -> None:
    blocks: dict[str, list[Record]] = {
        "trades": [_trade(i) for i in range(50)],
        "ohlcv": [_candle(minute, 1) for minute in range(10)],
        "book_buckets": [_buckets(i) for i in range(5)],
        "bbo": [_bbo(i) for i in range(20)],
        "status": [_status(i) for i in range(4)],
    }
    client = link.open()
    for name, records in blocks.items():
        columns = _columns(name, records)
        link.insert(TABLES[name], columns, f"md.{name}|0:0-{len(records) - 1}|n{len(records)}")
        link.insert(TABLES[name], columns, f"md.{name}|0:0-{len(records) - 1}|n{len(records)}")
        assert _count(client, f"SELECT count() FROM {name}") == len(records), name
        link.insert(TABLES[name], columns, "another batch")
        assert _count(client, f"SELECT count() FROM {name}") == 2 * len(records), name


def test_a_token_is_still_honoured_after_thousands_of_other_blocks(link: ClickHouseLink) -> None:
    """A restarted sink re-inserts a batch after other workers' inserts: the window must hold them."""
    client = link.open()
    link.insert(TABLES["trades"], _columns("trades", [_trade(0)]), "the recorded batch")
    # Every part written keeps one block id: 100 daily partitions per insert, 1,200 ids in all
    # (more than the 1,000 the tables kept before; one insert per id would take seconds).
    day_us = 86_400_000_000
    for block in range(12):
        trades = [_trade(1 + block * 100 + day) for day in range(100)]
        days = [
            msgspec.structs.replace(t, ts=t.ts + (block * 100 + day + 1) * day_us)
            for day, t in enumerate(trades)
        ]
        link.insert(TABLES["trades"], _columns("trades", days), f"other batch {block}")
    stored = _count(client, "SELECT count() FROM trades")
    assert _count(client, "SELECT count() FROM system.parts WHERE table = 'trades' AND active") >= 1200
    link.insert(TABLES["trades"], _columns("trades", [_trade(0)]), "the recorded batch")
    assert _count(client, "SELECT count() FROM trades") == stored


# -- re-forming a recorded batch ----------------------------------------------------------


def _message(offset: int, partition: int = 0, topic: str = "md.trades") -> Message:
    return Message(topic=topic, partition=partition, offset=offset, value=b"", timestamp=(1, 5_000 + offset))


def test_a_recorded_range_round_trips_through_offset_metadata() -> None:
    recorded = RecordedRange(first=120, last=349, count=228)
    assert RecordedRange.parse(recorded.metadata()) == recorded
    assert RecordedRange.parse(None) is None
    assert RecordedRange.parse("") is None
    assert RecordedRange.parse("written by another tool") is None


def test_a_replay_re_forms_exactly_the_recorded_batch_and_its_token() -> None:
    # Offset 12 is a transaction marker: never delivered, in the range all the same.
    original = [_message(o) for o in (10, 11, 13, 14)]
    recorded = RecordedRange.of(original)
    assert recorded == RecordedRange(10, 14, 4)

    replay = Replay(recorded)
    again = [_message(o) for o in (10, 11, 13, 14, 15, 16)]
    taken = [replay.take(m) for m in again]
    assert taken == [True, True, True, True, False, False]
    assert replay.complete and replay.exact
    assert batch_token("md.trades", replay.messages) == batch_token("md.trades", original)


def test_a_replay_whose_range_end_is_gone_completes_on_the_next_record() -> None:
    replay = Replay(RecordedRange(10, 14, 5))
    assert replay.take(_message(10)) and replay.take(_message(11))
    assert not replay.complete
    assert not replay.take(_message(20))  # 12..14 were deleted by retention
    assert replay.complete and not replay.exact


def test_the_token_tells_a_recreated_topic_from_the_old_one() -> None:
    batch = [_message(o) for o in range(5)]
    recreated = [
        Message(topic="md.trades", partition=0, offset=o, value=b"", timestamp=(1, 9_000 + o))
        for o in range(5)
    ]
    assert batch_token("md.trades", batch) == batch_token("md.trades", [_message(o) for o in range(5)])
    assert batch_token("md.trades", batch) != batch_token("md.trades", recreated)


def _produce_to(bootstrap: str, topic: str, partition: int, records: list[Record]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for record in records:
        producer.produce(
            topic, key=record.key().encode(), value=CODEC.encode(record, topic), partition=partition
        )
    assert producer.flush(30) == 0


def _commit_as_sink(bootstrap: str, topology: Topology, offsets: list[TopicPartition]) -> None:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": sink_group(topology), "enable.auto.commit": False}
    )
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


def _replayed(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "marketpipe_sink_replayed_batches_total", {"table": "trades", "outcome": outcome}
    )
    return value or 0.0


def _sink_until_drained(bootstrap: str, topology: Topology, dsn: str, batch_rows: int) -> None:
    """Run a SinkWorker in this process until the group's lag on md.trades is 0."""
    worker = SinkWorker(
        {"bootstrap.servers": bootstrap},
        topology,
        dsn,
        SinkConfig(batch_rows=batch_rows, batch_seconds=0.2, session_timeout_s=6),
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        _wait_until(
            lambda: not lag(bootstrap, sink_group(topology), [topology.trades]), 60, "every offset committed"
        )
    finally:
        worker.stop()
        thread.join(60)
    assert not errors, errors


@pytest.mark.kafka
def test_recorded_batches_are_re_formed_after_a_crash_and_stored_once(
    kafka_bootstrap: str, topics: Topology, chdb_dsn: str
) -> None:
    _produce_to(kafka_bootstrap, topics.trades, 0, [_trade(i) for i in range(300)])
    _produce_to(kafka_bootstrap, topics.trades, 1, [_trade(i) for i in range(300, 600)])
    messages = read_topic(kafka_bootstrap, topics.trades)
    by_partition = {p: [m for m in messages if m.partition() == p] for p in (0, 1)}

    # A worker recorded a batch on each partition, got partition 0's into ClickHouse and died.
    stored_batch, lost_batch = by_partition[0][:200], by_partition[1][:120]
    _commit_as_sink(
        kafka_bootstrap,
        topics,
        [
            TopicPartition(topics.trades, 0, 0, metadata=RecordedRange.of(stored_batch).metadata()),
            TopicPartition(topics.trades, 1, 0, metadata=RecordedRange.of(lost_batch).metadata()),
        ],
    )
    link = ClickHouseLink(chdb_dsn)
    link.open()
    trades = TABLES["trades"]
    rows = BatchDecoder(CODEC, trades.record_type).decode([m.value() or b"" for m in stored_batch]).rows
    link.insert(trades, trades.to_columns(rows), batch_token(topics.trades, stored_batch))
    link.close()
    replayed_before = _replayed("exact")

    # The restarted worker would cut the stream into other batches of its own.
    _sink_until_drained(kafka_bootstrap, topics, chdb_dsn, batch_rows=70)

    client = connect(chdb_dsn)
    try:
        assert _count(client, "SELECT count() FROM trades") == 600
        assert _count(client, "SELECT uniqExact(trade_id) FROM trades") == 600
    finally:
        client.close()
    assert _replayed("exact") - replayed_before == 2


@pytest.mark.kafka
def test_transactional_input_is_read_committed_and_drains_to_lag_zero(
    kafka_bootstrap: str, topics: Topology, chdb_dsn: str
) -> None:
    """md.* are written in transactions: aborted records are never stored, and the group
    commits past the transaction markers (its lag reaches 0, as drain checks expect)."""
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"test-{topics.prefix}"})
    producer.init_transactions(30)
    outcomes = [True, True, False, True, False, True]  # commit or abort, one transaction each
    for number, commit in enumerate(outcomes):
        producer.begin_transaction()
        for i in range(number * 100, number * 100 + 100):
            trade = _trade(i, ("binance", "okx", "bybit")[i % 3])
            producer.produce(topics.trades, key=trade.key().encode(), value=CODEC.encode(trade))
        # Delivered first: aborting with produce requests in flight fails fatally here
        # (INVALID_TXN_STATE from this broker and librdkafka 2.16).
        assert producer.flush(30) == 0
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    _sink_until_drained(kafka_bootstrap, topics, chdb_dsn, batch_rows=120)

    committed_ids = {
        str(10_000 + i) for n, ok in enumerate(outcomes) if ok for i in range(n * 100, n * 100 + 100)
    }
    client = connect(chdb_dsn)
    try:
        stored = {row[0] for row in client.query("SELECT trade_id FROM trades").result_rows}
        assert _count(client, "SELECT count() FROM trades") == len(committed_ids) == 400
    finally:
        client.close()
    assert stored == committed_ids


# -- SIGKILL the sink process mid-stream ---------------------------------------------------


def _sink(
    bootstrap: str, topology: Topology, dsn: str, root: Path, run: int
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    env = worker_env(bootstrap, topology, root / "data", CLICKHOUSE_DSN=dsn)
    return marketpipe_process(
        "-v",
        "sink",
        "--batch-rows",
        "2000",
        "--batch-seconds",
        "0.1",
        "--session-timeout",
        "6",
        env=env,
        log_path=root / f"sink-{run}.log",
    )


def _stored(db: Path, table: str) -> int:
    """Rows of ``table`` as the running sink serves them (-1 while no sink serves)."""
    endpoint = read_endpoint(db)
    if endpoint is None:
        return -1
    client = endpoint_client(endpoint)
    try:
        return _count(client, f"SELECT count() FROM {table}")
    except Exception:
        return -1
    finally:
        client.close()


class _LiveFeed:
    """Trades of 12 markets (and a BBO for every fourth) in bursts until stopped; counts what it sent."""

    SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT")

    def __init__(self, bootstrap: str, topology: Topology) -> None:
        self.topology = topology
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        self.trades = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _burst(self, start: int, size: int) -> list[tuple[str, bytes, bytes]]:
        burst = []
        for i in range(start, start + size):
            trade = msgspec.structs.replace(
                _trade(i, ("binance", "okx", "bybit")[i % 3]), symbol=self.SYMBOLS[i // 3 % 4]
            )
            burst.append((self.topology.trades, trade.key().encode(), CODEC.encode(trade)))
            if i % 4 == 0:
                bbo = msgspec.structs.replace(_bbo(i), symbol=self.SYMBOLS[i // 4 % 4])
                burst.append((self.topology.bbo, bbo.key().encode(), CODEC.encode(bbo)))
        return burst

    def _run(self) -> None:
        while not self.stopped.is_set():
            for topic, key, value in self._burst(self.trades, 600):
                self.producer.produce(topic, key=key, value=value)
            assert self.producer.flush(30) == 0
            self.trades += 600
            self.stopped.wait(0.4)

    def stop(self) -> int:
        self.stopped.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        return self.trades


def _assert_each_record_stored_once(
    bootstrap: str, topology: Topology, db: Path, feed: _LiveFeed, sink: subprocess.Popen[bytes]
) -> None:
    """Stop the feed; the running sink commits every offset, stores every record it sent once
    (``count()`` without FINAL) and stops cleanly on SIGTERM."""
    total_trades = feed.stop()
    assert sum(end_offsets(bootstrap, [topology.trades]).values()) == total_trades
    _wait_until(
        lambda: not lag(bootstrap, sink_group(topology), [topology.trades, topology.bbo]),
        90,
        "the sink to commit every offset",
    )
    endpoint = read_endpoint(db)
    assert endpoint is not None
    client = endpoint_client(endpoint)
    try:
        assert _count(client, "SELECT uniqExact(exchange, trade_id) FROM trades") == total_trades
        assert _count(client, "SELECT count() FROM trades") == total_trades  # no FINAL
        assert _count(client, "SELECT count() FROM bbo") == total_trades // 4  # no FINAL
    finally:
        client.close()
    os.killpg(sink.pid, signal.SIGTERM)
    assert sink.wait(60) == 0


def _stored_at_least(db: Path, rows: int) -> Callable[[], bool]:
    return lambda: _stored(db, "trades") >= rows


def _table_dir(db: Path, table: str) -> Path:
    endpoint = read_endpoint(db)
    assert endpoint is not None
    client = endpoint_client(endpoint)
    try:
        sql = (
            f"SELECT data_paths[1] FROM system.tables WHERE database = currentDatabase() AND name = '{table}'"
        )
        return Path(str(client.query(sql).result_rows[0][0]))
    finally:
        client.close()


def _inserted_parts(table_dir: Path) -> set[str]:
    """Parts written by inserts (``<partition>_<n>_<n>_<level>``: one block), as they appear on
    disk when an insert completes."""
    try:
        names = os.listdir(table_dir)
    except FileNotFoundError:
        return set()
    parts = set()
    for name in names:
        fields = name.split("_")
        if len(fields) == 4 and fields[1] == fields[2] and fields[1].isdigit():
            parts.add(name)
    return parts


def _wait_for_an_insert(table_dir: Path, tail_s: float) -> None:
    """Return ``tail_s`` after a new part appeared in ``table_dir`` (an insert just completed).

    Watched on disk, not queried: a query would wait for the sink's own statements to finish.
    """
    before = _inserted_parts(table_dir)
    deadline = time.monotonic() + 30
    while not _inserted_parts(table_dir) - before:
        assert time.monotonic() < deadline, "no insert for 30 s"
        time.sleep(0.0005)
    time.sleep(tail_s)


@pytest.mark.kafka
@pytest.mark.slow
def test_sigkilled_sink_restarts_store_every_record_once(
    kafka_bootstrap: str, topics: Topology, chdb_dsn: str, tmp_path: Path
) -> None:
    db = parse_dsn(chdb_dsn).path
    assert db is not None
    feed = _LiveFeed(kafka_bootstrap, topics)
    rng = random.Random(os.getpid())
    kills = 4
    try:
        for run in range(kills):
            with _sink(kafka_bootstrap, topics, chdb_dsn, tmp_path, run) as sink:
                _wait_until(
                    lambda: read_endpoint(db) is not None, 60, f"sink run {run} to serve the database"
                )
                if run == 0:
                    feed.thread.start()
                    trades_dir = _table_dir(db, "trades")
                # Once it has caught up with the feed (batches cut by age, several partitions
                # each), right after ClickHouse accepted a batch: between the inserts of a
                # flush and its commit, where a crash used to leave duplicates.
                _wait_until(_stored_at_least(db, feed.trades - 1200), 90, "the sink to catch up")
                _wait_for_an_insert(trades_dir, tail_s=rng.choice((0.0, 0.0, rng.uniform(0.0, 0.05))))
                os.killpg(sink.pid, signal.SIGKILL)  # no flush, no commit, no cleanup
                sink.wait(30)

        with _sink(kafka_bootstrap, topics, chdb_dsn, tmp_path, kills) as sink:
            _wait_until(lambda: read_endpoint(db) is not None, 60, "the last sink to serve the database")
            _assert_each_record_stored_once(kafka_bootstrap, topics, db, feed, sink)
    finally:
        feed.stopped.set()  # a failed run must not leave it producing
    logs = "".join((tmp_path / f"sink-{run}.log").read_text() for run in range(kills + 1))
    assert "could not be read again" not in logs


@pytest.mark.kafka
@pytest.mark.slow
def test_a_broker_restart_under_a_running_sink_stores_every_record_once(
    chdb_dsn: str, tmp_path: Path
) -> None:
    """Its own broker (the session's is shared): stopped and started again while the sink streams
    a live feed; the sink rides it out in place and still stores each record once."""
    broker = LocalKafka(
        tmp_path / "kafka", LocalBrokerSettings(port=free_port(), controller_port=free_port())
    )
    broker.start()
    topology = Topology(prefix=f"r{uuid.uuid4().hex[:10]}.", exchanges=EXCHANGES, partitions=3)
    apply_topology(AdminClient({"bootstrap.servers": broker.bootstrap}), topology.specs())
    db = parse_dsn(chdb_dsn).path
    assert db is not None
    feed = _LiveFeed(broker.bootstrap, topology)
    try:
        with _sink(broker.bootstrap, topology, chdb_dsn, tmp_path, 0) as sink:
            _wait_until(lambda: read_endpoint(db) is not None, 60, "the sink to serve the database")
            feed.thread.start()
            _wait_until(_stored_at_least(db, 1200), 90, "the sink to store the feed")
            broker.stop()
            time.sleep(3.0)
            broker.start()
            _wait_until(_stored_at_least(db, feed.trades + 1200), 120, "the sink to store after the restart")
            _assert_each_record_stored_once(broker.bootstrap, topology, db, feed, sink)
    finally:
        feed.stopped.set()
        broker.stop()
