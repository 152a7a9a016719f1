"""The aggregation stages: OHLCV candles from md.trades, cross-exchange views from the consolidation topic.

* ``OhlcvStage`` over ``md.trades`` (key ``exchange:symbol``, so one market's trades share
  a partition): one ``streams.ohlcv.CandleBuilder`` per input partition, candles to
  ``md.ohlcv`` (compacted, key ``Candle.key()``) and to the consolidation topic; trades later
  than the late horizon go to ``md.dlq``. Each batch publishes the last version of each
  candle it changed, as Kafka Streams' record cache forwards one update per key and commit:
  a live batch spans less than ``ohlcv_update_interval_s``, so live consumers see every
  version; a backlog drain skips the versions a later one in the same batch supersedes
  (every version published is the one the event-time rules give, and the last is always
  published).
* Price buckets are produced by the normaliser itself (``FeedProcessor.bucketer``, at
  event-time boundaries) and published to ``md.book-buckets`` and the consolidation topic.
* ``ConsolidateStage`` over ``<prefix>marketpipe-streams-consolidate`` (keyed by the
  consolidated symbol, so one symbol's candles and bucket snapshots from every exchange
  meet in one partition): merges them (``streams.consolidate``) and publishes exchange
  ``"all"`` records to ``md.ohlcv`` and ``md.book-buckets``.

Each stage runs in its own transactional loop (streams/runtime.py): its state is checkpointed
with its committed offsets, so a restart or rebalance continues exactly where the last
commit left off.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import Message

from marketpipe.codec import AvroCodec, DecodeError
from marketpipe.config import StreamSettings
from marketpipe.logs import log_event
from marketpipe.records import BookBuckets, Candle, DeadLetter, Record, Trade
from marketpipe.topics import Topology
from streams.consolidate import BucketMerger, CandleMerger, SymbolMap
from streams.ohlcv import CandleBuilder
from streams.runtime import Emit

log = logging.getLogger(__name__)


class OhlcvStage:
    name = "ohlcv"

    def __init__(
        self, topology: Topology, codec: AvroCodec, streams: StreamSettings, symbols: SymbolMap
    ) -> None:
        self.topology = topology
        self.codec = codec
        self.streams = streams
        self.symbols = symbols
        self.group = topology.ohlcv_group
        self.topics = [topology.trades]
        self.outputs = [topology.ohlcv, topology.consolidate, topology.dlq]
        self.decode_errors = 0
        # only what a candle needs: no Trade struct, the other texts not decoded
        self._read_trade = codec.field_reader(Trade, ("exchange", "symbol", "ts", "price", "size", "side"))

    def new_state(self, topic: str, partition: int) -> CandleBuilder:
        s = self.streams
        return CandleBuilder(s.ohlcv_intervals, s.ohlcv_grace_s, s.ohlcv_update_interval_s)

    def process(self, builder: CandleBuilder, messages: Sequence[Message], emit: Emit | None) -> None:
        read, add, rejected = self._read_trade, builder.add, builder.rejected
        rejected.clear()
        for message in messages:
            try:
                exchange, symbol, ts, price, size, side = read(message.value() or b"")
            except DecodeError as exc:
                if emit is not None:
                    self.decode_errors += 1
                    self._dead_letter(emit, message, str(exc), 0)
                continue
            add(exchange, symbol, ts, price, size, side)
            if rejected:
                if emit is not None:
                    self._dead_letter(emit, message, rejected[-1].reason, ts)
                rejected.clear()
        candles = builder.take_published(latest_only=True)
        if emit is not None:
            self._publish(candles, emit)

    def flush(self, builder: CandleBuilder, emit: Emit) -> None:
        """End of input: each open candle with unpublished trades goes out as one more version."""
        builder.flush_open()
        self._publish(builder.take_published(), emit)

    def _publish(self, candles: list[Candle], emit: Emit) -> None:
        t, symbols = self.topology, self.symbols
        encode = self.codec.encoder(Candle, t.ohlcv)
        for candle in candles:
            value = encode(candle)
            emit(t.ohlcv, candle.key().encode(), value)
            if symbols.consolidates(candle.symbol):
                emit(t.consolidate, symbols(candle.symbol).encode(), value)

    def _dead_letter(self, emit: Emit, message: Message, reason: str, ts: int) -> None:
        t = self.topology
        letter = DeadLetter(
            stage="ohlcv",
            source_topic=t.trades,
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            reason=reason,
            payload=message.value() or b"",
            ts=ts,
        )
        log_event(
            log,
            logging.WARNING,
            "dead-lettered",
            topic=t.trades,
            partition=letter.partition,
            offset=letter.offset,
            reason=reason,
        )
        emit(t.dlq, letter.key().encode(), self.codec.encode(letter, t.dlq))


@dataclass
class Consolidation:
    """State of one consolidation partition."""

    candles: CandleMerger
    buckets: BucketMerger


class ConsolidateStage:
    name = "consolidate"

    def __init__(
        self, topology: Topology, codec: AvroCodec, symbols: SymbolMap, bucket_interval_us: int
    ) -> None:
        self.topology = topology
        self.codec = codec
        self.symbols = symbols
        self.bucket_interval_us = bucket_interval_us
        self.group = topology.consolidate_group
        self.topics = [topology.consolidate]
        self.outputs = [topology.ohlcv, topology.book_buckets]

    def new_state(self, topic: str, partition: int) -> Consolidation:
        return Consolidation(CandleMerger(self.symbols), BucketMerger(self.symbols, self.bucket_interval_us))

    def process(self, state: Consolidation, messages: Sequence[Message], emit: Emit | None) -> None:
        t, encode = self.topology, self.codec.encode
        merged_buckets: list[BookBuckets] = []
        for message in messages:
            try:
                record: Record = self.codec.decode(message.value() or b"")
            except DecodeError as exc:
                log_event(log, logging.ERROR, "undecodable internal record", stage="consolidate", error=exc)
                continue
            if isinstance(record, Candle):
                state.candles.add(record)
            elif isinstance(record, BookBuckets):
                merged_buckets.extend(state.buckets.add(record))
        candles = state.candles.publish()
        if emit is None:
            return
        for snapshot in merged_buckets:
            emit(t.book_buckets, snapshot.key().encode(), encode(snapshot, t.book_buckets))
        for candle in candles:
            emit(t.ohlcv, candle.key().encode(), encode(candle, t.ohlcv))

    def flush(self, state: Consolidation, emit: Emit) -> None:
        """Merged candles go out as their inputs arrive; nothing waits for more input."""
