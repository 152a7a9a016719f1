"""The whole pipeline as subprocesses (sim, produce, stream, sink) on one topic namespace.

Shared by the end-to-end and replay-runbook tests: start and stop the parts, wait until
every stream stage and the sink have consumed everything (consumer lag 0, end offsets
stable), read a topic completely, and query the sink's ClickHouse.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka_helpers import marketpipe_process, stop_process, worker_env

from marketpipe.codec import AvroCodec
from marketpipe.kafka_local import free_port, port_open
from marketpipe.records import StatusEvent
from marketpipe.topics import Topology, apply_topology, watermarks
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
            (tp.topic, tp.partition): watermarks(consumer, tp)[1] for tp in partitions_of(bootstrap, topics)
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


def read_topic(
    bootstrap: str, topic: str, timeout_s: float = 60.0, isolation: str = "read_committed"
) -> list[Message]:
    """Every record of `topic` up to its current end offsets, partition by partition in order."""
    partitions = partitions_of(bootstrap, [topic])
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    try:
        bounds = {tp.partition: watermarks(consumer, tp) for tp in partitions}
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
            key = exchange.upper().replace("-", "_")  # binance-futures: [producers.binance_futures]
            self.env[f"MARKETPIPE_PRODUCERS__{key}__WS_URL"] = f"ws://{base}"
            self.env[f"MARKETPIPE_PRODUCERS__{key}__REST_URL"] = f"http://{base}"

    @property
    def dsn(self) -> str:
        return f"chdb:///{self.root / 'data' / 'clickhouse'}"

    def inject_fault(self, exchange: str, fault: str, symbol: str) -> int:
        """Arm a simulator fault; the number of connections it applies to."""
        body = json.dumps({"exchange": exchange, "fault": fault, "symbol": symbol}).encode()
        url = f"http://127.0.0.1:{self.sim_port}/_sim/fault"
        request = urllib.request.Request(url, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(json.loads(reply.read())["connections"])

    def wait_for(self, done: Callable[[], bool], what: str, timeout_s: float = 40.0) -> None:
        """Until ``done()``, while every process lives."""
        deadline = time.monotonic() + timeout_s
        while not done():
            self.check_alive()
            assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
            time.sleep(0.5)

    def statuses(self) -> list[StatusEvent]:
        codec, messages = AvroCodec(), read_topic(self.bootstrap, self.topics.status)
        return [codec.decode(m.value() or b"", StatusEvent) for m in messages]

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


def states(statuses: list[StatusEvent], exchange: str, symbol: str) -> list[tuple[str, str]]:
    """(state, reason) of one market's status events, in order."""
    return [(s.state, s.reason) for s in statuses if s.exchange == exchange and s.symbol == symbol]


DERIVATIVE_ROWS = (
    "SELECT 'funding', symbol FROM funding GROUP BY symbol"
    " UNION ALL SELECT 'open_interest', symbol FROM open_interest GROUP BY symbol"
    " UNION ALL SELECT 'mark', symbol FROM mark_price WHERE mark_price IS NOT NULL GROUP BY symbol"
    " UNION ALL SELECT 'index', symbol FROM mark_price WHERE index_price IS NOT NULL GROUP BY symbol"
    " UNION ALL SELECT 'liquidations', symbol FROM liquidations GROUP BY symbol"
)


def derivative_rows(dsn: str) -> set[tuple[str, str]]:
    """(kind, symbol) of every derivative record kind stored: funding, open_interest, mark,
    index, liquidations."""
    return {(kind, symbol) for kind, symbol in query(dsn, DERIVATIVE_ROWS)}


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
