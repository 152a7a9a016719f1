"""One exchange end to end without Kafka: simulator -> connector -> capture publisher -> the
exchange's processor, fed live record by record. The per-exchange feed tests inject faults
through it and check what the processor emitted, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producers_support import sim_settings, wait_until

import simulator
from marketpipe.config import ProducerSettings
from marketpipe.raw import RawRecord, read_capture
from marketpipe.records import BookChange, ControlRequest, StatusEvent
from producers.base import Connector
from producers.connectors import connector_class
from producers.publisher import CaptureRawPublisher
from streams.book import OrderBook
from streams.feed import FeedOutput
from streams.parsers import processor_for

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

    def controls(self, symbol: str | None = None) -> list[ControlRequest]:
        events = self.events if symbol is None else self.of(symbol)
        return [e for e in events if isinstance(e, ControlRequest)]

    def books(self, symbol: str | None = None) -> list[BookChange]:
        events = self.events if symbol is None else self.of(symbol)
        return [e for e in events if isinstance(e, BookChange)]


class LivePublisher(CaptureRawPublisher):
    """Writes the capture and runs the exchange's processor on every record as it is published."""

    def __init__(self, path: Path, exchange: str) -> None:
        super().__init__(path)
        self.processor = processor_for(exchange)
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
    connector: Connector
    publisher: LivePublisher

    @property
    def timeline(self) -> Timeline:
        return self.publisher.timeline

    async def wait_status(self, symbol: str, count: int, what: str) -> None:
        await wait_until(lambda: len(self.timeline.statuses(symbol)) >= count, 20, what)

    async def wait_books(self, symbol: str, more: int) -> None:
        start = len(self.timeline.books(symbol))
        await wait_until(
            lambda: len(self.timeline.books(symbol)) >= start + more,
            20,
            f"{more} more book changes for {symbol}",
        )

    def sent(self) -> list[bytes]:
        return [r.payload for r in read_capture(self.publisher.path) if r.kind == "sent"]


@asynccontextmanager
async def running_rig(
    exchange: str, symbols: list[str], folder: Path, seed: int = 5, **sim: Any
) -> AsyncIterator[Rig]:
    """The exchange's connector running against the simulator until every book has synced once."""
    server = await simulator.start_simulator(seed=seed, exchanges=(exchange,), **sim)
    publisher = LivePublisher(folder / f"{exchange}.jsonl", exchange)
    settings = sim_settings(server.urls(), exchange)
    connector = connector_class(exchange)(
        symbols, publisher, settings, ProducerSettings(backoff_initial_s=0.05)
    )
    await publisher.start()
    await connector.start()
    task = asyncio.create_task(connector.run())
    rig = Rig(server, connector, publisher)
    try:
        for symbol in symbols:
            await rig.wait_status(symbol, 1, f"{symbol} synced")
        yield rig
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await connector.stop()
        await publisher.close()
        await server.stop()


def check_replay(publisher: LivePublisher, exchange: str) -> None:
    """Replaying the capture gives the same output; the book rebuilt from the published changes
    is never crossed and shows every BBO the processor published."""
    replayed = Timeline()
    processor = processor_for(exchange)
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


def published_between(events: list[Event], symbol: str, start: int, end: int) -> list[BookChange]:
    return [e for e in events[start:end] if isinstance(e, BookChange) and e.symbol == symbol]
