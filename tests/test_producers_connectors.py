"""Each connector against the exchange simulator and a real Kafka broker: the raw record
contract, heartbeats, a forced disconnect, a resync request, planned reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import importlib.util
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from confluent_kafka import Producer
from pipeline_support import read_topic as read_messages
from producers_support import Consumed, by_connection, read_topic, sim_settings, wait_until

from marketpipe.codec import AvroCodec
from marketpipe.config import ProducerSettings
from marketpipe.raw import read_capture
from marketpipe.records import ControlRequest, DeadLetter
from marketpipe.topics import Topology
from producers.base import RUN_ID, Connector, SymbolError, shard_key
from producers.connectors import EXCHANGES, connector_class
from producers.control import ControlListener
from producers.publisher import CaptureRawPublisher, KafkaRawPublisher

simulator = pytest.importorskip("simulator", reason="the exchange simulator (simulator/) is not available")

SYMBOL = {
    "binance": "BTC-USDT",
    "binance-futures": "BTC-USDT-PERP",
    "coinbase": "BTC-USD",
    "kraken": "BTC-USD",
    "bybit": "BTC-USDT",
    "okx": "BTC-USDT",
    "bitfinex": "BTC-USD",
    "kucoin": "BTC-USDT",
    "gateio": "BTC-USDT",
    "htx": "BTC-USDT",
    "mexc": "BTC-USDT",
    "deribit": "BTC-USD-PERP-INV",
}
# exchange: (in a frame the client sent, in a frame the server sent) proving the heartbeat ran
# (binance: websocket protocol pings, checked through the simulator's pong timeout)
HEARTBEATS: dict[str, tuple[bytes | None, bytes | None]] = {
    "coinbase": (None, b'"channel":"heartbeats"'),
    "kraken": (None, b'"heartbeat"'),
    "bybit": (b'"op":"ping"', b'"pong"'),
    "okx": (b"ping", b"pong"),
    "bitfinex": (None, b'"hb"'),
    "kucoin": (b'"type":"ping"', b'"type":"pong"'),
    "gateio": (b'"spot.ping"', b'"spot.pong"'),
    "htx": (b'"pong"', b'"ping"'),
    "mexc": (b'"PING"', b"PONG"),
    "deribit": (b'"public/set_heartbeat"', None),  # test_request comes after 10 s at the earliest
}
# exchange: the REST snapshot path a resync re-fetches (the others unsubscribe + subscribe,
# or, in RESYNC_SENT, send a snapshot request on the websocket)
RESYNC_REST = {
    "binance": "/api/v3/depth?",
    "binance-futures": "/fapi/v1/depth?",
    "kucoin": "/api/v1/market/orderbook/level2_100?",
    "gateio": "/api/v4/spot/order_book?",
    "mexc": "/api/v3/depth?",
}
RESYNC_SENT = {"htx": b'"req"'}
PING_S = 0.3
PONG_TIMEOUT_S = 1.5
FAST = ProducerSettings(backoff_initial_s=0.05, backoff_max_s=0.2)


def _needs_sim(exchange: str) -> None:
    if importlib.util.find_spec(f"simulator.{exchange.replace('-', '_')}") is None:
        pytest.skip(f"the simulator does not serve {exchange} yet (simulator/{exchange}.py missing)")


@pytest.fixture
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    exchange = request.node.callspec.params.get("exchange", "binance")
    _needs_sim(exchange)
    server = await simulator.start_simulator(
        seed=3,
        exchanges=(exchange,),
        book_rate=3.0,
        trade_rate=1.0,
        heartbeat_interval_s=0.2,
        binance_ping_interval_s=PING_S,
        binance_pong_timeout_s=PONG_TIMEOUT_S,
    )
    yield server
    await server.stop()


class Running:
    """A connector (and optionally the control listener) running in the test's loop."""

    def __init__(self, connector: Connector, listener: ControlListener | None = None) -> None:
        self.connector = connector
        self.listener = listener
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Running:
        await self.connector.publisher.start()
        await self.connector.start()
        self.tasks.append(asyncio.create_task(self.connector.run()))
        if self.listener is not None:
            self.tasks.append(asyncio.create_task(self.listener.run()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        crashed = [task for task in self.tasks if task.done() and not task.cancelled() and task.exception()]
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.connector.publisher.close()
        if crashed:
            raise AssertionError(f"{crashed[0].get_name()} crashed") from crashed[0].exception()


def _send_resync(bootstrap: str, topics: Topology, request: ControlRequest) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topics.control, AvroCodec().encode(request, topics.control), key=request.key())
    assert producer.flush(10) == 0


def _check_connection_contract(exchange: str, connector: Connector, items: list[Consumed]) -> None:
    conn = items[0].record.conn
    assert re.fullmatch(rf"{exchange}\.{RUN_ID}\.\d+", conn)
    assert {item.partition for item in items} == {items[0].partition}, "one connection, one partition"
    assert [item.record.seq for item in items] == list(range(len(items))), "seq counts from 0 in offset order"
    # the first: OKX's candle connection (a second shard) carries the same symbols under the same key
    shard = next(s for s in connector.shards if connector.exchange_symbols[SYMBOL[exchange]] in s.symbols)
    assert shard.key == shard_key(exchange, shard.symbols) and shard.key.startswith(f"{exchange}:")
    for item in items:
        assert item.key == shard.key.encode()  # every connection of the shard: one key, one partition
        assert item.headers["exchange"] == exchange.encode() and item.headers["conn"] == conn.encode()
        assert int(item.headers["recv_ns"]) > 0
        assert ("url" in item.headers) == (item.record.kind in ("open", "rest"))
    records = [item.record for item in items]
    symbol = connector.exchange_symbols[SYMBOL[exchange]]
    assert records[0].kind == "open" and (records[0].url or "").startswith("ws://127.0.0.1:")
    assert orjson.loads(records[0].payload) == {"symbols": [symbol]}
    assert records[1].kind == "rest" and (records[1].url or "").startswith(connector.rest_base)
    assert connector.parse_instruments(records[1].payload)[symbol] == SYMBOL[exchange]
    subscribes = connector.subscribe_messages([symbol])
    sent = [r for r in records[2 : 2 + len(subscribes)]]
    assert [r.kind for r in sent] == ["sent"] * len(subscribes)
    assert any(symbol.lower() in r.payload.decode().lower() for r in sent)
    assert any(r.kind == "recv" for r in records)


def _check_heartbeats(exchange: str, first: list[Consumed]) -> None:
    records = [item.record for item in first]
    if exchange.startswith("binance"):  # the simulator pings every PING_S and drops us without a pong
        close = orjson.loads(records[-1].payload)
        assert close["reason"] == "simulated disconnect", close
        assert (records[-1].recv_ns - records[0].recv_ns) / 1e9 > PONG_TIMEOUT_S + PING_S
        return
    sent = [r.payload for r in records if r.kind == "sent"]
    received = [_inflated(r.payload) for r in records if r.kind == "recv"]
    client_marker, server_marker = HEARTBEATS[exchange]
    if client_marker is not None:
        assert any(client_marker in frame for frame in sent), sent[-3:]
    if server_marker is not None:
        assert any(server_marker in frame for frame in received)


def _inflated(frame: bytes) -> bytes:
    """HTX frames are gzip-compressed."""
    return gzip.decompress(frame) if frame[:2] == b"\x1f\x8b" else frame


def _check_resync(exchange: str, first: list[Consumed]) -> None:
    records = [item.record for item in first]
    subscribe_at = next(r.seq for r in records if r.kind == "sent")
    if exchange in RESYNC_REST:
        path = RESYNC_REST[exchange]
        snapshots = [r for r in records if r.kind == "rest" and path in (r.url or "")]
        assert len(snapshots) >= 2, "the initial depth snapshot and the resync one"
        assert all(r.seq > subscribe_at for r in snapshots), "snapshots come after the diff subscription"
        return
    sent = [r.payload for r in records if r.kind == "sent"]
    if exchange in RESYNC_SENT:
        assert sum(RESYNC_SENT[exchange] in frame for frame in sent) >= 2, "initial and resync requests"
        return
    texts = [frame.decode() for frame in sent]
    unsubscribe = next(i for i, text in enumerate(texts) if "unsubscribe" in text)
    assert any(m in texts[unsubscribe + 1] for m in ('"subscribe"', "'subscribe'", '"public/subscribe"'))


def _same_endpoint(conns: dict[str, list[Consumed]], first: str) -> dict[str, list[Consumed]]:
    """The connections to the first one's endpoint path (OKX also has one to /ws/v5/business)."""
    path = urlsplit(conns[first][0].record.url or "").path
    return {c: items for c, items in conns.items() if urlsplit(items[0].record.url or "").path == path}


def _outline(conns: dict[str, list[Consumed]]) -> str:
    """Each connection's partitions and first records, for a failure message."""
    return "; ".join(
        f"{conn}: {len(items)} records in partitions {sorted({i.partition for i in items})}, first "
        + ", ".join(f"{i.partition}/{i.offset} seq {i.record.seq} {i.record.kind}" for i in items[:4])
        for conn, items in conns.items()
    )


VARIANTS = [
    *((exchange, {}) for exchange in EXCHANGES),
    ("kraken", {"protocol": "v1"}),
]


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize(
    ("exchange", "variant"), VARIANTS, ids=lambda v: "-".join(v.values()) if isinstance(v, dict) else v
)
async def test_connector_contract_heartbeats_resync_and_reconnect(
    exchange, variant, sim, kafka_bootstrap, topics
):
    client = {"bootstrap.servers": kafka_bootstrap}
    publisher = KafkaRawPublisher(client, topics, linger_ms=5)
    settings = sim_settings(sim.urls(), exchange, silence_timeout_s=5.0, ping_interval_s=PING_S, **variant)
    connector = connector_class(exchange)([SYMBOL[exchange]], publisher, settings, FAST)
    listener = ControlListener({exchange: connector}, client, topics, AvroCodec())
    async with Running(connector, listener):
        shard = connector.shards[0]
        await wait_until(lambda: shard.stats.frames >= 3, 20, "first frames")
        assert shard.current is not None
        first = shard.current.id
        await wait_until(listener.ready.is_set, 20, "control listener")
        _send_resync(
            kafka_bootstrap,
            topics,
            ControlRequest(
                exchange=exchange,
                symbol=SYMBOL[exchange],
                exchange_symbol=connector.exchange_symbols[SYMBOL[exchange]],
                action="resync",
                reason="test",
                ts=time.time_ns() // 1000,
                conn=first,
            ),
        )
        await wait_until(lambda: listener.handled >= 1, 20, "resync handled")
        await asyncio.sleep(PONG_TIMEOUT_S + 4 * PING_S)  # heartbeats on the first connection
        assert sim.fault(exchange, "disconnect") == len(connector.shards)  # OKX: + its candle connection
        await wait_until(
            lambda: shard.current is not None and shard.current.id != first, 20, "a new connection"
        )
        frames = shard.stats.frames
        await wait_until(lambda: shard.stats.frames > frames + 2, 20, "frames on the new connection")

    assert publisher.stats.dropped == publisher.stats.delivery_errors == 0, publisher.stats
    every = by_connection(read_topic(kafka_bootstrap, topics.raw(exchange)))
    conns = _same_endpoint(every, first)
    assert len(conns) == 2 and first in conns, _outline(every)
    for items in conns.values():
        _check_connection_contract(exchange, connector, items)
    first_records = conns[first]
    close = first_records[-1].record
    assert close.kind == "close" and orjson.loads(close.payload)["code"] == 1001
    (second,) = (conn for conn in conns if conn != first)
    assert int(second.rsplit(".", 1)[1]) > int(first.rsplit(".", 1)[1])
    assert conns[second][-1].record.kind == "close"  # closed cleanly when the producer stopped
    _check_heartbeats(exchange, first_records)
    _check_resync(exchange, first_records)


@pytest.mark.kafka
async def test_an_undecodable_control_request_is_dead_lettered_with_its_reason(kafka_bootstrap, topics):
    listener = ControlListener({}, {"bootstrap.servers": kafka_bootstrap}, topics, AvroCodec())
    task = asyncio.create_task(listener.run())
    try:
        await wait_until(listener.ready.is_set, 20, "control listener")
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        producer.produce(topics.control, b"not an avro record", partition=0)
        producer.flush(10)
        await wait_until(lambda: listener.rejected >= 1, 20, "the request rejected")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # stopping flushes the dead letter
    (message,) = read_messages(kafka_bootstrap, topics.dlq)
    letter = AvroCodec().decode(message.value() or b"", DeadLetter)
    assert (letter.stage, letter.source_topic, letter.partition, letter.offset) == (
        "producer-control",
        topics.control,
        0,
        0,
    )
    assert letter.reason.startswith("undecodable control request") and letter.payload == b"not an avro record"


@pytest.mark.parametrize("exchange", ["binance"])
async def test_planned_reconnect_opens_the_successor_before_closing(exchange, sim, tmp_path):
    publisher = CaptureRawPublisher(tmp_path / "planned.jsonl")
    settings = sim_settings(sim.urls(), exchange, max_connection_age_s=1.0)
    connector = connector_class(exchange)([SYMBOL[exchange]], publisher, settings, FAST)
    async with Running(connector):
        await wait_until(lambda: connector.shards[0].stats.connections >= 3, 20, "two planned reconnects")
    records = list(read_capture(tmp_path / "planned.jsonl"))
    opens = {r.conn: r for r in records if r.kind == "open"}
    closes = {r.conn: r for r in records if r.kind == "close"}
    conns = sorted(opens, key=lambda conn: int(conn.rsplit(".", 1)[1]))
    old, new = conns[0], conns[1]
    assert "planned reconnect" in orjson.loads(closes[old].payload)["reason"]
    assert opens[new].recv_ns < closes[old].recv_ns, "the successor opened before the old one closed"
    new_frames = [r for r in records if r.conn == new and r.kind == "recv"]
    assert new_frames and new_frames[0].recv_ns < closes[old].recv_ns, "and it was already streaming"


@pytest.mark.parametrize("exchange", ["binance"])
@pytest.mark.parametrize("compression", [True, False])
async def test_websocket_compression_is_offered_as_configured(exchange, compression, sim, tmp_path):
    publisher = CaptureRawPublisher(tmp_path / "deflate.jsonl")
    options = ProducerSettings(ws_compression=compression)
    connector = connector_class(exchange)(
        [SYMBOL[exchange]], publisher, sim_settings(sim.urls(), exchange), options
    )
    async with Running(connector):
        shard = connector.shards[0]
        await wait_until(lambda: shard.stats.frames >= 5, 20, "first frames")
        assert shard.current is not None and shard.current.compressed is compression
    frames = [r for r in read_capture(tmp_path / "deflate.jsonl") if r.kind == "recv"]
    assert all(orjson.loads(r.payload) for r in frames), "every frame published inflated"


@pytest.mark.parametrize("exchange", ["coinbase", "okx"])
async def test_silent_connection_is_replaced_by_the_watchdog(exchange, sim, tmp_path):
    publisher = CaptureRawPublisher(tmp_path / "silent.jsonl")
    settings = sim_settings(sim.urls(), exchange, silence_timeout_s=1.0, ping_interval_s=5.0)
    connector = connector_class(exchange)([SYMBOL[exchange]], publisher, settings, FAST)
    async with Running(connector):
        shard = connector.shards[0]
        await wait_until(lambda: shard.stats.frames >= 2, 20, "first frames")
        sim.fault(exchange, "silent", seconds=30)
        await wait_until(lambda: shard.stats.connections >= 2, 20, "a replacement connection")
    closes = [r for r in read_capture(tmp_path / "silent.jsonl") if r.kind == "close"]
    assert orjson.loads(closes[0].payload)["reason"].startswith("silent for")


@pytest.mark.parametrize("exchange", EXCHANGES)
async def test_unlisted_symbol_is_a_clear_error_at_start(exchange, sim, tmp_path):
    publisher = CaptureRawPublisher(tmp_path / "none.jsonl")
    connector = connector_class(exchange)(
        [SYMBOL[exchange], "NOPE-USDT"], publisher, sim_settings(sim.urls(), exchange), FAST
    )
    with pytest.raises(SymbolError, match="NOPE-USDT"):
        await connector.start()
    await connector.rest.close()
    await publisher.close()


@pytest.mark.parametrize("exchange", ["bybit"])
async def test_metrics_report_frames_connections_and_publisher_counters(exchange, sim, tmp_path):
    from prometheus_client import generate_latest

    from producers.metrics import serve_metrics

    publisher = CaptureRawPublisher(tmp_path / "metrics.jsonl")
    connector = connector_class(exchange)(
        [SYMBOL[exchange]], publisher, sim_settings(sim.urls(), exchange), FAST
    )
    async with Running(connector):
        registry = serve_metrics(0, [connector], publisher)
        await wait_until(lambda: connector.shards[0].stats.frames >= 3, 20, "frames")
        text = generate_latest(registry).decode()
    frames = re.search(r'marketpipe_producer_frames_total\{exchange="bybit",shard="0"\} (\d+)', text)
    assert frames is not None and int(frames.group(1)) >= 3
    assert 'marketpipe_producer_connections_total{exchange="bybit",shard="0"} 1.0' in text
    published = re.search(r"marketpipe_producer_published_total (\d+)", text)
    assert published is not None and int(published.group(1)) >= int(frames.group(1))
    assert "marketpipe_producer_last_frame_age_seconds" in text


def test_binance_subscribes_the_configured_streams_only(tmp_path: Path) -> None:
    settings = ProducerSettings(binance={"streams": ["trade", "depth@100ms"]})
    connector = connector_class("binance")(
        ["BTC-USDT"], CaptureRawPublisher(tmp_path / "c.jsonl"), settings.for_exchange("binance")
    )
    params = [
        p for message in connector.subscribe_messages(["BTCUSDT"]) for p in orjson.loads(message)["params"]
    ]
    assert params == ["btcusdt@trade", "btcusdt@depth@100ms"]
    default = connector_class("binance")(["BTC-USDT"], CaptureRawPublisher(tmp_path / "d.jsonl"))
    every = [
        p for message in default.subscribe_messages(["BTCUSDT"]) for p in orjson.loads(message)["params"]
    ]
    assert every == ["btcusdt@trade", "btcusdt@depth@100ms", "btcusdt@ticker", "btcusdt@kline_1m"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"binance": {"streams": ["trade"]}}, "depth@100ms is required"),
        ({"binance": {"streams": ["trades", "depth@100ms"]}}, "unknown Binance stream(s) trades"),
        ({"okx": {"streams": ["trade", "depth@100ms"]}}, "producers.okx.streams: only binance"),
    ],
)
def test_stream_choices_that_cannot_work_are_refused(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ProducerSettings(**table)
