"""Run connectors for several exchanges in one process, with control listener and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from marketpipe.codec import AvroCodec
from marketpipe.config import ConnectorSettings, Settings
from marketpipe.logs import log_event
from marketpipe.topics import Topology
from producers.base import Connector
from producers.connectors import connector_class
from producers.control import ControlListener
from producers.metrics import serve_metrics
from producers.publisher import RawPublisher

log = logging.getLogger("producers")


@dataclass
class ProducerPlan:
    """What to run: exchanges, symbols, per-exchange overrides."""

    exchanges: Sequence[str]
    symbols: Sequence[str]
    strict_symbols: bool = True
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


def build_connectors(settings: Settings, plan: ProducerPlan, publisher: RawPublisher) -> dict[str, Connector]:
    producer = settings.producers
    connectors: dict[str, Connector] = {}
    for exchange in plan.exchanges:
        base = producer.for_exchange(exchange)
        update = {k: v for k, v in plan.overrides.get(exchange, {}).items() if v is not None}
        conn_settings = ConnectorSettings.model_validate({**base.model_dump(), **update})
        connectors[exchange] = connector_class(exchange)(
            plan.symbols, publisher, conn_settings, producer, strict_symbols=plan.strict_symbols
        )
    return connectors


async def run_producers(
    settings: Settings,
    connectors: dict[str, Connector],
    publisher: RawPublisher,
    *,
    topology: Topology | None = None,
    control: bool = True,
    duration_s: float | None = None,
) -> None:
    """Resolve symbols (fails fast), then stream until a signal or ``duration_s`` elapses.

    Settings the control listener cannot use (``ConfigError``) and credentials Kafka refuses
    (``KafkaAccessError``) end it before any connector starts.
    """
    listener = None
    if control:
        listener = ControlListener(
            connectors,
            settings.kafka_client_config(),
            topology or Topology.from_settings(settings),
            AvroCodec(settings.schema_registry_url),
        )
    await publisher.start()
    try:
        # served before the instrument lists are fetched: a failing fetch shows in the view at once
        serve_metrics(settings.metrics_port, list(connectors.values()), publisher)
        for connector in connectors.values():
            await connector.start()
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c.run(), name=f"connector.{name}") for name, c in connectors.items()]
            if listener is not None:
                tasks.append(group.create_task(listener.run(), name="control"))
            await _wait_for_stop(duration_s)
            for task in tasks:
                task.cancel()
    finally:
        for connector in connectors.values():
            await connector.stop()
        await publisher.close()
        log_event(
            log,
            logging.INFO,
            "producer stopped",
            published=publisher.stats.published,
            dropped=publisher.stats.dropped,
        )


async def _wait_for_stop(duration_s: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration_s):
                await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
