"""KuCoin end to end without Kafka: simulator -> KucoinConnector -> capture publisher ->
KucoinProcessor (fed live, record by record), with injected faults; plus the simulator's
handshake rules (token check, welcome, ping timeout)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from feed_rig import LivePublisher, Rig, running_rig
from kline_check import check_candles, check_tickers, replay, start_trading, wait_for_candles
from producers_support import wait_until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import simulator
from marketpipe.raw import read_capture
from marketpipe.records import StatusEvent
from streams.book import OrderBook
from streams.feed import FeedOutput
from streams.parsers.kucoin import KucoinProcessor

SYMBOLS = ["BTC-USDT", "ETH-USDT"]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig("kucoin", SYMBOLS, tmp_path, seed=9, book_rate=40.0, trade_rate=8.0) as running:
        yield running
    _check_replay(running.publisher)


def _check_replay(publisher: LivePublisher) -> None:
    """Replaying the capture gives the same output, and the book rebuilt from the published
    changes is never crossed."""
    processor = KucoinProcessor()
    out = FeedOutput()
    for raw in read_capture(publisher.path):
        processor.process(raw, out)
    timeline = publisher.timeline
    assert out.books == timeline.books()
    assert out.status == [e for e in timeline.events if isinstance(e, StatusEvent)]
    books: dict[str, OrderBook] = {}
    for change in out.books:
        book = books.setdefault(change.symbol, OrderBook())
        if change.snapshot:
            book.bids.load((level.price, level.size) for level in change.bids)
            book.asks.load((level.price, level.size) for level in change.asks)
        else:
            book.bids.apply(change.bids)
            book.asks.apply(change.asks)
        assert not book.is_crossed(), change


async def test_books_sync_with_trades_and_no_errors(rig: Rig) -> None:
    await rig.wait_books("BTC-USDT", 20)
    seen = rig.timeline
    assert seen.errors == [] and seen.controls() == [] and seen.bbos_crossed == 0
    counters = rig.publisher.processor.counters
    assert counters.sequence_gaps == 0 and counters.books_synced == set(SYMBOLS)
    await wait_until(lambda: rig.publisher.processor.counters.trades > 0, 20, "trades")
    updates = [b for b in seen.books("BTC-USDT") if not b.snapshot]
    assert all(b.first_update_id == a.last_update_id + 1 for a, b in itertools.pairwise(updates))


async def test_gap_gives_one_unsync_and_one_resync_then_the_snapshot_resyncs(rig: Rig) -> None:
    await rig.wait_books("BTC-USDT", 5)
    assert rig.sim.fault("kucoin", "gap", "BTC-USDT") == 1
    await rig.wait_status("BTC-USDT", 2, "unsynced")
    await asyncio.sleep(0.5)  # more updates arrive while unsynced: still one episode
    assert rig.timeline.statuses("BTC-USDT") == [("synced", "snapshot"), ("unsynced", "gap")]
    (request,) = rig.timeline.controls()
    assert (request.symbol, request.action, request.reason) == ("BTC-USDT", "resync", "gap")
    published_while_unsynced = len(rig.timeline.books("BTC-USDT"))
    await asyncio.sleep(0.2)
    assert len(rig.timeline.books("BTC-USDT")) == published_while_unsynced
    assert await rig.connector.request_resync("BTC-USDT", request.conn)
    await rig.wait_status("BTC-USDT", 3, "re-synced")
    assert rig.timeline.statuses("BTC-USDT")[-1] == ("synced", "snapshot")
    await rig.wait_books("BTC-USDT", 10)
    assert len(rig.timeline.controls()) == 1 and rig.timeline.statuses("ETH-USDT") == [("synced", "snapshot")]
    assert rig.publisher.processor.counters.sequence_gaps == 1 and rig.timeline.bbos_crossed == 0


async def test_disconnect_unsyncs_and_the_new_connection_resyncs(rig: Rig) -> None:
    first = rig.connector.shards[0].current
    assert first is not None
    rig.sim.fault("kucoin", "disconnect")
    for symbol in SYMBOLS:
        await rig.wait_status(symbol, 3, f"{symbol} unsynced and re-synced")
        assert rig.timeline.statuses(symbol) == [
            ("synced", "snapshot"),
            ("unsynced", "close"),
            ("synced", "snapshot"),
        ]
    current = rig.connector.shards[0].current
    assert current is not None and current.id != first.id
    assert {c.reason for c in rig.timeline.controls()} == {"close"} and len(rig.timeline.controls()) == 2


async def test_malformed_frame_is_a_dead_letter(rig: Rig) -> None:
    rig.sim.fault("kucoin", "malformed")
    await wait_until(lambda: bool(rig.timeline.errors), 20, "a dead letter")
    assert "invalid JSON" in rig.timeline.errors[0][1]


async def test_open_record_redacts_the_token(rig: Rig) -> None:
    opens = [r for r in read_capture(rig.publisher.path) if r.kind == "open"]
    assert opens and all("token=REDACTED" in (r.url or "") for r in opens)
    assert all("/kucoin/ws?" in (r.url or "") for r in opens)


# -- the simulator's handshake rules -----------------------------------------------------------


async def _bullet(rest_base: str) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{rest_base}/api/v1/bullet-public") as response,
    ):
        body: dict[str, object] = orjson.loads(await response.read())
    return body


async def test_simulator_checks_the_token_and_drops_clients_that_stop_pinging() -> None:
    sim = await simulator.start_simulator(seed=1, exchanges=("kucoin",))
    try:
        dialect = sim.venues["kucoin"].dialects[0]
        dialect.ping_interval_ms, dialect.ping_timeout_ms = 300, 200  # type: ignore[attr-defined]
        _, rest_base = sim.urls()["kucoin"]
        body = await _bullet(rest_base)
        assert body["code"] == "200000"
        data = body["data"]
        assert isinstance(data, dict)
        (server,) = data["instanceServers"]
        assert server["endpoint"] == f"ws://127.0.0.1:{sim.port}/kucoin/ws" and server["pingInterval"] == 300
        async with connect(f"{server['endpoint']}?token=wrong&connectId=c1") as ws:
            error = orjson.loads(await ws.recv())
            assert (error["type"], error["code"]) == ("error", 401)
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5):
                    await ws.recv()
        async with connect(f"{server['endpoint']}?token={data['token']}&connectId=c2") as ws:
            assert orjson.loads(await ws.recv()) == {"id": "c2", "type": "welcome"}
            await ws.send('{"id":"7","type":"ping"}')
            pong = orjson.loads(await ws.recv())
            assert (pong["id"], pong["type"]) == ("7", "pong")
            await ws.send('{"id":8,"type":"subscribe","topic":"/market/level2:NOPE-USDT","response":true}')
            assert orjson.loads(await ws.recv())["code"] == 404
            with pytest.raises(ConnectionClosed):  # silent for longer than 0.3 + 0.2 s
                while True:
                    async with asyncio.timeout(5):
                        await ws.recv()
    finally:
        await sim.stop()


async def test_tickers_and_exchange_candles_equal_what_the_trades_add_up_to(tmp_path: Path) -> None:
    """Trades start only once every topic is subscribed, so the simulated exchange counted no trade
    the connector missed: each candle and ticker must match the trades received before it. The
    two ticker topics join: every ticker after the first snapshot has the book and the 24 h stats."""
    async with running_rig("kucoin", SYMBOLS, tmp_path, trade_rate=0.0) as rig:
        await start_trading(rig.sim, "kucoin", 5 * len(SYMBOLS), 20.0)
        await wait_for_candles(tmp_path, "kucoin", 30)
    found = replay(tmp_path / "kucoin.jsonl", "kucoin")
    assert found.errors == []
    assert {c.symbol for c in found.candles} == {t.symbol for t in found.tickers} == set(SYMBOLS)
    assert len(found.trades) >= check_candles(found) > 20
    assert check_tickers(found) == len(found.tickers)
    joined = [t for t in found.tickers if t.open_24h is not None and t.bid_price is not None]
    assert len(joined) > len(found.tickers) / 2
    assert all(t.quote_volume_24h for t in joined)
    sent = b"".join(rig.sent())
    assert sent.count(b"/market/candles:") == len(SYMBOLS) and b"/market/snapshot:" in sent
