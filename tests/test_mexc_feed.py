"""MEXC end to end without Kafka: simulator -> connector -> capture publisher -> processor.

Faults are injected in the simulator; the processor must emit exactly one unsynced StatusEvent
and one ControlRequest(resync) per episode, and the connector's resync (a fresh REST depth
snapshot) must re-sync the book. Simulated frames only: nothing here is a real MEXC frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from feed_rig import Rig, running_rig
from kline_check import (
    check_candles,
    check_tickers,
    replay,
    start_trading,
    wait_for_candles,
    wait_for_symbols,
)
from producers_support import wait_until

from marketpipe.raw import read_capture
from streams.feed import FeedOutput
from streams.parsers.mexc import MexcProcessor

SYMBOL = "BTC-USDT"


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig("mexc", [SYMBOL], tmp_path, book_rate=20.0, trade_rate=5.0) as rig:
        yield rig


def _assert_replay_is_clean(capture: Path) -> None:
    processor, out = MexcProcessor(), FeedOutput()
    for raw in read_capture(capture):
        processor.process(raw, out)
    assert processor.counters.crossed_books == 0
    assert out.bbos and all(bbo.bid_price < bbo.ask_price for bbo in out.bbos)


async def test_gap_unsyncs_once_and_the_connector_resync_resyncs(running: Rig) -> None:
    live = running.timeline
    assert running.sim.fault("mexc", "gap", SYMBOL) == 1
    await wait_until(lambda: ("unsynced", "gap") in live.statuses(SYMBOL), 10, "gap detected")
    await asyncio.sleep(0.5)  # more pushes arrive for the unsynced book: still one episode
    assert live.statuses(SYMBOL) == [("synced", "snapshot"), ("unsynced", "gap")]
    assert [(c.action, c.reason, c.symbol) for c in live.controls()] == [("resync", "gap", SYMBOL)]
    assert live.controls()[0].conn == running.connector.shards[0].current.id  # type: ignore[union-attr]

    assert await running.connector.request_resync(SYMBOL, live.controls()[0].conn)
    await wait_until(lambda: live.statuses(SYMBOL)[-1] == ("synced", "snapshot"), 10, "re-synced")
    books = len(live.books())
    await wait_until(lambda: len(live.books()) > books + 3, 10, "updates after the resync")
    assert live.errors == [] and len(live.controls()) == 1
    assert running.publisher.processor.counters.sequence_gaps == 1
    _assert_replay_is_clean(running.publisher.path)


async def test_malformed_frame_is_dead_lettered_and_the_book_stays_synced(running: Rig) -> None:
    live = running.timeline
    running.sim.fault("mexc", "malformed")
    await wait_until(lambda: bool(live.errors), 10, "a dead letter")
    (raw, reason), *_ = live.errors
    assert raw.kind == "recv" and reason
    books = len(live.books())
    await wait_until(lambda: len(live.books()) > books + 3, 10, "updates keep flowing")
    assert live.statuses(SYMBOL) == [("synced", "snapshot")] and not live.controls()


async def test_disconnect_unsyncs_and_the_new_connection_resyncs_by_itself(running: Rig) -> None:
    live = running.timeline
    first = running.connector.shards[0].current
    assert first is not None
    running.sim.fault("mexc", "disconnect")
    await wait_until(lambda: ("unsynced", "close") in live.statuses(SYMBOL), 10, "close seen")
    await wait_until(
        lambda: live.statuses(SYMBOL)[-1] == ("synced", "snapshot"), 20, "synced on the new connection"
    )
    current = running.connector.shards[0].current
    assert current is not None and current.id != first.id
    assert live.errors == [] and running.publisher.processor.counters.sequence_gaps == 0
    _assert_replay_is_clean(running.publisher.path)


async def test_tickers_and_exchange_candles_equal_what_the_trades_add_up_to(tmp_path: Path) -> None:
    """Trades start only once every channel is subscribed, so the simulated exchange counted no
    trade the connector missed: each kline and miniTicker must match the deals received before it."""
    symbols = [SYMBOL, "ETH-USDT"]
    async with running_rig("mexc", symbols, tmp_path, trade_rate=0.0) as rig:
        await start_trading(rig.sim, "mexc", 4 * len(symbols), 20.0)
        await wait_for_candles(tmp_path, "mexc", 30)
    found = replay(tmp_path / "mexc.jsonl", "mexc")
    assert found.errors == []
    assert {c.symbol for c in found.candles} == {t.symbol for t in found.tickers} == set(symbols)
    assert all(c.quote_volume for c in found.candles) and all(t.quote_volume_24h for t in found.tickers)
    assert len(found.trades) >= check_candles(found) > 20
    assert check_tickers(found) == len(found.tickers)
    (subscribe,) = [frame for frame in rig.sent() if b"SUBSCRIPTION" in frame]
    assert b"@BTCUSDT@Min1" in subscribe and b"spot@public.miniTicker.v3.api.pb@ETHUSDT@24H" in subscribe


async def test_eight_symbols_take_two_connections_within_the_30_subscription_limit(tmp_path: Path) -> None:
    """Four subscriptions a symbol: seven symbols fill a connection (28 of 30; the simulator
    refuses more, like MEXC), the eighth opens a second one."""
    symbols = [
        "BTC-USDT",
        "ETH-USDT",
        "SOL-USDT",
        "XRP-USDT",
        "DOGE-USDT",
        "LTC-USDT",
        "ADA-USDT",
        "DOT-USDT",
    ]
    async with running_rig(
        "mexc", symbols, tmp_path, listings={"mexc": tuple(symbols)}, trade_rate=5.0
    ) as rig:
        found = await wait_for_symbols(tmp_path, "mexc", symbols)
        assert sorted(len(shard.symbols) for shard in rig.connector.shards) == [1, 7]
    assert found.errors == []
