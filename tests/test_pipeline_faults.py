"""Fault injection through the whole chain: simulator -> connectors -> Kafka -> stream worker.

Each injected fault must produce the right status event and resync request, the
producer must serve the request, and the book must come back synced from a fresh
snapshot. No change is published for a book between the fault and that snapshot.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from kafka_helpers import marketpipe_process, replay_book, worker_env
from pipeline_support import read_topic

from marketpipe.codec import AvroCodec
from marketpipe.exchanges import subset
from marketpipe.kafka_local import free_port, port_open
from marketpipe.records import BookChange, ControlRequest, StatusEvent
from marketpipe.topics import Topology, apply_topology

pytestmark = pytest.mark.slow
EXCHANGES = subset("coinbase", "kraken", "bybit", "okx", "binance")
CODEC = AvroCodec()


@dataclass
class Pipeline:
    bootstrap: str
    topics: Topology
    sim_port: int
    processes: dict[str, subprocess.Popen[bytes]]
    log_dir: Path

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"{name} exited with {process.returncode}:\n{log}")

    def fault(self, exchange: str, fault: str, symbol: str) -> int:
        body = json.dumps({"exchange": exchange, "fault": fault, "symbol": symbol}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.sim_port}/_sim/fault", data=body, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(json.loads(response.read())["connections"])

    # each reads the whole topic up to its current end (a read cut short by a slow group join
    # could see fewer events than a read before it)
    def statuses(self, key: str) -> list[StatusEvent]:
        found = read_topic(self.bootstrap, self.topics.status)
        return [CODEC.decode(m.value(), StatusEvent) for m in found if m.key() == key.encode()]

    def controls(self, key: str) -> list[ControlRequest]:
        found = read_topic(self.bootstrap, self.topics.control)
        return [CODEC.decode(m.value(), ControlRequest) for m in found if m.key() == key.encode()]

    def books(self, key: str) -> list[BookChange]:
        found = read_topic(self.bootstrap, self.topics.book)
        return [CODEC.decode(m.value(), BookChange) for m in found if m.key() == key.encode()]

    def wait_for_status(
        self, key: str, after: int, state: str, reason: str | None, timeout_s: float = 60
    ) -> int:
        """Index of the first status event past `after` with this state (and reason)."""
        deadline = time.monotonic() + timeout_s
        seen: list[StatusEvent] = []
        while time.monotonic() < deadline:
            self.check_alive()
            seen = self.statuses(key)
            for index, event in enumerate(seen[after:], start=after):
                if event.state == state and (reason is None or event.reason == reason):
                    return index
            time.sleep(0.5)
        raise AssertionError(
            f"{key}: no {state}/{reason} status after #{after}; saw {[(s.state, s.reason) for s in seen]}"
        )


@pytest.fixture(scope="module")
def pipeline(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    topics = Topology(prefix=f"f{uuid.uuid4().hex[:8]}.", exchanges=EXCHANGES, partitions=3)
    apply_topology(AdminClient({"bootstrap.servers": kafka_bootstrap}), topics.specs())
    tmp = tmp_path_factory.mktemp("pipeline")
    port = free_port()
    env = worker_env(kafka_bootstrap, topics, tmp, MARKETPIPE_SYMBOLS="BTC-USDT,BTC-USD")
    for exchange in EXCHANGES:
        env[f"MARKETPIPE_PRODUCERS__{exchange.upper()}__WS_URL"] = f"ws://127.0.0.1:{port}/{exchange}"
        env[f"MARKETPIPE_PRODUCERS__{exchange.upper()}__REST_URL"] = f"http://127.0.0.1:{port}/{exchange}"
    sim_args = ("sim", "--exchanges", ",".join(EXCHANGES), "--port", str(port), "--rate", "20", "--seed", "5")
    with (
        marketpipe_process(*sim_args, env=env, log_path=tmp / "sim.log") as sim,
        marketpipe_process("stream", env=env, log_path=tmp / "stream.log") as stream,
    ):
        for _ in range(100):
            if port_open("127.0.0.1", port):
                break
            time.sleep(0.1)
        with marketpipe_process("produce", env=env, log_path=tmp / "produce.log") as produce:
            pipeline = Pipeline(
                kafka_bootstrap, topics, port, {"sim": sim, "stream": stream, "produce": produce}, tmp
            )
            yield pipeline
            pipeline.check_alive()


@pytest.mark.parametrize(
    ("exchange", "symbol", "wire_symbol", "fault", "reason"),
    [
        ("bybit", "BTC-USDT", "BTC-USDT", "gap", "gap"),
        ("okx", "BTC-USDT", "BTC-USDT", "gap", "gap"),
        ("kraken", "BTC-USD", "BTC-USD", "checksum", "checksum"),
        ("okx", "BTC-USDT", "BTC-USDT", "checksum", "checksum"),
        ("coinbase", "BTC-USD", "BTC-USD", "disconnect", "close"),
        ("binance", "BTC-USDT", "BTC-USDT", "gap", "gap"),
    ],
)
def test_fault_unsyncs_requests_resync_and_recovers(
    pipeline: Pipeline, exchange: str, symbol: str, wire_symbol: str, fault: str, reason: str
) -> None:
    key = f"{exchange}:{symbol}"
    synced = pipeline.wait_for_status(key, 0, "synced", None, timeout_s=90)
    before = len(pipeline.statuses(key))
    controls_before = len(pipeline.controls(key))
    assert before > synced

    assert pipeline.fault(exchange, fault, wire_symbol) >= 1
    unsynced = pipeline.wait_for_status(key, before, "unsynced", reason)
    resynced = pipeline.wait_for_status(key, unsynced + 1, "synced", "snapshot")
    assert resynced > unsynced

    requests = pipeline.controls(key)[controls_before:]
    assert any(r.action == "resync" for r in requests), requests

    # md.book for this key is one partition, in order: after the fault the next thing
    # published for the book is the fresh snapshot that re-synced it
    status = pipeline.statuses(key)
    bad_conn, bad_ts = status[unsynced].conn, status[unsynced].ts
    books = pipeline.books(key)
    after_fault = [b for b in books if b.recv_ts > bad_ts or (b.conn != bad_conn and b.recv_ts >= bad_ts)]
    assert after_fault, "the book was published again after the resync"
    assert after_fault[0].snapshot, "an incremental change was published before the fresh snapshot"


def test_mid_stream_snapshot_replaces_the_book_without_resync(pipeline: Pipeline) -> None:
    key = "bybit:BTC-USDT"
    pipeline.wait_for_status(key, 0, "synced", None, timeout_s=90)
    snapshots_before = sum(b.snapshot for b in pipeline.books(key))
    controls_before = len(pipeline.controls(key))
    status_before = pipeline.statuses(key)
    assert pipeline.fault("bybit", "snapshot", "BTC-USDT") >= 1
    deadline = time.monotonic() + 30
    while sum(b.snapshot for b in pipeline.books(key)) == snapshots_before:
        assert time.monotonic() < deadline, "no snapshot published after the mid-stream snapshot"
        time.sleep(0.5)
    assert len(pipeline.controls(key)) == controls_before
    assert all(s.state == "synced" for s in pipeline.statuses(key)[len(status_before) :])


def test_no_published_book_is_ever_crossed(pipeline: Pipeline) -> None:
    """Replay md.book the way a consumer would: every state it reaches is a valid book."""
    for exchange, symbol in (("okx", "BTC-USDT"), ("kraken", "BTC-USD"), ("bybit", "BTC-USDT")):
        changes = pipeline.books(f"{exchange}:{symbol}")
        assert changes and changes[0].snapshot
        for change, bids, asks in replay_book(changes):
            if bids and asks:
                assert max(bids) < min(asks), (exchange, change.conn, change.seq)
