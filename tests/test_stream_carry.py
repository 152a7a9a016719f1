"""The stream loop goes on processing while a commit runs (``TransactionalLoop._carry``), on a
real broker: a backlog drains without waiting for each commit, and a rebalance that revokes
partitions while such carried work is held drops that work and starts every partition again
from its last commit, so nothing is lost or published twice.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from echo_stage import EchoStage, start_loop, wait_assigned
from pipeline_support import read_topic

import streams.runtime
from marketpipe.config import Settings
from marketpipe.topics import Topology
from streams.runtime import TransactionalLoop

RECORDS = 4000
KEYS = 12
PER_RECORD_S = 0.002
"""a slow stage, 500 records a second"""
PRODUCE_RATE = 800
"""records a second: the input lasts five seconds, longer than a second worker takes to join"""


class _HeldCommitLoop(TransactionalLoop[list[int]]):
    """Once it is behind (a full batch), its commits wait until partitions were revoked, so every
    poll after its first carried round holds carried work: the revoke is certain to find some."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.carrying = threading.Event()
        self.revoked = threading.Event()
        self.revoked_while_carrying = False
        self._behind = False

    def _carry(self, consumed: int) -> bool:
        self._behind = self._behind or consumed >= self.batch_size
        carried = super()._carry(consumed)
        if carried:
            self.carrying.set()
        return carried

    def _send_offsets(self, *args: Any) -> None:
        super()._send_offsets(*args)
        if self._behind:  # held once its offsets are in: the rebalance cannot abort it then
            self.revoked.wait(60)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions and not self.revoked.is_set():
            revoked = [self.partitions.get((tp.topic, tp.partition)) for tp in partitions]
            # carried work of a revoked partition: it moved past its last commit
            self.revoked_while_carrying = any(p is not None and p.position > p.committed for p in revoked)
            self.revoked.set()  # before the callback waits for the held commit
        super()._on_revoke(consumer, partitions)


def _start_producing(bootstrap: str, topic: str, values: list[bytes]) -> threading.Thread:
    """``values`` at about ``PRODUCE_RATE`` a second, keyed over ``KEYS`` connections."""

    def produce() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        started = time.monotonic()
        for i, value in enumerate(values):
            producer.produce(topic, value, f"conn-{i % KEYS}".encode())
            producer.poll(0)
            ahead = started + i / PRODUCE_RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        assert producer.flush(30) == 0

    runner = threading.Thread(target=produce, daemon=True)
    runner.start()
    return runner


@pytest.mark.kafka
def test_a_revoke_while_work_is_carried_loses_and_duplicates_nothing(
    kafka_bootstrap: str, topics: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams.runtime, "CARRY_BATCHES", 1_000_000)  # carry as long as batches are full
    settings = Settings(
        exchanges=["binance"],
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": topics.prefix},
        streams={"batch_size": 10, "commit_interval_ms": 0, "commit_min_records": 0, "poll_interval_ms": 5},
    )
    group = f"{topics.prefix}carry-{uuid.uuid4().hex[:6]}"
    first = _HeldCommitLoop(EchoStage(topics, group, PER_RECORD_S), settings, "carry-a")
    second = TransactionalLoop(EchoStage(topics, group, PER_RECORD_S), settings, "carry-b")
    values = [f"carry-{i}".encode() for i in range(RECORDS)]
    runners = [start_loop(first)]
    try:
        wait_assigned(first)
        # records keep coming, faster than the stage takes them, into every partition: the
        # worker's batches are full and hold records of every partition
        runners.append(_start_producing(kafka_bootstrap, topics.raw("binance"), values))
        assert first.carrying.wait(60), "the first worker never carried a round"
        runners.append(start_loop(second))
        assert first.revoked.wait(60), "the second worker's join revoked nothing"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen = {m.value() for m in read_topic(kafka_bootstrap, topics.trades)}
            if seen >= set(values):
                break
            time.sleep(0.5)
        time.sleep(1.0)  # anything published twice would be committed by now
    finally:
        for loop in (first, second):
            loop.stopping.set()
        for runner in runners:
            runner.join(30)

    assert first.revoked_while_carrying, "the revoke found no carried work: the test proved nothing"
    out = [m.value() for m in read_topic(kafka_bootstrap, topics.trades)]
    counts = collections.Counter(out)
    assert sorted(counts) == sorted(values), f"{RECORDS - len(counts)} records lost"
    assert max(counts.values()) == 1, f"{sum(n - 1 for n in counts.values())} records published twice"
    assert second.stats.transactions > 0, "the second worker committed nothing: no handover happened"
