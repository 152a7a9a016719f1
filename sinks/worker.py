"""ClickHouse sink worker: md.* topics -> ClickHouse tables, each record stored once.

One consumer group (``<prefix>marketpipe-sink``); run as many worker processes as there
are partitions to spread. The consume/batch/record/commit/pause loop is the generic one of
sinks/batching.py (``BatchingSink``); this module is the ClickHouse writer:

* each partition's batch is decoded (``sinks/tables.py``) and inserted with its
  ``insert_deduplication_token`` (``batch_token``): a recorded batch re-formed after a crash
  gives the same token, so when the earlier attempt had reached ClickHouse the insert is a
  no-op and every row is stored once (the approach of clickhouse-kafka-connect's
  exactly-once mode; the tables keep enough tokens, see
  ``sinks/migrations/0003_insert_dedup_window.sql``);
* a value that cannot be decoded goes to md.dlq at once (decoding is deterministic); rows
  ClickHouse rejects are retried a bounded number of times, then the batch is bisected and
  each row that still fails alone goes to md.dlq with the reason;
* when ClickHouse is unreachable, consumption is held (``BatchingSink.hold``: partitions
  paused, the consumer keeps polling) and the insert is retried with backoff until ClickHouse
  answers. Nothing is committed meanwhile.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from confluent_kafka import Message

from marketpipe.codec import AvroCodec
from marketpipe.topics import Topology
from sinks import metrics
from sinks.batching import (
    BatchConfig,
    BatchingSink,
    PartitionKey,
    RecordedRange,
    Replay,
    SinkError,
    SinkStopped,
    batch_token,
    dedup_token,
    position,
)
from sinks.clickhouse import ClickHouseUnavailable, connect, is_embedded, parse_dsn
from sinks.migrate import migrate
from sinks.server import QueryServer
from sinks.tables import BatchDecoder, Table, sink_tables

__all__ = [
    "CANDLE_CHECK_QUERY",
    "ClickHouseLink",
    "PartitionKey",
    "RecordedRange",
    "Replay",
    "SinkConfig",
    "SinkError",
    "SinkStopped",
    "SinkWorker",
    "batch_token",
    "dedup_token",
    "group_id",
    "is_unavailable",
    "position",
]

from marketpipe.logs import log_event

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
class SinkConfig(BatchConfig):
    insert_attempts: int = 3
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
            log_event(log, logging.DEBUG, "ClickHouse not back yet", error=exc)
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


class SinkWorker(BatchingSink):
    """md.* topics -> their ClickHouse tables (``Topology.sink_tables``)."""

    stage = STAGE

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
        codec = codec or AvroCodec()
        self.link = ClickHouseLink(dsn, apply_migrations=apply_migrations)
        tables = sink_tables(codec)
        self._topic_tables = {topic: tables[table] for topic, table in topology.sink_tables().items()}
        self._decoders = {
            topic: BatchDecoder(codec, table.record_type) for topic, table in self._topic_tables.items()
        }
        self._next_candle_check = 0.0
        super().__init__(
            kafka_config, group_id(topology), list(self._topic_tables), topology.dlq, codec, self.config
        )

    # -- BatchingSink hooks -------------------------------------------------------------

    def open(self) -> None:
        """Wait for ClickHouse before consuming."""
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
                log_event(log, logging.WARNING, "waiting for ClickHouse before consuming", error=exc)
                self.link.reset()
                self.stop_event.wait(delay)
                delay = min(delay * 2, self.config.backoff_max_s)

    def after_poll(self) -> None:
        """Count the candle_check view into its metric when due."""
        every = self.config.candle_check_s
        now = time.monotonic()
        if every <= 0 or now < self._next_candle_check or self.link.client is None:
            return
        self._next_candle_check = now + every
        try:
            counts = self.link.client.query(CANDLE_CHECK_QUERY).result_rows
        except Exception as exc:  # the metric must never stop the sink
            log_event(log, logging.WARNING, "candle_check metric not updated", error=exc)
            return
        metrics.set_candle_check(counts)

    def close(self) -> None:
        self.link.close()

    def batch_label(self, topic: str) -> str:
        return self._topic_tables[topic].name

    def write(self, key: PartitionKey, messages: list[Message]) -> None:
        """Decode and insert one partition's batch (dead-lettering what does not decode)."""
        topic = key[0]
        decoded = self._decoders[topic].decode([cast(bytes, m.value()) for m in messages])
        for index, reason in decoded.failures:
            self.dead_letter(messages[index], f"undecodable: {reason}", "decode")
        if not decoded.rows:
            return
        sources = messages if not decoded.failures else [messages[i] for i in decoded.sources]
        self._insert(self._topic_tables[topic], decoded.rows, sources, batch_token(topic, messages))

    # -- inserting ----------------------------------------------------------------------

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
                    log_event(
                        log,
                        logging.WARNING,
                        "insert rejected, retrying",
                        table=table.name,
                        attempt=attempt,
                        error=exc,
                    )
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
            self.dead_letter(sources[0], f"rejected by ClickHouse table {table.name}: {exc}", "insert")
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
        """Hold consumption until ClickHouse answers again (the batch is kept and retried)."""
        log_event(log, logging.WARNING, "ClickHouse unavailable, pausing consumption", error=exc)
        metrics.CLICKHOUSE_UP.set(0)
        self.link.reset()
        self.hold(self.link.healthy, "ClickHouse")
        log_event(log, logging.WARNING, "ClickHouse is back, resuming consumption")
        metrics.CLICKHOUSE_UP.set(1)
