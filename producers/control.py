"""Resync requests from ``md.control`` dispatched to the connector that carries the symbol.

Every producer process reads the whole control topic without a consumer group (each
process must see every request; old requests are moot after a restart, which brings
fresh snapshots anyway), starting at the end. A record that cannot be decoded is
published to ``md.dlq`` with the reason.

The listener uses aiokafka, so ``kafka.client`` is translated (``aiokafka_options``) when it
is built: a setting aiokafka cannot honour is a ``ConfigError`` before any connector starts.
While Kafka cannot be reached the listener waits for it; refused credentials end it with
``KafkaAccessError``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from marketpipe.codec import AvroCodec, DecodeError
from marketpipe.kafka_security import KafkaAccessError, aiokafka_options, check_access
from marketpipe.logs import log_event
from marketpipe.records import ControlRequest, DeadLetter
from marketpipe.topics import Topology
from producers.base import Connector

log = logging.getLogger("producers.control")


class ControlListener:
    def __init__(
        self,
        connectors: Mapping[str, Connector],
        client_config: Mapping[str, str],
        topology: Topology,
        codec: AvroCodec,
    ) -> None:
        self.connectors = connectors
        self.client_config = dict(client_config)
        self.topology = topology
        self.codec = codec
        self.handled = 0
        self.rejected = 0
        self.ready = asyncio.Event()
        self._dlq: Producer | None = None
        self._consumer_options = aiokafka_options(self.client_config)
        self.retry_max_s = 30.0

    async def run(self) -> None:
        consumer = await self._started_consumer()
        try:
            await self._assign(consumer)
            self.ready.set()
            async for message in consumer:
                await self.handle(message.value, message.partition, message.offset)
        finally:
            await consumer.stop()
            if self._dlq is not None:
                undelivered = await asyncio.to_thread(self._dlq.flush, 10)
                if undelivered:
                    log_event(
                        log, logging.ERROR, "control dead letters not delivered", undelivered=undelivered
                    )

    async def _started_consumer(self) -> AIOKafkaConsumer:
        delay = 1.0
        while True:
            consumer = AIOKafkaConsumer(
                group_id=None,
                auto_offset_reset="latest",
                enable_auto_commit=False,
                # the normaliser writes requests in its transactions: an aborted one never happened
                isolation_level="read_committed",
                **self._consumer_options,
            )
            try:
                await consumer.start()
                return consumer
            except KafkaConnectionError as exc:
                await consumer.stop()
                # aiokafka reports refused credentials as a connection error too: tell them apart
                if await asyncio.to_thread(check_access, self.client_config, 10.0, unreachable_ok=True):
                    raise KafkaAccessError(
                        f"the control listener (aiokafka) cannot connect with kafka.client although "
                        f"librdkafka can: {exc}"
                    ) from exc
                log_event(
                    log, logging.WARNING, "control listener waits for kafka", error=str(exc), retry_s=delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        topic = self.topology.control
        partitions = await asyncio.to_thread(self._partitions, topic)
        if not partitions:
            raise RuntimeError(f"control topic {topic} does not exist (run `marketpipe topics apply`)")
        assigned = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assigned)
        for partition in assigned:
            await consumer.position(partition)  # pins "latest" now, not at the first fetch

    def _partitions(self, topic: str) -> list[int]:
        metadata = AdminClient({**self.client_config, "allow.auto.create.topics": "false"}).list_topics(
            topic, timeout=30
        )
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return []
        return list(found.partitions)

    async def handle(self, value: bytes | None, partition: int = 0, offset: int = -1) -> bool:
        try:
            request = self.codec.decode(value or b"", ControlRequest)
        except DecodeError as exc:
            self._dead_letter(value, partition, offset, f"undecodable control request: {exc}")
            return False
        connector = self.connectors.get(request.exchange)
        if connector is None:
            return False  # another producer process serves that exchange
        try:
            done = await connector.request_resync(request.exchange_symbol or request.symbol, request.conn)
        except Exception as exc:
            log_event(
                log,
                logging.ERROR,
                "resync failed",
                exchange=request.exchange,
                symbol=request.symbol,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        self.handled += int(done)
        return done

    def _dead_letter(self, value: bytes | None, partition: int, offset: int, reason: str) -> None:
        self.rejected += 1
        log_event(
            log, logging.ERROR, "control request rejected", partition=partition, offset=offset, reason=reason
        )
        if self._dlq is None:
            self._dlq = Producer({**self.client_config, "enable.idempotence": True})
        letter = DeadLetter(
            stage="producer-control",
            source_topic=self.topology.control,
            partition=partition,
            offset=offset,
            reason=reason,
            payload=value or b"",
            ts=time.time_ns() // 1000,
        )
        self._dlq.produce(self.topology.dlq, self.codec.encode(letter, self.topology.dlq), key=letter.key())
        self._dlq.poll(0)
