"""Produce raw records, consume outputs, and run marketpipe workers as subprocesses in tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from confluent_kafka import Consumer, Message, Producer

from marketpipe.raw import RawRecord
from marketpipe.records import BookChange
from marketpipe.topics import Topology


def produce_raw(bootstrap: str, topology: Topology, records: Iterable[RawRecord]) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    count = 0
    for raw in records:
        producer.produce(
            topology.raw(raw.exchange), key=raw.conn.encode(), value=raw.payload, headers=raw.kafka_headers()
        )
        count += 1
    assert producer.flush(30) == 0
    return count


def consume(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float = 60.0,
    producer_of: subprocess.Popen[bytes] | None = None,
) -> list[Message]:
    """Every message of `topic` from the beginning; waits until at least `expected` arrived.

    With `producer_of`, gives up as soon as that process (the one writing `topic`) has died.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    idle_rounds = 0
    try:
        while time.monotonic() < deadline:
            if producer_of is not None and producer_of.poll() is not None:
                raise AssertionError(f"the process writing {topic} exited with {producer_of.returncode}")
            batch = consumer.consume(num_messages=1000, timeout=0.5)
            for message in batch:
                assert message.error() is None, message.error()
                messages.append(message)
            idle_rounds = 0 if batch else idle_rounds + 1
            # once the expected count is reached, drain briefly to catch any surplus
            if len(messages) >= expected and idle_rounds >= 2:
                break
    finally:
        consumer.close()
    return messages


def worker_env(bootstrap: str, topology: Topology, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPIPE_")}
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MARKETPIPE_KAFKA__TOPIC_PREFIX": topology.prefix,
        "MARKETPIPE_DATA_DIR": str(data_dir),
        "MARKETPIPE_EXCHANGES": ",".join(topology.exchanges),
        "MARKETPIPE_METRICS_PORT": "0",
    }
    return env | extra


@contextlib.contextmanager
def marketpipe_process(*args: str, env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `marketpipe ARGS` in its own process group; always stopped (TERM, then KILL) on exit."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "marketpipe.cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def replay_book(
    changes: Iterable[BookChange],
) -> Iterator[tuple[BookChange, dict[float, float], dict[float, float]]]:
    """Apply md.book changes as a consumer would; yields (change, bids, asks) after each one."""
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    for change in changes:
        if change.snapshot:
            bids, asks = {}, {}
        for side, levels in ((bids, change.bids), (asks, change.asks)):
            for level in levels:
                if level.size == 0:
                    side.pop(level.price, None)
                else:
                    side[level.price] = level.size
        yield change, bids, asks
