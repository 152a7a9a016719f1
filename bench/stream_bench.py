"""Throughput, CPU and latency of one stream worker (transactional loops), through a real broker.

    python -m bench.stream_bench [--capture FILE] [--drains 2] [--rate 5000] [--trades 200000]
                                 [--phases breakdown,throughput,latency,aggregation]

Input: a capture file (`marketpipe capture`); without --capture the bench records one
first: the simulator's Binance feed, 10 symbols, 200 book updates and 20 trades per second
each, for --record-s seconds (busy books: 500 levels a side).

Phase 0 (breakdown, in this process, no broker): the stage's CPU per frame built up step by
step: parsers and books, + price-bucket snapshots, + raw records rebuilt from Kafka values and
headers, + Avro encoding and emitting (the whole stage).
Phase 1 (throughput): the capture is written to raw.binance as a backlog; a worker running
the normalise stage is started; the rate is measured from the group's committed offsets
(first progress to the end, so start-up is excluded), with the worker's CPU over the same
span. Two references measured in the same run, in this process: the same records through
the parsers alone (parsers and books; no Kafka, no Avro, no bucket snapshots), and the same
normalise stage in a plain confluent-kafka batch loop (no transactions, no state kept).
--drains times, each into fresh topics: the first drains of a fresh broker run while its JIT
compiles the request paths (the broker then takes several times the CPU it takes warm).
Phase 2 (latency): a warm worker fed the capture at a steady --rate with recv_ns = the
real send time; latency is the wall time a read-committed consumer receives each output
minus the recv_ts it carries (what a downstream user sees).
Phase 3 (aggregation): --trades Avro trades on md.trades drained by the ohlcv stage. Their
exchange timestamps advance at --trade-rates trades per second (comma-separated: one drain
each): the event-time density of a live feed at that rate, which sets how many candle
versions the stage publishes per trade (every market publishes its changed candles once per
event-time second). 100,000/s is a live feed at the issue's target rate; 100/s replays a
slow feed 1,000 times faster than it happened, about 0.9 candle versions per trade.
Uses KAFKA_BOOTSTRAP_SERVERS when set, else starts a throwaway local broker.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench import caller_settings
from marketpipe.codec import AvroCodec
from marketpipe.config import ConfigError, LocalBrokerSettings, load_settings
from marketpipe.kafka_local import LocalKafka, free_port, port_open
from marketpipe.raw import RawRecord, read_capture
from marketpipe.records import Record, Trade
from marketpipe.topics import Topology, apply_topology, watermarks
from streams.app import PUBLISH_EVERY, NormaliseStage
from streams.buckets import Bucketer
from streams.feed import FeedOutput, FeedProcessor
from streams.parsers import processor_for
from streams.runtime import BACKLOG_FETCH
from streams.worker import GC_THRESHOLDS, stage_builders

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kafka_helpers import marketpipe_process, worker_env

MARKETPIPE = (sys.executable, "-m", "marketpipe.cli")
SYMBOLS = "BTC-USDT,ETH-USDT,SOL-USDT,XRP-USDT,ADA-USDT,DOGE-USDT,LTC-USDT,BNB-USDT,DOT-USDT,LINK-USDT"


def record_capture(path: Path, seconds: float) -> None:
    """The simulator's busy Binance feed through the real connector into a capture file."""
    port = free_port()
    sim = subprocess.Popen(
        [
            *MARKETPIPE,
            "sim",
            "--exchanges",
            "binance",
            "--symbols",
            SYMBOLS,
            "--port",
            str(port),
            "--rate",
            "200",
            "--trade-rate",
            "20",
            "--duration",
            str(seconds + 15),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline:
                raise SystemExit("the simulator did not open its port")
            time.sleep(0.1)
        base = f"127.0.0.1:{port}/binance"
        subprocess.run(
            [
                *MARKETPIPE,
                "capture",
                "--exchange",
                "binance",
                "--symbols",
                SYMBOLS,
                "--out",
                str(path),
                "--ws-url",
                f"ws://{base}",
                "--rest-url",
                f"http://{base}",
                "--duration",
                str(seconds),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    finally:
        sim.terminate()
        sim.wait(10)


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
                    headers=list[tuple[str, str | bytes | None]](raw.kafka_headers()),
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)


def _normalised(records: list[RawRecord]) -> FeedOutput:
    processors: dict[str, FeedProcessor] = {}
    out = FeedOutput()
    for raw in records:
        processor = processors.get(raw.exchange) or processors.setdefault(
            raw.exchange, processor_for(raw.exchange)
        )
        processor.process(raw, out)
    return out


def _outputs(out: FeedOutput) -> int:
    return len(out.trades) + len(out.books) + len(out.bbos) + len(out.status) + len(out.control)


@contextlib.contextmanager
def _worker_gc() -> Iterator[None]:
    """The stream worker's garbage-collector thresholds (streams/worker.py) within the block."""
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def _parse_in_batches(records: list[RawRecord], bucketer: Bucketer | None = None) -> None:
    """The parsers and books over ``records`` the way the stage runs them: the outputs
    dropped after every ``PUBLISH_EVERY`` records."""
    processor, out = processor_for(records[0].exchange), FeedOutput()
    processor.bucketer = bucketer
    for first in range(0, len(records), PUBLISH_EVERY):
        for raw in records[first : first + PUBLISH_EVERY]:
            processor.process(raw, out)
        out.clear()


def _parsers_alone(records: list[RawRecord]) -> float:
    """Frames/s of the parsers and book logic alone (no Kafka, no Avro): the reference rate,
    under the worker's GC thresholds. (Keeping every output, as this reference once did, has
    the collector rescan them all and understated the reference by a third.)"""
    with _worker_gc():
        started = time.process_time()
        _parse_in_batches(records)
        return len(records) / max(time.process_time() - started, 1e-9)


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU of a process so far (Linux /proc): its Python threads, and
    librdkafka's (threads named ``rdk:*``: network, compression, decompression)."""
    python = kafka = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name, rest = task.joinpath("stat").read_text().split("(", 1)[1].rsplit(")", 1)
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
        cpu = sum(int(x) for x in rest.split()[11:13]) / os.sysconf("SC_CLK_TCK")
        if name.startswith("rdk:"):
            kafka += cpu
        else:
            python += cpu
    return python, kafka


def _machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine so far, all cores (Linux /proc/stat: everything but
    idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _committed(consumer: Consumer, topic: str) -> int:
    try:
        found = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    except KafkaException:  # a young broker's group coordinator is still loading: nothing yet
        return 0
    return max(found[0].offset, 0)


@dataclass
class Drain:
    """From the first committed progress to the end of a backlog."""

    seconds: float
    count: int
    python_cpu: float
    """CPU seconds of the worker's Python threads (the stage loop and its committer)"""
    kafka_cpu: float
    """CPU seconds of librdkafka's threads"""
    machine_cpu: float
    """busy CPU seconds of the whole machine (the worker, the broker, this bench)"""

    @property
    def cpu(self) -> float:
        return self.python_cpu + self.kafka_cpu

    def machine(self) -> str:
        cores = os.cpu_count() or 1
        busy = self.machine_cpu / max(self.seconds, 1e-9)
        return (
            f"the machine was {busy:.2f} of {cores} cores busy; everything but the worker "
            f"(the broker, this bench) {(self.machine_cpu - self.cpu) * 1e6 / self.count:.1f} µs/frame"
        )

    def per_item(self, unit: str) -> str:
        return (
            f"worker CPU {self.cpu * 1e6 / self.count:.1f} µs/{unit} "
            f"(Python threads {self.python_cpu * 1e6 / self.count:.1f}, "
            f"librdkafka {self.kafka_cpu * 1e6 / self.count:.1f})"
        )


class _Sample:
    """The drain's progress and the CPU used so far, now (read at its start and end only)."""

    def __init__(self, done: int, pid: int) -> None:
        self.at, self.done = time.monotonic(), done
        self.python_cpu, self.kafka_cpu = _cpu_seconds(pid)
        self.machine_cpu = _machine_cpu_seconds()

    def since(self, first: _Sample) -> Drain:
        return Drain(
            self.at - first.at,
            max(self.done - first.done, 1),
            self.python_cpu - first.python_cpu,
            self.kafka_cpu - first.kafka_cpu,
            self.machine_cpu - first.machine_cpu,
        )


def _watch_drain(
    bootstrap: str, group: str, topic: str, end: int, worker: subprocess.Popen[bytes], log: Path
) -> Drain:
    """Samples the group's committed offset every 10 ms through one consumer (a consumer made
    per sample took tens of milliseconds, a visible share of a drain that lasts seconds).
    A worker that exits first ends the bench with its exit code and the end of its log."""
    pid = worker.pid
    # read_uncommitted: the last committed offset even while the worker's next transaction (with
    # its offsets) is open; read_committed asks for stable offsets and gets an error instead
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_uncommitted",
        }
    )
    deadline = time.monotonic() + 600
    first: _Sample | None = None
    try:
        while time.monotonic() < deadline:
            done = _committed(consumer, topic)
            if first is None and (done > 0 or done >= end):
                first = _Sample(done, pid)
            if done >= end and first is not None:
                return _Sample(done, pid).since(first)
            if worker.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise SystemExit(
                    f"the worker exited with code {worker.returncode} before {topic} drained:\n{tail}"
                )
            time.sleep(0.01)
    finally:
        consumer.close()
    raise SystemExit(f"{topic}: not drained in 600 s")


def _fresh_topology(bootstrap: str) -> Topology:
    topics = Topology(prefix=f"bench{uuid.uuid4().hex[:6]}.", exchanges=("binance",), partitions=1)
    apply_topology(AdminClient({"bootstrap.servers": bootstrap}), topics.specs())
    return topics


def _producer(bootstrap: str) -> Producer:
    """Writes the capture in its order: idempotence keeps a retried batch from landing after the
    later ones, where the stage would dead-letter every frame before the instrument metadata it
    came after."""
    config = {"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 500_000}
    return Producer({**config, "compression.type": "zstd", "enable.idempotence": True})


def _end_offset(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}"})
    try:
        return watermarks(consumer, TopicPartition(topic, 0))[1]
    finally:
        consumer.close()


def _plain_loop(bootstrap: str, topics: Topology, end: int) -> tuple[float, float]:
    """Frames/s and frames/CPU-s of the same normalise stage in a plain confluent-kafka batch
    loop, in this process: consume a batch, normalise, produce the outputs; no transaction, no
    committed offsets, no checkpoints, no restorable state. The issue's first measurement
    compared the worker with such a loop: the worker's share of it is what exactly-once costs."""
    settings = load_settings(kafka={"topic_prefix": topics.prefix}, exchanges=list(topics.exchanges))
    stage = stage_builders(settings)["normalise"]()
    raw = topics.raw("binance")
    state = stage.new_state(raw, 0)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            **BACKLOG_FETCH,
        }
    )
    consumer.assign([TopicPartition(raw, 0, OFFSET_BEGINNING)])
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "compression.type": "zstd",
            "compression.level": 1,  # as the worker's producer
            "queue.buffering.max.messages": 1_000_000,
        }
    )

    def emit(topic: str, key: bytes, value: bytes) -> None:
        producer.produce(topic, value, key)

    batch_size, done = settings.streams.batch_size, 0
    started: tuple[float, float, int] | None = None  # after the first batch, as the worker's drain
    try:
        with _worker_gc():
            while done < end:
                batch = consumer.consume(min(batch_size, end - done), 1.0)
                if batch:
                    stage.process(state, batch, emit)
                    producer.poll(0)
                    done = (batch[-1].offset() or 0) + 1
                    if started is None:
                        started = time.perf_counter(), time.process_time(), done
            producer.flush(60)
    finally:
        consumer.close()
    assert started is not None
    count = max(end - started[2], 1)
    wall, cpu = time.perf_counter() - started[0], time.process_time() - started[1]
    return count / max(wall, 1e-9), count / max(cpu, 1e-9)


class ConsumedFrame:
    """What the normalise stage reads of a consumed message, built from a raw record (the
    in-process breakdown here, in-process tests): no broker."""

    __slots__ = ("_headers", "_offset", "_topic", "_value")

    def __init__(self, raw: RawRecord, topic: str, offset: int = 0) -> None:
        self._value, self._headers = raw.payload, raw.kafka_headers()
        self._topic, self._offset = topic, offset

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


@contextlib.contextmanager
def _stage_worker(bootstrap: str, topics: Topology, stage: str) -> Iterator[Callable[[str, str, int], Drain]]:
    """``marketpipe stream --stages STAGE`` with the caller's ``MARKETPIPE_*`` settings under the
    bench's; yields ``drained(group, topic, end)``, which waits until ``group`` committed
    ``topic`` up to ``end`` (``_watch_drain``)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = caller_settings() | worker_env(bootstrap, topics, Path(tmp))
        log = Path(tmp) / f"{stage}.log"
        with marketpipe_process("stream", "--stages", stage, env=env, log_path=log) as worker:
            yield lambda group, topic, end: _watch_drain(bootstrap, group, topic, end, worker, log)


def run_breakdown(records: list[RawRecord], rounds: int = 3) -> None:
    """Where the normalise stage's CPU goes, in this process, no broker: the parsers and books,
    the price-bucket snapshots, the raw records rebuilt from Kafka values and headers, and the
    whole stage, whose remainder is Avro encoding and emitting. Under the worker's GC
    thresholds, the best of ``rounds`` interleaved runs of each."""
    settings = load_settings(exchanges=[records[0].exchange])
    normalise = cast(NormaliseStage, stage_builders(settings)["normalise"]())
    topic = normalise.topics[0]
    consumed = [ConsumedFrame(raw, topic) for raw in records]
    batch = settings.streams.batch_size

    def decode() -> None:
        for message in consumed:
            RawRecord.from_kafka(message.value(), message.headers())

    def stage() -> None:
        state, outputs = normalise.new_state(topic, 0), list[tuple[str, bytes, bytes]]()

        def emit(topic: str, key: bytes, value: bytes) -> None:
            outputs.append((topic, key, value))

        for first in range(0, len(consumed), batch):
            normalise.process(state, cast(list[Message], consumed[first : first + batch]), emit)
            outputs.clear()

    steps: dict[str, Callable[[], None]] = {
        "parsers and books": lambda: _parse_in_batches(records),
        "with price-bucket snapshots": lambda: _parse_in_batches(records, normalise.bucketer),
        "raw records from Kafka values and headers": decode,
        "the whole stage": stage,
    }
    best = dict.fromkeys(steps, float("inf"))
    with _worker_gc():
        for _ in range(rounds):  # interleaved: a slow spell of the machine hits every step
            for name, step in steps.items():
                started = time.process_time()
                step()
                best[name] = min(best[name], time.process_time() - started)
    parsers, buckets, raw, whole = (best[name] * 1e6 / len(records) for name in steps)
    for name, per_frame in (
        ("parsers and books", parsers),
        ("price-bucket snapshots", buckets - parsers),
        ("raw records from Kafka values and headers", raw),
        ("Avro encoding and emitting (the rest)", whole - buckets - raw),
        ("the whole stage", whole),
    ):
        print(f"breakdown  {name:<44} {per_frame:6.2f} µs/frame", flush=True)


def run_throughput(bootstrap: str, records: list[RawRecord], label: str = "normalise") -> None:
    topics = _fresh_topology(bootstrap)
    _produce(_producer(bootstrap), topics, records)
    reference = _parsers_alone(records)
    raw = topics.raw("binance")
    end = _end_offset(bootstrap, raw)
    with _stage_worker(bootstrap, topics, "normalise") as drained:
        drain = drained(topics.streams_group, raw, end)
    plain_rate, plain_per_cpu_s = _plain_loop(bootstrap, topics, end)
    rate, per_cpu_s = drain.count / max(drain.seconds, 1e-3), drain.count / max(drain.cpu, 1e-9)
    print(
        f"{label:<10} {drain.count:,} frames in {drain.seconds:.2f} s = {rate:,.0f} frames/s per worker; "
        f"{drain.per_item('frame')} = {per_cpu_s:,.0f} frames/CPU-s\n"
        f"           {drain.machine()}\n"
        f"           parsers alone in this run: {reference:,.0f} frames/s "
        f"(worker = {rate / reference:.0%} of it by wall time, {per_cpu_s / reference:.0%} by CPU)\n"
        f"           the stage in a plain batch loop (no transactions, no state kept): "
        f"{plain_rate:,.0f} frames/s, {plain_per_cpu_s:,.0f} frames/CPU-s "
        f"(worker = {rate / plain_rate:.0%} of it by wall time, {per_cpu_s / plain_per_cpu_s:.0%} by CPU)",
        flush=True,
    )


def run_latency(bootstrap: str, records: list[RawRecord], rate: float, count: int) -> None:
    """A warm worker with no backlog, fed at a steady rate; latency as a read-committed consumer sees it."""
    topics = _fresh_topology(bootstrap)
    producer = _producer(bootstrap)
    warmup, live = records[:500], records[500 : 500 + count]
    _produce(producer, topics, warmup)
    codec = AvroCodec()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    with _stage_worker(bootstrap, topics, "normalise") as drained:
        drained(topics.streams_group, topics.raw("binance"), len(warmup))
        consumer.subscribe([topics.trades, topics.book, topics.bbo])
        consumer.consume(1, 3.0)  # joined and positioned at the end
        expected = _outputs(_normalised(warmup + live)) - _outputs(_normalised(warmup))
        started = time.monotonic()
        feeder = threading.Thread(target=_produce, args=(producer, topics, live, rate))
        feeder.start()
        latencies = list(_latencies(consumer, codec, expected, started + 120))
        feeder.join()
    consumer.close()
    if latencies:
        latencies.sort()
        p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"latency    at {rate:,.0f} frames/s: receive -> read-committed consumer p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms, max {latencies[-1]:.0f} ms over {len(latencies):,} records",
            flush=True,
        )


def _latencies(consumer: Consumer, codec: AvroCodec, expected: int, deadline: float) -> Iterator[float]:
    seen = 0
    while seen < expected and time.monotonic() < deadline:
        for message in consumer.consume(5000, timeout=0.05):
            if message.error():
                continue
            now_ms = time.time() * 1000
            record: Record = codec.decode(message.value() or b"")
            seen += 1
            yield max(0.0, now_ms - getattr(record, "recv_ts", 0) / 1000)


def run_aggregation(bootstrap: str, count: int, trade_rate: float) -> None:
    """The ohlcv stage draining a backlog of Avro trades (10 markets, every default interval),
    ``trade_rate`` trades per second of exchange time."""
    topics = _fresh_topology(bootstrap)
    codec = AvroCodec()
    producer = _producer(bootstrap)
    rng = random.Random(3)
    ts = 1_786_000_000_000_000
    step_us = max(1, round(2_000_000 / trade_rate))  # uniform 0..step: mean 1 s / trade_rate
    for i in range(count):
        ts += rng.randint(0, step_us)
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
    with _stage_worker(bootstrap, topics, "ohlcv") as drained:
        drain = drained(topics.ohlcv_group, topics.trades, count)
    print(
        f"ohlcv      event time {trade_rate:,.0f} trades/s: {drain.count:,} trades in {drain.seconds:.2f} s"
        f" = {drain.count / max(drain.seconds, 1e-3):,.0f} trades/s; {drain.per_item('trade')}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--capture", type=Path, help="capture file to replay (default: record one)")
    parser.add_argument("--record-s", type=float, default=25.0, help="length of the recorded capture")
    parser.add_argument(
        "--drains",
        type=int,
        default=2,
        help="throughput drains, each of the whole capture into fresh topics: a fresh broker's JIT "
        "compiles its request paths during the first, at several times a warm broker's CPU",
    )
    parser.add_argument("--rate", type=float, default=5000, help="frames/s offered in the latency phase")
    parser.add_argument("--latency-frames", type=int, default=30_000)
    parser.add_argument("--trades", type=int, default=200_000, help="trades for the aggregation phase")
    parser.add_argument(
        "--trade-rates",
        default="100000,100",
        help="event-time trades per second of the aggregation backlog, one drain each",
    )
    parser.add_argument(
        "--phases",
        default="breakdown,throughput,latency,aggregation",
        help="which phases to run (comma-separated subset of breakdown,throughput,latency,aggregation)",
    )
    args = parser.parse_args()
    try:  # the worker gets the caller's MARKETPIPE_* settings: a bad one stops the bench here
        load_settings()
    except ConfigError as exc:
        parser.error(str(exc))
    if args.drains < 1:
        parser.error("--drains must be at least 1")
    phases = set(args.phases.split(","))
    unknown = phases - {"breakdown", "throughput", "latency", "aggregation"}
    if unknown:
        parser.error(f"--phases: unknown {', '.join(sorted(unknown))}")

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as scratch:
        if not bootstrap and phases != {"breakdown"}:
            broker = LocalKafka(
                Path(scratch) / "kafka", LocalBrokerSettings(port=free_port(), controller_port=free_port())
            )
            broker.start()
            bootstrap = broker.bootstrap
        try:
            capture = args.capture
            if capture is None:
                capture = Path(scratch) / "binance.jsonl.zst"
                record_capture(capture, args.record_s)
            records = [r for r in read_capture(capture) if r.exchange == "binance"]
            print(f"input      {len(records):,} binance records from {capture}", flush=True)
            if "breakdown" in phases:
                run_breakdown(records)
            for number in range(1, args.drains + 1) if "throughput" in phases else ():
                run_throughput(bootstrap, records, f"drain {number}" if args.drains > 1 else "normalise")
            if "latency" in phases:
                run_latency(bootstrap, records, args.rate, args.latency_frames)
            for trade_rate in args.trade_rates.split(",") if "aggregation" in phases else ():
                run_aggregation(bootstrap, args.trades, float(trade_rate))
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
