"""Replay by resetting a consumer group's committed offsets (confluent-kafka AdminClient).

Targets: the earliest retained offset, the end (latest), the first offset at/after a
point in time (``list_offsets`` with a timestamp; partitions with nothing that late go to
their end), or explicit offsets from a JSON file ``{"topic": {"partition": offset}}``.
A group with active members is refused unless forced (Kafka itself still rejects offset
changes for topics the live members consume).

Recomputing everything from the raw topics (``plan_streams``/``apply_streams``) resets
every stream stage's group (streams/runtime.py), each in its own way:

* the normalise stage's group goes to the earliest offsets of ``raw.<exchange>``, so it
  re-derives every md.* topic it writes (trades, books, tickers, instruments,
  derivatives, ...) from the start;
* the aggregation stages' *derived* inputs (md.trades for the candles, the internal
  consolidation topic for the cross-exchange views) go to their end: the re-derived records
  are appended there and must be the only ones the aggregations see again (reading the old
  copies as well would count every trade twice);
* offsets written by the admin client carry no checkpoint pointer, so every stage starts
  from empty state there (its old checkpoints are never read again).

The sink is left alone: it stores the re-derived records on top of the old rows, and
the tables collapse them on their natural keys (candles: the highest version).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import (
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from marketpipe.topics import Topology

NO_OFFSET = -1001  # librdkafka's "no committed offset"


class ReplayError(RuntimeError):
    pass


@dataclass(frozen=True)
class OffsetChange:
    topic: str
    partition: int
    old: int | None  # None: nothing committed
    new: int

    @property
    def delta(self) -> int | None:
        return None if self.old is None else self.new - self.old


@dataclass(frozen=True)
class Target:
    """Exactly one of: earliest, at (a datetime), offsets (topic -> partition -> offset), latest."""

    earliest: bool = False
    at: datetime | None = None
    offsets: dict[str, dict[int, int]] | None = None
    latest: bool = False


@dataclass(frozen=True)
class StreamsReplay:
    """What recomputing from the raw topics changes: the offsets of each stage's group."""

    groups: list[tuple[str, list[OffsetChange]]]


def parse_datetime(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"--to-datetime {text!r} is not ISO 8601 (e.g. 2024-05-01T12:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def load_offsets_file(path: Path) -> dict[str, dict[int, int]]:
    try:
        raw = json.loads(path.read_text())
        offsets = {str(t): {int(p): int(o) for p, o in parts.items()} for t, parts in raw.items()}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ReplayError(f'{path}: expected JSON {{"topic": {{"partition": offset}}}}: {exc}') from None
    if any(o < 0 for parts in offsets.values() for o in parts.values()):
        raise ReplayError(f"{path}: offsets must be >= 0")
    return offsets


class OffsetResetter:
    def __init__(self, admin: AdminClient, timeout: float = 30.0) -> None:
        self.admin = admin
        self.timeout = timeout

    def active_members(self, group: str) -> list[str]:
        description = self.admin.describe_consumer_groups([group], request_timeout=self.timeout)[
            group
        ].result()
        if description.state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
            return []
        return [f"{m.client_id}@{m.host}" for m in description.members]

    def _describe(self, group: str) -> Any:
        """Describe the group, waiting out a coordinator that is still loading.

        Done before every offset fetch too: librdkafka 2.16's admin OffsetFetch handling can
        crash the process on a COORDINATOR_LOAD_IN_PROGRESS answer (seen on fresh brokers).
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self.admin.describe_consumer_groups([group], request_timeout=self.timeout)[
                    group
                ].result()
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                retriable = isinstance(error, KafkaError) and error.retriable()
                if not retriable or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def committed(self, group: str, topics: list[str] | None = None) -> dict[tuple[str, int], int | None]:
        self._describe(group)
        request = [ConsumerGroupTopicPartitions(group, self._partitions(topics) if topics else None)]
        result = self.admin.list_consumer_group_offsets(request, request_timeout=self.timeout)[group].result()
        return {
            (tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
            for tp in result.topic_partitions
        }

    def plan(self, group: str, target: Target, topics: list[str] | None = None) -> list[OffsetChange]:
        if target.offsets is not None:
            topics = topics or sorted(target.offsets)
        if not topics:
            topics = sorted({topic for topic, _ in self.committed(group)})
            if not topics:
                raise ReplayError(f"group {group!r} has no committed offsets; name the topics with --topics")
        current = self.committed(group, topics)
        new = self._target_offsets(target, self._partitions(topics))
        return [
            OffsetChange(topic, partition, current.get((topic, partition)), offset)
            for (topic, partition), offset in sorted(new.items())
        ]

    def apply(
        self, group: str, changes: list[OffsetChange], force: bool = False, wait_s: float = 0.0
    ) -> None:
        """Set the offsets; ``wait_s`` waits that long for members to leave first (a stream worker
        that stopped keeps its static membership until its session times out)."""
        members = self.active_members(group)
        deadline = time.monotonic() + wait_s
        while members and not force and time.monotonic() < deadline:
            time.sleep(1.0)
            members = self.active_members(group)
        if members and not force:
            raise ReplayError(
                f"group {group!r} has {len(members)} active member(s) ({', '.join(members)}); "
                f"stop its consumers first, or pass --force"
            )
        partitions = [TopicPartition(c.topic, c.partition, c.new) for c in changes]
        request = [ConsumerGroupTopicPartitions(group, partitions)]
        result = self.admin.alter_consumer_group_offsets(request, request_timeout=self.timeout)[
            group
        ].result()
        failed = [tp for tp in result.topic_partitions if tp.error is not None]
        if failed:
            raise ReplayError(
                f"Kafka refused offsets for {[(tp.topic, tp.partition, str(tp.error)) for tp in failed]}"
            )

    def plan_streams(self, topology: Topology) -> StreamsReplay:
        """Every stream stage's group: raw inputs to their start, derived inputs to their end."""
        existing = set(self.admin.list_topics(timeout=self.timeout).topics)
        raw = {topology.raw(e) for e in topology.exchanges}
        if not raw & existing:
            raise ReplayError(f"none of the raw topics of {', '.join(topology.exchanges)} exists")
        groups = []
        for group, inputs in topology.stream_stages():
            present = [t for t in inputs if t in existing]
            target = Target(earliest=True) if raw.issuperset(inputs) else Target(latest=True)
            if present:
                groups.append((group, self.plan(group, target, present)))
        return StreamsReplay(groups)

    def apply_streams(self, replay: StreamsReplay, force: bool = False, wait_s: float = 0.0) -> None:
        for group, changes in replay.groups:
            self.apply(group, changes, force=force, wait_s=wait_s)

    def _partitions(self, topics: list[str]) -> list[TopicPartition]:
        metadata = self.admin.list_topics(timeout=self.timeout).topics
        missing = [topic for topic in topics if topic not in metadata]
        if missing:
            raise ReplayError(f"unknown topic(s): {', '.join(missing)}")
        return [TopicPartition(topic, p) for topic in topics for p in sorted(metadata[topic].partitions)]

    def _target_offsets(self, target: Target, partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        if target.offsets is not None:
            return self._explicit(target.offsets, partitions)
        if target.earliest:
            return self._list_offsets(partitions, OffsetSpec.earliest())
        if target.latest:
            return self._list_offsets(partitions, OffsetSpec.latest())
        assert target.at is not None
        spec = OffsetSpec.for_timestamp(int(target.at.timestamp() * 1000))
        found = self._list_offsets(partitions, spec)
        ends = self._list_offsets(
            [TopicPartition(t, p) for (t, p), o in found.items() if o < 0], OffsetSpec.latest()
        )
        return {key: (offset if offset >= 0 else ends[key]) for key, offset in found.items()}

    @staticmethod
    def _explicit(
        offsets: dict[str, dict[int, int]], partitions: list[TopicPartition]
    ) -> dict[tuple[str, int], int]:
        known = {(tp.topic, tp.partition) for tp in partitions}
        wanted = {(t, p): o for t, parts in offsets.items() for p, o in parts.items()}
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise ReplayError(f"offsets file names partitions that do not exist: {unknown}")
        return wanted

    def _list_offsets(self, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        futures = self.admin.list_offsets({tp: spec for tp in partitions}, request_timeout=self.timeout)
        return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}
