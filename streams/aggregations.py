"""Faust wiring of the aggregations: OHLCV candles, price buckets, cross-exchange views.

Agents (all in the streams app, ``install_aggregations`` is called by ``create_app``):

* ``ohlcv`` over ``md.trades`` (key ``exchange:symbol``, so one market's trades share a
  partition): ``streams.ohlcv.CandleBuilder`` per worker, batches of events
  (``take_events``), candles to ``md.ohlcv`` (compacted, key ``Candle.key()``). State lives
  in the table ``ohlcv-state`` (memory store, changelog-backed): one entry per market
  (clocks, input offsets, open candles) written once per batch, plus one entry per recently
  closed candle. Entries go to the changelog partition of the market's trades, so a
  restarted or rebalanced worker gets exactly its markets back. Faust flushes the producer
  (outputs and changelog) before it commits input offsets; trades replayed after a crash
  are recognised by the offsets stored in the state and skipped, so nothing is counted
  twice. Outputs and changelog are not written atomically, so after a restore every held
  candle is re-sent at its last published version (exact duplicates at worst). Trades
  later than the late horizon go to ``md.dlq``.
* Price buckets are produced by the normaliser itself (``FeedProcessor.bucketer``, at
  event-time boundaries) and published to ``md.book-buckets``.
* Cross-exchange views need one symbol's records from every exchange together, but they
  arrive keyed by ``exchange:symbol``. They are repartitioned through the internal topic
  ``<app id>-consolidate`` keyed by the consolidated symbol: the ``ohlcv`` agent forwards
  every candle it publishes, and ``buckets-repartition`` forwards ``md.book-buckets``.
  The ``consolidate`` agent merges them (``streams.consolidate``) and publishes exchange
  ``"all"`` records to ``md.ohlcv`` and ``md.book-buckets``. Candle merge state is in the
  table ``consolidate-state``; pending bucket boundaries are kept in memory only (a
  restart can lose at most the boundaries in flight).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from confluent_kafka.admin import AdminClient
from faust.types import EventT

from marketpipe.codec import AvroCodec, DecodeError
from marketpipe.config import Settings
from marketpipe.records import BookBuckets, Candle, DeadLetter, Record, Trade
from marketpipe.topics import DAY_MS, TopicSpec, Topology, apply_topology
from streams.buckets import Bucketer
from streams.consolidate import ALL, BucketMerger, CandleMerger, SymbolMap
from streams.ohlcv import CandleBuilder
from streams.publish import OutputProducer

log = logging.getLogger(__name__)

BATCH_SIZE = 5000
BATCH_WITHIN_S = 0.05
Emit = Callable[[str, bytes, bytes], None]


def topic_partitions(settings: Settings, topic: str, default: int) -> int:
    """Partition count of an existing topic (tables must match their source topic)."""
    try:
        config: dict[str, Any] = dict(settings.kafka_client_config())
        admin = AdminClient(config)
        found = admin.list_topics(topic, timeout=10).topics.get(topic)
    except Exception as exc:  # no broker yet: the declared default
        log.warning("cannot read partitions of %s (%s); assuming %d", topic, exc, default)
        return default
    if found is None or found.error is not None or not found.partitions:
        return default
    return len(found.partitions)


def ensure_internal_topic(settings: Settings, name: str, partitions: int, compacted: bool = False) -> None:
    """Create an internal topic (repartition or table changelog) before the worker subscribes.

    Faust declares them at start too, but its consumer can subscribe before the broker lists a
    topic created moments earlier; aiokafka then ignores the topic ("not found in cluster
    metadata") until a metadata refresh minutes later. For a changelog that means table
    recovery, and so every agent of the worker, waits that long; for the repartition topic,
    nothing is consolidated meanwhile.
    """
    spec = TopicSpec(
        name, partitions, key="internal", value="internal", retention_ms=DAY_MS, compacted=compacted
    )
    try:
        admin = AdminClient(dict(settings.kafka_client_config()))
        apply_topology(admin, [spec], settings.kafka.replication_factor, timeout=10.0)
    except Exception as exc:  # no broker yet: Faust declares it when it can
        log.warning("cannot create %s (%s); leaving it to Faust", name, exc)


@dataclass
class OhlcvStage:
    """Trade events in, candle and dead-letter messages out, table entries written."""

    builder: CandleBuilder
    topology: Topology
    codec: AvroCodec
    symbols: SymbolMap
    consolidate_topic: str
    needs_restore: bool = True
    decode_errors: int = 0
    _rejected_seen: int = field(default=0, repr=False)

    def process(self, events: Sequence[EventT], emit: Emit) -> None:
        builder = self.builder
        decode = self.codec.decode
        add = builder.add
        for event in events:
            message = event.message
            value: bytes = message.value or b""
            try:
                trade = decode(value, Trade)
            except DecodeError as exc:
                self._dead_letter(emit, message.partition, message.offset, str(exc), value, 0)
                continue
            add(
                trade.exchange,
                trade.symbol,
                trade.ts,
                trade.price,
                trade.size,
                trade.side,
                message.partition,
                message.offset,
            )
            if len(builder.rejected) != self._rejected_seen:
                self._rejected_seen = len(builder.rejected)
                reason = builder.rejected[-1].reason
                self._dead_letter(emit, message.partition, message.offset, reason, value, trade.ts)
        self._publish(builder.take_published(), emit)
        builder.rejected.clear()
        self._rejected_seen = 0

    def _publish(self, candles: list[Candle], emit: Emit) -> None:
        ohlcv, encode = self.topology.ohlcv, self.codec.encode
        for candle in candles:
            value = encode(candle, ohlcv)
            emit(ohlcv, candle.key().encode(), value)
            emit(self.consolidate_topic, self.symbols(candle.symbol).encode(), value)

    def _dead_letter(
        self, emit: Emit, partition: int, offset: int, reason: str, payload: bytes, ts: int
    ) -> None:
        dlq = self.topology.dlq
        letter = DeadLetter(
            stage="ohlcv",
            source_topic=self.topology.trades,
            partition=partition,
            offset=offset,
            reason=reason,
            payload=payload,
            ts=ts,
        )
        log.warning("dead-lettered %s:%s@%s: %s", self.topology.trades, partition, offset, reason)
        emit(dlq, letter.key().encode(), self.codec.encode(letter, dlq))


@dataclass
class ConsolidateStage:
    """Per-symbol candles and bucket snapshots in, exchange "all" records out."""

    candles: CandleMerger
    buckets: BucketMerger
    topology: Topology
    codec: AvroCodec
    needs_restore: bool = True
    partitions: dict[str, int] = field(default_factory=dict)
    """consolidated symbol -> partition of the internal topic (and of its table entries)"""

    def process(self, events: Sequence[EventT], emit: Emit) -> None:
        t, encode = self.topology, self.codec.encode
        for event in events:
            message = event.message
            try:
                record: Record = self.codec.decode(message.value or b"")
            except DecodeError as exc:
                log.error("consolidate: undecodable internal record: %s", exc)
                continue
            self.partitions[bytes(message.key or b"").decode()] = message.partition
            if isinstance(record, Candle):
                self.candles.add(record)
            elif isinstance(record, BookBuckets):
                for merged in self.buckets.add(record):
                    emit(t.book_buckets, merged.key().encode(), encode(merged, t.book_buckets))
        for candle in self.candles.publish():
            emit(t.ohlcv, candle.key().encode(), encode(candle, t.ohlcv))

    def partition_of(self, state_key: str) -> int:
        return self.partitions.get(state_key.split(":", 1)[0], 0)


def _write_table(table: Any, partition: int, key: bytes, value: bytes | None) -> None:
    """Set or delete one table entry, with its changelog record on an explicit partition.

    ``table[key] = value`` would take the partition from the "current event", which a
    batch (``take_events``) does not have.
    """
    if value is None:
        table.data.pop(key, None)
        table.send_changelog(partition, key, None, value_serializer="raw")
    else:
        table.data[key] = value
        table.send_changelog(partition, key, value)


def install_aggregations(
    app: faust.App,
    settings: Settings,
    topology: Topology,
    codec: AvroCodec,
    normaliser: Any,
    output: OutputProducer,
) -> None:
    """Add the OHLCV, bucket and consolidation agents to the streams app."""
    streams = settings.streams
    symbols = SymbolMap(streams.quote_equivalents)
    normaliser.bucketer = Bucketer(
        interval_us=int(streams.bucket_interval_s * 1_000_000),
        max_distance_pct=streams.bucket_max_distance_pct,
        sizes=dict(streams.bucket_sizes),
    )
    partitions = topic_partitions(settings, topology.trades, topology.partitions)

    def raw_topic(name: str, **kwargs: Any) -> Any:
        return app.topic(name, key_serializer="raw", value_serializer="raw", **kwargs)

    trades = raw_topic(topology.trades)
    book_buckets = raw_topic(topology.book_buckets)
    consolidate = raw_topic(
        f"{app.conf.id}-consolidate", partitions=partitions, internal=True, retention=86_400.0
    )
    ensure_internal_topic(settings, consolidate.get_topic_name(), partitions)
    emit = output.emit

    table_options: dict[str, Any] = {"partitions": partitions, "key_type": bytes, "value_type": bytes}
    ohlcv_table = app.Table("ohlcv-state", **table_options)
    consolidate_table = app.Table("consolidate-state", **table_options)
    for table in (ohlcv_table, consolidate_table):
        ensure_internal_topic(settings, table.changelog_topic.get_topic_name(), partitions, compacted=True)

    ohlcv_stage = OhlcvStage(
        CandleBuilder(streams.ohlcv_intervals, streams.ohlcv_grace_s, streams.ohlcv_update_interval_s),
        topology,
        codec,
        symbols,
        consolidate.get_topic_name(),
    )
    consolidate_stage = ConsolidateStage(
        CandleMerger(symbols),
        BucketMerger(symbols, normaliser.bucketer.interval_us),
        topology,
        codec,
    )
    app.marketpipe_ohlcv = ohlcv_stage  # type: ignore[attr-defined]

    @app.agent(trades, name="ohlcv")
    async def ohlcv(stream: Any) -> None:
        async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            if ohlcv_stage.needs_restore:
                ohlcv_stage.builder.restore(list(ohlcv_table.data.items()))
                ohlcv_stage.builder.republish()
                ohlcv_stage.needs_restore = False
            ohlcv_stage.process(events, emit)
            for partition, key, value in ohlcv_stage.builder.state_changes():
                _write_table(ohlcv_table, partition, key, value)
            await output.flush_or_die()

    @app.agent(book_buckets, name="buckets-repartition")
    async def buckets_repartition(stream: Any) -> None:
        async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            for event in events:
                key = bytes(event.message.key or b"").decode()
                exchange, _, symbol = key.partition(":")
                if exchange and exchange != ALL:
                    emit(consolidate.get_topic_name(), symbols(symbol).encode(), event.message.value)
            await output.flush_or_die()

    @app.agent(consolidate, name="consolidate")
    async def consolidate_agent(stream: Any) -> None:
        async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            if consolidate_stage.needs_restore:
                items = [(bytes(k).decode(), v) for k, v in consolidate_table.data.items()]
                consolidate_stage.candles.restore(items)
                consolidate_stage.needs_restore = False
            consolidate_stage.process(events, emit)
            for key, value in consolidate_stage.candles.state_changes():
                _write_table(consolidate_table, consolidate_stage.partition_of(key), key.encode(), value)
            await output.flush_or_die()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # the tables are recovered before agents see events again: reload state from them
        ohlcv_stage.needs_restore = True
        consolidate_stage.needs_restore = True
