"""Where raw records go: Kafka (``raw.<exchange>``) or a capture file.

``publish`` never blocks the event loop. The Kafka publisher's only buffer is
librdkafka's local queue, bounded by message count and size. When it is full (Kafka
down or too slow), or a record cannot be delivered, the record's connection is
marked *lossy*: its later records are dropped too, every drop is counted, and one
gap marker (a ``close`` record, see docs/producers.md) is published as the
connection's last record as soon as the queue has room. The connector then ends
that connection and opens a new one (fresh snapshots) once the queue is writable.

Records are keyed by their shard key (``RawRecord.kafka_key``), so a gap marker carries its
connection's shard key too. Kafka reports a failed delivery with the key but without headers:
the publisher remembers which connections each shard key carried (from their ``open``
records) and marks the shard's live connections lossy (both, during a handover: each is then
ended and replaced, never one left silently lossy).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from marketpipe.config import ProducerSettings, Settings
from marketpipe.kafka_logs import librdkafka_logger
from marketpipe.kafka_security import check_access
from marketpipe.logs import log_event
from marketpipe.raw import CaptureWriter, RawRecord
from marketpipe.topics import Topology

log = logging.getLogger(__name__)

GAP_CLOSE_CODE = 4900  # private-use websocket close code range: "producer dropped records"
_MAX_REMEMBERED_GAPS = 4096
_CONNS_PER_SHARD = 8
BUFFER_FULL_RETRY_S = 0.02  # publish_wait: librdkafka's queue is full, try again this soon


class RawPublisher(Protocol):
    """Sink for raw records. ``publish`` is non-blocking and may drop (returns False)."""

    def publish(self, record: RawRecord) -> bool: ...

    async def publish_wait(self, record: RawRecord) -> None:
        """Publish with backpressure instead of dropping (replay of files)."""
        ...

    def is_lossy(self, conn: str) -> bool:
        """True once records of this connection were dropped; the connection must end."""
        ...

    def forget(self, conn: str) -> None:
        """The connection ended; drop per-connection bookkeeping."""
        ...

    def writable(self) -> bool: ...

    def queue_depth(self) -> int: ...

    @property
    def stats(self) -> PublisherStats: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class PublisherStats:
    published: int = 0
    dropped: int = 0
    delivery_errors: int = 0
    gap_markers: int = 0
    errors: int = 0
    unsent: int = 0
    """records still queued when ``close`` stopped waiting for Kafka"""


@dataclass
class Gap:
    """Records of one connection that never reached Kafka."""

    exchange: str
    conn: str
    first_seq: int | None  # None: unknown (Kafka reports failed deliveries without headers)
    last_seq: int
    first_recv_ns: int
    reason: str
    dropped: int = 0
    marker_sent: bool = False
    key: str | None = None
    """the connection's shard key (None: keyed by the connection id)"""

    def marker(self) -> RawRecord:
        data = {
            "code": GAP_CLOSE_CODE,
            "reason": f"gap: producer dropped {self.dropped} record(s) ({self.reason})",
            "gap": {
                "dropped": self.dropped,
                "first_seq": self.first_seq,
                "last_seq": self.last_seq,
                "first_recv_ns": self.first_recv_ns,
                "reason": self.reason,
            },
        }
        shard = self.key if self.key != self.conn else None
        return RawRecord(
            self.exchange,
            self.conn,
            self.last_seq + 1,
            "close",
            time.time_ns(),
            orjson.dumps(data),
            None,
            shard,
        )


@dataclass
class _GapBook:
    """Per-connection gap state shared by every publisher that can drop."""

    gaps: OrderedDict[str, Gap] = field(default_factory=OrderedDict)

    def open(
        self,
        exchange: str,
        conn: str,
        seq: int | None,
        recv_ns: int,
        reason: str,
        last_seq: int,
        key: str | None = None,
    ) -> Gap:
        gap = self.gaps.get(conn)
        if gap is None:
            gap = Gap(exchange, conn, seq, max(last_seq, seq or 0), recv_ns, reason, key=key)
            self.gaps[conn] = gap
            log_event(
                log,
                logging.ERROR,
                "dropping records of a connection",
                exchange=exchange,
                conn=conn,
                seq=seq,
                reason=reason,
            )
        gap.dropped += 1
        if seq is not None:
            gap.last_seq = max(gap.last_seq, seq)
        return gap

    def pending(self) -> list[Gap]:
        return [gap for gap in self.gaps.values() if not gap.marker_sent]

    def prune(self) -> None:
        while len(self.gaps) > _MAX_REMEMBERED_GAPS:
            oldest = next(iter(self.gaps))
            if not self.gaps[oldest].marker_sent:
                break
            del self.gaps[oldest]


class KafkaRawPublisher:
    """confluent-kafka producer: idempotent, acks=all, bounded local queue."""

    def __init__(
        self,
        client_config: dict[str, str],
        topology: Topology,
        *,
        compression: str = "zstd",
        linger_ms: int = 20,
        producer: ProducerSettings | None = None,
        poll_interval_s: float = 0.1,
    ) -> None:
        bounds = producer or ProducerSettings()
        config: dict[str, Any] = {
            **client_config,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": compression,
            "linger.ms": linger_ms,
            "queue.buffering.max.messages": bounds.buffer_max_messages,
            "queue.buffering.max.kbytes": bounds.buffer_max_kbytes,
            "message.timeout.ms": bounds.message_timeout_ms,
            "message.max.bytes": bounds.max_message_bytes,
            # Only failures come back: successful deliveries need no Python work.
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            "logger": librdkafka_logger(),
        }
        self._producer = Producer(config)
        self._client_config = dict(client_config)
        self._topology = topology
        self._topics: dict[str, str] = {}
        self._max_messages = bounds.buffer_max_messages
        self._poll_interval_s = poll_interval_s
        self._gaps = _GapBook()
        self._last_seq: dict[str, int] = {}
        self._ended: OrderedDict[str, int] = OrderedDict()
        self._shard_conns: OrderedDict[str, list[str]] = OrderedDict()
        """shard key -> the connections that published under it (newest last)"""
        self._poller: asyncio.Task[None] | None = None
        self._last_error_log = 0.0
        self.stats = PublisherStats()
        self.fatal: KafkaError | None = None
        self.close_timeout_s = 30.0

    @classmethod
    def from_settings(cls, settings: Settings, topology: Topology | None = None) -> KafkaRawPublisher:
        return cls(
            settings.kafka_client_config(),
            topology or Topology.from_settings(settings),
            compression=settings.kafka.compression,
            linger_ms=settings.kafka.linger_ms,
            producer=settings.producers,
        )

    # -- hot path ------------------------------------------------------------------

    def publish(self, record: RawRecord) -> bool:
        conn = record.conn
        if self._gaps.gaps and conn in self._gaps.gaps:
            self._drop(record, "connection already lossy")
            return False
        if record.kind == "open":
            self._remember_shard(record)
        try:
            self._produce(record)
        except BufferError:
            self._drop(record, "local queue full (kafka unreachable or too slow)")
            return False
        except KafkaException as exc:
            self._drop(record, f"produce failed: {exc.args[0]}")
            return False
        self._last_seq[conn] = record.seq
        self.stats.published += 1
        return True

    def _produce(self, record: RawRecord) -> None:
        topic = self._topics.get(record.exchange)
        if topic is None:
            topic = self._topics[record.exchange] = self._topology.raw(record.exchange)
        self._producer.produce(
            topic,
            value=record.payload,
            key=record.kafka_key,
            headers=record.kafka_headers(),  # type: ignore[arg-type]
            timestamp=record.recv_ns // 1_000_000,
        )

    def _remember_shard(self, record: RawRecord) -> None:
        if record.shard is None:
            return
        conns = self._shard_conns.get(record.shard)
        if conns is None:
            conns = self._shard_conns[record.shard] = []
            while len(self._shard_conns) > _MAX_REMEMBERED_GAPS:
                self._shard_conns.popitem(last=False)
        conns.append(record.conn)
        del conns[:-_CONNS_PER_SHARD]

    def _conns_of(self, key: str) -> list[str]:
        """The connections a failed delivery with this key may belong to: the shard's connections
        still publishing, else the newest that ended; a key that names no shard is a connection id."""
        conns = self._shard_conns.get(key)
        if conns is None:
            return [key]
        live = [conn for conn in conns if conn in self._last_seq]
        return live or conns[-1:]

    def _drop(self, record: RawRecord, reason: str) -> None:
        self.stats.dropped += 1
        last_seq = self._last_seq.get(record.conn, record.seq)
        self._gaps.open(
            record.exchange, record.conn, record.seq, record.recv_ns, reason, last_seq, record.kafka_key
        )

    # -- backpressure, gaps ----------------------------------------------------------

    async def publish_wait(self, record: RawRecord) -> None:
        if record.kind == "open":
            self._remember_shard(record)
        while True:
            try:
                self._produce(record)
            except BufferError:
                await asyncio.sleep(BUFFER_FULL_RETRY_S)
                continue
            except KafkaException as exc:  # the record itself is refused (too large, ...): count it
                self.stats.dropped += 1
                log_event(
                    log, logging.ERROR, "record not published", conn=record.conn, seq=record.seq, reason=exc
                )
                return
            self._last_seq[record.conn] = record.seq
            self.stats.published += 1
            return

    def is_lossy(self, conn: str) -> bool:
        return conn in self._gaps.gaps

    def forget(self, conn: str) -> None:
        """The connection ended; keep its last seq a while for late delivery failures."""
        last = self._last_seq.pop(conn, None)
        if last is not None:
            self._ended[conn] = last
            while len(self._ended) > _MAX_REMEMBERED_GAPS:
                self._ended.popitem(last=False)

    def queue_depth(self) -> int:
        return len(self._producer)

    def writable(self) -> bool:
        return not self._gaps.pending() and len(self._producer) < self._max_messages // 2

    def pending_gaps(self) -> list[Gap]:
        return self._gaps.pending()

    def _emit_gap_markers(self) -> None:
        for gap in self._gaps.pending():
            try:
                self._produce(gap.marker())
            except BufferError:
                return
            gap.marker_sent = True
            self.stats.gap_markers += 1
            log_event(
                log,
                logging.WARNING,
                "gap marker published",
                exchange=gap.exchange,
                conn=gap.conn,
                dropped=gap.dropped,
            )
        self._gaps.prune()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        # Failed delivery reports carry key and value but no headers: the key is the shard key
        # (or, for records without a shard, the conn id).
        self.stats.delivery_errors += 1
        self.stats.dropped += 1
        key = (msg.key() or b"").decode()
        for conn in self._conns_of(key):
            last_seq = self._last_seq.get(conn, self._ended.get(conn, 0))
            gap = self._gaps.open(
                conn.split(".", 1)[0],
                conn,
                None,
                time.time_ns(),
                f"delivery failed: {err.str()}",
                last_seq,
                key,
            )
            if gap.marker_sent:
                log_event(
                    log, logging.ERROR, "delivery failure after the gap marker", conn=conn, error=err.str()
                )

    def _on_error(self, err: KafkaError) -> None:
        self.stats.errors += 1
        if err.fatal():
            self.fatal = err
            log_event(log, logging.CRITICAL, "fatal kafka producer error", error=err)
            return
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log_event(
                log, logging.WARNING, "kafka producer error", error=err, queue_depth=len(self._producer)
            )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Fails with ``KafkaAccessError`` if Kafka refuses the credentials; an unreachable Kafka is
        waited for (records buffer, then drop with a gap marker)."""
        if self._poller is None:
            await asyncio.to_thread(check_access, self._client_config, 15.0, unreachable_ok=True)
            self._poller = asyncio.create_task(self._poll_loop(), name="kafka-poll")

    async def _poll_loop(self) -> None:
        """Serves librdkafka's callbacks (only failures: successful deliveries need no poll) and
        emits gap markers. Every 100 ms: at 20 ms this loop alone cost an idle connector 0.8 % of
        a core, 8 us per frame at 1,000 frames/s."""
        while True:
            self._producer.poll(0)
            if self._gaps.gaps:
                self._emit_gap_markers()
            await asyncio.sleep(self._poll_interval_s)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.wait([self._poller])  # unlike awaiting it, lets a cancel of close() through
            self._poller = None
        self._producer.poll(0)
        self._emit_gap_markers()
        remaining = await asyncio.to_thread(self._producer.flush, self.close_timeout_s)
        self._emit_gap_markers()
        self.stats.unsent = remaining
        if remaining:
            log_event(log, logging.ERROR, "records still unsent at shutdown", unsent=remaining)


class CaptureRawPublisher:
    """Writes every record to a capture file (.jsonl, .jsonl.gz, .jsonl.zst); never drops."""

    def __init__(self, path: str | Path) -> None:
        self._writer = CaptureWriter(path, sync_on_flush=False)  # fsync off the event loop
        self.path = self._writer.path
        self.stats = PublisherStats()
        self._flusher: asyncio.Task[None] | None = None
        self._syncing: asyncio.Future[None] | None = None

    def publish(self, record: RawRecord) -> bool:
        self._writer.write(record)
        self.stats.published += 1
        return True

    async def publish_wait(self, record: RawRecord) -> None:
        self.publish(record)

    def is_lossy(self, conn: str) -> bool:
        return False

    def forget(self, conn: str) -> None:
        pass

    def writable(self) -> bool:
        return True

    def queue_depth(self) -> int:
        return 0

    async def start(self) -> None:
        """Flushes the file while records are slow to come (the writer flushes as it writes)."""
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="capture-flush")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._writer.flush_interval_s)
            self._writer.flush()
            self._syncing = asyncio.ensure_future(asyncio.to_thread(self._writer.sync))
            await asyncio.shield(self._syncing)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._syncing is not None:
            await self._syncing  # the file must stay open until a running fsync is done
        self._writer.close()
