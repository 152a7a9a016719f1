"""The normalise stage: raw.<exchange> -> md.trades, md.book, md.bbo, md.book-buckets, md.ticker,
md.exchange-candles, md.instruments, md.funding, md.open-interest, md.mark-price,
md.liquidations, md.status, md.control, md.dlq (and bucket snapshots to the
consolidation topic).

Its state is one ``FeedProcessor`` per raw partition: a partition holds whole connections
(every record of a shard of symbols shares a key), so a processor has everything it needs
(instrument maps, connection and book states) and moves with its partition as one
checkpoint (streams/runtime.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from confluent_kafka import Message

from marketpipe.codec import AvroCodec
from marketpipe.logs import log_event
from marketpipe.raw import RawRecord
from marketpipe.records import DeadLetter
from marketpipe.topics import Topology
from streams.buckets import Bucketer
from streams.consolidate import SymbolMap
from streams.feed import ClockWindow, FeedOutput, FeedProcessor
from streams.parsers import processor_for
from streams.runtime import Emit

log = logging.getLogger(__name__)

PUBLISH_EVERY = 128
"""frames of a batch processed before their outputs are encoded, emitted and dropped: a batch's
records kept to its end (up to ``streams.batch_size`` frames) fall out of the CPU caches and
age through the collector's generations before they are encoded"""
MAX_DEAD_LETTER_PAYLOAD = 15 * 1024 * 1024
"""md.dlq takes 16 MiB records: a larger frame is dead-lettered cut to this, and the reason says so"""


class NormaliseStage:
    name = "normalise"

    def __init__(
        self,
        topology: Topology,
        codec: AvroCodec,
        exchanges: Sequence[str],
        bucketer: Bucketer | None,
        symbols: SymbolMap,
        clock: ClockWindow,
    ) -> None:
        self.topology = topology
        self.codec = codec
        self.bucketer = bucketer
        self.symbols = symbols
        self.clock = clock
        self.group = topology.streams_group
        self.topics = [topology.raw(exchange) for exchange in exchanges]
        self.outputs = [*topology.md_topics(exclude=(topology.ohlcv,)), topology.consolidate]
        self._exchange_of = {topology.raw(exchange): exchange for exchange in exchanges}
        self.dead_letters = 0
        self._out = FeedOutput()

    def new_state(self, topic: str, partition: int) -> FeedProcessor:
        return processor_for(self._exchange_of[topic], self.clock)

    def process(self, processor: FeedProcessor, messages: Sequence[Message], emit: Emit | None) -> None:
        # not from the checkpoint: the configuration may have changed
        processor.bucketer = self.bucketer
        processor.set_clock(self.clock)
        for first in range(0, len(messages), PUBLISH_EVERY):
            self._process_chunk(processor, messages[first : first + PUBLISH_EVERY], emit)

    def _process_chunk(
        self, processor: FeedProcessor, messages: Sequence[Message], emit: Emit | None
    ) -> None:
        out = self._out
        exchange = processor.exchange
        for message in messages:
            try:
                raw = RawRecord.from_kafka(message.value(), message.headers())  # type: ignore[arg-type]
                if raw.exchange != exchange:
                    raise ValueError(f"exchange header {raw.exchange!r} in {message.topic()}")
            except ValueError as exc:
                if emit is not None:
                    self._dead_letter(emit, message, None, f"raw record contract: {exc}", message.value())
                continue
            processor.process(raw, out)
            if out.errors:
                if emit is not None:
                    for failed, reason in out.errors:
                        self._dead_letter(emit, message, failed, reason, failed.payload)
                out.errors.clear()
        if emit is not None:
            self._publish(out, emit)
        out.clear()

    def flush(self, processor: FeedProcessor, emit: Emit) -> None:
        """Nothing waits for more input here: every output is published as its frame arrives."""

    def _publish(self, out: FeedOutput, emit: Emit) -> None:
        t, encode, topic_of = self.topology, self.codec.encode, self.topology.md_topic
        for records in out.records():
            if records:
                topic = topic_of(type(records[0]))
                encode_record = self.codec.encoder(type(records[0]), topic)
                for record in records:
                    emit(topic, record.key().encode(), encode_record(record))
        consolidate, symbols = t.consolidate, self.symbols
        for snapshot in out.buckets:
            value = encode(snapshot, t.book_buckets)
            emit(t.book_buckets, snapshot.key().encode(), value)
            if symbols.consolidates(snapshot.symbol):
                emit(consolidate, symbols(snapshot.symbol).encode(), value)

    def _dead_letter(
        self, emit: Emit, message: Message, raw: RawRecord | None, reason: str, payload: bytes | None
    ) -> None:
        self.dead_letters += 1
        payload = payload or b""
        if len(payload) > MAX_DEAD_LETTER_PAYLOAD:
            reason = f"{reason} (payload of {len(payload)} bytes cut to {MAX_DEAD_LETTER_PAYLOAD})"
            payload = payload[:MAX_DEAD_LETTER_PAYLOAD]
        letter = DeadLetter(
            stage="stream",
            source_topic=message.topic() or "",
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            exchange=raw.exchange if raw else None,
            conn=raw.conn if raw else None,
            seq=raw.seq if raw else None,
            reason=reason,
            payload=payload,
            ts=raw.recv_ns // 1000 if raw else 0,
        )
        log_event(
            log,
            logging.WARNING,
            "dead-lettered",
            topic=letter.source_topic,
            partition=letter.partition,
            offset=letter.offset,
            reason=reason,
        )
        dlq = self.topology.dlq
        emit(dlq, letter.key().encode(), self.codec.encode(letter, dlq))
