"""Declarative topology: every topic marketpipe uses, with its configuration.

``marketpipe topics apply`` creates what is missing and reconciles the configs of
what exists (incrementally, so settings we do not manage are left alone); running it
twice changes nothing the second time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from marketpipe.config import Settings

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
        return self.name("md.trades")

    @property
    def book(self) -> str:
        return self.name("md.book")

    @property
    def bbo(self) -> str:
        return self.name("md.bbo")

    @property
    def book_buckets(self) -> str:
        return self.name("md.book-buckets")

    @property
    def ohlcv(self) -> str:
        return self.name("md.ohlcv")

    @property
    def ticker(self) -> str:
        return self.name("md.ticker")

    @property
    def exchange_candles(self) -> str:
        return self.name("md.exchange-candles")

    @property
    def instruments(self) -> str:
        return self.name("md.instruments")

    @property
    def funding(self) -> str:
        return self.name("md.funding")

    @property
    def open_interest(self) -> str:
        return self.name("md.open-interest")

    @property
    def mark_price(self) -> str:
        return self.name("md.mark-price")

    @property
    def liquidations(self) -> str:
        return self.name("md.liquidations")

    @property
    def status(self) -> str:
        return self.name("md.status")

    @property
    def control(self) -> str:
        return self.name("md.control")

    @property
    def dlq(self) -> str:
        return self.name("md.dlq")

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
        and the live view all follow)."""
        return {
            self.trades: "trades",
            self.ohlcv: "ohlcv",
            self.book_buckets: "book_buckets",
            self.bbo: "bbo",
            self.status: "status",
            self.ticker: "ticker",
            self.exchange_candles: "exchange_candles",
            self.instruments: "instruments",
            self.funding: "funding",
            self.open_interest: "open_interest",
            self.mark_price: "mark_price",
            self.liquidations: "liquidations",
        }

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
        return [
            *raw,
            TopicSpec(self.trades, n, key="exchange:symbol", value="Trade", retention_ms=30 * DAY_MS),
            TopicSpec(self.book, n, key="exchange:symbol", value="BookChange", max_message_bytes=16 * MiB),
            TopicSpec(self.bbo, n, key="exchange:symbol", value="BBO", compacted=True),
            TopicSpec(self.book_buckets, n, key="exchange:symbol", value="BookBuckets", compacted=True),
            TopicSpec(
                self.ohlcv,
                n,
                key="exchange:symbol:interval:open_time",
                value="Candle",
                compacted=True,
                retention_ms=-1,
            ),
            TopicSpec(self.ticker, n, key="exchange:symbol", value="Ticker", compacted=True),
            TopicSpec(
                self.exchange_candles,
                n,
                key="exchange:symbol:interval:open_time",
                value="ExchangeCandle",
                compacted=True,
                retention_ms=-1,
            ),
            TopicSpec(self.instruments, n, key="exchange:symbol", value="Instrument", compacted=True),
            TopicSpec(self.funding, n, key="exchange:symbol", value="FundingRate", retention_ms=30 * DAY_MS),
            TopicSpec(
                self.open_interest, n, key="exchange:symbol", value="OpenInterest", retention_ms=30 * DAY_MS
            ),
            TopicSpec(self.mark_price, n, key="exchange:symbol", value="MarkPrice", retention_ms=30 * DAY_MS),
            TopicSpec(
                self.liquidations, n, key="exchange:symbol", value="Liquidation", retention_ms=30 * DAY_MS
            ),
            TopicSpec(self.status, n, key="exchange:symbol", value="StatusEvent", compacted=True),
            TopicSpec(
                self.control, 1, key="exchange:symbol", value="ControlRequest", retention_ms=1 * DAY_MS
            ),
            TopicSpec(
                self.dlq,
                1,
                key="exchange:conn",
                value="DeadLetter",
                retention_ms=30 * DAY_MS,
                max_message_bytes=16 * MiB,
            ),
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
        existing = _wait_until_visible(admin, [s.name for s in missing], timeout)

    present = [spec for spec in specs if spec.name in existing and spec.name not in report.created]
    grow = {s.name: s.partitions for s in present if len(existing[s.name].partitions) < s.partitions}
    if grow:
        for future in admin.create_partitions([NewPartitions(t, n) for t, n in grow.items()]).values():
            future.result()
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


def _wait_until_visible(admin: AdminClient, names: list[str], timeout: float) -> dict[str, Any]:
    """Topic metadata once every named topic has its partitions on the broker.

    KRaft brokers learn about new topics asynchronously; waiting here means a caller can
    produce or alter configs right after `apply` returns.
    """
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        ready = all(
            name in topics and topics[name].partitions and topics[name].error is None for name in names
        )
        if ready or time.monotonic() > deadline:
            return topics
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
