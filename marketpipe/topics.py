"""Declarative topology: every topic marketpipe uses, with its configuration.

``marketpipe topics apply`` creates what is missing and reconciles the configs of
what exists (incrementally, so settings we do not manage are left alone); running it
twice changes nothing the second time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)

from marketpipe.config import Settings
from marketpipe.records import (
    BBO,
    BookBuckets,
    BookChange,
    Candle,
    ControlRequest,
    DeadLetter,
    ExchangeCandle,
    FundingRate,
    Instrument,
    Liquidation,
    MarkPrice,
    OpenInterest,
    Record,
    StatusEvent,
    Ticker,
    Trade,
)

DAY_MS = 86_400_000
MiB = 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    value: str
    compacted: bool = False
    retention_ms: int = 7 * DAY_MS
    max_message_bytes: int = 1 * MiB
    extra: dict[str, str] = field(default_factory=dict)

    def configs(self) -> dict[str, str]:
        configs = {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "retention.ms": str(self.retention_ms),
            "max.message.bytes": str(self.max_message_bytes),
        }
        if self.compacted:
            # Keep every record uncompacted long enough for sinks and late consumers
            # to see it; only then may compaction drop superseded versions.
            configs["min.compaction.lag.ms"] = str(1 * 3_600_000)
            configs["segment.ms"] = str(6 * 3_600_000)
        return {**configs, **self.extra}


@dataclass(frozen=True)
class Stream:
    """One catalogue row: an md topic (without the prefix), what it carries and where it goes."""

    topic: str
    record: type[Record]
    key: str
    compacted: bool = False
    retention_ms: int = 7 * DAY_MS
    max_message_bytes: int = 1 * MiB
    table: str | None = None
    """the ClickHouse table the sink writes it to (None: not stored)"""
    partitions: int | None = None
    """None: the topology's partition count"""


_SERIES = "exchange:symbol"
_WINDOW = "exchange:symbol:interval:open_time"
TRADES = Stream("md.trades", Trade, _SERIES, retention_ms=30 * DAY_MS, table="trades")
BOOK = Stream("md.book", BookChange, _SERIES, max_message_bytes=16 * MiB)
BBOS = Stream("md.bbo", BBO, _SERIES, compacted=True, table="bbo")
BOOK_BUCKETS = Stream("md.book-buckets", BookBuckets, _SERIES, compacted=True, table="book_buckets")
OHLCV = Stream("md.ohlcv", Candle, _WINDOW, compacted=True, retention_ms=-1, table="ohlcv")
TICKER = Stream("md.ticker", Ticker, _SERIES, compacted=True, table="ticker")
EXCHANGE_CANDLES = Stream(
    "md.exchange-candles", ExchangeCandle, _WINDOW, compacted=True, retention_ms=-1, table="exchange_candles"
)
INSTRUMENTS = Stream("md.instruments", Instrument, _SERIES, compacted=True, table="instruments")
FUNDING = Stream("md.funding", FundingRate, _SERIES, retention_ms=30 * DAY_MS, table="funding")
OPEN_INTEREST = Stream(
    "md.open-interest", OpenInterest, _SERIES, retention_ms=30 * DAY_MS, table="open_interest"
)
MARK_PRICE = Stream("md.mark-price", MarkPrice, _SERIES, retention_ms=30 * DAY_MS, table="mark_price")
LIQUIDATIONS = Stream("md.liquidations", Liquidation, _SERIES, retention_ms=30 * DAY_MS, table="liquidations")
STATUS = Stream("md.status", StatusEvent, _SERIES, compacted=True, table="status")
CONTROL = Stream("md.control", ControlRequest, _SERIES, retention_ms=1 * DAY_MS, partitions=1)
DLQ = Stream(
    "md.dlq", DeadLetter, "exchange:conn", retention_ms=30 * DAY_MS, max_message_bytes=16 * MiB, partitions=1
)
MD_STREAMS: tuple[Stream, ...] = (
    TRADES,
    BOOK,
    BBOS,
    BOOK_BUCKETS,
    OHLCV,
    TICKER,
    EXCHANGE_CANDLES,
    INSTRUMENTS,
    FUNDING,
    OPEN_INTEREST,
    MARK_PRICE,
    LIQUIDATIONS,
    STATUS,
    CONTROL,
    DLQ,
)
"""The stream catalogue: every md topic. Topic specs, the sink's tables, the drain checks and the
live view derive from it; a new record type needs its row here (and its .avsc and migration)."""
_BY_RECORD = {row.record: row for row in MD_STREAMS}


@dataclass(frozen=True)
class Topology:
    prefix: str = ""
    exchanges: tuple[str, ...] = ()
    partitions: int = 6

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    def raw(self, exchange: str) -> str:
        return self.name(f"raw.{exchange}")

    @property
    def trades(self) -> str:
        return self.name(TRADES.topic)

    @property
    def book(self) -> str:
        return self.name(BOOK.topic)

    @property
    def bbo(self) -> str:
        return self.name(BBOS.topic)

    @property
    def book_buckets(self) -> str:
        return self.name(BOOK_BUCKETS.topic)

    @property
    def ohlcv(self) -> str:
        return self.name(OHLCV.topic)

    @property
    def ticker(self) -> str:
        return self.name(TICKER.topic)

    @property
    def exchange_candles(self) -> str:
        return self.name(EXCHANGE_CANDLES.topic)

    @property
    def instruments(self) -> str:
        return self.name(INSTRUMENTS.topic)

    @property
    def status(self) -> str:
        return self.name(STATUS.topic)

    @property
    def control(self) -> str:
        return self.name(CONTROL.topic)

    @property
    def dlq(self) -> str:
        return self.name(DLQ.topic)

    @property
    def sink_group(self) -> str:
        """The ClickHouse sink workers' consumer group (sinks/worker.py)."""
        return self.name("marketpipe-sink")

    # the stream stages' consumer groups and internal topics (streams/runtime.py)

    @property
    def streams_group(self) -> str:
        """The normalise stage's group (raw.* in); the aggregation stages' groups derive from it."""
        return self.name("marketpipe-streams")

    @property
    def ohlcv_group(self) -> str:
        return f"{self.streams_group}-ohlcv"

    @property
    def consolidate_group(self) -> str:
        return f"{self.streams_group}-consolidate"

    @property
    def consolidate(self) -> str:
        """Candles and bucket snapshots keyed by consolidated symbol (cross-exchange views)."""
        return f"{self.streams_group}-consolidate"

    @property
    def checkpoints(self) -> str:
        """Compacted: each stage partition's state, pointed at by its committed offset's metadata."""
        return f"{self.streams_group}-checkpoints"

    def sink_tables(self) -> dict[str, str]:
        """md topic -> the ClickHouse table the sink writes it to (what the sink, drain checks
        and the live view all follow): the ``table`` of every catalogue row that has one."""
        return {self.name(row.topic): row.table for row in MD_STREAMS if row.table is not None}

    def md_topics(self, exclude: Sequence[str] = ()) -> list[str]:
        """Every md topic's name (``MD_STREAMS``), but those in ``exclude``."""
        return [name for row in MD_STREAMS if (name := self.name(row.topic)) not in exclude]

    def md_topic(self, record_type: type[Record]) -> str:
        """The md topic records of ``record_type`` are published to (one per type)."""
        return self.name(_BY_RECORD[record_type].topic)

    def stream_stages(self) -> list[tuple[str, list[str]]]:
        """(consumer group, input topics) of every stream stage, e.g. to tell when all are drained."""
        return [
            (self.streams_group, [self.raw(exchange) for exchange in self.exchanges]),
            (self.ohlcv_group, [self.trades]),
            (self.consolidate_group, [self.consolidate]),
        ]

    def specs(self) -> list[TopicSpec]:
        n = self.partitions
        raw = [
            TopicSpec(
                self.raw(exchange),
                n,
                key="shard key (exchange:hash of the symbols)",
                value="raw frame bytes",
                retention_ms=30 * DAY_MS,
                max_message_bytes=16 * MiB,  # Coinbase full-book snapshots are ~5 MB
            )
            for exchange in self.exchanges
        ]
        md = [
            TopicSpec(
                self.name(row.topic),
                row.partitions or n,
                key=row.key,
                value=row.record.__name__,
                compacted=row.compacted,
                retention_ms=row.retention_ms,
                max_message_bytes=row.max_message_bytes,
            )
            for row in MD_STREAMS
        ]
        return [
            *raw,
            *md,
            TopicSpec(self.consolidate, n, key="consolidated symbol", value="Candle | BookBuckets"),
            TopicSpec(
                self.checkpoints,
                n,
                key="stage|topic|partition",
                value="stage state checkpoint",
                compacted=True,
                retention_ms=-1,
                max_message_bytes=65 * MiB,
            ),
        ]

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(prefix=settings.kafka.topic_prefix, exchanges=tuple(settings.exchanges))


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    reconfigured: dict[str, dict[str, str]] = field(default_factory=dict)
    repartitioned: dict[str, int] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.reconfigured or self.repartitioned)


def apply_topology(
    admin: AdminClient, specs: Iterable[TopicSpec], replication_factor: int = 1, timeout: float = 30.0
) -> ApplyReport:
    specs = list(specs)
    report = ApplyReport()
    existing = admin.list_topics(timeout=timeout).topics
    missing = [spec for spec in specs if spec.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, replication_factor, config=s.configs()) for s in missing],
            operation_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
                report.created.append(name)
            except KafkaException as exc:
                # a broker's metadata can lag a topic created moments ago: reconcile it below
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        existing = _wait_until_served(admin, {s.name: s.partitions for s in missing}, timeout)

    present = [spec for spec in specs if spec.name in existing and spec.name not in report.created]
    grow = {s.name: s.partitions for s in present if len(existing[s.name].partitions) < s.partitions}
    if grow:
        for future in admin.create_partitions([NewPartitions(t, n) for t, n in grow.items()]).values():
            future.result()
        _wait_until_served(admin, grow, timeout)
        report.repartitioned = grow

    current = describe_configs(admin, [s.name for s in present], timeout)
    to_alter: list[ConfigResource] = []
    for spec in present:
        diff = {k: v for k, v in spec.configs().items() if current[spec.name].get(k) != v}
        if not diff:
            report.unchanged.append(spec.name)
            continue
        report.reconfigured[spec.name] = diff
        entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in diff.items()]
        to_alter.append(ConfigResource(ConfigResource.Type.TOPIC, spec.name, incremental_configs=entries))
    if to_alter:
        for future in admin.incremental_alter_configs(to_alter).values():
            future.result()
    return report


def _wait_until_served(admin: AdminClient, partitions: dict[str, int], timeout: float) -> dict[str, Any]:
    """Topic metadata once the named topics have their number of partitions, each served by its leader.

    KRaft brokers learn about new topics asynchronously, and a broker lists itself as a
    partition's leader a while before it serves the partition, refusing writes meanwhile. So
    each partition is asked for its end offset, which only the serving leader answers.
    """
    deadline = time.monotonic() + timeout
    waiting = set(partitions)
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        visible = [n for n in waiting if n in topics and _led(topics[n], partitions[n])]
        waiting.difference_update(_answering(admin, topics, visible, timeout))
        if not waiting:
            return topics
        if time.monotonic() > deadline:
            raise TopicsNotServed(
                f"{len(waiting)} topic(s) with new partitions no leader serves after {timeout:.0f} s: "
                f"{', '.join(sorted(waiting)[:5])}; check the brokers' health (kafka logs)"
            )
        time.sleep(0.1)


def _led(topic: Any, count: int) -> bool:
    """``topic`` has ``count`` partitions in the metadata, each with a leader."""
    partitions = topic.partitions.values()
    return (
        topic.error is None
        and len(partitions) >= count
        and all(p.leader >= 0 and p.error is None for p in partitions)
    )


def _answering(admin: AdminClient, topics: dict[str, Any], names: list[str], timeout: float) -> set[str]:
    """The named topics whose every partition answers a ListOffsets request."""
    if not names:
        return set()
    request = {TopicPartition(n, p): OffsetSpec.latest() for n in names for p in topics[n].partitions}
    unserved: set[str] = set()
    for tp, future in admin.list_offsets(request, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() not in _ELECTING:
                raise
            unserved.add(tp.topic)
    return set(names) - unserved


class TopicsNotServed(RuntimeError):
    """Topics whose new partitions no leader serves within the timeout."""


_ELECTING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.UNKNOWN_LEADER_EPOCH,  # the broker has yet to apply the leadership it was given
    KafkaError.FENCED_LEADER_EPOCH,
}


def watermarks(consumer: Any, tp: Any, timeout: float = 10.0) -> tuple[int, int]:
    """(low, high) offsets of one partition, waiting out a leader that is still being elected.

    A partition created or moved moments ago answers NOT_LEADER/LEADER_NOT_AVAILABLE for a
    while; those are retriable, so they are retried until ``timeout``; anything else raises.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=max(0.1, deadline - time.monotonic()))
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() not in _ELECTING or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def describe_configs(
    admin: AdminClient, topics: list[str], timeout: float = 30.0
) -> dict[str, dict[str, str]]:
    if not topics:
        return {}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
    result: dict[str, dict[str, str]] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        result[resource.name] = {name: entry.value for name, entry in future.result().items()}
    return result
