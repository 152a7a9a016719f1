"""Throughput, CPU and latency of one stream worker (transactional loop), through a real broker.

    python -m bench.stream_bench [--frames 100000] [--levels 400] [--rate 5000] [--trades 200000]

Phase 1 (throughput): a backlog of raw frames (a busy Binance book: hundreds of levels,
100 ms-style diffs; then trade-heavy traffic from four exchanges) is written to the raw
topics first; one worker running the normalise stage is started and we time how fast it
drains the backlog, from its first committed output to the last, and the worker's CPU time.
The same frames through the parsers alone (in this process, no Kafka) give the reference
rate, measured in the same run: the ratio is what the runtime costs.
Phase 2 (latency): with the worker running, frames are produced at a steady --rate with
recv_ns = the real send time; latency is the wall time a read-committed consumer receives
each output minus the recv_ts it carries (what a downstream user sees).
Phase 3 (aggregation): --trades Avro trades on md.trades drained by the ohlcv stage.
Uses KAFKA_BOOTSTRAP_SERVERS when set, else starts a throwaway local broker.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.normalize_bench import Frame, binance_book, trades
from marketpipe.codec import AvroCodec
from marketpipe.config import LocalBrokerSettings
from marketpipe.kafka_local import LocalKafka, free_port
from marketpipe.raw import RawRecord
from marketpipe.records import Trade
from marketpipe.topics import Topology, apply_topology
from streams.feed import FeedOutput
from streams.parsers import processor_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kafka_helpers import marketpipe_process, worker_env


FRAMES_T0_NS = 1_700_000_000_000_000_000
"""the generated frames' event times start here (bench/normalize_bench.py); receive times follow them"""


def _records(frames: list[tuple[str, Frame]], start_seq: int = 0, now_ns: bool = False) -> list[RawRecord]:
    return [
        RawRecord(
            exchange,
            f"{exchange}.bench.0",
            start_seq + i,
            kind,
            time.time_ns() if now_ns else FRAMES_T0_NS + i * 100_000_000,
            data.encode(),
            url,
        )  # type: ignore[arg-type]
        for i, (exchange, (kind, data, url)) in enumerate(frames)
    ]


def _produce(
    producer: Producer, topics: Topology, records: list[RawRecord], rate: float | None = None
) -> None:
    start = time.perf_counter()
    for index, raw in enumerate(records):
        if rate:
            # sleep, don't spin: a busy pacing loop would take a core from the worker under test
            ahead = start + index / rate - time.perf_counter()
            if ahead > 0.002:
                producer.poll(0)
                time.sleep(ahead)
            raw = RawRecord(raw.exchange, raw.conn, raw.seq, raw.kind, time.time_ns(), raw.data, raw.url)
        while True:
            try:
                producer.produce(
                    topics.raw(raw.exchange),
                    key=raw.conn.encode(),
                    value=raw.payload,
                    headers=raw.kafka_headers(),
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)


def _expected_outputs(records: list[RawRecord]) -> int:
    processors: dict[str, object] = {}
    out = FeedOutput()
    for raw in records:
        processors.setdefault(raw.exchange, processor_for(raw.exchange)).process(raw, out)  # type: ignore[attr-defined]
    return len(out.trades) + len(out.books) + len(out.bbos) + len(out.status) + len(out.control)


def _parsers_alone(records: list[RawRecord]) -> float:
    """Frames/s of the parsers and book logic alone (no Kafka, no Avro): the reference rate."""
    started = time.process_time()
    _expected_outputs(records)
    return len(records) / max(time.process_time() - started, 1e-9)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _output_topics(topics: Topology) -> list[str]:
    return [topics.trades, topics.book, topics.bbo, topics.status, topics.control]


def _drain(bootstrap: str, topics: Topology, expected: int, timeout_s: float) -> list[tuple[int, int]]:
    """(wall time received ms, recv_ts µs) of every output until `expected` arrived."""
    codec = AvroCodec()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe(_output_topics(topics))
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for message in consumer.consume(5000, timeout=0.05):
                if message.error():
                    continue
                received_ms = time.time() * 1000
                record = codec.decode(message.value())
                seen.append((received_ms, getattr(record, "recv_ts", getattr(record, "ts", 0))))
    finally:
        consumer.close()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=100_000, help="frames per throughput scenario")
    parser.add_argument("--levels", type=int, default=400)
    parser.add_argument("--rate", type=float, default=5000, help="frames/s offered in the latency phase")
    parser.add_argument("--latency-frames", type=int, default=20_000)
    parser.add_argument("--trades", type=int, default=200_000, help="trades for the aggregation phase")
    args = parser.parse_args()

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if not bootstrap:
        broker = LocalKafka(
            Path(tempfile.mkdtemp(prefix="stream-bench-")),
            LocalBrokerSettings(port=free_port(), controller_port=free_port(), heap="1g"),
        )
        broker.start()
        bootstrap = broker.bootstrap
    try:
        for name, frames in (
            (
                "binance-book",
                [("binance", f) for f in binance_book(random.Random(1), args.frames, args.levels)],
            ),
            ("trades", list(trades(random.Random(2), args.frames))),
        ):
            run_scenario(bootstrap, name, frames, args)
        run_aggregation(bootstrap, args.trades)
    finally:
        if broker is not None:
            broker.stop()


def _fresh_topology(bootstrap: str) -> Topology:
    topics = Topology(
        prefix=f"bench{uuid.uuid4().hex[:6]}.",
        exchanges=("binance", "bybit", "coinbase", "okx"),
        partitions=1,
    )
    apply_topology(AdminClient({"bootstrap.servers": bootstrap}), topics.specs())
    return topics


def _producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "compression.type": "zstd",
            "queue.buffering.max.messages": 500_000,
        }
    )


def run_scenario(
    bootstrap: str, name: str, frames: list[tuple[str, Frame]], args: argparse.Namespace
) -> None:
    """Throughput on a backlog, then latency at a steady rate on fresh topics and a fresh worker."""
    topics = _fresh_topology(bootstrap)
    backlog = _records(frames)
    _produce(_producer(bootstrap), topics, backlog)
    expected = _expected_outputs(backlog)
    reference = _parsers_alone(backlog)
    with tempfile.TemporaryDirectory() as tmp:
        env = worker_env(bootstrap, topics, Path(tmp))
        args_ = ("stream", "--stages", "normalise")
        with marketpipe_process(*args_, env=env, log_path=Path(tmp) / "stream.log") as worker:
            outputs = _drain(bootstrap, topics, expected, timeout_s=600)
            cpu = _cpu_seconds(worker.pid)
            if worker.poll() is not None or len(outputs) < expected:
                raise SystemExit(f"{name}: worker produced {len(outputs)}/{expected} outputs")
            first, last = min(t for t, _ in outputs), max(t for t, _ in outputs)
            rate = len(backlog) / max((last - first) / 1000, 1e-3)
            print(
                f"{name:<13} throughput: {len(backlog):,} frames -> {expected:,} records in "
                f"{(last - first) / 1000:.2f} s = {rate:,.0f} frames/s per worker "
                f"({rate / reference:.0%} of the parsers alone, {reference:,.0f} frames/s in this run); "
                f"worker CPU {cpu * 1e6 / len(backlog):.1f} µs/frame incl. start-up",
                flush=True,
            )
    run_latency(bootstrap, name, frames[: args.latency_frames], args.rate)


def run_latency(bootstrap: str, name: str, frames: list[tuple[str, Frame]], rate: float) -> None:
    """A warm worker with no backlog (all its agents idle), fed at a steady rate."""
    topics = _fresh_topology(bootstrap)
    producer = _producer(bootstrap)
    warmup, live = _records(frames[:200]), _records(frames[200:], start_seq=200)
    _produce(producer, topics, warmup)
    with tempfile.TemporaryDirectory() as tmp:
        env = worker_env(bootstrap, topics, Path(tmp))
        with marketpipe_process("stream", "--stages", "normalise", env=env, log_path=Path(tmp) / "s.log"):
            warm = _expected_outputs(warmup)
            _drain(bootstrap, topics, warm, timeout_s=120)
            time.sleep(1)
            started_ms = time.time() * 1000
            _produce(producer, topics, live, rate=rate)
            total_expected = _expected_outputs(warmup + live)
            outputs = [
                o for o in _drain(bootstrap, topics, total_expected, timeout_s=300) if o[0] >= started_ms
            ]
    latencies = sorted(max(0.0, created - recv_us / 1000) for created, recv_us in outputs if recv_us)
    if latencies:
        p50 = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"{name:<13} latency at {rate:,.0f} frames/s: recv -> read-committed consumer p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms over {len(latencies):,} records",
            flush=True,
        )


def run_aggregation(bootstrap: str, count: int) -> None:
    """The ohlcv stage draining a backlog of Avro trades (10 markets, every default interval)."""
    topics = _fresh_topology(bootstrap)
    codec = AvroCodec()
    producer = _producer(bootstrap)
    rng = random.Random(3)
    ts = 1_786_000_000_000_000
    for i in range(count):
        ts += rng.randint(0, 20_000)
        symbol = f"C{i % 10}"
        trade = Trade(
            exchange="binance",
            symbol=f"{symbol}-USDT",
            exchange_symbol=f"{symbol}USDT",
            trade_id=str(i),
            price=100 + rng.random(),
            size=1.0,
            side="buy",
            ts=ts,
            recv_ts=ts,
            conn="bench",
            seq=i,
        )
        while True:
            try:
                producer.produce(topics.trades, codec.encode(trade, topics.trades), trade.key().encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    with tempfile.TemporaryDirectory() as tmp:
        env = worker_env(bootstrap, topics, Path(tmp))
        with marketpipe_process(
            "stream", "--stages", "ohlcv", env=env, log_path=Path(tmp) / "o.log"
        ) as worker:
            started = time.monotonic()
            deadline = started + 600
            while (
                time.monotonic() < deadline
                and _committed(bootstrap, topics.ohlcv_group, topics.trades) < count
            ):
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            cpu = _cpu_seconds(worker.pid)
    print(
        f"{'ohlcv':<13} throughput: {count:,} trades in {elapsed:.2f} s (incl. start-up) = "
        f"{count / elapsed:,.0f} trades/s; worker CPU {cpu * 1e6 / count:.1f} µs/trade",
        flush=True,
    )


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    finally:
        consumer.close()
    return max(found[0].offset, 0)


if __name__ == "__main__":
    main()
