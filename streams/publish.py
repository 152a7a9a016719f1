"""Output producer of the streams app: a batch's records queued without awaiting, delivered before its ack.

Faust's own ``send_soon`` goes through a buffer drained one message and one event-loop
round trip at a time (and throttles at 100 pending), which capped a worker at a few
thousand output records per second. Here every output of a batch is handed to
librdkafka (``produce`` is a non-blocking append to its queue) and the agent awaits
``flush()`` before returning from the batch; Faust acks a ``take_events`` batch only
after that, so input offsets are never committed ahead of their outputs.

Keys are partitioned with murmur2, like the Java clients and Faust, so a key lands on
the same partition whichever client wrote it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from marketpipe.config import Settings

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class DeliveryFailed(RuntimeError):
    """Kafka did not accept some outputs; the worker must stop so the batch is re-read."""


class OutputProducer:
    def __init__(self, settings: Settings) -> None:
        config: dict[str, Any] = {
            **settings.kafka_client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": settings.kafka.compression,
            "linger.ms": settings.kafka.linger_ms,
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1024 * 1024,
            "partitioner": "murmur2_random",
        }
        self._producer = Producer(config)
        self._failures: list[str] = []
        self.sent = 0

    def emit(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._on_delivery)
                break
            except BufferError:
                # librdkafka's queue is full: let it send (rare with per-batch flushes)
                self._producer.poll(0.1)
        self.sent += 1

    async def flush_or_die(self, timeout_s: float = 60.0) -> None:
        """Wait until Kafka acknowledged the batch; exit the worker at once if it did not.

        Exiting (rather than raising) matters: an exception would close Faust's
        ``take_events`` generator, whose cleanup acks the batch, and a later commit
        would then skip records whose outputs were lost. After an exit the supervisor
        restarts the worker, which re-reads from the last committed offsets.
        """
        try:
            await self.flush(timeout_s)
        except DeliveryFailed as exc:
            log.critical("stopping the worker without committing: %s", exc)
            logging.shutdown()
            os._exit(75)

    async def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until Kafka acknowledged everything emitted so far."""
        remaining = await asyncio.to_thread(self._producer.flush, timeout_s)
        if remaining:
            raise DeliveryFailed(f"{remaining} output records not delivered within {timeout_s:.0f}s")
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryFailed(f"{len(failures)} output records failed, first: {failures[0]}")

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error.str()}")
