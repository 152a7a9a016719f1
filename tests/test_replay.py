"""`marketpipe replay`: consumer-group offset resets through the AdminClient, on a real broker."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Message, Producer
from confluent_kafka.admin import AdminClient

from marketpipe.cli import main
from marketpipe.topics import Topology
from sinks.replay import OffsetResetter, ReplayError, Target

pytestmark = pytest.mark.kafka

BASE_MS = 1_714_560_000_000  # 2024-05-01T10:40:00Z


@pytest.fixture
def consumed_group(kafka_bootstrap: str, topics: Topology) -> str:
    """A group that has consumed and committed 10 records (timestamps BASE_MS + i s) of md.status."""
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(topics.status, key=b"k", value=f"v{i}".encode(), timestamp=BASE_MS + i * 1000)
    assert producer.flush(30) == 0
    group = f"{topics.prefix}replay-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topics.status])
    seen = 0
    deadline = time.monotonic() + 30
    while seen < 10 and time.monotonic() < deadline:
        seen += len([m for m in consumer.consume(num_messages=10, timeout=0.5) if m.error() is None])
    consumer.commit(asynchronous=False)
    consumer.close()
    assert seen == 10
    return group


def _committed(kafka_bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result()
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.topic == topic}


def _run(kafka_bootstrap: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["replay", *args], env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    return result.exit_code, result.output


def test_dry_run_prints_old_and_new_offsets_and_changes_nothing(
    kafka_bootstrap: str, topics: Topology, consumed_group: str
) -> None:
    before = _committed(kafka_bootstrap, consumed_group, topics.status)
    assert sum(before.values()) == 10
    code, output = _run(kafka_bootstrap, "--group", consumed_group, "--to-earliest", "--dry-run")
    assert code == 0, output
    assert "DRY RUN" in output and topics.status in output
    ((partition, offset),) = ((p, o) for p, o in before.items() if o > 0)
    row = next(line for line in output.splitlines() if f" {offset} " in line and "-10" in line)
    assert f" {partition} " in row and " 0 " in row
    assert _committed(kafka_bootstrap, consumed_group, topics.status) == before


def test_reset_to_earliest(kafka_bootstrap: str, topics: Topology, consumed_group: str) -> None:
    code, output = _run(kafka_bootstrap, "--group", consumed_group, "--to-earliest")
    assert code == 0, output
    assert set(_committed(kafka_bootstrap, consumed_group, topics.status).values()) == {0}


def test_reset_to_datetime_uses_record_timestamps(
    kafka_bootstrap: str, topics: Topology, consumed_group: str
) -> None:
    at = datetime.fromtimestamp((BASE_MS + 6_500) / 1000, UTC).isoformat()  # between records 6 and 7
    code, output = _run(
        kafka_bootstrap, "--group", consumed_group, "--to-datetime", at, "--topics", topics.status
    )
    assert code == 0, output
    committed = _committed(kafka_bootstrap, consumed_group, topics.status)
    assert sum(committed.values()) == 7  # records 7, 8, 9 will be read again

    later = datetime.fromtimestamp(BASE_MS / 1000 + 3600, UTC).isoformat()
    code, output = _run(kafka_bootstrap, "--group", consumed_group, "--to-datetime", later)
    assert code == 0, output
    assert sum(_committed(kafka_bootstrap, consumed_group, topics.status).values()) == 10  # the end


def test_reset_to_offsets_file(
    kafka_bootstrap: str, topics: Topology, consumed_group: str, tmp_path: Path
) -> None:
    partition = next(
        p for p, o in _committed(kafka_bootstrap, consumed_group, topics.status).items() if o > 0
    )
    offsets = tmp_path / "offsets.json"
    offsets.write_text(json.dumps({topics.status: {str(partition): 4}}))
    code, output = _run(kafka_bootstrap, "--group", consumed_group, "--to-offsets", str(offsets))
    assert code == 0, output
    assert _committed(kafka_bootstrap, consumed_group, topics.status)[partition] == 4

    offsets.write_text(json.dumps({topics.status: {"99": 1}}))
    code, output = _run(kafka_bootstrap, "--group", consumed_group, "--to-offsets", str(offsets))
    assert code == 1 and "do not exist" in output


@pytest.fixture
def active_member(kafka_bootstrap: str, topics: Topology, consumed_group: str) -> Iterator[None]:
    stop = threading.Event()
    joined = threading.Event()

    def consume() -> None:
        consumer = Consumer(
            {"bootstrap.servers": kafka_bootstrap, "group.id": consumed_group, "enable.auto.commit": False}
        )
        consumer.subscribe([topics.status], on_assign=lambda c, p: joined.set())
        while not stop.is_set():
            consumer.poll(0.2)
        consumer.close()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert joined.wait(30), "consumer did not join the group"
    yield
    stop.set()
    thread.join(30)


def test_refuses_while_the_group_has_active_members(
    kafka_bootstrap: str, topics: Topology, consumed_group: str, active_member: None
) -> None:
    before = _committed(kafka_bootstrap, consumed_group, topics.status)
    code, output = _run(kafka_bootstrap, "--group", consumed_group, "--to-earliest")
    assert code == 1 and "active member" in output and "--force" in output
    assert _committed(kafka_bootstrap, consumed_group, topics.status) == before


def test_plan_needs_topics_for_a_group_without_offsets(kafka_bootstrap: str) -> None:
    resetter = OffsetResetter(AdminClient({"bootstrap.servers": kafka_bootstrap}))
    with pytest.raises(ReplayError, match="no committed offsets"):
        resetter.plan(f"nobody-{uuid.uuid4().hex}", Target(earliest=True))


def test_exactly_one_target_is_required(kafka_bootstrap: str) -> None:
    code, output = _run(kafka_bootstrap, "--group", "g", "--to-earliest", "--to-datetime", "2024-01-01")
    assert code == 2 and "exactly one" in output
    code, output = _run(kafka_bootstrap, "--group", "g", "--to-datetime", "yesterday")
    assert code == 1 and "ISO 8601" in output


def test_reset_to_latest(kafka_bootstrap: str, topics: Topology, consumed_group: str) -> None:
    code, output = _run(kafka_bootstrap, "--group", consumed_group, "--to-earliest")
    assert code == 0, output
    code, output = _run(kafka_bootstrap, "--group", consumed_group, "--to-latest")
    assert code == 0, output
    assert sum(_committed(kafka_bootstrap, consumed_group, topics.status).values()) == 10


def _commit_some(kafka_bootstrap: str, group: str, topic: str, produced: int, consumed: int) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(produced):
        producer.produce(topic, key=b"one-key", value=f"v{i}".encode())
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: list[Message] = []
    deadline = time.monotonic() + 30
    while len(seen) < consumed and time.monotonic() < deadline:
        seen += [m for m in consumer.consume(num_messages=1, timeout=0.5) if m.error() is None]
    assert len(seen) == consumed
    consumer.commit(message=seen[-1], asynchronous=False)
    consumer.close()


def test_streams_replay_rewinds_raw_and_skips_derived(
    kafka_bootstrap: str, topics: Topology, kafka_admin: AdminClient
) -> None:
    normalise, ohlcv = topics.streams_group, topics.ohlcv_group
    _commit_some(kafka_bootstrap, normalise, topics.raw("okx"), produced=5, consumed=5)
    _commit_some(kafka_bootstrap, ohlcv, topics.trades, produced=4, consumed=1)
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "MARKETPIPE_KAFKA__TOPIC_PREFIX": topics.prefix}
    before = {
        (normalise, topics.raw("okx")): _committed(kafka_bootstrap, normalise, topics.raw("okx")),
        (ohlcv, topics.trades): _committed(kafka_bootstrap, ohlcv, topics.trades),
    }

    dry = CliRunner().invoke(main, ["replay", "--streams", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "DRY RUN" in dry.output and normalise in dry.output and ohlcv in dry.output
    assert {key: _committed(kafka_bootstrap, *key) for key in before} == before

    result = CliRunner().invoke(main, ["replay", "--streams"], env=env)
    assert result.exit_code == 0, result.output
    assert set(_committed(kafka_bootstrap, normalise, topics.raw("okx")).values()) == {0}
    assert sum(_committed(kafka_bootstrap, ohlcv, topics.trades).values()) == 4  # the end
    # raw topics it never read start from the beginning too
    assert set(_committed(kafka_bootstrap, normalise, topics.raw("kraken")).values()) == {0}
    assert f"reset 3 partition(s) of group {topics.consolidate_group}" in result.output


def test_streams_replay_takes_no_group_or_target(kafka_bootstrap: str) -> None:
    code, output = _run(kafka_bootstrap, "--streams", "--group", "g")
    assert code == 2 and "--streams takes no" in output
    code, output = _run(kafka_bootstrap, "--streams", "--to-earliest")
    assert code == 2
