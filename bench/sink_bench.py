"""ClickHouse sink throughput: one worker, Kafka -> chDB.

    python -m bench.sink_bench [--rows 500000] [--batch-rows 50000] [--tables trades,ohlcv,book_buckets]
                               [--no-kafka | --kafka-only]

For each table: produce --rows Avro records into a fresh topic namespace (6 partitions),
run one SinkWorker (one process, one consumer) from the earliest offset until every offset
is committed, and report rows/s end to end, rows per CPU-second of the process (steadier
than rows/s on a shared machine) and the latency of each ClickHouse insert (p50/p99; the
worker inserts each partition's share of a flush on its own). First, unless --kafka-only,
it measures the worker's ClickHouse half alone: batch decode + column build + insert
(--no-kafka stops there).

Kafka: KAFKA_BOOTSTRAP_SERVERS when set, else a temporary local broker.
ClickHouse: a temporary embedded (chDB) database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from marketpipe.codec import AvroCodec
from marketpipe.config import LocalBrokerSettings
from marketpipe.exchanges import subset
from marketpipe.kafka_local import LocalKafka, free_port
from marketpipe.records import BookBuckets, Bucket, Candle, DepthBand, Record, Trade
from marketpipe.topics import Topology, apply_topology
from sinks.tables import BatchDecoder, sink_tables
from sinks.worker import ClickHouseLink, SinkConfig, SinkWorker, group_id

T0 = 1_714_560_000_000_000
SYMBOLS = ["BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT"]
EXCHANGES = subset("binance", "okx", "bybit", "kraken", "coinbase")


def make_trade(i: int) -> Trade:
    exchange = EXCHANGES[i % 5]
    return Trade(
        exchange=exchange,
        symbol=SYMBOLS[i % 4],
        exchange_symbol=SYMBOLS[i % 4].replace("-", ""),
        trade_id=str(1_000_000_000 + i),
        price=60_000.0 + (i % 977) * 0.1,
        size=0.001 * (1 + i % 13),
        side="buy" if i % 3 else "sell",
        ts=T0 + i * 50,
        recv_ts=T0 + i * 50 + 800,
        conn=f"{exchange}.0",
        seq=i,
    )


def make_candle(i: int) -> Candle:
    open_time = T0 + (i // 20) * 60_000_000
    return Candle(
        exchange=EXCHANGES[i % 5],
        symbol=SYMBOLS[(i // 5) % 4],
        interval="1m",
        open_time=open_time,
        close_time=open_time + 60_000_000,
        open=100.0,
        high=101.0,
        low=99.0,
        close=100.5,
        volume=12.5,
        quote_volume=1250.0,
        buy_volume=7.0,
        sell_volume=5.5,
        trades=40,
        vwap=100.2,
        first_trade_ts=open_time + 10,
        last_trade_ts=open_time + 59_000_000,
        closed=True,
        version=i,
    )


def make_buckets(i: int) -> BookBuckets:
    mid = 60_000.0 + i % 100
    bids = [Bucket(mid - 10 * k, 1.0 + k, (mid - 10 * k) * (1.0 + k)) for k in range(20)]
    asks = [Bucket(mid + 10 * k, 1.5 + k, (mid + 10 * k) * (1.5 + k)) for k in range(20)]
    bands = [DepthBand(pct, 10.0 * pct, 9.0 * pct, 0.05) for pct in (0.1, 0.5, 1.0, 5.0)]
    return BookBuckets(
        exchange=EXCHANGES[i % 5],
        symbol=SYMBOLS[(i // 5) % 4],
        ts=T0 + i * 1000,
        mid=mid,
        best_bid=mid - 0.5,
        best_ask=mid + 0.5,
        spread=1.0,
        bucket_size=10.0,
        bids=bids,
        asks=asks,
        bands=bands,
    )


MAKERS: dict[str, Callable[[int], Record]] = {
    "trades": make_trade,
    "ohlcv": make_candle,
    "book_buckets": make_buckets,
}


def percentiles(latencies: list[float]) -> tuple[float, float]:
    if len(latencies) < 2:
        return (latencies[0], latencies[0]) if latencies else (0.0, 0.0)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49], cuts[98]


def timed_inserts(link: ClickHouseLink) -> list[float]:
    """Record the duration of every insert the link makes."""
    latencies: list[float] = []
    insert = link.insert

    def timed(*args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        insert(*args, **kwargs)
        latencies.append(time.perf_counter() - started)

    link.insert = timed  # type: ignore[method-assign]
    return latencies


def report(table: str, rows: int, seconds: float, cpu: float, latencies: list[float], mode: str) -> None:
    """``cpu``: CPU-seconds of this process (worker, librdkafka and chDB threads) over ``seconds``;
    rows per CPU-second compares runs on a machine shared with other work."""
    p50, p99 = percentiles(latencies)
    print(
        f"{table:13s} {mode:18s} {rows:>9,d} rows  {seconds:7.2f} s  {rows / seconds:>10,.0f} rows/s  "
        f"{rows / cpu:>10,.0f} rows/cpu-s  inserts {len(latencies):>4d}  "
        f"p50 {p50 * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms",
        flush=True,
    )


def bench_clickhouse_half(table_name: str, values: list[bytes], dsn: str, batch_rows: int) -> None:
    codec = AvroCodec()
    table = sink_tables(codec)[table_name]
    decoder = BatchDecoder(codec, table.record_type)
    link = ClickHouseLink(dsn)
    link.open()
    latencies = timed_inserts(link)
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(values), batch_rows):
        decoded = decoder.decode(values[start : start + batch_rows])
        link.insert(table, table.to_columns(decoded.rows), f"bench|{start}")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    report(table_name, len(values), seconds, cpu, latencies, "decode+insert")
    link.close()


def bench_worker(table_name: str, values: list[bytes], dsn: str, bootstrap: str, batch_rows: int) -> None:
    topology = Topology(prefix=f"bench{uuid.uuid4().hex[:8]}.", partitions=6)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    apply_topology(admin, topology.specs())
    topic = next(t for t, name in topology.sink_tables().items() if name == table_name)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,  # a retried batch is neither reordered nor written twice
            "linger.ms": 20,
            "compression.type": "zstd",
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
        }
    )
    for i, value in enumerate(values):
        producer.produce(topic, key=str(i % 64).encode(), value=value)
        if i % 100_000 == 0:
            producer.poll(0)
    producer.flush(120)

    worker = SinkWorker(
        {"bootstrap.servers": bootstrap}, topology, dsn, SinkConfig(batch_rows=batch_rows, batch_seconds=1.0)
    )
    worker.link.open()
    latencies = timed_inserts(worker.link)
    group = group_id(topology)
    done = threading.Event()

    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    partitions = [TopicPartition(topic, p) for p in range(topology.partitions)]

    def committed() -> int:
        # A non-subscribing consumer of the group: AdminClient.list_consumer_group_offsets
        # in librdkafka 2.16 can crash while a fresh broker's coordinator is loading.
        try:
            return sum(max(tp.offset, 0) for tp in reader.committed(partitions, timeout=10))
        except KafkaException:
            return 0

    def watch() -> None:
        while not done.is_set():
            if committed() >= len(values):
                worker.stop()
                return
            time.sleep(0.05)

    # Time from the first consumed message (the group join is not throughput).
    first_message: list[tuple[float, float]] = []
    accept = worker._accept

    def accept_timed(messages: Any) -> None:
        if messages and not first_message:
            first_message.append((time.perf_counter(), time.process_time()))
        accept(messages)

    worker._accept = accept_timed  # type: ignore[method-assign]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    worker.run()
    elapsed, cpu = time.perf_counter() - first_message[0][0], time.process_time() - first_message[0][1]
    done.set()
    reader.close()
    report(table_name, len(values), elapsed, cpu, latencies, "kafka->worker->ch")


@contextmanager
def kafka_bootstrap(workdir: Path) -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = LocalKafka(workdir / "kafka", LocalBrokerSettings(port=free_port(), controller_port=free_port()))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--batch-rows", type=int, default=50_000)
    parser.add_argument("--tables", default="trades,ohlcv,book_buckets")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-kafka", action="store_true")
    group.add_argument("--kafka-only", action="store_true")
    args = parser.parse_args()
    codec = AvroCodec()
    with tempfile.TemporaryDirectory(prefix="sink-bench-") as tmp:
        workdir = Path(tmp)
        dsn = f"chdb://{workdir / 'clickhouse'}"
        print(f"one worker, batches of {args.batch_rows:,d} rows, chDB at {workdir / 'clickhouse'}")
        for table_name in [] if args.kafka_only else args.tables.split(","):
            rows = args.rows if table_name != "book_buckets" else max(1, args.rows // 5)
            values = [codec.encode(MAKERS[table_name](i)) for i in range(rows)]
            bench_clickhouse_half(table_name, values, dsn, args.batch_rows)
        if args.no_kafka:
            return
        with kafka_bootstrap(workdir) as bootstrap:
            for table_name in args.tables.split(","):
                rows = args.rows if table_name != "book_buckets" else max(1, args.rows // 5)
                values = [codec.encode(MAKERS[table_name](i)) for i in range(rows)]
                bench_worker(table_name, values, dsn, bootstrap, args.batch_rows)


if __name__ == "__main__":
    main()
