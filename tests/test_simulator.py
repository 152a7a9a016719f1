"""The exchange simulator over loopback: subscribe -> ack -> snapshot -> updates with sequence
continuity per exchange, checksums verified by independent implementations of the README rules,
frame shapes compared with the real sample frames, fault switches, REST shapes, stats."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
import zlib
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import websockets
from click.testing import CliRunner

from simulator import FaultError, Simulator, urls
from simulator.base import EXCHANGES, SocketCork
from simulator.market import MarketParams, SymbolMarket, SymbolSpec
from tests.samples import load_sample

pytestmark = pytest.mark.timeout(60)

Json = Any


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    server = await Simulator(
        seed=7, book_rate=40.0, trade_rate=20.0, heartbeat_interval_s=0.2, okx_keepalive_s=0.5
    ).start()
    yield server
    await server.stop()


def loads(text: str | bytes) -> Json:
    return json.loads(text, parse_float=Decimal)


async def connect(sim: Simulator, exchange: str, path: str) -> websockets.ClientConnection:
    return await websockets.connect(sim.urls()[exchange][0] + path, max_size=None)


async def recv(ws: websockets.ClientConnection) -> str:
    async with asyncio.timeout(5.0):
        frame = await ws.recv()
    return frame if isinstance(frame, str) else frame.decode()


async def until(ws: websockets.ClientConnection, pred: Callable[[Json], bool], limit: int = 2000) -> Json:
    for _ in range(limit):
        message = loads(await recv(ws))
        if pred(message):
            return message
    raise AssertionError("expected frame never arrived")


async def send(ws: websockets.ClientConnection, message: Json) -> None:
    await ws.send(message if isinstance(message, str) else json.dumps(message))


async def get_json(url: str, params: Any = None) -> Json:
    async with aiohttp.ClientSession() as http, http.get(url, params=params) as response:
        return loads(await response.read())


# -- independent book models (README rules) ----------------------------------------------------


class Book:
    """Price-keyed book of the wire texts; quantity zero removes the level."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, tuple[str, str]] = {}
        self.asks: dict[Decimal, tuple[str, str]] = {}

    def apply(self, side: str, price: str, qty: str) -> None:
        levels = self.bids if side == "bid" else self.asks
        if Decimal(qty) == 0:
            levels.pop(Decimal(price), None)
        else:
            levels[Decimal(price)] = (price, qty)

    def top(self, side: str, n: int) -> list[tuple[str, str]]:
        levels = self.bids if side == "bid" else self.asks
        return [levels[p] for p in sorted(levels, reverse=side == "bid")[:n]]

    def truncate(self, depth: int) -> None:
        for side, levels in (("bid", self.bids), ("ask", self.asks)):
            keep = {Decimal(p) for p, _ in self.top(side, depth)}
            for price in [p for p in levels if p not in keep]:
                del levels[price]

    def crossed(self) -> bool:
        return bool(self.bids and self.asks and max(self.bids) >= min(self.asks))


def kraken_crc(book: Book) -> int:
    text = "".join(
        part.replace(".", "").lstrip("0")
        for side in ("ask", "bid")
        for price, qty in book.top(side, 10)
        for part in (price, qty)
    )
    return zlib.crc32(text.encode())


def okx_crc(book: Book) -> int:
    bids, asks = book.top("bid", 25), book.top("ask", 25)
    parts: list[str] = []
    for i in range(max(len(bids), len(asks))):
        for levels in (bids, asks):
            if i < len(levels):
                parts.extend(levels[i])
    value = zlib.crc32(":".join(parts).encode())
    return value - 2**32 if value >= 2**31 else value


def kraken_v2_text(number: Decimal) -> str:
    return format(number, "f")


# -- market -------------------------------------------------------------------------------------


def test_market_is_deterministic_under_a_seed() -> None:
    spec = SymbolSpec.for_symbol("ETH-USD")

    def run(seed: int) -> list[Any]:
        market = SymbolMarket(spec, MarketParams(trade_rate=5.0), seed, "kraken")
        return [
            (s.bids, s.asks, [(t.price, t.qty, t.taker_buy) for t in s.trades])
            for s in (market.step({10}) for _ in range(300))
        ]

    assert run(1) == run(1)
    assert run(1) != run(2)
    market = SymbolMarket(spec, MarketParams(levels=300), 1)
    assert len(market.bids) == 300 and len(market.asks) == 300
    for _ in range(500):
        market.step()
        assert market.bids.top(1)[0][0] < market.asks.top(1)[0][0]


def test_urls_follow_the_wiring_contract() -> None:
    assert urls(8765)["kraken"] == ("ws://127.0.0.1:8765/kraken", "http://127.0.0.1:8765/kraken")
    assert set(urls(1)) == set(EXCHANGES)


# -- binance ------------------------------------------------------------------------------------


async def test_binance_depth_snapshot_bridges_to_the_diff_stream(sim: Simulator) -> None:
    rest = sim.urls()["binance"][1]
    ws = await connect(sim, "binance", "/stream")
    streams = ["btcusdt@trade", "btcusdt@aggTrade", "btcusdt@depth@100ms", "btcusdt@bookTicker"]
    await send(ws, {"method": "SUBSCRIBE", "params": streams, "id": 5})
    assert loads(await recv(ws)) == {"result": None, "id": 5}
    events: list[Json] = []
    seen: set[str] = set()
    caught_up = asyncio.Event()
    target = [1 << 62]

    async def reader() -> None:
        while True:
            frame = loads(await recv(ws))
            seen.add(frame["stream"])
            if frame["stream"] == "btcusdt@depth@100ms":
                events.append(frame["data"])
                if frame["data"]["u"] >= target[0]:
                    caught_up.set()

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.3)
    first = await get_json(f"{rest}/api/v3/depth", {"symbol": "BTCUSDT", "limit": "1000"})
    await asyncio.sleep(0.5)
    second = await get_json(f"{rest}/api/v3/depth", {"symbol": "BTCUSDT", "limit": "5000"})
    target[0] = second["lastUpdateId"]
    if events and events[-1]["u"] >= target[0]:
        caught_up.set()
    async with asyncio.timeout(5):
        await caught_up.wait()
    task.cancel()
    await ws.close()

    assert all(b["U"] == a["u"] + 1 for a, b in itertools.pairwise(events))
    assert events[0]["U"] <= first["lastUpdateId"] + 1
    live = [e for e in events if e["u"] > first["lastUpdateId"]]
    assert live[0]["U"] <= first["lastUpdateId"] + 1 <= live[0]["u"], "bridging rule"
    book = Book()
    for side, key in (("bid", "bids"), ("ask", "asks")):
        for price, qty in first[key]:
            book.apply(side, price, qty)
    for event in live:
        if event["u"] > second["lastUpdateId"]:
            break
        for side, key in (("bid", "b"), ("ask", "a")):
            for price, qty in event[key]:
                book.apply(side, price, qty)
    assert book.top("bid", 5000) == [tuple(level) for level in second["bids"]]
    assert book.top("ask", 5000) == [tuple(level) for level in second["asks"]]
    assert len(second["bids"]) >= 400, "a realistic multi-level book"
    assert {"btcusdt@trade", "btcusdt@aggTrade", "btcusdt@bookTicker"} <= seen
    assert all(len(price.split(".")[1]) == 8 for price, _ in second["bids"])


async def test_binance_pings_and_drops_a_client_that_never_pongs() -> None:
    async with Simulator(
        exchanges=("binance",), binance_ping_interval_s=0.2, binance_pong_timeout_s=0.5
    ) as sim:
        url = sim.urls()["binance"][0] + "/stream"
        async with aiohttp.ClientSession() as http, http.ws_connect(url, autoping=False) as ws:
            message = await ws.receive(timeout=3)
            assert message.type == aiohttp.WSMsgType.PING
            while message.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                message = await ws.receive(timeout=3)
            assert ws.close_code == 1008
        async with websockets.connect(url) as answering:  # pongs automatically: stays connected
            await asyncio.sleep(1.2)
            await send(answering, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
            assert loads(await recv(answering)) == {"result": [], "id": 1}


# -- coinbase -----------------------------------------------------------------------------------


async def test_coinbase_sequence_num_spans_channels_per_connection(sim: Simulator) -> None:
    ws = await connect(sim, "coinbase", "")
    for channel in ("level2", "market_trades", "heartbeats"):
        await send(ws, {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": channel})
    frames = [loads(await recv(ws)) for _ in range(150)]
    assert [f["sequence_num"] for f in frames] == list(range(150))
    books = {"BTC-USD": Book(), "ETH-USD": Book()}
    snapshotted: set[str] = set()
    for frame in frames:
        if frame["channel"] != "l2_data":
            continue
        for event in frame["events"]:
            product = event["product_id"]
            if event["type"] == "snapshot":
                snapshotted.add(product)
                books[product] = Book()
            assert product in snapshotted, "updates only after the snapshot"
            for update in event["updates"]:
                books[product].apply(
                    "bid" if update["side"] == "bid" else "ask", update["price_level"], update["new_quantity"]
                )
            assert not books[product].crossed()
    assert snapshotted == {"BTC-USD", "ETH-USD"}
    acks = [f["events"][0]["subscriptions"] for f in frames if f["channel"] == "subscriptions"]
    assert acks[-1] == {
        "heartbeats": ["heartbeats"],
        "level2": ["BTC-USD", "ETH-USD"],
        "market_trades": ["BTC-USD", "ETH-USD"],
    }
    counters = [f["events"][0]["heartbeat_counter"] for f in frames if f["channel"] == "heartbeats"]
    assert len(counters) >= 2 and counters == list(range(counters[0], counters[0] + len(counters)))
    assert any(f["channel"] == "market_trades" and f["events"][0]["type"] == "update" for f in frames)

    await send(ws, {"type": "unsubscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"})
    ack = await until(ws, lambda f: f["channel"] == "subscriptions")
    assert "level2" not in ack["events"][0]["subscriptions"]
    after = [loads(await recv(ws)) for _ in range(10)]
    assert not any(f["channel"] == "l2_data" for f in after)
    await ws.close()


# -- kraken -------------------------------------------------------------------------------------


async def test_kraken_v2_books_truncate_and_checksums_verify(sim: Simulator) -> None:
    ws = await connect(sim, "kraken", "/v2")
    status = loads(await recv(ws))
    assert status["channel"] == "status" and isinstance(status["data"][0]["connection_id"], int)
    await send(
        ws,
        {
            "method": "subscribe",
            "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 25},
            "req_id": 3,
        },
    )
    await send(ws, {"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/USD"], "depth": 10}})
    await send(ws, {"method": "ping", "req_id": 9})
    depth = {"BTC/USD": 25, "ETH/USD": 10}
    decimals = {"BTC/USD": 1, "ETH/USD": 2}
    books: dict[str, Book] = {}
    acks, checked, pong, heartbeat = [], 0, False, False
    while checked < 150 or not heartbeat:
        text = await recv(ws)
        frame = loads(text)
        if frame.get("method") == "subscribe":
            acks.append((frame["result"]["symbol"], frame["result"]["depth"], frame.get("req_id")))
        pong |= frame.get("method") == "pong" and frame.get("req_id") == 9
        heartbeat |= frame.get("channel") == "heartbeat"
        if frame.get("channel") != "book":
            continue
        data = frame["data"][0]
        symbol = data["symbol"]
        if frame["type"] == "snapshot":
            books[symbol] = Book()
        book = books[symbol]
        for side, key in (("bid", "bids"), ("ask", "asks")):
            for level in data[key]:
                price, qty = kraken_v2_text(level["price"]), kraken_v2_text(level["qty"])
                assert len(price.split(".")[1]) == decimals[symbol] and len(qty.split(".")[1]) == 8, text
                book.apply(side, price, qty)
        book.truncate(depth[symbol])
        assert kraken_crc(book) == data["checksum"], f"checksum mismatch on {text[:200]}"
        assert len(book.bids) == depth[symbol] and len(book.asks) == depth[symbol], "levels entering the view"
        checked += 1
    assert acks == [("BTC/USD", 25, 3), ("ETH/USD", 10, None)]
    assert pong
    await ws.close()


async def test_kraken_v1_book_checksums_verify(sim: Simulator) -> None:
    ws = await connect(sim, "kraken", "")
    assert loads(await recv(ws))["event"] == "systemStatus"
    await send(
        ws,
        {"event": "subscribe", "pair": ["XBT/USD", "ETH/USD"], "subscription": {"name": "book", "depth": 25}},
    )
    await send(ws, {"event": "subscribe", "pair": ["XBT/USD"], "subscription": {"name": "trade"}})
    await send(ws, {"event": "ping", "reqid": 4})
    books: dict[int, Book] = {}
    channel_pair: dict[int, str] = {}
    checked, trades, pong = 0, 0, False
    while checked < 120:
        frame = loads(await recv(ws))
        if isinstance(frame, dict):
            if frame.get("event") == "subscriptionStatus":
                assert frame["status"] == "subscribed"
                channel_pair[frame["channelID"]] = frame["pair"]
            pong |= frame == {"event": "pong", "reqid": 4}
            continue
        channel, name, pair = frame[0], frame[-2], frame[-1]
        assert channel_pair[channel] == pair
        if name == "trade":
            trades += 1
            continue
        assert name == "book-25"
        payloads = frame[1:-2]
        if "as" in payloads[0]:
            books[channel] = Book()
            for side, key in (("ask", "as"), ("bid", "bs")):
                for price, qty, _ in payloads[0][key]:
                    books[channel].apply(side, price, qty)
            continue
        book = books[channel]
        for payload in payloads:
            for side, key in (("ask", "a"), ("bid", "b")):
                for price, qty, *_ in payload.get(key, []):
                    book.apply(side, price, qty)
        book.truncate(25)
        assert "c" in payloads[-1] and str(kraken_crc(book)) == payloads[-1]["c"]
        checked += 1
    assert trades > 0 and pong and set(channel_pair.values()) == {"XBT/USD", "ETH/USD"}
    await ws.close()


# -- bybit --------------------------------------------------------------------------------------


async def test_bybit_spot_snapshot_then_contiguous_deltas(sim: Simulator) -> None:
    ws = await connect(sim, "bybit", "/v5/public/spot")
    await send(ws, {"op": "subscribe", "args": [f"publicTrade.{s}" for s in ("BTCUSDT", "ETHUSDT")] * 6})
    refused = loads(await recv(ws))
    assert refused["success"] is False and refused["ret_msg"] == "args size >10"
    await send(ws, {"op": "subscribe", "args": ["orderbook.50.BTCUSDT", "publicTrade.BTCUSDT"]})
    ack = loads(await recv(ws))
    assert ack["success"] is True and ack["op"] == "subscribe"
    snapshot_text = await recv(ws)
    snapshot = loads(snapshot_text)
    assert snapshot["type"] == "snapshot" and snapshot_text.index('"ts"') < snapshot_text.index('"type"')
    book = Book()
    for side, key in (("bid", "b"), ("ask", "a")):
        for price, qty in snapshot["data"][key]:
            book.apply(side, price, qty)
    last_u, last_seq, deltas, trades = snapshot["data"]["u"], snapshot["data"]["seq"], 0, 0
    await send(ws, {"op": "ping", "req_id": "p1"})
    pong = False
    while deltas < 60:
        frame = loads(await recv(ws))
        if frame.get("op") == "ping":
            pong = frame["ret_msg"] == "pong" and frame["req_id"] == "p1"
            continue
        if frame["topic"].startswith("publicTrade"):
            trades += 1
            continue
        assert frame["type"] == "delta" and frame["data"]["u"] == last_u + 1
        assert frame["data"]["seq"] > last_seq
        last_u, last_seq = frame["data"]["u"], frame["data"]["seq"]
        for side, key in (("bid", "b"), ("ask", "a")):
            for price, qty in frame["data"][key]:
                book.apply(side, price, qty)
        assert len(book.bids) <= 50 and len(book.asks) <= 50 and not book.crossed()
        deltas += 1
    assert pong and trades > 0
    assert len(book.bids) == 50 and len(book.asks) == 50, "levels entering the window are sent"
    await ws.close()


async def test_bybit_linear_acks_and_drops_silent_clients() -> None:
    async with Simulator(exchanges=("bybit",), bybit_ping_timeout_s=0.6) as sim:
        ws = await connect(sim, "bybit", "/v5/public/linear")
        await send(ws, {"op": "subscribe", "args": ["orderbook.50.BTCUSDT"], "req_id": "r1"})
        ack = loads(await recv(ws))
        assert ack == {
            "success": True,
            "ret_msg": "",
            "conn_id": ack["conn_id"],
            "req_id": "r1",
            "op": "subscribe",
        }
        text = await recv(ws)
        assert text.index('"type"') < text.index('"ts"')
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await recv(ws)
        assert ws.close_code == 1000
        alive = await connect(sim, "bybit", "/v5/public/linear")
        for _ in range(6):
            await send(alive, {"op": "ping"})
            await asyncio.sleep(0.2)
        assert alive.close_code is None
        await alive.close()


# -- okx ----------------------------------------------------------------------------------------


async def test_okx_books_chain_seq_ids_and_checksums_verify(sim: Simulator) -> None:
    ws = await connect(sim, "okx", "/ws/v5/public")
    await send(ws, "ping")
    assert await recv(ws) == "pong"
    args = [{"channel": "books", "instId": "BTC-USDT"}, {"channel": "trades", "instId": "BTC-USDT"}]
    await send(ws, {"id": "7", "op": "subscribe", "args": args})
    first = loads(await recv(ws))
    assert first["event"] == "subscribe" and first["arg"] == args[0] and first["id"] == "7"
    snapshot = loads(await recv(ws))
    assert snapshot["action"] == "snapshot" and snapshot["data"][0]["prevSeqId"] == -1
    assert loads(await recv(ws))["arg"] == args[1]
    book = Book()
    data = snapshot["data"][0]
    for side, key in (("bid", "bids"), ("ask", "asks")):
        for price, size, _, _ in data[key]:
            book.apply(side, price, size)
    assert okx_crc(book) == data["checksum"]
    last, updates, keepalives = data["seqId"], 0, 0
    while updates < 80 or keepalives == 0:
        frame = loads(await recv(ws))
        if frame["arg"]["channel"] != "books":
            continue
        data = frame["data"][0]
        assert data["prevSeqId"] == last
        if data["seqId"] == data["prevSeqId"]:
            assert data["asks"] == [] and data["bids"] == []
            keepalives += 1
        for side, key in (("bid", "bids"), ("ask", "asks")):
            for price, size, _, _ in data[key]:
                book.apply(side, price, size)
        assert okx_crc(book) == data["checksum"] and len(book.bids) <= 400
        last, updates = data["seqId"], updates + 1
    await ws.close()


async def test_okx_checksum_can_be_zero_like_production() -> None:
    async with Simulator(exchanges=("okx",), okx_checksum="zero") as sim:
        ws = await connect(sim, "okx", "/ws/v5/public")
        await send(ws, {"op": "subscribe", "args": [{"channel": "books", "instId": "ETH-USDT"}]})
        await recv(ws)
        frames = [loads(await recv(ws)) for _ in range(5)]
        assert [f["data"][0]["checksum"] for f in frames] == [0] * 5
        await ws.close()


# -- frame shapes vs the real samples ---------------------------------------------------------------


def shape(value: Json) -> Json:
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        shapes = [shape(item) for item in value]
        if len({json.dumps(s, sort_keys=True) for s in shapes}) > 1:
            return ("tuple", shapes)
        return ("list", shapes[0] if shapes else None)
    return type(value).__name__


def same_shape(ours: Json, real: Json) -> bool:
    if isinstance(ours, dict) and isinstance(real, dict):
        return ours.keys() == real.keys() and all(same_shape(ours[k], real[k]) for k in ours)
    if isinstance(ours, tuple) and isinstance(real, tuple):
        if ours[0] == real[0] == "list":
            return ours[1] is None or real[1] is None or same_shape(ours[1], real[1])
        if ours[0] == "tuple" and real[0] == "list":  # mixed level lists (e.g. price + 0 entries)
            return real[1] is None or all(same_shape(item, real[1]) for item in ours[1])
        if ours[0] == "list" and real[0] == "tuple":
            return ours[1] is None or all(same_shape(ours[1], item) for item in real[1])
        return len(ours[1]) == len(real[1]) and all(map(same_shape, ours[1], real[1]))
    return bool(ours == real)


def assert_matches_sample(
    frames: list[str], sample_file: str, kind: str, adapt: Callable[[Json], Json] = lambda f: f
) -> None:
    real = load_sample(sample_file)["messages"][kind]
    real_shapes = [shape(adapt(loads(text))) for text in real]
    assert frames, f"the simulator sent no {kind} frame"
    for text in frames:
        ours = shape(adapt(loads(text)))
        assert any(same_shape(ours, r) for r in real_shapes), (
            f"{sample_file}:{kind} shape differs: {text[:300]}"
        )


def without_depth(frame: Json) -> Json:
    """The captured v1 acks are trade acks; a book ack also echoes the depth it subscribed."""
    frame.get("subscription", {}).pop("depth", None)
    return frame


def one_side(frame: Json) -> Json:
    """The captured v1 updates are all bid updates: compare ask updates as if they were bids."""
    for payload in frame[1:-2]:
        if "a" in payload:
            payload["b"] = payload.pop("a")
            payload["c"] = payload.pop("c", None)
    return frame


def channel_map(frame: Json) -> Json:
    """Coinbase ``subscriptions`` is a map keyed by channel: compare its values, not its keys."""
    for event in frame["events"]:
        event["subscriptions"] = {"any": next(iter(event["subscriptions"].values()))}
    return frame


async def collect(ws: websockets.ClientConnection, count: int) -> list[str]:
    return [await recv(ws) for _ in range(count)]


async def test_frames_match_real_sample_shapes(sim: Simulator) -> None:
    load_sample("binance.json")
    ws = await connect(sim, "binance", "/stream")
    await send(
        ws,
        {
            "method": "SUBSCRIBE",
            "params": ["ethusdt@aggTrade", "ethusdt@depth@100ms", "ethusdt@bookTicker"],
            "id": 1,
        },
    )
    got = await collect(ws, 120)
    assert_matches_sample(got[:1], "binance.json", "ack")
    assert_matches_sample([t for t in got if "@aggTrade" in t], "binance.json", "trade")
    assert_matches_sample([t for t in got if "@depth" in t], "binance.json", "book_update")
    assert_matches_sample([t for t in got if "@bookTicker" in t], "binance.json", "other_bookTicker")
    async with aiohttp.ClientSession() as http:
        url = sim.urls()["binance"][1] + "/api/v3/depth?symbol=ETHUSDT&limit=1000"
        async with http.get(url) as response:
            assert_matches_sample([await response.text()], "binance.json", "book_snapshot")
    await ws.close()

    ws = await connect(sim, "coinbase", "")
    for channel in ("market_trades", "level2", "heartbeats"):
        await send(ws, {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": channel})
    got = await collect(ws, 150)
    assert_matches_sample([t for t in got if '"market_trades"' in t[:40]], "coinbase.json", "trade")
    assert_matches_sample([t for t in got if '"l2_data"' in t[:30]], "coinbase.json", "book_update")
    assert_matches_sample(
        [t for t in got if '"subscriptions"' in t[:30]], "coinbase.json", "ack", channel_map
    )
    assert_matches_sample([t for t in got if '"heartbeats"' in t[:30]], "coinbase.json", "heartbeat")
    await ws.close()

    ws = await connect(sim, "kraken", "/v2")
    await send(ws, {"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/USD"], "depth": 10}})
    await send(ws, {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"]}})
    got = await collect(ws, 150)
    assert_matches_sample([t for t in got if '"status"' in t[:20]], "kraken.json", "other_status")
    assert_matches_sample([t for t in got if t.startswith('{"method":"subscribe"')], "kraken.json", "ack")
    assert_matches_sample([t for t in got if '"type":"snapshot"' in t[:40]], "kraken.json", "book_snapshot")
    assert_matches_sample(
        [t for t in got if '"book","type":"update"' in t[:40]], "kraken.json", "book_update"
    )
    assert_matches_sample([t for t in got if '"channel":"trade"' in t[:30]], "kraken.json", "trade")
    assert_matches_sample([t for t in got if "heartbeat" in t[:30]], "kraken.json", "heartbeat")
    await ws.close()

    ws = await connect(sim, "kraken", "")
    await send(ws, {"event": "subscribe", "pair": ["ETH/USD"], "subscription": {"name": "book", "depth": 10}})
    await send(ws, {"event": "subscribe", "pair": ["XBT/USD"], "subscription": {"name": "trade"}})
    got = await collect(ws, 150)
    books = [t for t in got if '"book-10"' in t]
    assert_matches_sample(
        [t for t in got if t.startswith("{") and "heartbeat" not in t], "kraken_v1.json", "ack", without_depth
    )
    assert_matches_sample([t for t in books if '"as"' in t], "kraken_v1.json", "book_snapshot")
    # the captured updates are one-sided; two-sided ones carry the same maps, one per side
    assert_matches_sample(
        [t for t in books if '"as"' not in t and len(loads(t)) == 4],
        "kraken_v1.json",
        "book_update",
        one_side,
    )
    assert_matches_sample([t for t in got if '"trade"' in t and t.startswith("[")], "kraken_v1.json", "trade")
    assert_matches_sample([t for t in got if "heartbeat" in t], "kraken_v1.json", "heartbeat")
    await ws.close()

    ws = await connect(sim, "bybit", "/v5/public/spot")
    await send(ws, {"op": "subscribe", "args": ["orderbook.200.BTCUSDT", "publicTrade.BTCUSDT"]})
    await send(ws, {"op": "ping"})
    got = await collect(ws, 100)
    assert_matches_sample([t for t in got if '"ret_msg":"subscribe"' in t], "bybit.json", "ack")
    assert_matches_sample([t for t in got if '"ret_msg":"pong"' in t], "bybit.json", "heartbeat")
    assert_matches_sample(
        [t for t in got if '"type":"snapshot","data":{' in t], "bybit.json", "book_snapshot"
    )
    assert_matches_sample([t for t in got if '"type":"delta"' in t], "bybit.json", "book_update")
    assert_matches_sample([t for t in got if "publicTrade" in t[:30]], "bybit.json", "trade")
    await ws.close()

    ws = await connect(sim, "okx", "/ws/v5/public")
    await send(
        ws,
        {
            "id": "1512",
            "op": "subscribe",
            "args": [{"channel": "books", "instId": "BTC-USDT"}, {"channel": "trades", "instId": "BTC-USDT"}],
        },
    )
    got = await collect(ws, 100)
    documented = load_sample("okx.json")["messages"]["doc_examples_with_seqId"]
    acks = [t for t in got if t.startswith('{"id"')]
    assert acks and all(same_shape(shape(loads(t)), shape(loads(documented[2]))) for t in acks)
    books = [t for t in got if '"books"' in t[:30]]
    assert all(same_shape(shape(loads(t)), shape(loads(documented[0]))) for t in books)
    assert_matches_sample([t for t in got if '"trades"' in t[:30]], "okx.json", "trade")
    await ws.close()


# -- faults -------------------------------------------------------------------------------------------


async def post_fault(sim: Simulator, **body: Any) -> tuple[int, Json]:
    url = f"http://127.0.0.1:{sim.port}/_sim/fault"
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        return response.status, await response.json()


async def test_gap_fault_breaks_each_sequence(sim: Simulator) -> None:
    ws = await connect(sim, "binance", "/stream")
    await send(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@depth", "ethusdt@depth"], "id": 1})
    await recv(ws)
    last: dict[str, int] = {}
    jumps = []
    for index in range(60):
        data = loads(await recv(ws))["data"]
        if data["s"] in last and data["U"] != last[data["s"]] + 1:
            jumps.append(data["s"])
        last[data["s"]] = data["u"]
        if index == 6:
            status, body = await post_fault(sim, exchange="binance", fault="gap", symbol="BTC-USDT")
            assert status == 200 and body["connections"] == 1
    assert jumps == ["BTCUSDT"]
    await ws.close()

    ws = await connect(sim, "bybit", "/v5/public/spot")
    await send(ws, {"op": "subscribe", "args": ["orderbook.50.ETHUSDT"]})
    await recv(ws)
    us = [loads(await recv(ws))["data"]["u"]]
    assert sim.fault("bybit", "gap") == 1
    # frames queued before the fault (a loaded machine reads slowly) arrive first: read on
    us += [loads(await recv(ws))["data"]["u"] for _ in range(40)]
    assert sorted(b - a for a, b in itertools.pairwise(us)) == [1] * 39 + [2]
    await ws.close()

    ws = await connect(sim, "okx", "/ws/v5/public")
    await send(ws, {"op": "subscribe", "args": [{"channel": "books", "instId": "ETH-USDT"}]})
    await recv(ws)
    seq = loads(await recv(ws))["data"][0]["seqId"]
    sim.fault("okx", "gap", "ETH-USDT")
    breaks = 0
    for _ in range(10):
        data = loads(await recv(ws))["data"][0]
        breaks += data["prevSeqId"] != seq
        seq = data["seqId"]
    assert breaks == 1
    await ws.close()

    ws = await connect(sim, "coinbase", "")
    await send(ws, {"type": "subscribe", "product_ids": ["ETH-USD"], "channel": "level2"})
    numbers = [loads(await recv(ws))["sequence_num"] for _ in range(3)]
    sim.fault("coinbase", "gap")
    numbers += [loads(await recv(ws))["sequence_num"] for _ in range(40)]
    steps = [b - a for a, b in itertools.pairwise(numbers)]
    assert sorted(steps) == [1] * 41 + [2]
    await ws.close()


async def kraken_v2_mismatches(
    ws: websockets.ClientConnection, frames: int, fault: Callable[[], object]
) -> int:
    book, mismatches, seen = Book(), 0, 0
    while seen < frames:
        frame = loads(await recv(ws))
        if frame.get("channel") != "book":
            continue
        data = frame["data"][0]
        if frame["type"] == "snapshot":
            book = Book()
        for side, key in (("bid", "bids"), ("ask", "asks")):
            for level in data[key]:
                book.apply(side, kraken_v2_text(level["price"]), kraken_v2_text(level["qty"]))
        book.truncate(10)
        if kraken_crc(book) != data["checksum"]:
            mismatches += 1
            book = Book() if frame["type"] == "update" else book  # a validator would resubscribe
        seen += 1
        if seen == 3:
            fault()
    return mismatches


async def test_kraken_gap_and_checksum_faults_fail_the_next_checksum(sim: Simulator) -> None:
    subscribe = {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10}}
    ws = await connect(sim, "kraken", "/v2")
    await send(ws, subscribe)
    assert await kraken_v2_mismatches(ws, 40, lambda: None) == 0
    await ws.close()
    for fault in ("checksum", "gap"):
        ws = await connect(sim, "kraken", "/v2")
        await send(ws, subscribe)
        assert await kraken_v2_mismatches(ws, 40, lambda f=fault: sim.fault("kraken", f, "BTC-USD")) >= 1, (
            fault
        )
        await ws.close()


async def test_okx_checksum_fault_corrupts_exactly_one_frame(sim: Simulator) -> None:
    ws = await connect(sim, "okx", "/ws/v5/public")
    await send(ws, {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]})
    await recv(ws)
    book, bad = Book(), 0
    for index in range(30):
        data = loads(await recv(ws))["data"][0]
        for side, key in (("bid", "bids"), ("ask", "asks")):
            for price, size, _, _ in data[key]:
                book.apply(side, price, size)
        bad += okx_crc(book) != data["checksum"]
        if index == 2:
            assert (await post_fault(sim, exchange="okx", fault="checksum"))[0] == 200
    assert bad == 1
    await ws.close()


async def test_disconnect_silent_malformed_and_snapshot_faults(sim: Simulator) -> None:
    ws = await connect(sim, "bybit", "/v5/public/spot")
    await send(ws, {"op": "subscribe", "args": ["orderbook.50.BTCUSDT"]})
    await recv(ws)
    await recv(ws)
    assert sim.fault("bybit", "snapshot", "BTC-USDT") == 1
    await until(ws, lambda f: f.get("type") == "snapshot")
    status, _ = await post_fault(sim, exchange="bybit", fault="malformed")
    assert status == 200
    for _ in range(50):
        text = await recv(ws)
        try:
            json.loads(text)
        except json.JSONDecodeError:
            break
    else:
        raise AssertionError("no malformed frame")
    status, _ = await post_fault(sim, exchange="bybit", fault="silent", seconds=0.8)
    assert status == 200
    started = time.monotonic()
    frame_time = None
    while frame_time is None or frame_time - started < 0.1:  # drain what was queued before the fault
        await recv(ws)
        frame_time = time.monotonic()
    assert frame_time - started > 0.6, "nothing (not even a pong) while silent"
    await post_fault(sim, exchange="bybit", fault="disconnect", code=4000)
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await recv(ws)
    assert ws.close_code == 4000

    for exchange, path, subscribe, is_snapshot in (
        (
            "okx",
            "/ws/v5/public",
            {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]},
            lambda f: f.get("action") == "snapshot",
        ),
        (
            "coinbase",
            "",
            {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "level2"},
            lambda f: f.get("events", [{}])[0].get("type") == "snapshot",
        ),
        (
            "kraken",
            "/v2",
            {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"]}},
            lambda f: f.get("type") == "snapshot",
        ),
    ):
        ws = await connect(sim, exchange, path)
        await send(ws, subscribe)
        await until(ws, is_snapshot)
        await until(ws, lambda f, snap=is_snapshot: not snap(f) and ("data" in f or "events" in f))
        assert sim.fault(exchange, "snapshot") == 1
        await until(ws, is_snapshot)
        await ws.close()


async def test_bad_fault_requests_are_refused(sim: Simulator) -> None:
    for body in (
        {"exchange": "binance", "fault": "checksum"},
        {"exchange": "binance", "fault": "snapshot"},
        {"exchange": "nowhere", "fault": "gap"},
        {"exchange": "okx", "fault": "explode"},
        {"exchange": "okx", "fault": "gap", "symbol": "BTC-USD"},
        {"fault": "gap"},
    ):
        status, reply = await post_fault(sim, **body)
        assert status == 400 and reply["error"], body
    with pytest.raises(FaultError):
        sim.fault("bybit", "checksum")


async def test_slow_client_is_disconnected_not_buffered() -> None:
    async with Simulator(exchanges=("coinbase",), queue_size=64, book_rate=100) as sim:
        url = sim.urls()["coinbase"][0]
        # a client that stops reading (a queue of one message) behind a small receive buffer
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        address = urlsplit(url)
        sock.connect((address.hostname, address.port))
        ws = await websockets.connect(url, sock=sock, max_size=None, max_queue=1, close_timeout=0.2)
        await send(ws, {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"})
        for _ in range(400):
            sim.fault("coinbase", "snapshot")
            if sim.stats()["exchanges"]["coinbase"].get("slow_disconnects"):
                break
            await asyncio.sleep(0.01)
        assert sim.stats()["exchanges"]["coinbase"]["slow_disconnects"] == 1
        await ws.close()


async def test_a_burst_beyond_the_queue_is_the_simulators_overload_not_a_slow_client() -> None:
    """Frames queued faster than the simulator's own write loop runs, while the client reads
    everything: the drop says the simulator was overloaded (1013), not that the client was slow."""
    async with Simulator(exchanges=("coinbase",), queue_size=2, book_rate=1) as sim:
        ws = await websockets.connect(sim.urls()["coinbase"][0], max_size=None, close_timeout=0.2)
        # the answer to a subscription (an ack and two snapshots) is queued in one synchronous call
        await send(ws, {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"})
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ws.recv()
        stats = sim.stats()["exchanges"]["coinbase"]
        assert (stats.get("overload_disconnects"), stats.get("slow_disconnects", 0)) == (1, 0)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


async def test_the_cork_holds_segments_within_its_block_and_is_always_released() -> None:
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.transport.get_extra_info("socket")

    def corked() -> int:
        return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))

    cork = SocketCork(writer.transport)
    with cork(False):
        assert corked() == 0
    with cork(True):
        assert corked() == 1
    assert corked() == 0
    with pytest.raises(RuntimeError), cork(True):
        raise RuntimeError("a write failed")
    assert corked() == 0
    assert SocketCork(None).sock is None  # no transport (a test double): a no-op
    with SocketCork(None)(True):
        pass
    writer.close()
    server.close()


async def test_a_burst_is_written_corked_then_uncorked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer to a subscription (an ack and two snapshots, queued in one call) leaves as one
    corked burst, and the socket is uncorked after it: the client gets all of it at once."""
    settings: list[int] = []
    set_cork = SocketCork._set

    def recording(sock: socket.socket, value: int) -> None:
        settings.append(value)
        set_cork(sock, value)

    monkeypatch.setattr(SocketCork, "_set", staticmethod(recording))
    async with Simulator(exchanges=("coinbase",), book_rate=1) as sim:
        ws = await websockets.connect(sim.urls()["coinbase"][0], max_size=None, close_timeout=0.2)
        await send(ws, {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"})
        snapshots = 0
        while snapshots < 2:
            snapshots += loads(await recv(ws))["events"][0]["type"] == "snapshot"
        await ws.close()
    assert settings[:2] == [1, 0]


# -- REST, stats, CLI ------------------------------------------------------------------------------------


async def test_rest_endpoints_return_documented_shapes(sim: Simulator) -> None:
    rest = {name: base for name, (_, base) in sim.urls().items()}
    info = await get_json(f"{rest['binance']}/api/v3/exchangeInfo?symbols=%5B%22BTCUSDT%22,%22ETHUSDT%22%5D")
    assert [(s["symbol"], s["baseAsset"], s["quoteAsset"], s["status"]) for s in info["symbols"]] == [
        ("BTCUSDT", "BTC", "USDT", "TRADING"),
        ("ETHUSDT", "ETH", "USDT", "TRADING"),
    ]
    products = await get_json(
        f"{rest['coinbase']}/api/v3/brokerage/market/products",
        [("product_ids", "BTC-USD"), ("product_ids", "ETH-USD")],
    )
    assert [
        (p["product_id"], p["base_currency_id"], p["quote_currency_id"], p["status"])
        for p in products["products"]
    ] == [("BTC-USD", "BTC", "USD", "online"), ("ETH-USD", "ETH", "USD", "online")]
    pairs = await get_json(f"{rest['kraken']}/0/public/AssetPairs", {"pair": "XBTUSD,ETHUSD"})
    assert pairs["error"] == [] and set(pairs["result"]) == {"XXBTZUSD", "XETHZUSD"}
    btc = pairs["result"]["XXBTZUSD"]
    assert (
        btc["altname"],
        btc["wsname"],
        btc["base"],
        btc["quote"],
        btc["pair_decimals"],
        btc["lot_decimals"],
    ) == ("XBTUSD", "XBT/USD", "XXBT", "ZUSD", 1, 8)
    assert pairs["result"]["XETHZUSD"]["pair_decimals"] == 2
    assert (await get_json(f"{rest['kraken']}/0/public/AssetPairs", {"pair": "NOPE"}))["error"]
    for category in ("spot", "linear"):
        bybit = await get_json(
            f"{rest['bybit']}/v5/market/instruments-info", {"category": category, "symbol": "BTCUSDT"}
        )
        assert bybit["retCode"] == 0 and bybit["result"]["category"] == category
        assert [
            (i["symbol"], i["baseCoin"], i["quoteCoin"], i["status"]) for i in bybit["result"]["list"]
        ] == [("BTCUSDT", "BTC", "USDT", "Trading")]
    okx = await get_json(
        f"{rest['okx']}/api/v5/public/instruments", {"instType": "SPOT", "instId": "BTC-USDT"}
    )
    assert okx["code"] == "0" and [
        (i["instId"], i["baseCcy"], i["quoteCcy"], i["state"]) for i in okx["data"]
    ] == [("BTC-USDT", "BTC", "USDT", "live")]
    depth = await get_json(f"{rest['binance']}/api/v3/depth", {"symbol": "BTCUSDT", "limit": "5"})
    assert len(depth["bids"]) == 5 and isinstance(depth["lastUpdateId"], int)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{rest['binance']}/api/v3/depth?symbol=NOPE") as bad,
    ):
        assert bad.status == 400 and (await bad.json())["code"] == -1121


async def test_stats_count_connections_frames_and_subscriptions(sim: Simulator) -> None:
    ws = await connect(sim, "okx", "/ws/v5/public")
    await send(
        ws,
        {
            "op": "subscribe",
            "args": [{"channel": "books", "instId": "BTC-USDT"}, {"channel": "trades", "instId": "ETH-USDT"}],
        },
    )
    await collect(ws, 10)
    stats = await get_json(f"http://127.0.0.1:{sim.port}/_sim/stats")
    okx = stats["exchanges"]["okx"]
    assert okx["connections"] == 1 and okx["subscriptions"] == 2 and okx["frames_sent"] >= 10
    assert stats["exchanges"]["binance"]["connections"] == 0
    await ws.close()


def test_cli_runs_for_a_bounded_time() -> None:
    from simulator.cli import sim as sim_command

    result = CliRunner().invoke(
        sim_command,
        ["--exchanges", "okx,kraken", "--port", "0", "--rate", "5", "--seed", "3", "--duration", "0.5"],
    )
    assert result.exit_code == 0, result.output
    assert "/okx" in result.output and "/kraken" in result.output and "binance" not in result.output
    bad = CliRunner().invoke(sim_command, ["--exchanges", "nasdaq"])
    assert bad.exit_code != 0
