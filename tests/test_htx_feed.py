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
from pathlib import Path

import pytest
from feed_rig import Rig, check_replay, published_between, running_rig
from kline_check import check_candles, check_tickers, replay, start_trading, wait_for_candles
from producers_support import sim_settings, wait_until

import simulator
from marketpipe.config import ProducerSettings
from marketpipe.raw import read_capture
from marketpipe.records import BookChange
from producers.connectors.htx import HtxConnector
from producers.publisher import CaptureRawPublisher

SYMBOLS = ["BTC-USDT", "ETH-USDT"]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(
        "htx", SYMBOLS, tmp_path, book_rate=40.0, trade_rate=5.0, heartbeat_interval_s=0.2
    ) as running:
        yield running
    check_replay(running.publisher, "htx")


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
    assert not published_between(timeline.events, "BTC-USDT", unsynced_at, resynced_at)
    assert timeline.statuses("ETH-USDT") == [("synced", "snapshot")]  # the other book is untouched
    assert rig.publisher.processor.counters.sequence_gaps == 1
    requests = [frame for frame in rig.sent() if b'"req":"market.btcusdt.mbp.150"' in frame]
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
    pongs = [frame for frame in rig.sent() if frame.startswith(b'{"pong":')]
    assert len(pongs) >= 4
    assert rig.connector.shards[0].current is conn and rig.connector.shards[0].stats.connections == 1


async def test_faults_htx_does_not_have_are_refused(rig: Rig) -> None:
    for fault in ("checksum", "snapshot"):
        with pytest.raises(simulator.FaultError):
            rig.sim.fault("htx", fault)


class SilentConnector(HtxConnector):
    def answer_frame(self, data: bytes) -> str | None:
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
    assert connector.answer_frame(gzip.compress(b'{"ping":1618678073643}')) == '{"pong":1618678073643}'
    assert connector.answer_frame(gzip.compress(b'{"ch":"x","ts":1}')) is None
    assert connector.answer_frame(gzip.compress(b'{"ping":"x"}')) is None
    assert connector.answer_frame(b"\x1f\x8b garbage") is None
    assert connector.answer_frame(gzip.compress(b'{"ping":1}' + b" " * 200)) is None  # too long to be a ping


async def test_tickers_and_exchange_candles_equal_what_the_trades_add_up_to(tmp_path: Path) -> None:
    """Trades start only once every topic is subscribed, so the simulated exchange counted no trade
    the connector missed: each kline (its trade ``count`` too) and ticker (24 h count included)
    must match the trades received before it."""
    async with running_rig("htx", SYMBOLS, tmp_path, trade_rate=0.0) as rig:
        await start_trading(rig.sim, "htx", 4 * len(SYMBOLS), 20.0)
        await wait_for_candles(tmp_path, "htx", 30)
    found = replay(tmp_path / "htx.jsonl", "htx")
    assert found.errors == []
    assert {c.symbol for c in found.candles} == {t.symbol for t in found.tickers} == set(SYMBOLS)
    assert all(c.trades for c in found.candles) and all(t.trades_24h and t.bid_price for t in found.tickers)
    assert check_tickers(found) == len(found.tickers)
    assert len(found.trades) >= check_candles(found) > 20
    del found.trades[len(found.trades) // 2]  # one trade missed: the check must see it
    with pytest.raises(AssertionError):
        check_candles(found)
    sent = b"".join(rig.sent())
    assert sent.count(b".kline.1min") == sent.count(b".ticker") == len(SYMBOLS)
