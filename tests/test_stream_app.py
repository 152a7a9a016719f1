"""The normalise stage through the real broker: same records as offline, DLQ, determinism."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from kafka_helpers import consume, marketpipe_process, produce_raw, worker_env
from test_normalize import capture_records

from marketpipe.codec import AvroCodec
from marketpipe.kafka_local import free_port
from marketpipe.raw import RawRecord
from marketpipe.records import BBO, BookChange, DeadLetter, Record, Trade
from marketpipe.run_cli import restore_failures
from marketpipe.supervisor import Child
from marketpipe.topics import Topology, watermarks
from marketpipe.view import KafkaLag
from streams.feed import FeedOutput
from streams.parsers import processor_for

pytestmark = pytest.mark.slow


def _offline(records: list[RawRecord]) -> FeedOutput:
    out = FeedOutput()
    processors = {}
    for raw in records:
        processor = processors.setdefault(raw.exchange, processor_for(raw.exchange))
        processor.process(raw, out)
    return out


def _decoded(messages: list, record_type: type[Record]) -> list[Record]:
    codec = AvroCodec()
    return [codec.decode(m.value(), record_type) for m in messages]


def _collect(
    bootstrap: str, topics: Topology, expected: FeedOutput, worker: subprocess.Popen[bytes]
) -> dict[str, list[Record]]:
    plan = [
        ("trades", topics.trades, Trade),
        ("books", topics.book, BookChange),
        ("bbos", topics.bbo, BBO),
        ("errors", topics.dlq, DeadLetter),
    ]
    return {
        name: _decoded(
            consume(bootstrap, topic, len(getattr(expected, name)), producer_of=worker), record_type
        )
        for name, topic, record_type in plan
    }


def _reset_to_earliest(admin: AdminClient, group: str, topic_partitions: list[TopicPartition]) -> None:
    for _ in range(60):  # the group must be empty before its offsets can be altered
        description = admin.describe_consumer_groups([group])[group].result()
        if not description.members:
            break
        time.sleep(1)
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(tp.topic, tp.partition, 0) for tp in topic_partitions]
    )
    admin.alter_consumer_group_offsets([request])[group].result()


def test_stream_app_matches_offline_and_is_deterministic(
    kafka_bootstrap: str, kafka_admin: AdminClient, topics: Topology, tmp_path: Path
) -> None:
    records = capture_records()
    # a record that breaks the raw contract (no headers) must be dead-lettered, not crash the agent
    produce_raw(kafka_bootstrap, topics, records)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topics.raw("okx"), key=b"okx.t1.0", value=b"headerless")
    assert producer.flush(10) == 0

    expected = _offline(records)
    assert expected.trades and expected.books and expected.bbos and expected.errors
    env = worker_env(kafka_bootstrap, topics, tmp_path)
    with marketpipe_process("stream", env=env, log_path=tmp_path / "stream1.log") as worker:
        first = _collect(kafka_bootstrap, topics, expected, worker)

    assert Counter(map(repr, first["trades"])) == Counter(map(repr, expected.trades))
    assert Counter(map(repr, first["books"])) == Counter(map(repr, expected.books))
    assert Counter(map(repr, first["bbos"])) == Counter(map(repr, expected.bbos))
    reasons = [letter.reason for letter in first["errors"]]
    assert any("raw record contract" in reason for reason in reasons), reasons
    assert len(first["errors"]) == len(expected.errors) + 1

    # determinism: reset the streams group to the beginning and process the same raw log again
    raw_partitions = [
        TopicPartition(topics.raw(e), p) for e in topics.exchanges for p in range(topics.partitions)
    ]
    _reset_to_earliest(kafka_admin, f"{topics.prefix}marketpipe-streams", raw_partitions)
    doubled = FeedOutput()
    for name in ("trades", "books", "bbos"):
        getattr(doubled, name).extend(getattr(expected, name) * 2)
    doubled.errors.extend(expected.errors * 2)
    with marketpipe_process("stream", env=env, log_path=tmp_path / "stream2.log") as worker:
        second = _collect(kafka_bootstrap, topics, doubled, worker)
    for name in ("trades", "books", "bbos"):
        assert Counter(map(repr, second[name])) == Counter(map(repr, first[name] * 2)), name


def test_an_unreadable_checkpoint_is_counted_and_fails_the_drain(
    kafka_bootstrap: str, kafka_admin: AdminClient, topics: Topology, tmp_path: Path
) -> None:
    """A checkpoint that is gone when the worker restores (records deleted here) leaves the
    partition's state fresh: the worker says so in its metrics and `run --exit-on-drain`'s
    check counts it, so the run cannot exit 0 as if nothing was lost."""
    produce_raw(kafka_bootstrap, topics, capture_records())
    env = worker_env(kafka_bootstrap, topics, tmp_path)
    lag = KafkaLag({"bootstrap.servers": kafka_bootstrap})
    try:
        with marketpipe_process("stream", "--worker-id", "cp", env=env, log_path=tmp_path / "first.log"):
            stages = topics.stream_stages()
            _until(lambda: all(_lag(lag, group, inputs) == 0 for group, inputs in stages), "the first run")
        # one checkpoint per input partition a stage committed state for (normalise, ohlcv, consolidate)
        checkpointed = sum(_pointers(kafka_bootstrap, group, inputs) for group, inputs in stages)
        _delete_checkpoints(kafka_admin, kafka_bootstrap, topics)
        port = free_port()
        env |= {"MARKETPIPE_METRICS_PORT": str(port)}
        with marketpipe_process("stream", "--worker-id", "cp", env=env, log_path=tmp_path / "second.log"):
            workers = [Child(name="stream", argv=[], role="stream", metrics_port=port)]
            _until(lambda: restore_failures(workers) == checkpointed, "the restore failures to be counted")
    finally:
        lag.close()
    assert "starting with fresh state" in (tmp_path / "second.log").read_text()


def _delete_checkpoints(admin: AdminClient, bootstrap: str, topics: Topology) -> None:
    """Delete every checkpoint record and write one unrelated record per partition."""
    ends = _ends(bootstrap, topics.checkpoints)
    assert any(tp.offset > 0 for tp in ends), "the first run wrote no checkpoint"
    _cleanup_policy(admin, topics.checkpoints, "delete")  # a compacted topic refuses deletions
    _until(lambda: _deleted(admin, [tp for tp in ends if tp.offset > 0]), "the policy change", 30)
    _cleanup_policy(admin, topics.checkpoints, "compact")
    producer = Producer({"bootstrap.servers": bootstrap})
    for tp in ends:
        producer.produce(topics.checkpoints, key=b"unrelated", value=b"x", partition=tp.partition)
    assert producer.flush(10) == 0


def _cleanup_policy(admin: AdminClient, topic: str, policy: str) -> None:
    entry = ConfigEntry("cleanup.policy", policy, incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()


def _deleted(admin: AdminClient, ends: list[TopicPartition]) -> bool:
    try:
        for future in admin.delete_records(ends).values():
            future.result()
    except KafkaException:  # POLICY_VIOLATION until the brokers apply the new cleanup.policy
        return False
    return True


def _lag(lag: KafkaLag, group: str, topics: list[str]) -> int | None:
    try:
        return sum(lag.lag(group, topics).values())
    except KafkaException:  # a young broker: the group coordinator is still loading
        return None


def _pointers(bootstrap: str, group: str, topics: list[str]) -> int:
    """Partitions whose committed offset names a checkpoint (the loop's offset metadata)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in _partition_ids(consumer, t)]
        return sum(
            (tp.metadata or "").startswith("cp1:") for tp in consumer.committed(partitions, timeout=30)
        )
    finally:
        consumer.close()


def _partition_ids(consumer: Consumer, topic: str) -> list[int]:
    return list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)


def _ends(bootstrap: str, topic: str) -> list[TopicPartition]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [
            TopicPartition(topic, p, watermarks(consumer, TopicPartition(topic, p))[1]) for p in partitions
        ]
    finally:
        consumer.close()


def _until(predicate: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
