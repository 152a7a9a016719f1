"""HTX end to end without Kafka: simulator -> HtxConnector -> capture publisher -> HtxProcessor
(fed live, record by record), with injected faults.

Each episode must give exactly one unsynced StatusEvent and one ControlRequest(resync); the
connector's resync (a new MBP ``req`` snapshot request on the websocket) must re-sync the book;
nothing is published for the book in between; the book rebuilt from the published changes is
never crossed. Server pings must be answered, or the simulator drops the connection.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from producers_support import sim_settings, wait_until

import simulator
from marketpipe.config import ProducerSettings
from marketpipe.raw import RawRecord, read_capture
from marketpipe.records import BookChange, ControlRequest, StatusEvent
from producers.connectors.htx import HtxConnector
from producers.publisher import CaptureRawPublisher
from streams.book import OrderBook
from streams.feed import FeedOutput
from streams.parsers.htx import HtxProcessor

SYMBOLS = ["BTC-USDT", "ETH-USDT"]
Event = StatusEvent | ControlRequest | BookChange


@dataclass
class Timeline:
    """Everything the processor emitted, in the order of the records that caused it."""

    events: list[Event] = field(default_factory=list)
    errors: list[tuple[RawRecord, str]] = field(default_factory=list)
    bbos_crossed: int = 0

    def add(self, out: FeedOutput) -> None:
        self.events.extend(out.status)
        self.events.extend(out.control)
        self.events.extend(out.books)
        self.errors.extend(out.errors)
        self.bbos_crossed += sum(bbo.bid_price >= bbo.ask_price for bbo in out.bbos)

    def of(self, symbol: str) -> list[Event]:
        return [e for e in self.events if e.symbol == symbol]

    def statuses(self, symbol: str) -> list[tuple[str, str]]:
        return [(e.state, e.reason) for e in self.of(symbol) if isinstance(e, StatusEvent)]

    def controls(self, symbol: str) -> list[ControlRequest]:
        return [e for e in self.of(symbol) if isinstance(e, ControlRequest)]


class LivePublisher(CaptureRawPublisher):
    """Writes the capture and runs the processor on every record as it is published."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.processor = HtxProcessor()
        self.timeline = Timeline()

    def publish(self, record: RawRecord) -> bool:
        ok = super().publish(record)
        out = FeedOutput()
        self.processor.process(record, out)
        self.timeline.add(out)
        return ok


@dataclass
class Rig:
    sim: simulator.Simulator
    connector: HtxConnector
    publisher: LivePublisher

    @property
    def timeline(self) -> Timeline:
        return self.publisher.timeline

    async def wait_status(self, symbol: str, count: int, what: str) -> None:
        await wait_until(lambda: len(self.timeline.statuses(symbol)) >= count, 20, what)

    async def wait_books(self, symbol: str, more: int) -> None:
        start = sum(isinstance(e, BookChange) for e in self.timeline.of(symbol))
        await wait_until(
            lambda: sum(isinstance(e, BookChange) for e in self.timeline.of(symbol)) >= start + more,
            20,
            f"{more} more book changes for {symbol}",
        )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    sim = await simulator.start_simulator(
        seed=5, exchanges=("htx",), book_rate=40.0, trade_rate=5.0, heartbeat_interval_s=0.2
    )
    publisher = LivePublisher(tmp_path / "htx.jsonl")
    settings = sim_settings(sim.urls(), "htx")
    connector = HtxConnector(SYMBOLS, publisher, settings, ProducerSettings(backoff_initial_s=0.05))
    await publisher.start()
    await connector.start()
    task = asyncio.create_task(connector.run())
    running = Rig(sim, connector, publisher)
    try:
        for symbol in SYMBOLS:
            await running.wait_status(symbol, 1, f"{symbol} synced")
        yield running
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await connector.stop()
        await publisher.close()
        await sim.stop()
    _check_replay(publisher)


def _check_replay(publisher: LivePublisher) -> None:
    """Replaying the capture gives the same output; the book rebuilt from the published changes
    is never crossed and shows every BBO the processor published."""
    replayed = Timeline()
    processor = HtxProcessor()
    books: dict[tuple[str, str], OrderBook] = {}
    compared = 0
    for raw in read_capture(publisher.path):
        out = FeedOutput()
        processor.process(raw, out)
        replayed.add(out)
        for change in out.books:
            book = books.setdefault((change.conn, change.symbol), OrderBook())
            if change.snapshot:
                book.clear()
            book.bids.apply(change.bids)
            book.asks.apply(change.asks)
            assert not book.is_crossed(), change
        for bbo in out.bbos:
            book = books[(raw.conn, bbo.symbol)]
            assert book.bbo() == (bbo.bid_price, bbo.bid_size, bbo.ask_price, bbo.ask_size)
            compared += 1
    assert compared > 0
    assert [type(e).__name__ for e in replayed.events] == [
        type(e).__name__ for e in publisher.timeline.events
    ]
    assert replayed.bbos_crossed == 0


def _published_between(events: list[Event], symbol: str, start: int, end: int) -> list[BookChange]:
    return [e for e in events[start:end] if isinstance(e, BookChange) and e.symbol == symbol]


def _sent(rig: Rig) -> list[bytes]:
    return [r.payload for r in read_capture(rig.publisher.path) if r.kind == "sent"]


async def test_gap_gives_one_episode_and_the_connector_resync_resyncs(rig: Rig) -> None:
    await rig.wait_books("BTC-USDT", 5)
    assert rig.sim.fault("htx", "gap", "BTC-USDT") == 1
    await rig.wait_status("BTC-USDT", 2, "the gap")
    assert rig.timeline.statuses("BTC-USDT")[1] == ("unsynced", "gap")
    await asyncio.sleep(0.5)  # more updates arrive while unsynced: still one episode
    assert len(rig.timeline.controls("BTC-USDT")) == 1
    unsynced_at = len(rig.timeline.events)

    assert await rig.connector.request_resync("BTC-USDT")
    await rig.wait_status("BTC-USDT", 3, "re-synced")
    await rig.wait_books("BTC-USDT", 5)

    timeline = rig.timeline
    assert timeline.statuses("BTC-USDT") == [
        ("synced", "snapshot"),
        ("unsynced", "gap"),
        ("synced", "snapshot"),
    ]
    (control,) = timeline.controls("BTC-USDT")
    assert (control.action, control.reason, control.exchange_symbol) == ("resync", "gap", "btcusdt")
    resynced_at = next(
        i
        for i, e in enumerate(timeline.events)
        if i > unsynced_at and isinstance(e, BookChange) and e.symbol == "BTC-USDT"
    )
    first_change = timeline.events[resynced_at]
    assert (
        isinstance(first_change, BookChange) and first_change.snapshot
    )  # the first change after the gap is the fresh snapshot
    assert not _published_between(timeline.events, "BTC-USDT", unsynced_at, resynced_at)
    assert timeline.statuses("ETH-USDT") == [("synced", "snapshot")]  # the other book is untouched
    assert rig.publisher.processor.counters.sequence_gaps == 1
    requests = [frame for frame in _sent(rig) if b'"req":"market.btcusdt.mbp.150"' in frame]
    assert len(requests) == 2, "the initial snapshot request and the resync one"
    assert not timeline.errors and timeline.bbos_crossed == 0


async def test_disconnect_unsyncs_on_close_and_the_new_connection_syncs(rig: Rig) -> None:
    first = rig.connector.shards[0].current
    assert first is not None
    assert rig.sim.fault("htx", "disconnect") == 1
    for symbol in SYMBOLS:
        await rig.wait_status(symbol, 3, f"{symbol} re-synced on the new connection")
        assert rig.timeline.statuses(symbol) == [
            ("synced", "snapshot"),
            ("unsynced", "close"),
            ("synced", "snapshot"),
        ]
        assert len(rig.timeline.controls(symbol)) == 1
    current = rig.connector.shards[0].current
    assert current is not None and current.id != first.id
    assert not rig.timeline.errors


async def test_malformed_frame_is_a_dead_letter_and_the_book_stays_synced(rig: Rig) -> None:
    assert rig.sim.fault("htx", "malformed") == 1
    await wait_until(lambda: bool(rig.timeline.errors), 10, "the dead letter")
    ((raw, reason),) = rig.timeline.errors
    assert "invalid JSON" in reason and raw.kind == "recv" and raw.payload[:2] == b"\x1f\x8b"
    await rig.wait_books("BTC-USDT", 3)
    assert rig.timeline.statuses("BTC-USDT") == [("synced", "snapshot")]


async def test_server_pings_are_answered_and_the_connection_stays(rig: Rig) -> None:
    conn = rig.connector.shards[0].current
    await wait_until(lambda: rig.publisher.processor.counters.heartbeats >= 5, 10, "five pings")
    pongs = [frame for frame in _sent(rig) if frame.startswith(b'{"pong":')]
    assert len(pongs) >= 4
    assert rig.connector.shards[0].current is conn and rig.connector.shards[0].stats.connections == 1


async def test_faults_htx_does_not_have_are_refused(rig: Rig) -> None:
    for fault in ("checksum", "snapshot"):
        with pytest.raises(simulator.FaultError):
            rig.sim.fault("htx", fault)


class SilentConnector(HtxConnector):
    def on_frame(self, data: bytes) -> str | None:
        return None


async def test_unanswered_pings_get_the_connection_closed(tmp_path: Path) -> None:
    sim = await simulator.start_simulator(seed=5, exchanges=("htx",), heartbeat_interval_s=0.1)
    publisher = CaptureRawPublisher(tmp_path / "silent.jsonl")
    connector = SilentConnector(["BTC-USDT"], publisher, sim_settings(sim.urls(), "htx"), ProducerSettings())
    await publisher.start()
    await connector.start()
    task = asyncio.create_task(connector.run())
    try:
        await wait_until(lambda: connector.shards[0].stats.connections >= 2, 10, "a reconnect")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await connector.stop()
        await publisher.close()
        await sim.stop()
    closes = [r for r in read_capture(tmp_path / "silent.jsonl") if r.kind == "close"]
    assert b"no pong" in closes[0].payload


def test_on_frame_answers_gzip_pings_only() -> None:
    connector = HtxConnector(["BTC-USDT"], CaptureRawPublisher(Path("/dev/null")))
    assert connector.on_frame(gzip.compress(b'{"ping":1618678073643}')) == '{"pong":1618678073643}'
    assert connector.on_frame(gzip.compress(b'{"ch":"x","ts":1}')) is None
    assert connector.on_frame(gzip.compress(b'{"ping":"x"}')) is None
    assert connector.on_frame(b"\x1f\x8b garbage") is None
    assert connector.on_frame(gzip.compress(b'{"ping":1}' + b" " * 200)) is None  # too long to be a ping
