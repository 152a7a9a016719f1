"""Publish capture files into Kafka exactly as the live connector did (same key, value, headers)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from marketpipe.raw import RawRecord, read_capture
from producers.publisher import RawPublisher

BATCH = 2000


async def replay_captures(paths: Sequence[str | Path], publisher: RawPublisher, speed: float = 0.0) -> int:
    """Publish every record of the files in order; ``speed`` 0 = flat out, 1.0 = real time by recv_ns."""
    if speed < 0:
        raise ValueError("speed must be 0 (as fast as possible) or positive")
    count = 0
    for path in paths:
        count += await _replay_file(Path(path), publisher, speed)
    return count


async def _replay_file(path: Path, publisher: RawPublisher, speed: float) -> int:
    records = read_capture(path)
    first_ns: int | None = None
    started = time.monotonic()
    count = 0
    while batch := await asyncio.to_thread(_take, records, BATCH):
        for record in batch:
            if speed > 0:
                if first_ns is None:
                    first_ns = record.recv_ns
                due = started + (record.recv_ns - first_ns) / 1e9 / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await publisher.publish_wait(record)
            count += 1
    return count


def _take(records: Iterator[RawRecord], n: int) -> list[RawRecord]:
    return list(itertools.islice(records, n))
