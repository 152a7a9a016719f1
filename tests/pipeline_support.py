"""The whole pipeline as subprocesses (sim, produce, stream, sink) on one topic namespace.

Shared by the end-to-end and replay-runbook tests: start and stop the parts, wait until
every stream stage and the sink have consumed everything (consumer lag 0, end offsets
stable), read a topic completely, and query the sink's ClickHouse.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka_helpers import marketpipe_process, stop_process, worker_env

from marketpipe.kafka_local import free_port, port_open
from marketpipe.topics import Topology, apply_topology
from sinks.clickhouse import connect

Offsets = dict[tuple[str, int], int]


def sink_group(topology: Topology) -> str:
    return topology.name("marketpipe-sink")


def sink_topics(topology: Topology) -> list[str]:
    return [
        topology.trades,
        topology.ohlcv,
        topology.book_buckets,
        topology.bbo,
        topology.status,
        topology.ticker,
        topology.exchange_candles,
        topology.instruments,
    ]


def streams_topics(topology: Topology) -> list[str]:
    """Every topic a stream stage consumes: raw, md.trades, the consolidation topic."""
    return [topic for _, topics in topology.stream_stages() for topic in topics]


def partitions_of(bootstrap: str, topics: list[str]) -> list[TopicPartition]:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return [TopicPartition(t, p) for t in topics if t in metadata for p in sorted(metadata[t].partitions)]


def end_offsets(bootstrap: str, topics: list[str]) -> Offsets:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ends-{uuid.uuid4().hex}"})
    try:
        return {
            (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1]
            for tp in partitions_of(bootstrap, topics)
        }
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topics: list[str]) -> Offsets:
    """The group's committed offsets (-1 when none), read through a non-subscribing consumer:
    librdkafka 2.16's AdminClient offset fetch can crash on a still-loading coordinator."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        result = consumer.committed(partitions_of(bootstrap, topics), timeout=10)
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): max(tp.offset, -1) for tp in result}


def lag(bootstrap: str, group: str, topics: list[str]) -> dict[str, int]:
    """Records not yet consumed (committed) by `group`, per topic with any."""
    ends = end_offsets(bootstrap, topics)
    try:
        done = committed(bootstrap, group, topics)
    except KafkaException:
        done = {}
    behind: dict[str, int] = {}
    for (topic, partition), end in ends.items():
        missing = end - max(done.get((topic, partition), -1), 0)
        if missing > 0:
            behind[topic] = behind.get(topic, 0) + missing
    return behind


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[Message]:
    """Every record of `topic` up to its current end offsets, partition by partition in order."""
    partitions = partitions_of(bootstrap, [topic])
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        bounds = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10) for tp in partitions}
        todo = {p for p, (low, high) in bounds.items() if high > low}
        consumer.assign([TopicPartition(topic, p, bounds[p][0]) for p in todo])
        messages: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while todo:
            assert time.monotonic() < deadline, f"{topic}: partitions {sorted(todo)} not read to the end"
            for message in consumer.consume(num_messages=5000, timeout=0.5):
                partition, offset, error = message.partition(), message.offset(), message.error()
                assert partition is not None
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    todo.discard(partition)
                    continue
                assert offset is not None
                if offset < bounds[partition][1]:
                    messages.append(message)
                if offset >= bounds[partition][1] - 1:
                    todo.discard(partition)
    finally:
        consumer.close()
    return messages


def query(dsn: str, sql: str, **parameters: Any) -> list[tuple[Any, ...]]:
    """Rows of `sql` (through the running sink's endpoint, or the directory when none runs)."""
    client = connect(dsn)
    try:
        return [tuple(row) for row in client.query(sql, parameters=parameters or None).result_rows]
    finally:
        client.close()


@dataclass
class Pipeline:
    bootstrap: str
    topics: Topology
    root: Path
    exchanges: tuple[str, ...]
    symbols: str
    sim_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = worker_env(
            self.bootstrap, self.topics, self.root / "data", MARKETPIPE_SYMBOLS=self.symbols
        )
        self.env["MARKETPIPE_EXCHANGES"] = ",".join(self.exchanges)
        for exchange in self.exchanges:
            base = f"127.0.0.1:{self.sim_port}/{exchange}"
            self.env[f"MARKETPIPE_PRODUCERS__{exchange.upper()}__WS_URL"] = f"ws://{base}"
            self.env[f"MARKETPIPE_PRODUCERS__{exchange.upper()}__REST_URL"] = f"http://{base}"

    @property
    def dsn(self) -> str:
        return f"chdb:///{self.root / 'data' / 'clickhouse'}"

    def start(self, name: str, *args: str) -> None:
        """Start `marketpipe ARGS` as `name`; each (re)start logs to `<root>/<name>.<run>.log`."""
        run = self.runs[name] = self.runs.get(name, -1) + 1
        self.processes[name] = self.stack.enter_context(
            marketpipe_process(*args, env=self.env, log_path=self.root / f"{name}.{run}.log")
        )

    def stop(self, name: str) -> None:
        stop_process(self.processes[name], grace_s=15)

    def start_sim(self, trade_rate: float, seed: int) -> None:
        self.start(
            "sim",
            "sim",
            "--exchanges",
            ",".join(self.exchanges),
            "--port",
            str(self.sim_port),
            "--trade-rate",
            str(trade_rate),
            "--seed",
            str(seed),
        )
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", self.sim_port):
            self.check_alive()
            assert time.monotonic() < deadline, "the simulator did not open its port"
            time.sleep(0.1)

    def start_sink(self) -> None:
        self.start("sink", "sink", "--batch-rows", "2000", "--batch-seconds", "0.3", "--metrics-port", "0")

    def check_alive(self, *names: str) -> None:
        for name in names or tuple(self.processes):
            process = self.processes[name]
            if process.poll() is not None:
                log = self.root / f"{name}.{self.runs[name]}.log"
                tail = log.read_text(errors="replace")[-4000:]
                raise AssertionError(f"{name} exited with {process.returncode}:\n{tail}")

    def wait_drained(self, *, streams: bool = True, sink: bool = True, timeout_s: float = 60.0) -> None:
        """Until the running consumers have read everything and nothing new appears."""
        watched = sorted(set(streams_topics(self.topics) + sink_topics(self.topics)))
        deadline = time.monotonic() + timeout_s
        previous: Offsets | None = None
        while True:
            running = [
                n for n in self.processes if (streams and n.startswith("stream")) or (sink and n == "sink")
            ]
            self.check_alive(*running)
            ends = end_offsets(self.bootstrap, watched)
            lags: dict[str, int] = {}
            groups = [(group, topics) for group, topics in self.topics.stream_stages() if streams]
            if sink:
                groups.append((sink_group(self.topics), sink_topics(self.topics)))
            for group, topics in groups:
                lags |= {f"{group} {t}": n for t, n in lag(self.bootstrap, group, topics).items()}
            if not any(lags.values()) and ends == previous:
                return
            assert time.monotonic() < deadline, f"not drained after {timeout_s}s: lag {lags}"
            previous = ends if not any(lags.values()) else None
            time.sleep(2.0)

    def close(self) -> None:
        self.stack.close()


@contextlib.contextmanager
def pipeline(
    bootstrap: str, root: Path, exchanges: tuple[str, ...], symbols: str, prefix: str = "e"
) -> Iterator[Pipeline]:
    """A fresh topic namespace and data dir; every process started through it is stopped on exit."""
    topics = Topology(prefix=f"{prefix}{uuid.uuid4().hex[:8]}.", exchanges=exchanges, partitions=3)
    apply_topology(AdminClient({"bootstrap.servers": bootstrap}), topics.specs())
    running = Pipeline(bootstrap, topics, root, exchanges, symbols)
    try:
        yield running
    finally:
        running.close()
