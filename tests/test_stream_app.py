"""The normalise stage through the real broker: same records as offline, DLQ, determinism."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka_helpers import consume, marketpipe_process, produce_raw, worker_env
from test_normalize import capture_records

from marketpipe.codec import AvroCodec
from marketpipe.raw import RawRecord
from marketpipe.records import BBO, BookChange, DeadLetter, Record, Trade
from marketpipe.topics import Topology
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
    from confluent_kafka import Producer

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
