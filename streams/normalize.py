"""Offline normalisation: capture files in, JSON Lines of trades / book changes / BBOs out.

Runs exactly the processors the stream agents run, so a capture normalised here gives the
same records the pipeline would publish. The report (``--report``) has, per exchange, the
processor's counters: frames, trades, ``duplicates_dropped`` (trades delivered again: subscribe
snapshots, overlapping connections), ``dead_letters`` by category (``streams.feed.
DEAD_LETTER_CATEGORIES``; their sum is ``parse_errors``), ``instruments_skipped`` (metadata
entries without a usable name), checksums, gaps and the books synced.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import msgspec

from marketpipe.raw import RawRecord, read_capture, to_capture_line
from marketpipe.records import BBO, BookChange, Level, Trade
from streams.feed import ClockWindow, FeedOutput, FeedProcessor
from streams.parsers import processor_for

_encoder = msgspec.json.Encoder()


class TradeLine(msgspec.Struct, tag="trade", tag_field="type"):
    exchange: str
    symbol: str
    exchange_symbol: str
    trade_id: str
    price: float
    size: float
    side: str
    ts: int
    recv_ts: int


class BookLine(msgspec.Struct, tag="book", tag_field="type"):
    exchange: str
    symbol: str
    snapshot: bool
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]
    ts: int
    recv_ts: int


class BboLine(msgspec.Struct, tag="bbo", tag_field="type"):
    exchange: str
    symbol: str
    bid_price: float
    bid_size: float
    ask_price: float
    ask_size: float
    ts: int
    recv_ts: int


def _pairs(levels: list[Level]) -> list[tuple[float, float]]:
    return [(level.price, level.size) for level in levels]


def trade_line(trade: Trade) -> TradeLine:
    return TradeLine(
        trade.exchange,
        trade.symbol,
        trade.exchange_symbol,
        trade.trade_id,
        trade.price,
        trade.size,
        trade.side,
        trade.ts,
        trade.recv_ts,
    )


def book_line(change: BookChange) -> BookLine:
    return BookLine(
        change.exchange,
        change.symbol,
        change.snapshot,
        _pairs(change.bids),
        _pairs(change.asks),
        change.ts,
        change.recv_ts,
    )


def bbo_line(bbo: BBO) -> BboLine:
    return BboLine(
        bbo.exchange,
        bbo.symbol,
        bbo.bid_price,
        bbo.bid_size,
        bbo.ask_price,
        bbo.ask_size,
        bbo.ts,
        bbo.recv_ts,
    )


class CaptureNormalizer:
    """Offline normalisation of captured raw records (``marketpipe normalize``): one processor per
    exchange, the results written as JSON Lines (the stream app's counterpart is
    ``streams.app.NormaliseStage``)."""

    def __init__(
        self, sink: IO[bytes], errors: IO[bytes] | None = None, clock: ClockWindow | None = None
    ) -> None:
        self.sink = sink
        self.errors = errors
        self.clock = clock
        self.processors: dict[str, FeedProcessor] = {}
        self._out = FeedOutput()

    def feed(self, records: Iterable[RawRecord]) -> None:
        out = self._out
        for raw in records:
            processor = self.processors.get(raw.exchange)
            if processor is None:
                processor = self.processors[raw.exchange] = processor_for(raw.exchange, self.clock)
            processor.process(raw, out)
            self._drain(out)

    def _drain(self, out: FeedOutput) -> None:
        write = self.sink.write
        # order within one frame: book changes, then the BBO they produced, then trades
        for change in out.books:
            write(_encoder.encode(book_line(change)) + b"\n")
        for bbo in out.bbos:
            write(_encoder.encode(bbo_line(bbo)) + b"\n")
        for trade in out.trades:
            write(_encoder.encode(trade_line(trade)) + b"\n")
        if self.errors is not None:
            for raw, reason in out.errors:
                line = msgspec.json.decode(to_capture_line(raw))
                line["reason"] = reason
                self.errors.write(_encoder.encode(line) + b"\n")
        out.clear()

    def report(self) -> dict[str, Any]:
        return {"exchanges": {name: proc.counters.report() for name, proc in sorted(self.processors.items())}}


def normalize_captures(
    paths: Iterable[str | Path],
    sink: IO[bytes],
    errors: IO[bytes] | None = None,
    clock: ClockWindow | None = None,
) -> dict[str, Any]:
    """Normalise capture files in order (state carries across files); returns the report."""
    normalizer = CaptureNormalizer(sink, errors, clock)
    for path in paths:
        normalizer.feed(read_capture(path))
    return normalizer.report()
