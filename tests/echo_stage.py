"""A minimal stream stage for the transactional loop's own tests (copies raw.binance to
md.trades), and how those tests run a loop."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Message

from marketpipe.topics import Topology
from streams.runtime import Emit, TransactionalLoop


class EchoStage:
    """Copies each input record to md.trades, taking ``per_record_s`` a record; the state counts
    records. Each instance has a group of its own unless given one."""

    name = "echo"

    def __init__(self, topology: Topology, group: str | None = None, per_record_s: float = 0.0) -> None:
        self.group = group or f"{topology.prefix}echo-{uuid.uuid4().hex[:6]}"
        self.topics = [topology.raw("binance")]
        self.output = topology.trades
        self.outputs = [topology.trades]
        self.per_record_s = per_record_s

    def new_state(self, topic: str, partition: int) -> list[int]:
        return [0]

    def process(self, state: list[int], messages: Sequence[Message], emit: Emit | None) -> None:
        for message in messages:
            if self.per_record_s:
                time.sleep(self.per_record_s)
            state[0] += 1
            if emit is not None:
                emit(self.output, message.key() or b"", message.value() or b"")

    def flush(self, state: list[int], emit: Emit) -> None:
        pass


def start_loop(loop: TransactionalLoop[Any]) -> threading.Thread:
    """``loop.run`` on a thread of its own (the caller sets ``loop.stopping`` and joins it)."""
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    return runner


def wait_assigned(loop: TransactionalLoop[Any], timeout_s: float = 30) -> bool:
    """Whether the loop was assigned partitions within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not loop.partitions and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(loop.partitions)
