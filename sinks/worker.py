"""ClickHouse sink worker: md.* topics -> ClickHouse tables, each record stored once.

One consumer group (``<prefix>marketpipe-sink``); run as many worker processes as there
are partitions to spread. Per worker:

* messages are buffered per topic partition and flushed together by size or age (default
  50k rows or 1 s, whichever comes first); each partition's share of a flush is its own
  batch: one contiguous offset range, one insert;
* before inserting, the offset range of every batch is recorded in the group's committed
  offset metadata (offset = the batch's first offset, metadata = ``first-last n<count>``);
  after ClickHouse accepted every batch of the flush and the dead letters were
  acknowledged, the offsets move past the batches with the metadata cleared;
* a worker that is assigned a partition with a recorded range first re-forms exactly that
  range (same records, same ``insert_deduplication_token``) and inserts it again: when
  the earlier attempt had reached ClickHouse, the token makes this insert a no-op, so a
  crash anywhere between record and commit leaves every row stored once (the approach of
  clickhouse-kafka-connect's exactly-once mode; the tables keep enough tokens, see
  ``sinks/migrations/0003_insert_dedup_window.sql``);
* a value that cannot be decoded goes to md.dlq at once (decoding is deterministic); rows
  ClickHouse rejects are retried a bounded number of times, then the batch is bisected and
  each row that still fails alone goes to md.dlq with the reason;
* when ClickHouse is unreachable, every assigned partition is paused, the consumer keeps
  polling (group membership stays alive) and the batch is retried with backoff until
  ClickHouse answers; then consumption resumes. Nothing is committed meanwhile.

The loop is synchronous on purpose: confluent-kafka's consumer and the ClickHouse client
are blocking, batches are large, and a worker is a process of its own.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from marketpipe.codec import AvroCodec
from marketpipe.records import DeadLetter
from marketpipe.topics import Topology
from sinks import metrics
from sinks.clickhouse import ClickHouseUnavailable, connect, is_embedded, parse_dsn
from sinks.migrate import migrate
from sinks.server import QueryServer
from sinks.tables import BatchDecoder, Table, sink_tables

log = logging.getLogger(__name__)

STAGE = "sink"
# ClickHouse error codes that say "not now" rather than "not this data".
_TRANSIENT_CODES = frozenset(
    {
        3,
        32,
        60,
        81,
        159,
        164,
        202,
        203,
        209,
        210,
        225,
        236,
        241,
        242,
        252,
        285,
        319,
        394,
        425,
        473,
        497,
        516,
        999,
        1002,
    }
)
_CODE_IN_MESSAGE = re.compile(r"\bCode:\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class SinkConfig:
    batch_rows: int = 50_000
    batch_seconds: float = 1.0
    insert_attempts: int = 3
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    consume_chunk: int = 10_000
    # A worker silent this long (killed) leaves the group and its partitions move on.
    session_timeout_s: float = 20.0
    # How often the candle_check view is counted into the disagreeing-windows metric (0: never).
    candle_check_s: float = 30.0


CANDLE_CHECK_QUERY = f"""
SELECT exchange, interval, countIf(disagrees), count()
FROM candle_check
WHERE open_time >= now64(6) - INTERVAL {metrics.CANDLE_CHECK_HORIZON_H} HOUR
GROUP BY exchange, interval
"""
"""windows compared and disagreeing per exchange and interval, recent ones only (the view
covers all history; the metric is about now)"""


def group_id(topology: Topology) -> str:
    return topology.sink_group


class ClickHouseLink:
    """The sink's ClickHouse client; when it opens the embedded engine, it also serves it."""

    def __init__(self, dsn: str, *, apply_migrations: bool = True) -> None:
        self.dsn = dsn
        self.apply_migrations = apply_migrations
        self.client: Client | None = None
        self.server: QueryServer | None = None
        self._contexts: dict[str, Any] = {}

    def open(self) -> Client:
        if self.client is None:
            client = connect(self.dsn, wait_s=2.0, create_database=True)
            if is_embedded(client) and self.server is None:
                path = parse_dsn(self.dsn).path
                assert path is not None
                self.server = QueryServer(Path(path))
                self.server.start()
            if self.apply_migrations:
                migrate(client)
            self.client = client
        return self.client

    def insert(self, table: Table, columns: list[list[Any]], token: str) -> None:
        client = self.open()
        context = self._contexts.get(table.name)
        if context is None:
            context = client.create_insert_context(
                table.name,
                column_names=list(table.columns),
                column_oriented=True,
                settings={"async_insert": 0},
            )
            self._contexts[table.name] = context
        context.settings["insert_deduplication_token"] = token
        context.data = columns
        try:
            client.insert(context=context)
        finally:
            context.data = None

    def healthy(self) -> bool:
        try:
            client = self.open()
            return bool(client.ping())
        except Exception as exc:
            log.debug("ClickHouse not back yet: %s", exc)
            self.reset()
            return False

    def reset(self) -> None:
        """Drop the client (and its insert contexts) so the next use reconnects."""
        if self.client is not None and not is_embedded(self.client):
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None
            self._contexts.clear()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.client is not None:
            self.client.close()
            self.client = None


def is_unavailable(exc: BaseException) -> bool:
    """True when the error says ClickHouse is unreachable or busy, not that the data is bad."""
    if isinstance(exc, ClickHouseUnavailable | OperationalError | OSError):
        return True
    if isinstance(exc, DatabaseError) and not _is_serialization_error(exc):
        code = getattr(exc, "code", None)
        if code is None:
            match = _CODE_IN_MESSAGE.search(str(exc))
            code = int(match.group(1)) if match else None
        return code is None or code in _TRANSIENT_CODES
    return False


def _is_serialization_error(exc: DatabaseError) -> bool:
    # clickhouse-connect raises DataError (a DatabaseError) when a value does not fit its column.
    return type(exc).__name__ == "DataError"


PartitionKey = tuple[str, int]


@dataclass(frozen=True)
class RecordedRange:
    """A batch of one partition: its first and last offset and how many records it holds.

    Written as the committed offset's metadata (offset = ``first``) before the batch is
    inserted; a worker assigned the partition later re-forms exactly this batch.
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


class SinkWorker:
    def __init__(
        self,
        kafka_config: dict[str, str],
        topology: Topology,
        dsn: str,
        config: SinkConfig | None = None,
        *,
        codec: AvroCodec | None = None,
        apply_migrations: bool = True,
    ) -> None:
        self.config = config or SinkConfig()
        self.topology = topology
        self.codec = codec or AvroCodec()
        self.link = ClickHouseLink(dsn, apply_migrations=apply_migrations)
        self.stop_event = threading.Event()
        tables = sink_tables(self.codec)
        self._topic_tables = {topic: tables[table] for topic, table in topology.sink_tables().items()}
        self._decoders = {
            topic: BatchDecoder(self.codec, table.record_type) for topic, table in self._topic_tables.items()
        }
        self._pending: dict[PartitionKey, list[Message]] = {}
        self._replays: dict[PartitionKey, Replay] = {}
        self._first_pending_at: float | None = None
        self._pending_rows = 0
        self._flushing = False
        self._paused: set[PartitionKey] = set()
        self._dlq_errors: list[str] = []
        self._committed: dict[PartitionKey, int] = {}  # what this worker knows is committed
        self._next_position_check = 0.0
        self._next_candle_check = 0.0
        session_ms = int(self.config.session_timeout_s * 1000)
        self.consumer = Consumer(
            {
                **kafka_config,
                "group.id": group_id(topology),
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

    # -- lifecycle ----------------------------------------------------------------------

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Consume until ``stop()`` (or ``until()`` returns True); flush and commit on the way out."""
        self._open_clickhouse()
        self.consumer.subscribe(
            list(self._topic_tables), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        try:
            while not self.stop_event.is_set() and not (until and until()):
                self._consume()
                if self._flush_due():
                    self.flush()
                self._check_candles_when_due()
            self.flush()
        finally:
            self.consumer.close()
            self.producer.flush(10)
            self.link.close()

    def stop(self) -> None:
        self.stop_event.set()

    def _open_clickhouse(self) -> None:
        delay = self.config.backoff_initial_s
        while not self.stop_event.is_set():
            try:
                self.link.open()
                metrics.CLICKHOUSE_UP.set(1)
                return
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                metrics.CLICKHOUSE_UP.set(0)
                log.warning("waiting for ClickHouse before consuming: %s", exc)
                self.link.reset()
                self.stop_event.wait(delay)
                delay = min(delay * 2, self.config.backoff_max_s)

    def _check_candles_when_due(self) -> None:
        every = self.config.candle_check_s
        now = time.monotonic()
        if every <= 0 or now < self._next_candle_check or self.link.client is None:
            return
        self._next_candle_check = now + every
        try:
            counts = self.link.client.query(CANDLE_CHECK_QUERY).result_rows
        except Exception as exc:  # the metric must never stop the sink
            log.warning("candle_check metric not updated: %s", exc)
            return
        metrics.set_candle_check(counts)

    # -- consuming ----------------------------------------------------------------------

    def _consume(self) -> None:
        room = max(1, min(self.config.consume_chunk, self.config.batch_rows - self._pending_rows))
        timeout = self.config.batch_seconds
        if self._first_pending_at is not None:
            timeout = max(0.0, self._first_pending_at + self.config.batch_seconds - time.monotonic())
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
                    log.warning("consumer error: %s", error)
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
            self._pending_rows >= self.config.batch_rows
            or time.monotonic() - self._first_pending_at >= self.config.batch_seconds
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
                    self._write(key, messages)
            self._confirm_dead_letters()
            self._commit({key: recorded[key].last + 1 for key in recorded})
        finally:
            self._flushing = False

    def _write_replays(self, replays: dict[PartitionKey, Replay]) -> None:
        for key, replay in replays.items():
            table = self._topic_tables[key[0]].name
            outcome = "exact" if replay.exact else "changed"
            metrics.REPLAYED_BATCHES.labels(table, outcome).inc()
            if outcome == "exact":
                log.info("re-inserting recorded batch %s[%d] %s", *key, replay.recorded)
            else:
                seen = RecordedRange.of(replay.messages) if replay.messages else None
                log.warning(
                    "recorded batch %s[%d] %s could not be read again as it was (read %s); "
                    "its rows may be stored twice",
                    *key,
                    replay.recorded,
                    seen,
                )
            if replay.messages:
                self._write(key, replay.messages)
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
                log.info("not rewinding %s[%d] (no longer assigned): %s", topic, partition, exc)

    def _write(self, key: PartitionKey, messages: list[Message]) -> None:
        """Decode and insert one partition's batch (dead-lettering what does not decode)."""
        topic = key[0]
        decoded = self._decoders[topic].decode([cast(bytes, m.value()) for m in messages])
        for index, reason in decoded.failures:
            self._dead_letter(messages[index], f"undecodable: {reason}", "decode")
        if not decoded.rows:
            return
        sources = messages if not decoded.failures else [messages[i] for i in decoded.sources]
        self._insert(self._topic_tables[topic], decoded.rows, sources, batch_token(topic, messages))

    def _insert(self, table: Table, rows: list[dict[str, Any]], sources: list[Message], token: str) -> None:
        """Insert until accepted; isolate rows ClickHouse keeps rejecting."""
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                self.link.insert(table, table.to_columns(rows), token)
            except Exception as exc:
                if is_unavailable(exc):
                    metrics.INSERT_ERRORS.labels(table.name, "unavailable").inc()
                    self._wait_for_clickhouse(exc)
                    continue
                metrics.INSERT_ERRORS.labels(table.name, "rejected").inc()
                attempt += 1
                if attempt < self.config.insert_attempts:
                    log.warning("insert into %s rejected (attempt %d): %s", table.name, attempt, exc)
                    time.sleep(self.config.backoff_initial_s * attempt)
                    continue
                self._isolate(table, rows, sources, token, exc)
                return
            metrics.INSERT_SECONDS.labels(table.name).observe(time.perf_counter() - started)
            metrics.ROWS.labels(table.name).inc(len(rows))
            metrics.BATCHES.labels(table.name).inc()
            return

    def _isolate(
        self, table: Table, rows: list[dict[str, Any]], sources: list[Message], token: str, exc: Exception
    ) -> None:
        if len(rows) == 1:
            self._dead_letter(sources[0], f"rejected by ClickHouse table {table.name}: {exc}", "insert")
            return
        middle = len(rows) // 2
        for part in (slice(0, middle), slice(middle, None)):
            part_sources = sources[part]
            self._insert_once_or_isolate(table, rows[part], part_sources, dedup_token(token, part_sources))

    def _insert_once_or_isolate(
        self, table: Table, rows: list[dict[str, Any]], sources: list[Message], token: str
    ) -> None:
        while True:
            try:
                self.link.insert(table, table.to_columns(rows), token)
            except Exception as exc:
                if is_unavailable(exc):
                    self._wait_for_clickhouse(exc)
                    continue
                self._isolate(table, rows, sources, token, exc)
                return
            metrics.ROWS.labels(table.name).inc(len(rows))
            metrics.BATCHES.labels(table.name).inc()
            return

    def _wait_for_clickhouse(self, exc: BaseException) -> None:
        """Pause consumption until ClickHouse answers again (the batch is kept and retried)."""
        log.warning("ClickHouse unavailable, pausing consumption: %s", exc)
        metrics.CLICKHOUSE_UP.set(0)
        self._pause(self.consumer.assignment())
        delay = self.config.backoff_initial_s
        self.link.reset()
        while not self.link.healthy():
            if self.stop_event.is_set():
                raise SinkStopped("stopped while ClickHouse was unavailable; offsets not committed")
            # Polling keeps the group membership alive; a message can only come from a
            # partition assigned after the pause: keep it for the next flush, pause that one too.
            message = self.consumer.poll(delay)
            if message is not None:
                self._accept([message])
                topic, partition, _ = position(message)
                self._pause([TopicPartition(topic, partition)])
            delay = min(delay * 2, self.config.backoff_max_s)
        log.warning("ClickHouse is back, resuming consumption")
        metrics.CLICKHOUSE_UP.set(1)
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

    def _dead_letter(self, message: Message, reason: str, kind: str) -> None:
        key = message.key()
        exchange = key.decode(errors="replace").split(":", 1)[0] if key else None
        value = message.value() or b""
        topic, partition, offset = position(message)
        letter = DeadLetter(
            stage=STAGE,
            source_topic=topic,
            partition=partition,
            offset=offset,
            exchange=exchange,
            reason=reason,
            payload=value,
            ts=time.time_ns() // 1000,
        )
        log.warning(
            "dead-lettering %s[%d]@%d: %s", message.topic(), message.partition(), message.offset(), reason
        )
        self.producer.produce(
            self.topology.dlq,
            key=letter.key().encode(),
            value=self.codec.encode(letter, self.topology.dlq),
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
            log.warning("%s failed: %s", what, exc)
            return {(tp.topic, tp.partition) for tp in offsets}
        failed = {(tp.topic, tp.partition) for tp in results if tp.error is not None}
        if failed:
            log.warning("%s failed for %s", what, sorted(failed))
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
        log.info("assigned %s", [(tp.topic, tp.partition) for tp in partitions])
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
                log.info("%s[%d]: re-forming recorded batch %s first", tp.topic, tp.partition, recorded)
                replays[(tp.topic, tp.partition)] = Replay(recorded)
        return replays

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s", [(tp.topic, tp.partition) for tp in partitions])
        if not self._flushing:
            self.flush()
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._paused.discard(key)
            self._committed.pop(key, None)
            # An unfinished re-formed batch stays recorded for the next owner.
            self._replays.pop(key, None)
            # Left over when the flush above could not run (revoked during one): the next
            # owner, maybe this worker again, reads them from the committed offset.
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
