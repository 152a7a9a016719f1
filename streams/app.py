"""The Faust application: raw.<exchange> -> md.trades, md.book, md.bbo, md.status, md.control, md.dlq.

One agent consumes every raw topic. Events are taken in batches (``take_events``) and
handed to the exchange's ``FeedProcessor`` in partition order, so one connection's
frames (which share a key, hence a partition) are processed in the order received.
Outputs are Avro-encoded and handed to the batched ``OutputProducer`` (streams/publish.py),
which is flushed before the batch is acked, so a crash replays frames rather than losing
outputs.

Book state is deliberately not kept in a Faust table: after a restart or rebalance,
books start unsynced and recover from the next snapshot (the processors request one).
That keeps every output a pure function of the raw log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import EventT

from marketpipe.codec import AvroCodec
from marketpipe.config import Settings
from marketpipe.raw import RawRecord
from marketpipe.records import DeadLetter
from marketpipe.topics import Topology
from streams.aggregations import install_aggregations
from streams.buckets import Bucketer
from streams.feed import FeedOutput, FeedProcessor
from streams.parsers import processor_for
from streams.publish import OutputProducer

log = logging.getLogger(__name__)

BATCH_SIZE = 2000
BATCH_WITHIN_S = 0.05


def faust_broker_url(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap_servers.split(","))


def _headers(event: EventT) -> Sequence[tuple[str, bytes | None]]:
    headers: Any = event.message.headers or ()
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


@dataclass
class Normaliser:
    """Raw events in, encoded output messages out; holds one processor per exchange."""

    topology: Topology
    codec: AvroCodec
    processors: dict[str, FeedProcessor] = field(default_factory=dict)
    dead_letters: int = 0
    bucketer: Bucketer | None = None

    def reset(self) -> None:
        """Forget all book state (after a rebalance): books resync from the next snapshot."""
        self.processors.clear()

    def processor(self, exchange: str) -> FeedProcessor:
        found = self.processors.get(exchange)
        if found is None:
            found = self.processors[exchange] = processor_for(exchange)
            found.bucketer = self.bucketer
        return found

    def process(self, events: Iterable[EventT], emit: Callable[[str, bytes, bytes], None]) -> None:
        out = FeedOutput()
        for event in events:
            message = event.message
            try:
                raw = RawRecord.from_kafka(message.value, _headers(event))
                processor = self.processor(raw.exchange)
            except (ValueError, KeyError) as exc:
                self._dead_letter(
                    emit,
                    message.topic,
                    message.partition,
                    message.offset,
                    None,
                    f"raw record contract: {exc}",
                    message.value or b"",
                )
                continue
            processor.process(raw, out)
            for failed, reason in out.errors:
                self._dead_letter(
                    emit, message.topic, message.partition, message.offset, failed, reason, failed.payload
                )
            out.errors.clear()
        self._publish(out, emit)

    def _publish(self, out: FeedOutput, emit: Callable[[str, bytes, bytes], None]) -> None:
        t = self.topology
        for topic, records in (
            (t.trades, out.trades),
            (t.book, out.books),
            (t.bbo, out.bbos),
            (t.book_buckets, out.buckets),
            (t.status, out.status),
            (t.control, out.control),
        ):
            for record in records:
                emit(topic, record.key().encode(), self.codec.encode(record, topic))

    def _dead_letter(
        self,
        emit: Callable[[str, bytes, bytes], None],
        topic: str,
        partition: int,
        offset: int,
        raw: RawRecord | None,
        reason: str,
        payload: bytes,
    ) -> None:
        self.dead_letters += 1
        letter = DeadLetter(
            stage="stream",
            source_topic=topic,
            partition=partition,
            offset=offset,
            exchange=raw.exchange if raw else None,
            conn=raw.conn if raw else None,
            seq=raw.seq if raw else None,
            reason=reason,
            payload=payload,
            ts=raw.recv_ns // 1000 if raw else 0,
        )
        log.warning("dead-lettered %s:%s@%s: %s", topic, partition, offset, reason)
        emit(self.topology.dlq, letter.key().encode(), self.codec.encode(letter, self.topology.dlq))


def create_app(settings: Settings, app_id: str | None = None) -> faust.App:
    topology = Topology.from_settings(settings)
    codec = AvroCodec(settings.schema_registry_url)
    app = faust.App(
        app_id or f"{settings.kafka.topic_prefix}marketpipe-streams",
        broker=faust_broker_url(settings.bootstrap_servers),
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        # Faust declares only its own internal topics (table changelogs); ours come
        # from `marketpipe topics apply` and already exist.
        topic_allow_declare=True,
        topic_disable_leader=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_compression_type=None
        if settings.kafka.compression == "none"
        else settings.kafka.compression,
        producer_linger=settings.kafka.linger_ms / 1000,
        producer_max_request_size=16 * 1024 * 1024,
        consumer_max_fetch_size=16 * 1024 * 1024,
        stream_buffer_maxsize=BATCH_SIZE * 4,
        # Faust's 60 s default stalls a crashed worker's partitions for a minute of market data
        broker_session_timeout=settings.streams.session_timeout_s,
    )
    raw_topics = app.topic(
        *[topology.raw(exchange) for exchange in settings.exchanges],
        key_serializer="raw",
        value_serializer="raw",
    )
    normaliser = Normaliser(topology, codec)
    app.marketpipe_normaliser = normaliser  # type: ignore[attr-defined]
    output = OutputProducer(settings)
    app.marketpipe_output = output  # type: ignore[attr-defined]

    @app.agent(raw_topics, name="normalise")
    async def normalise(stream: Any) -> None:  # faust.Stream; take_events is untyped
        async for events in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN_S):
            normaliser.process(events, output.emit)
            await output.flush_or_die()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        normaliser.reset()

    install_aggregations(app, settings, topology, codec, normaliser, output)
    return app


def run_worker(settings: Settings, loglevel: str = "warn") -> None:
    """Run one Faust worker in the foreground (several workers share the partitions)."""
    from streams.drain import install_flush_on_hangup
    from streams.metrics import serve_stream_metrics

    app = create_app(settings)
    install_flush_on_hangup(app, serve_stream_metrics(app, settings.metrics_port))
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
