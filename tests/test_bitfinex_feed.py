"""Bitfinex end to end without Kafka: simulator -> connector -> capture -> processor, with faults.

A dropped book frame shows as a hole in the connection's SEQ_ALL numbering (every book of the
connection goes unsynced); a corrupted ``cs`` frame unsyncs one book. Each episode must give
exactly one unsynced StatusEvent and one ControlRequest per book, and the connector's resync
(unsubscribe by chanId + subscribe) must bring a snapshot that re-syncs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from feed_rig import running_rig
from kline_check import (
    check_candles,
    check_tickers,
    replay,
    start_trading,
    wait_for_candles,
    wait_for_symbols,
)
from producers_support import connector_on_simulator, wait_until

import simulator
from marketpipe.raw import read_capture
from producers.connectors.bitfinex import BitfinexConnector
from streams.feed import FeedOutput
from streams.parsers import processor_for

SYMBOLS = ["BTC-USD", "ETH-USD"]


async def _frames_grow(connector: BitfinexConnector, by: int) -> None:
    start = connector.shards[0].stats.frames
    await wait_until(lambda: connector.shards[0].stats.frames >= start + by, 20, f"{by} more frames")


async def _until(check: Callable[[], bool], what: str) -> None:
    await wait_until(check, 20, what)


async def test_gap_and_checksum_faults_unsync_once_and_resync_restores(tmp_path: Path) -> None:
    sim = await simulator.start_simulator(seed=5, exchanges=("bitfinex",), book_rate=30.0, trade_rate=5.0)
    capture = tmp_path / "bitfinex.jsonl"
    async with connector_on_simulator(sim, "bitfinex", SYMBOLS, capture) as connector:
        dialect = sim.venues["bitfinex"].dialects[0]
        await _until(lambda: any(s.extra["flags"] for s in dialect.sessions), "conf applied")
        await _frames_grow(connector, 100)
        first_chans = dict(connector.book_channels)
        assert set(first_chans) == {"tBTCUSD", "tETHUSD"}
        assert sim.fault("bitfinex", "gap", "BTC-USD") == 1
        await _frames_grow(connector, 60)
        for symbol in SYMBOLS:  # a connection-wide gap: both books asked for a resync
            assert await connector.request_resync(symbol)
        await _until(lambda: connector.book_channels["tETHUSD"] != first_chans["tETHUSD"], "new chanIds")
        await _frames_grow(connector, 60)
        assert sim.fault("bitfinex", "checksum", "ETH-USD") == 1
        await _frames_grow(connector, 60)
        assert await connector.request_resync("ETH-USD")
        await _frames_grow(connector, 100)

    records = list(read_capture(capture))
    sent = [r.payload for r in records if r.kind == "sent"]
    assert sum(b'"unsubscribe"' in frame for frame in sent) == 3
    assert b'"flags":196608' in sent[0], "conf before the subscribe frames"

    processor = processor_for("bitfinex")
    out = FeedOutput()
    for raw in records:
        processor.process(raw, out)
    assert out.errors == []
    counters = processor.counters
    assert counters.sequence_gaps == 1 and counters.checksum_failures == 1
    assert counters.crossed_books == 0 and counters.checksums_verified > 20
    episodes = [(s.symbol, s.state, s.reason) for s in out.status if s.reason != "close"]
    assert [e for e in episodes if e[0] == "BTC-USD"] == [
        ("BTC-USD", "synced", "snapshot"),
        ("BTC-USD", "unsynced", "gap"),
        ("BTC-USD", "synced", "snapshot"),
    ]
    assert [e for e in episodes if e[0] == "ETH-USD"] == [
        ("ETH-USD", "synced", "snapshot"),
        ("ETH-USD", "unsynced", "gap"),
        ("ETH-USD", "synced", "snapshot"),
        ("ETH-USD", "unsynced", "checksum"),
        ("ETH-USD", "synced", "snapshot"),
    ]
    assert [(c.symbol, c.reason) for c in out.control if c.reason != "close"] == [
        ("BTC-USD", "gap"),
        ("ETH-USD", "gap"),
        ("ETH-USD", "checksum"),
    ]
    assert all(b.bid_price < b.ask_price for b in out.bbos)
    # every te has its tu (skipped); the subscribe snapshots' trades are published once each
    assert counters.trades > 0 and processor.skipped_trades > 0
    assert len({(t.symbol, t.trade_id) for t in out.trades}) == len(out.trades) == counters.trades


async def test_tickers_and_exchange_candles_equal_what_the_trades_add_up_to(tmp_path: Path) -> None:
    """Trades start only once every channel is subscribed, so the simulated exchange counted no
    trade the connector missed: each candle and ticker must match the trades received before it."""
    async with running_rig("bitfinex", SYMBOLS, tmp_path, trade_rate=0.0) as rig:
        await start_trading(rig.sim, "bitfinex", 4 * len(SYMBOLS), 20.0)
        await wait_for_candles(tmp_path, "bitfinex", 30)
    found = replay(tmp_path / "bitfinex.jsonl", "bitfinex")
    assert found.errors == []
    assert {c.symbol for c in found.candles} == set(SYMBOLS)
    assert {t.symbol for t in found.tickers} == set(SYMBOLS)
    assert check_tickers(found) == len(found.tickers)
    assert len(found.trades) >= check_candles(found) > 20
    del found.trades[len(found.trades) // 2]  # one trade missed: the check must see it
    with pytest.raises(AssertionError):
        check_candles(found)
    sent = rig.sent()
    assert sum(b'"channel":"ticker"' in frame for frame in sent) == len(SYMBOLS)
    assert sum(b'"key":"trade:1m:t' in frame for frame in sent) == len(SYMBOLS)


async def test_eight_symbols_take_two_connections_within_the_30_channel_limit(tmp_path: Path) -> None:
    """Four channels a symbol: seven symbols fill a connection (28 of 30 channels; the simulator
    refuses the 31st like Bitfinex), the eighth opens a second one."""
    symbols = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "DOGE-USD", "LTC-USD", "ADA-USD", "DOT-USD"]
    async with running_rig(
        "bitfinex", symbols, tmp_path, listings={"bitfinex": tuple(symbols)}, trade_rate=5.0
    ) as rig:
        found = await wait_for_symbols(tmp_path, "bitfinex", symbols)
        assert sorted(len(shard.symbols) for shard in rig.connector.shards) == [1, 7]
    assert found.errors == []
