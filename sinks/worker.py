"""ClickHouse sink worker: md.* topics -> ClickHouse tables.

One consumer group (``<prefix>marketpipe-sink``); run as many worker processes as there
are partitions to spread. Per worker:

* messages are buffered per topic and flushed together by size or age (default 50k rows
  or 1 s, whichever comes first);
* each table gets one column-oriented insert (reused insert context, ``async_insert=0``,
  ``insert_deduplication_token`` from topic + partition offset ranges, so an insert
  retried after an unknown outcome is stored once);
* offsets are committed (synchronously) only after ClickHouse accepted every table of the
  flush and the dead letters of the flush were acknowledged by Kafka;
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
from typing import Any, cast

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


def group_id(topology: Topology) -> str:
    return topology.name("marketpipe-sink")


def table_topics(topology: Topology) -> dict[str, str]:
    """topic -> table."""
    return {
        topology.trades: "trades",
        topology.ohlcv: "ohlcv",
        topology.book_buckets: "book_buckets",
        topology.bbo: "bbo",
        topology.status: "status",
    }


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


@dataclass
class _Pending:
    """Messages of one topic waiting for the next flush."""

    table: Table
    decoder: BatchDecoder
    messages: list[Message] = field(default_factory=list)


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
        self._topic_tables = {topic: tables[table] for topic, table in table_topics(topology).items()}
        self._pending = self._empty_pending()
        self._first_pending_at: float | None = None
        self._pending_rows = 0
        self._flushing = False
        self._paused: set[tuple[str, int]] = set()
        self._dlq_errors: list[str] = []
        self.consumer = Consumer(
            {
                **kafka_config,
                "group.id": group_id(topology),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
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

    # -- consuming ----------------------------------------------------------------------

    def _empty_pending(self) -> dict[str, _Pending]:
        return {
            topic: _Pending(table, BatchDecoder(self.codec, table.record_type))
            for topic, table in self._topic_tables.items()
        }

    def _consume(self) -> None:
        room = max(1, min(self.config.consume_chunk, self.config.batch_rows - self._pending_rows))
        timeout = self.config.batch_seconds
        if self._first_pending_at is not None:
            timeout = max(0.0, self._first_pending_at + self.config.batch_seconds - time.monotonic())
        self._accept(self.consumer.consume(num_messages=room, timeout=timeout))

    def _accept(self, messages: Sequence[Message]) -> None:
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", error)
                continue
            self._pending[cast(str, message.topic())].messages.append(message)
            self._pending_rows += 1
        if self._pending_rows and self._first_pending_at is None:
            self._first_pending_at = time.monotonic()

    def _flush_due(self) -> bool:
        if not self._pending_rows:
            return False
        assert self._first_pending_at is not None
        return (
            self._pending_rows >= self.config.batch_rows
            or time.monotonic() - self._first_pending_at >= self.config.batch_seconds
        )

    # -- flushing -----------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything pending to ClickHouse (and md.dlq), then commit its offsets."""
        if not self._pending_rows or self._flushing:
            return
        batch, self._pending = self._pending, self._empty_pending()
        self._pending_rows, self._first_pending_at = 0, None
        self._flushing = True
        try:
            for topic, pending in batch.items():
                if pending.messages:
                    self._write(topic, pending)
            self._confirm_dead_letters()
            self._commit(batch)
        finally:
            self._flushing = False

    def _write(self, topic: str, pending: _Pending) -> None:
        messages = pending.messages
        decoded = pending.decoder.decode([cast(bytes, m.value()) for m in messages])
        for index, reason in decoded.failures:
            self._dead_letter(messages[index], f"undecodable: {reason}", "decode")
        if not decoded.rows:
            return
        sources = messages if not decoded.failures else [messages[i] for i in decoded.sources]
        self._insert(pending.table, decoded.rows, sources, dedup_token(topic, sources))

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

    def _commit(self, batch: dict[str, _Pending]) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        for topic, pending in batch.items():
            for partition, (_, last) in offset_ranges(pending.messages).items():
                next_offsets[(topic, partition)] = last + 1
        if not next_offsets:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Typically a rebalance took the partitions away; their new owner re-reads
            # from the last commit and the tables deduplicate the overlap.
            log.warning("offset commit failed (rows are stored; may be re-read): %s", exc)

    # -- rebalancing --------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [(tp.topic, tp.partition) for tp in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s", [(tp.topic, tp.partition) for tp in partitions])
        if not self._flushing:
            self.flush()
        self._paused.difference_update((tp.topic, tp.partition) for tp in partitions)


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


class SinkError(RuntimeError):
    pass


class SinkStopped(SinkError):
    pass
