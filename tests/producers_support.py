"""Helpers for the producer tests: read raw topics back, simulator-backed connector settings."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_support import read_topic as read_messages

from marketpipe.config import ConnectorSettings, ProducerSettings
from marketpipe.raw import RawRecord
from producers.connectors import connector_class
from producers.publisher import CaptureRawPublisher


@dataclass(frozen=True)
class Consumed:
    partition: int
    offset: int
    key: bytes
    headers: dict[str, bytes]
    record: RawRecord


def read_topic(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list[Consumed]:
    """Everything currently in ``topic`` (all partitions, from the start), in offset order per partition."""
    found: list[Consumed] = []
    for message in read_messages(bootstrap, topic, timeout_s):
        headers = list(message.headers() or ())
        record = RawRecord.from_kafka(message.value(), headers, message.key())  # type: ignore[arg-type]
        found.append(Consumed(message.partition(), message.offset(), message.key(), dict(headers), record))  # type: ignore[arg-type]
    return found


def by_connection(consumed: list[Consumed]) -> dict[str, list[Consumed]]:
    conns: dict[str, list[Consumed]] = {}
    for item in sorted(consumed, key=lambda c: (c.partition, c.offset)):
        conns.setdefault(item.record.conn, []).append(item)
    return conns


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def sim_settings(urls: dict[str, tuple[str, str]], exchange: str, **extra: object) -> ConnectorSettings:
    ws, rest = urls[exchange]
    base: dict[str, object] = {
        "ws_url": ws,
        "rest_url": rest,
        "rest_min_interval_s": 0,
        "connect_interval_s": 0,
    }
    return ConnectorSettings.model_validate({**base, **extra})


@contextlib.asynccontextmanager
async def connector_on_simulator(
    sim: Any, exchange: str, symbols: Sequence[str], capture: Path, **overrides: Any
) -> AsyncIterator[Any]:
    """``exchange``'s connector running against the started simulator ``sim`` into the capture
    file, for the block; then connector, publisher and simulator are stopped."""
    publisher = CaptureRawPublisher(capture)
    connector = connector_class(exchange)(
        list(symbols), publisher, sim_settings(sim.urls(), exchange, **overrides), ProducerSettings()
    )
    try:
        await publisher.start()
        await connector.start()
        task = asyncio.create_task(connector.run())
        try:
            yield connector
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await connector.stop()
            await publisher.close()
    finally:
        await sim.stop()


async def capture_from_simulator(
    sim: Any, exchange: str, symbols: Sequence[str], capture: Path, frames: int, **overrides: Any
) -> None:
    """Run ``exchange``'s connector against the started simulator ``sim`` into the capture file
    until its shards received ``frames`` frames; stops connector, publisher and simulator."""
    async with connector_on_simulator(sim, exchange, symbols, capture, **overrides) as connector:
        await wait_until(
            lambda: sum(s.stats.frames for s in connector.shards) >= frames, 30, f"{frames} frames"
        )
