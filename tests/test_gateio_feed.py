"""Gate.io end to end without Kafka: simulator -> GateioConnector -> capture publisher ->
GateioProcessor (fed live, record by record), with injected faults.

Each episode must give exactly one unsynced StatusEvent and one ControlRequest(resync); the
connector's resync (a fresh REST order_book snapshot) must re-sync the book; nothing is
published for the book in between; and the book rebuilt from the published changes is never
crossed and ends where the processor's book ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from feed_rig import Rig, check_replay, published_between, running_rig
from kline_check import check_candles, check_tickers, replay, start_trading, wait_for_candles
from producers_support import wait_until
from websockets.asyncio.client import connect

import simulator
from marketpipe.raw import RawRecord
from marketpipe.records import BookChange, StatusEvent
from simulator.gateio import GateioDialect
from simulator.market import Trade as SimTrade
from streams.feed import FeedOutput
from streams.parsers.gateio import GateioProcessor

SYMBOLS = ["BTC-USDT", "ETH-USDT"]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig("gateio", SYMBOLS, tmp_path, book_rate=40.0, trade_rate=5.0) as running:
        yield running
    check_replay(running.publisher, "gateio")


async def test_gap_gives_one_episode_and_the_connector_resync_resyncs(rig: Rig) -> None:
    await rig.wait_books("BTC-USDT", 5)
    assert rig.sim.fault("gateio", "gap", "BTC-USDT") == 1
    await rig.wait_status("BTC-USDT", 2, "the gap")
    assert rig.timeline.statuses("BTC-USDT")[1] == ("unsynced", "gap")
    await asyncio.sleep(0.5)  # more updates arrive while unsynced: still one episode
    assert len(rig.timeline.controls("BTC-USDT")) == 1
    unsynced_at = next(
        i
        for i, e in enumerate(rig.timeline.events)
        if isinstance(e, StatusEvent) and e.symbol == "BTC-USDT" and e.state == "unsynced"
    )

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
    assert (control.action, control.reason, control.exchange_symbol) == ("resync", "gap", "BTC_USDT")
    resynced_at = next(
        i
        for i, e in enumerate(timeline.events)
        if i > unsynced_at and isinstance(e, BookChange) and e.symbol == "BTC-USDT"
    )
    first_after = timeline.events[resynced_at]
    assert isinstance(first_after, BookChange) and first_after.snapshot  # the fresh snapshot comes first
    assert not published_between(timeline.events, "BTC-USDT", unsynced_at, resynced_at)
    assert timeline.statuses("ETH-USDT") == [("synced", "snapshot")]  # the other book is untouched
    assert rig.publisher.processor.counters.sequence_gaps == 1
    assert not timeline.errors and timeline.bbos_crossed == 0


async def test_disconnect_unsyncs_on_close_and_the_new_connection_syncs(rig: Rig) -> None:
    first = rig.connector.shards[0].current
    assert first is not None
    assert rig.sim.fault("gateio", "disconnect") == 1
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
    assert rig.sim.fault("gateio", "malformed") == 1
    await wait_until(lambda: bool(rig.timeline.errors), 10, "the dead letter")
    ((raw, reason),) = rig.timeline.errors
    assert "invalid JSON" in reason and raw.kind == "recv"
    await rig.wait_books("BTC-USDT", 3)
    assert rig.timeline.statuses("BTC-USDT") == [("synced", "snapshot")]


async def test_faults_gateio_does_not_have_are_refused(rig: Rig) -> None:
    for fault in ("checksum", "snapshot"):
        with pytest.raises(simulator.FaultError):
            rig.sim.fault("gateio", fault)


async def test_simulator_protocol_ping_errors_and_idle_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the connector relies on: spot.pong answers, error replies the parser dead-letters
    with the reason, and a client that never pings is dropped."""
    monkeypatch.setattr(GateioDialect, "client_idle_timeout_s", 0.6)
    sim = await simulator.start_simulator(seed=1, exchanges=("gateio",))
    ws_base, _ = sim.urls()["gateio"]
    processor = GateioProcessor()
    out = FeedOutput()
    try:
        async with connect(f"{ws_base}/ws/v4/") as ws:
            await ws.send('{"time":1,"channel":"spot.ping"}')
            pong = await ws.recv(decode=False)
            await ws.send('{"time":1,"channel":"spot.trades","event":"subscribe","payload":["NOPE_USDT"]}')
            refused = await ws.recv(decode=False)
            await ws.send(
                '{"time":1,"channel":"spot.order_book_update","event":"subscribe","payload":["BTC_USDT"]}'
            )
            malformed = await ws.recv(decode=False)
            for seq, data in enumerate((pong, refused, malformed)):
                processor.process(RawRecord("gateio", "c", seq, "recv", 1, data), out)
            assert processor.counters.heartbeats == 1
            reasons = [reason for _, reason in out.errors]
            assert "spot.trades subscribe error 2" in reasons[0] and "NOPE_USDT" in reasons[0]
            assert "expected [currency_pair, interval]" in reasons[1]
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(5):
                await ws.wait_closed()  # silent from now on: dropped
            assert asyncio.get_running_loop().time() - started >= 0.3
    finally:
        await sim.stop()


async def test_tickers_and_exchange_candles_equal_what_the_trades_add_up_to(tmp_path: Path) -> None:
    """Trades start only once every channel is subscribed, so the simulated exchange counted no
    trade the connector missed: each candle and ticker must match the trades received before it
    (the candle's ``a`` is the base volume compared; its ``v`` the quote volume)."""
    async with running_rig("gateio", SYMBOLS, tmp_path, trade_rate=0.0) as rig:
        await start_trading(rig.sim, "gateio", 4 * len(SYMBOLS), 20.0)
        await wait_for_candles(tmp_path, "gateio", 30)
    found = replay(tmp_path / "gateio.jsonl", "gateio")
    assert found.errors == []
    assert {c.symbol for c in found.candles} == {t.symbol for t in found.tickers} == set(SYMBOLS)
    assert len(found.trades) >= check_candles(found) > 20
    assert check_tickers(found) == len(found.tickers)
    for candle in found.candles:
        assert candle.quote_volume is not None and candle.volume is not None
        assert candle.quote_volume == pytest.approx(candle.volume * candle.close, rel=0.01)
    sent = b"".join(rig.sent())
    assert sent.count(b'"spot.candlesticks"') == len(SYMBOLS) and sent.count(b'"spot.tickers"') == 1


async def test_simulator_sends_the_final_candle_with_w_once_its_window_has_ended() -> None:
    """Gate.io's final flag: once a window has ended (and no trade opened the next one), the
    simulator pushes that candle again with ``w: true``; the parser publishes it closed."""
    sim = await simulator.start_simulator(seed=1, exchanges=("gateio",), trade_rate=0.0)
    ws_base, _ = sim.urls()["gateio"]
    stats = sim.venues["gateio"].feeds["spot"].stats["BTC-USDT"]
    market = sim.venues["gateio"].feeds["spot"].markets["BTC-USDT"]
    minute_ns = 60_000_000_000
    window_ns = time.time_ns() // minute_ns * minute_ns - 2 * minute_ns  # a window long over
    first, last = market.asks.top(1)[0][0], market.bids.top(1)[0][0]  # ticks of 0.1, lots of 1e-6
    stats.add(SimTrade(1, first, 3, True, window_ns + 1_000_000_000))
    stats.add(SimTrade(2, last, 2, False, window_ns + 2_000_000_000))
    processor = GateioProcessor()
    out = FeedOutput()
    try:
        async with connect(f"{ws_base}/ws/v4/") as ws:
            await ws.send(
                '{"time":1,"channel":"spot.candlesticks","event":"subscribe","payload":["1m","BTC_USDT"]}'
            )
            ack, final = await ws.recv(decode=False), await ws.recv(decode=False)
    finally:
        await sim.stop()
    recv_ns = time.time_ns()
    for seq, data in enumerate((ack, final)):
        processor.process(RawRecord("gateio", "c", seq, "recv", recv_ns, data), out)
    assert out.errors == [], out.errors
    (candle,) = out.exchange_candles
    assert candle.closed and candle.open_time == window_ns // 1000
    assert (candle.open, candle.close, candle.volume) == (first / 10, last / 10, 5e-6)
