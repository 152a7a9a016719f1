"""The stream loop's start-up abort on a real broker: before it restores anything, a loop aborts
one transaction that wrote to every partition its stage writes (and the checkpoint topic), so
whatever an earlier producer of its transactional id left open without markers (KAFKA-20734)
is decided, as aborted, on all of them at once."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from test_stream_commit_pacing import _Echo

from marketpipe.config import Settings
from marketpipe.topics import Topology
from streams.runtime import TransactionalLoop

pytestmark = pytest.mark.kafka


def _records(
    bootstrap: str, topic: str, isolation: str
) -> tuple[int, list[tuple[int, bytes | None, bytes | None]]]:
    """`topic`'s partition count, and (partition, key, value) of every record a consumer with
    `isolation` reads in it."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        todo, found = set(partitions), []
        deadline = time.monotonic() + 30
        while todo and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.5):
                error = message.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    todo.discard(message.partition())
                elif error is None:
                    found.append((message.partition() or 0, message.key(), message.value()))
        assert not todo, f"{topic}: partitions {sorted(todo)} not read to their end"
        return len(partitions), found
    finally:
        consumer.close()


def test_a_starting_loop_aborts_a_write_to_every_partition_it_writes(
    kafka_bootstrap: str, topics: Topology
) -> None:
    settings = Settings(
        exchanges=["binance"], kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": topics.prefix}
    )
    loop = TransactionalLoop(_Echo(topics), settings, "start-abort")
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not loop.partitions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loop.partitions, "the loop was assigned no partition in 30 s"
    finally:
        loop.stopping.set()
        runner.join(30)

    for topic in (topics.trades, topics.checkpoints):
        partitions, written = _records(kafka_bootstrap, topic, "read_uncommitted")
        aborts = {p for p, key, value in written if key == b"abort" and value == b""}
        assert aborts == set(range(partitions)), (topic, sorted(aborts))
        _, committed = _records(kafka_bootstrap, topic, "read_committed")
        assert not [r for r in committed if r[1] == b"abort"], topic
