"""MEXC end to end without Kafka: simulator -> connector -> capture publisher -> processor.

Faults are injected in the simulator; the processor must emit exactly one unsynced StatusEvent
and one ControlRequest(resync) per episode, and the connector's resync (a fresh REST depth
snapshot) must re-sync the book. Simulated frames only: nothing here is a real MEXC frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from producers_support import sim_settings, wait_until

import simulator
from marketpipe.config import ProducerSettings
from marketpipe.raw import RawRecord, read_capture
from producers.connectors.mexc import MexcConnector
from producers.publisher import CaptureRawPublisher
from streams.feed import FeedOutput
from streams.parsers.mexc import MexcProcessor

SYMBOL = "BTC-USDT"
FAST = ProducerSettings(backoff_initial_s=0.05, backoff_max_s=0.2)


class LivePublisher(CaptureRawPublisher):
    """Writes the capture and runs the processor on every record as it is published."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.processor = MexcProcessor()
        self.out = FeedOutput()

    def publish(self, record: RawRecord) -> bool:
        self.processor.process(record, self.out)
        return super().publish(record)

    def states(self) -> list[tuple[str, str]]:
        return [(event.state, event.reason) for event in self.out.status if event.symbol == SYMBOL]


@dataclass
class Running:
    sim: simulator.Simulator
    connector: MexcConnector
    publisher: LivePublisher
    capture: Path


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    sim = await simulator.start_simulator(seed=5, exchanges=("mexc",), book_rate=20.0, trade_rate=5.0)
    capture = tmp_path / "mexc.jsonl"
    publisher = LivePublisher(capture)
    connector = MexcConnector([SYMBOL], publisher, sim_settings(sim.urls(), "mexc"), FAST)
    await connector.start()
    task = asyncio.create_task(connector.run())
    try:
        await wait_until(lambda: SYMBOL in publisher.processor.counters.books_synced, 20, "book synced")
        yield Running(sim, connector, publisher, capture)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await connector.stop()
        await publisher.close()
        await sim.stop()


def _assert_replay_is_clean(capture: Path) -> None:
    processor, out = MexcProcessor(), FeedOutput()
    for raw in read_capture(capture):
        processor.process(raw, out)
    assert processor.counters.crossed_books == 0
    assert out.bbos and all(bbo.bid_price < bbo.ask_price for bbo in out.bbos)


async def test_gap_unsyncs_once_and_the_connector_resync_resyncs(running: Running) -> None:
    live = running.publisher
    assert running.sim.fault("mexc", "gap", SYMBOL) == 1
    await wait_until(lambda: ("unsynced", "gap") in live.states(), 10, "gap detected")
    await asyncio.sleep(0.5)  # more pushes arrive for the unsynced book: still one episode
    assert live.states() == [("synced", "snapshot"), ("unsynced", "gap")]
    assert [(c.action, c.reason, c.symbol) for c in live.out.control] == [("resync", "gap", SYMBOL)]
    assert live.out.control[0].conn == running.connector.shards[0].current.id  # type: ignore[union-attr]

    assert await running.connector.request_resync(SYMBOL, live.out.control[0].conn)
    await wait_until(lambda: live.states()[-1] == ("synced", "snapshot"), 10, "re-synced")
    books = len(live.out.books)
    await wait_until(lambda: len(live.out.books) > books + 3, 10, "updates after the resync")
    assert live.out.errors == [] and len(live.out.control) == 1
    assert live.processor.counters.sequence_gaps == 1
    _assert_replay_is_clean(running.capture)


async def test_malformed_frame_is_dead_lettered_and_the_book_stays_synced(running: Running) -> None:
    live = running.publisher
    running.sim.fault("mexc", "malformed")
    await wait_until(lambda: bool(live.out.errors), 10, "a dead letter")
    (raw, reason), *_ = live.out.errors
    assert raw.kind == "recv" and reason
    books = len(live.out.books)
    await wait_until(lambda: len(live.out.books) > books + 3, 10, "updates keep flowing")
    assert live.states() == [("synced", "snapshot")] and not live.out.control


async def test_disconnect_unsyncs_and_the_new_connection_resyncs_by_itself(running: Running) -> None:
    live = running.publisher
    first = running.connector.shards[0].current
    assert first is not None
    running.sim.fault("mexc", "disconnect")
    await wait_until(lambda: ("unsynced", "close") in live.states(), 10, "close seen")
    await wait_until(lambda: live.states()[-1] == ("synced", "snapshot"), 20, "synced on the new connection")
    current = running.connector.shards[0].current
    assert current is not None and current.id != first.id
    assert live.out.errors == [] and live.processor.counters.sequence_gaps == 0
    _assert_replay_is_clean(running.capture)
