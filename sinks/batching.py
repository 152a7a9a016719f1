"""A generic batching Kafka sink: consume, batch per partition, record, write, commit, pause.

Quix Streams' ``BatchingSink`` is the model: a subclass implements ``write(key, messages)``
(one partition's batch, in offset order) and the loop here does the rest:

* messages are buffered per topic partition and flushed together by size or age
  (``BatchConfig.batch_rows`` / ``batch_seconds``); each partition's share of a flush is its
  own batch: one contiguous offset range, one ``write``;
* before writing, the offset range of every batch is recorded in the group's committed
  offset metadata (offset = the batch's first offset, metadata = ``first-last n<count>``);
  after every batch of the flush was written and the dead letters were acknowledged, the
  offsets move past the batches with the metadata cleared;
* a sink that is assigned a partition with a recorded range first re-forms exactly that
  range (same records) and writes it again, so a writer whose writes are idempotent per
  batch (ClickHouse's ``insert_deduplication_token`` from ``batch_token``) stores every
  record once, whatever crashed between record and commit;
* ``dead_letter`` sends a message to the DLQ topic with the reason; the flush waits for
  Kafka to acknowledge them before it commits;
* backpressure: a writer whose destination is unavailable calls ``hold(ready, what)``: every
  assigned partition is paused, the consumer keeps polling (group membership stays alive)
  until ``ready()``, then consumption resumes. Nothing is committed meanwhile.

The loop is synchronous on purpose: confluent-kafka's consumer and the writers' clients
are blocking, batches are large, and a sink is a process of its own.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from marketpipe.codec import AvroCodec
from marketpipe.logs import log_event
from marketpipe.records import DeadLetter
from sinks import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig:
    batch_rows: int = 50_000
    batch_seconds: float = 1.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    consume_chunk: int = 10_000
    # A sink silent this long (killed) leaves the group and its partitions move on.
    session_timeout_s: float = 20.0


PartitionKey = tuple[str, int]


@dataclass(frozen=True)
class RecordedRange:
    """A batch of one partition: its first and last offset and how many records it holds.

    Written as the committed offset's metadata (offset = ``first``) before the batch is
    written; a sink assigned the partition later re-forms exactly this batch.
    """

    first: int
    last: int
    count: int

    PREFIX: ClassVar[str] = "marketpipe-sink/1 "
    _PATTERN: ClassVar[re.Pattern[str]] = re.compile(r"^marketpipe-sink/1 (\d+)-(\d+) n(\d+)$")

    def metadata(self) -> str:
        return f"{self.PREFIX}{self.first}-{self.last} n{self.count}"

    @classmethod
    def parse(cls, metadata: str | None) -> RecordedRange | None:
        """The range in committed offset metadata, or None (no range, or another tool's text)."""
        match = cls._PATTERN.match(metadata or "")
        if match is None:
            return None
        first, last, count = (int(group) for group in match.groups())
        return cls(first, last, count)

    @classmethod
    def of(cls, messages: Sequence[Message]) -> RecordedRange:
        """The range of one partition's messages, in offset order."""
        return cls(cast(int, messages[0].offset()), cast(int, messages[-1].offset()), len(messages))


@dataclass
class Replay:
    """Re-forms a recorded batch from the partition's messages read again after assignment."""

    recorded: RecordedRange
    messages: list[Message] = field(default_factory=list)
    complete: bool = False

    def take(self, message: Message) -> bool:
        """Keep ``message`` when it belongs to the recorded range; False once the range is over."""
        if self.complete:
            return False
        offset = cast(int, message.offset())
        if offset > self.recorded.last:
            # The range's last record is gone (retention): what was read again stands alone.
            self.complete = True
            return False
        self.messages.append(message)
        self.complete = offset == self.recorded.last
        return True

    @property
    def exact(self) -> bool:
        return bool(self.messages) and RecordedRange.of(self.messages) == self.recorded


class BatchingSink:
    """The consume/batch/record/write/commit loop; subclasses implement ``write``."""

    stage: ClassVar[str] = "sink"
    """the ``stage`` of this sink's dead letters"""

    def __init__(
        self,
        kafka_config: dict[str, str],
        group: str,
        topics: Sequence[str],
        dlq_topic: str,
        codec: AvroCodec,
        config: BatchConfig,
    ) -> None:
        self.batch_config = config
        self.topics = list(topics)
        self.dlq_topic = dlq_topic
        self.codec = codec
        self.stop_event = threading.Event()
        self._pending: dict[PartitionKey, list[Message]] = {}
        self._replays: dict[PartitionKey, Replay] = {}
        self._first_pending_at: float | None = None
        self._pending_rows = 0
        self._flushing = False
        self._paused: set[PartitionKey] = set()
        self._dlq_errors: list[str] = []
        self._committed: dict[PartitionKey, int] = {}  # what this sink knows is committed
        self._next_position_check = 0.0
        session_ms = int(config.session_timeout_s * 1000)
        self.consumer = Consumer(
            {
                **kafka_config,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "isolation.level": "read_committed",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(1000, session_ms // 5),
                "statistics.interval.ms": 5000,
                "stats_cb": metrics.record_librdkafka_stats,
            }
        )
        self.producer = Producer({**kafka_config, "enable.idempotence": True, "acks": "all", "linger.ms": 5})

    # -- what a sink implements -------------------------------------------------------------

    def write(self, key: PartitionKey, messages: list[Message]) -> None:
        """Store one partition's batch (the same messages again after a crash: be idempotent)."""
        raise NotImplementedError

    def open(self) -> None:
        """Before subscribing: wait for the destination."""

    def after_poll(self) -> None:
        """After each poll (and flush): the sink's own periodic work."""

    def close(self) -> None:
        """After the consumer closed."""

    def batch_label(self, topic: str) -> str:
        """The ``table`` label of a topic's batches in the metrics."""
        return topic

    # -- lifecycle ----------------------------------------------------------------------

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Consume until ``stop()`` (or ``until()`` returns True); flush and commit on the way out."""
        self.open()
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self.stop_event.is_set() and not (until and until()):
                self._consume()
                if self._flush_due():
                    self.flush()
                self.after_poll()
            self.flush()
        finally:
            self.consumer.close()
            self.producer.flush(10)
            self.close()

    def stop(self) -> None:
        self.stop_event.set()

    # -- consuming ----------------------------------------------------------------------

    def _consume(self) -> None:
        room = max(1, min(self.batch_config.consume_chunk, self.batch_config.batch_rows - self._pending_rows))
        timeout = self.batch_config.batch_seconds
        if self._first_pending_at is not None:
            timeout = max(0.0, self._first_pending_at + self.batch_config.batch_seconds - time.monotonic())
        messages = self.consumer.consume(num_messages=room, timeout=timeout)
        self._accept(messages)
        if not messages and not self._pending_rows:
            self._commit_past_markers()

    def _accept(self, messages: Sequence[Message]) -> None:
        pending, replays = self._pending, self._replays
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                if error.code() != KafkaError._PARTITION_EOF:
                    log_event(log, logging.WARNING, "consumer error", error=error)
                continue
            key = (cast(str, message.topic()), cast(int, message.partition()))
            if replays and key in replays and replays[key].take(message):
                continue
            batch = pending.get(key)
            if batch is None:
                pending[key] = [message]
            else:
                batch.append(message)
            self._pending_rows += 1
        if self._pending_rows and self._first_pending_at is None:
            self._first_pending_at = time.monotonic()

    def _flush_due(self) -> bool:
        if any(replay.complete for replay in self._replays.values()):
            return True
        if not self._pending_rows:
            return False
        assert self._first_pending_at is not None
        return (
            self._pending_rows >= self.batch_config.batch_rows
            or time.monotonic() - self._first_pending_at >= self.batch_config.batch_seconds
        )

    # -- flushing -----------------------------------------------------------------------

    def flush(self) -> None:
        """Store re-formed batches, then record, store and commit everything pending."""
        if self._flushing:
            return
        replays = {key: replay for key, replay in self._replays.items() if replay.complete}
        if not self._pending_rows and not replays:
            return
        for key in replays:
            del self._replays[key]
        batch, self._pending = self._pending, {}
        self._pending_rows, self._first_pending_at = 0, None
        self._flushing = True
        try:
            self._write_replays(replays)
            # A replayed partition without a new batch still moves past its range.
            moved = {key: replay.recorded.last + 1 for key, replay in replays.items() if key not in batch}
            recorded = self._record(
                {key: RecordedRange.of(messages) for key, messages in batch.items()}, moved
            )
            for key, messages in batch.items():
                if key in recorded:
                    self.write(key, messages)
            self._confirm_dead_letters()
            self._commit({key: recorded[key].last + 1 for key in recorded})
        finally:
            self._flushing = False

    def _write_replays(self, replays: dict[PartitionKey, Replay]) -> None:
        for key, replay in replays.items():
            table = self.batch_label(key[0])
            outcome = "exact" if replay.exact else "changed"
            metrics.REPLAYED_BATCHES.labels(table, outcome).inc()
            if outcome == "exact":
                log_event(
                    log,
                    logging.INFO,
                    "re-inserting recorded batch",
                    partition=_name(key),
                    batch=replay.recorded,
                )
            else:
                seen = RecordedRange.of(replay.messages) if replay.messages else None
                log_event(
                    log,
                    logging.WARNING,
                    "recorded batch could not be read again as it was, its rows may be stored twice",
                    partition=_name(key),
                    batch=replay.recorded,
                    read=seen,
                )
            if replay.messages:
                self.write(key, replay.messages)
        if replays:
            self._confirm_dead_letters()

    def _record(
        self, ranges: dict[PartitionKey, RecordedRange], moved: dict[PartitionKey, int]
    ) -> dict[PartitionKey, RecordedRange]:
        """Record each batch's range in the committed offset metadata; return those recorded.

        A batch whose range could not be recorded is not inserted: its partition is rewound
        to the batch's first offset (or, when the partition was taken away, its new owner
        reads it from the last commit).
        """
        offsets = [TopicPartition(t, p, r.first, metadata=r.metadata()) for (t, p), r in ranges.items()]
        offsets += [TopicPartition(t, p, offset) for (t, p), offset in moved.items()]
        if not offsets:
            return {}
        failed = self._commit_offsets(offsets, "recording batch ranges")
        if failed:
            self._rewind({key: r.first for key, r in ranges.items() if key in failed})
        return {key: r for key, r in ranges.items() if key not in failed}

    def _rewind(self, firsts: dict[PartitionKey, int]) -> None:
        for (topic, partition), offset in firsts.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log_event(
                    log,
                    logging.INFO,
                    "not rewinding (no longer assigned)",
                    partition=_name((topic, partition)),
                    error=exc,
                )

    # -- backpressure -------------------------------------------------------------------

    def hold(self, ready: Callable[[], bool], what: str) -> None:
        """Pause consumption until ``ready()`` (the batch being written is kept and retried by
        the caller); raises SinkStopped when stopped meanwhile."""
        self._pause(self.consumer.assignment())
        delay = self.batch_config.backoff_initial_s
        while not ready():
            if self.stop_event.is_set():
                raise SinkStopped(f"stopped while {what} was unavailable; offsets not committed")
            # Polling keeps the group membership alive; a message can only come from a
            # partition assigned after the pause: keep it for the next flush, pause that one too.
            message = self.consumer.poll(delay)
            if message is not None:
                self._accept([message])
                topic, partition, _ = position(message)
                self._pause([TopicPartition(topic, partition)])
            delay = min(delay * 2, self.batch_config.backoff_max_s)
        self._resume()

    def _pause(self, partitions: Sequence[TopicPartition]) -> None:
        fresh = [tp for tp in partitions if (tp.topic, tp.partition) not in self._paused]
        if fresh:
            self.consumer.pause(fresh)
            self._paused.update((tp.topic, tp.partition) for tp in fresh)
            metrics.PAUSED.set(len(self._paused))

    def _resume(self) -> None:
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        partitions = [TopicPartition(t, p) for t, p in self._paused if (t, p) in assigned]
        if partitions:
            self.consumer.resume(partitions)
        self._paused.clear()
        metrics.PAUSED.set(0)

    # -- dead letters and commits -------------------------------------------------------

    def dead_letter(self, message: Message, reason: str, kind: str) -> None:
        key = message.key()
        exchange = key.decode(errors="replace").split(":", 1)[0] if key else None
        value = message.value() or b""
        topic, partition, offset = position(message)
        letter = DeadLetter(
            stage=self.stage,
            source_topic=topic,
            partition=partition,
            offset=offset,
            exchange=exchange,
            reason=reason,
            payload=value,
            ts=time.time_ns() // 1000,
        )
        log_event(
            log,
            logging.WARNING,
            "dead-lettering",
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            reason=reason,
        )
        self.producer.produce(
            self.dlq_topic,
            key=letter.key().encode(),
            value=self.codec.encode(letter, self.dlq_topic),
            on_delivery=self._on_dlq_delivery,
        )
        self.producer.poll(0)
        metrics.DLQ.labels(message.topic(), kind).inc()

    def _on_dlq_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._dlq_errors.append(str(error))

    def _confirm_dead_letters(self) -> None:
        remaining = self.producer.flush(30)
        if remaining or self._dlq_errors:
            errors, self._dlq_errors = self._dlq_errors, []
            raise SinkError(f"dead letters not acknowledged by Kafka ({remaining} pending, errors {errors})")

    def _commit(self, next_offsets: dict[PartitionKey, int]) -> None:
        """Move the committed offsets past stored batches (clearing their recorded ranges)."""
        if next_offsets:
            offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
            # A failure is harmless: the range stays recorded and is re-inserted as a no-op.
            self._commit_offsets(offsets, "committing stored batches")

    def _commit_offsets(self, offsets: list[TopicPartition], what: str) -> set[PartitionKey]:
        """Commit synchronously; return the partitions whose commit failed."""
        try:
            results = self.consumer.commit(offsets=offsets, asynchronous=False) or []
        except KafkaException as exc:
            # Typically a rebalance took the partitions away.
            log_event(log, logging.WARNING, "offset commit failed", step=what, error=exc)
            return {(tp.topic, tp.partition) for tp in offsets}
        failed = {(tp.topic, tp.partition) for tp in results if tp.error is not None}
        if failed:
            log_event(
                log, logging.WARNING, "offset commit failed", step=what, partitions=_names(sorted(failed))
            )
        for tp in offsets:
            if (tp.topic, tp.partition) not in failed:
                self._committed[(tp.topic, tp.partition)] = tp.offset
        return failed

    def _commit_past_markers(self) -> None:
        """While idle, commit the position of partitions that moved past their last commit.

        A read-committed consumer's position steps over the transaction markers that follow
        a transactional producer's records; without this commit the group's lag would stay
        at the number of markers after the last record. Every record consumed before the
        position is stored: nothing is pending and no recorded batch is being re-formed.
        """
        now = time.monotonic()
        if now < self._next_position_check or self._replays:
            return
        self._next_position_check = now + 1.0
        assignment = self.consumer.assignment()
        if not assignment:
            return
        moved = [
            TopicPartition(tp.topic, tp.partition, tp.offset)
            for tp in self.consumer.position(assignment)
            if tp.offset >= 0 and tp.offset > self._committed.get((tp.topic, tp.partition), -1)
        ]
        if moved:
            self._commit_offsets(moved, "committing positions past transaction markers")

    # -- rebalancing --------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log_event(
            log, logging.INFO, "assigned", partitions=_names((tp.topic, tp.partition) for tp in partitions)
        )
        if partitions:
            self._replays.update(self._recorded_batches(partitions))

    def _recorded_batches(self, partitions: list[TopicPartition]) -> dict[PartitionKey, Replay]:
        """The batches a previous owner recorded but may not have stored, per partition.

        A range counts only where the committed offset is still its first offset: an
        offset reset (``marketpipe replay``) clears the metadata and moves the offset.
        """
        replays = {}
        for tp in self.consumer.committed(partitions, timeout=30):
            self._committed[(tp.topic, tp.partition)] = tp.offset
            recorded = RecordedRange.parse(tp.metadata)
            if tp.error is None and recorded is not None and recorded.first == tp.offset:
                log_event(
                    log,
                    logging.INFO,
                    "re-forming recorded batch first",
                    partition=_name((tp.topic, tp.partition)),
                    batch=recorded,
                )
                replays[(tp.topic, tp.partition)] = Replay(recorded)
        return replays

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log_event(
            log, logging.INFO, "revoked", partitions=_names((tp.topic, tp.partition) for tp in partitions)
        )
        if not self._flushing:
            self.flush()
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._paused.discard(key)
            self._committed.pop(key, None)
            # An unfinished re-formed batch stays recorded for the next owner.
            self._replays.pop(key, None)
            # Left over when the flush above could not run (revoked during one): the next
            # owner, maybe this sink again, reads them from the committed offset.
            unflushed = self._pending.pop(key, None)
            if unflushed:
                self._pending_rows -= len(unflushed)
        if not self._pending_rows:
            self._first_pending_at = None


def position(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed (non-error) message."""
    return cast(str, message.topic()), cast(int, message.partition()), cast(int, message.offset())


def offset_ranges(messages: Sequence[Message]) -> dict[int, tuple[int, int]]:
    """partition -> (lowest, highest) offset among ``messages``."""
    ranges: dict[Any, list[Any]] = {}
    for message in messages:
        offset = message.offset()
        span = ranges.get(message.partition())
        if span is None:
            ranges[message.partition()] = [offset, offset]
        elif offset > span[1]:
            span[1] = offset
        elif offset < span[0]:
            span[0] = offset
    return {partition: (low, high) for partition, (low, high) in ranges.items()}


def dedup_token(prefix: str, messages: Sequence[Message]) -> str:
    """``prefix|partition:first-last|...|n<count>``: the same messages always give the same token."""
    parts = [f"{p}:{low}-{high}" for p, (low, high) in sorted(offset_ranges(messages).items())]
    return prefix + "|" + "|".join(parts) + f"|n{len(messages)}"


def batch_token(topic: str, messages: Sequence[Message]) -> str:
    """The insert deduplication token of one partition's batch.

    The same records give the same token; the first record's timestamp keeps a topic that
    was deleted and created again (offsets from 0 again) from reusing an old batch's token.
    """
    return f"{dedup_token(topic, messages)}|t{messages[0].timestamp()[1]}"


class SinkError(RuntimeError):
    pass


class SinkStopped(SinkError):
    pass


def _name(key: PartitionKey) -> str:
    return f"{key[0]}[{key[1]}]"


def _names(keys: Iterable[PartitionKey]) -> str:
    return ",".join(_name(key) for key in keys) or "nothing"
