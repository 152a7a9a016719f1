"""Every frame the simulator emits parses with the parsers that parse the real samples.

The simulator is the test bed for connectors and streams; if its frames drifted from the
real formats, every downstream test would prove nothing. This drives the real connectors
against the simulator (into a capture file), then runs the same processors the stream worker
uses over the captured records: no dead letters, checksums verified, every book synced.
The parsers themselves are tested on the real frames in ../shared (tests/test_parsers_*).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from producers_support import capture_from_simulator

import simulator
from marketpipe.raw import read_capture
from streams.feed import FeedOutput
from streams.parsers import processor_for

CASES = {
    # exchange (variant): (connector exchange, settings overrides, symbols, checksummed)
    "binance": ("binance", {}, ["BTC-USDT", "ETH-USDT"], False),
    "coinbase": ("coinbase", {}, ["BTC-USD", "ETH-USD"], False),
    "kraken-v2": ("kraken", {}, ["BTC-USD", "ETH-USD"], True),
    "kraken-v1": ("kraken", {"protocol": "v1"}, ["BTC-USD", "ETH-USD"], True),
    "bybit-spot": ("bybit", {}, ["BTC-USDT", "ETH-USDT"], False),
    "bybit-derivatives": ("bybit", {}, ["BTC-USDT", "BTC-USDT-PERP", "BTC-USD-PERP-INV"], False),
    "okx": ("okx", {}, ["BTC-USDT", "ETH-USDT"], True),
    "bitfinex": ("bitfinex", {}, ["BTC-USD", "ETH-USD"], True),
    "kucoin": ("kucoin", {}, ["BTC-USDT", "ETH-USDT"], False),
    "gateio": ("gateio", {}, ["BTC-USDT", "ETH-USDT"], False),
    "htx": ("htx", {}, ["BTC-USDT", "ETH-USDT"], False),
    "mexc": ("mexc", {}, ["BTC-USDT", "ETH-USDT"], False),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_simulated_frames_parse_and_books_sync(case: str, tmp_path: Path) -> None:
    exchange, overrides, symbols, checksummed = CASES[case]
    sim = await simulator.start_simulator(seed=11, exchanges=(exchange,), book_rate=40.0, trade_rate=10.0)
    capture = tmp_path / f"{case}.jsonl"
    await capture_from_simulator(sim, exchange, symbols, capture, 300, **overrides)

    processor = processor_for(exchange)
    out = FeedOutput()
    for raw in read_capture(capture):
        processor.process(raw, out)
    counters = processor.counters
    assert out.errors == [], out.errors[:3]
    assert counters.parse_errors == 0
    assert counters.sequence_gaps == 0 and counters.checksum_failures == 0
    assert counters.frames >= 300
    assert counters.trades > 0 and out.trades
    assert set(counters.books_synced) == set(symbols)
    assert out.books and out.bbos
    if checksummed:
        assert counters.checksums_verified > 0
    for trade in out.trades:
        assert (
            trade.symbol in symbols and trade.side in ("buy", "sell") and trade.price > 0 and trade.size > 0
        )
    for bbo in out.bbos:
        assert bbo.bid_price < bbo.ask_price
