"""The live view of `marketpipe run` (marketpipe/view.py) on real parts: a connector pointed at an
address nothing listens on, its real metrics endpoint, Kafka consumer-group offsets of a real
broker, rendered into a fixed 80x24 rich console as an operator's terminal would show it."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from producers_support import wait_until
from rich.console import Console

from marketpipe.config import EXCHANGES, ConnectorSettings
from marketpipe.kafka_local import free_port
from marketpipe.topics import Topology
from marketpipe.view import (
    STAGE_NAMES,
    STALL_AFTER_S,
    Endpoint,
    KafkaLag,
    Observer,
    Picture,
    RunState,
    StageWatch,
    plain_lines,
    render_rich,
)
from producers.base import Connector, RestError
from producers.connectors import connector_class
from producers.metrics import serve_metrics
from producers.publisher import CaptureRawPublisher

UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: connects are refused at once


def _state(source: str, endpoints: list[Endpoint], prefix: str = "view.") -> RunState:
    return RunState(
        pid=0,
        source=source,
        bootstrap="",
        prefix=prefix,
        exchanges=list(EXCHANGES),
        log_dir="",
        started_at=time.time(),
        endpoints=endpoints,
    )


def _screen(picture: Picture, view: str = "compact") -> list[str]:
    """The picture as an 80x24 terminal shows it: its lines, as text."""
    console = Console(width=80, height=24, record=True, force_terminal=True, color_system=None)
    console.print(render_rich(picture, "marketpipe run --source live", view, (80, 24), keys=True))
    return console.export_text().splitlines()


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _assert_fits(lines: list[str]) -> None:
    assert len(lines) <= 23, "\n".join(lines)  # rich's live display keeps the last row
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)


@pytest.fixture
def offline_connector(tmp_path: Path) -> Iterator[tuple[Connector, int]]:
    """A Binance connector whose REST and websocket addresses refuse connections, with its
    metrics endpoint served as `marketpipe produce` serves it."""
    settings = ConnectorSettings(
        ws_url=f"ws://{UNREACHABLE}", rest_url=f"http://{UNREACHABLE}", rest_min_interval_s=0
    )
    publisher = CaptureRawPublisher(tmp_path / "capture.jsonl")
    connector = connector_class("binance")(["BTC-USDT"], publisher, settings)
    connector.rest.attempts = 2  # RestClient's backoff between attempts is the test's only wait
    port = free_port()
    serve_metrics(port, [connector], publisher)
    yield connector, port


def test_unreachable_exchange_shows_failing_with_the_reason_in_full(
    offline_connector: tuple[Connector, int],
) -> None:
    connector, port = offline_connector

    async def resolve() -> None:
        try:
            await connector.start()
        finally:
            await connector.rest.close()

    with pytest.raises(RestError):
        asyncio.run(resolve())  # the instrument list cannot be fetched
    producer = Endpoint("produce-binance", "producer", port=port, exchange="binance", state="running")
    observer = Observer(_state("live", [producer]), kafka=None)
    try:
        picture = observer.collect()
    finally:
        observer.close()

    [row] = picture.connections
    assert row.state == "failing"
    assert row.failures == 2
    assert f"http://{UNREACHABLE}/api/v3/exchangeInfo" in row.note
    assert "ClientConnectorError" in row.note and f"Cannot connect to host {UNREACHABLE}" in row.note

    lines = _screen(picture)
    _assert_fits(lines)
    screen = _squeezed(" ".join(lines))
    assert "binance failing" in screen
    assert _squeezed(row.note) in screen  # in full, wrapped, not cut to a column
    assert "No exchange is reachable" in screen and "make demo" in screen
    assert any(f'note="{row.note}"' in line for line in plain_lines(picture))


async def test_refused_websocket_keeps_its_shard_failing(tmp_path: Path) -> None:
    """Instruments resolve (the simulator's REST), the websocket is refused on every attempt:
    the shard is `failing` with the refused address while it keeps retrying."""
    simulator = pytest.importorskip("simulator", reason="the exchange simulator is not available")
    server = await simulator.start_simulator(seed=3, exchanges=("binance",))
    try:
        _, rest = server.urls()["binance"]
        settings = ConnectorSettings(
            ws_url=f"ws://{UNREACHABLE}/ws", rest_url=rest, rest_min_interval_s=0, connect_interval_s=0
        )
        publisher = CaptureRawPublisher(tmp_path / "capture.jsonl")
        connector = connector_class("binance")(["BTC-USDT"], publisher, settings)
        port = free_port()
        serve_metrics(port, [connector], publisher)
        [shard] = await connector.start()
        task = asyncio.create_task(shard.run())
        await wait_until(lambda: shard.stats.failures >= 2, 60, "two refused connects")
        producer = Endpoint("produce-binance", "producer", port=port, exchange="binance", state="running")
        observer = Observer(_state("sim", [producer]), kafka=None)
        try:
            picture = await asyncio.to_thread(observer.collect)
        finally:
            observer.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await connector.stop()
    finally:
        await server.stop()

    [row] = picture.connections
    assert (row.shard, row.state) == ("0", "failing") and row.failures >= 2
    assert f"ws://{UNREACHABLE}/ws" in row.note and "Error" in row.note
    assert not picture.alerts  # the simulator run is not told to run `make demo`


def test_connector_between_restarts_stays_failing_with_its_last_error() -> None:
    """A connector that exited and waits to be restarted: no metrics endpoint, so the reason is
    the process's last log line (click's one-line error), and the run says what to do."""
    reason = (
        "GET https://api.kraken.com/0/public/AssetPairs failed after 5 attempts: ClientConnectorDNSError: "
        "Cannot connect to host api.kraken.com:443 ssl:default [Name or service not known]"
    )
    endpoints = [
        Endpoint(
            f"produce-{exchange}",
            "producer",
            port=free_port(),
            exchange=exchange,
            state="backing off 4s (exit 1)",
            restarts=2,
            note=f"Error: {reason.replace('kraken', exchange)}",
        )
        for exchange in EXCHANGES
    ]
    endpoints += [Endpoint("stream-1", "stream", pid=11), Endpoint("sink", "sink", pid=12)]
    observer = Observer(_state("live", endpoints), kafka=None)
    try:
        picture = observer.collect()
    finally:
        observer.close()

    assert {row.state for row in picture.connections} == {"failing"}
    assert picture.connections[EXCHANGES.index("kraken")].note == reason
    lines = _screen(picture)
    _assert_fits(lines)
    screen = _squeezed(" ".join(lines))
    assert (
        f"No exchange is reachable ({len(EXCHANGES)} of {len(EXCHANGES)} failing" in screen
        and "make demo" in screen
    )
    # ten alike failures read as one, with one exchange's reason in full
    assert f"all {len(EXCHANGES)} exchanges failing alike; binance: " in screen
    assert _squeezed(reason.replace("kraken", "binance")) in screen


# -- stalled stages, from a real consumer group's offsets -------------------------------------


def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for index in range(count):
        producer.produce(topic, key=b"binance:BTC-USDT", value=str(index).encode(), partition=0)
    assert producer.flush(30) == 0


def _commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": "false"})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def _wait_for_leaders(kafka: KafkaLag, topology: Topology) -> None:
    """Fresh topics answer offset requests once their partitions have leaders."""
    topics = [topic for _, inputs in topology.stream_stages() for topic in inputs]
    deadline = time.monotonic() + 60
    while True:
        try:
            kafka.end_offsets(topics + list(topology.sink_tables()))
            return
        except KafkaException:
            assert time.monotonic() < deadline, "no partition leaders after 60 s"
            time.sleep(0.2)


def test_stage_whose_offsets_stand_still_while_input_arrives_is_stalled(
    kafka_bootstrap: str, topics: Topology
) -> None:
    kafka = KafkaLag({"bootstrap.servers": kafka_bootstrap})
    group, inputs = topics.ohlcv_group, [topics.trades]
    watch = StageWatch()
    try:
        _wait_for_leaders(kafka, topics)
        _produce(kafka_bootstrap, topics.trades, 10)
        _commit(kafka_bootstrap, group, topics.trades, 4)
        first = kafka.progress(group, inputs)
        assert (first.end, first.committed, first.lag) == (10, 4, 6)
        assert watch.observe(0.0, first) == "running"  # behind, but only just seen

        _produce(kafka_bootstrap, topics.trades, 5)  # input keeps arriving, nothing is committed
        growing = kafka.progress(group, inputs)
        assert (growing.end, growing.committed) == (15, 4)
        assert watch.observe(STALL_AFTER_S / 2, growing) == "running"  # not for long enough yet
        assert watch.observe(STALL_AFTER_S + 1, growing) == "stalled"

        _commit(kafka_bootstrap, group, topics.trades, 15)
        caught_up = kafka.progress(group, inputs)
        assert watch.observe(STALL_AFTER_S + 2, caught_up) == "running"  # it moved
        assert watch.observe(3 * STALL_AFTER_S, caught_up) == "idle"  # nothing left to do

        # after a long idle spell the stall clock starts when messages begin to wait
        _produce(kafka_bootstrap, topics.trades, 3)
        waiting = kafka.progress(group, inputs)
        assert waiting.lag == 3
        assert watch.observe(10 * STALL_AFTER_S, waiting) == "running"
        # a stage still counting what it processes is busy, not stalled (commits come later)
        assert watch.observe(12 * STALL_AFTER_S, waiting, processed=3) == "running"
        assert watch.observe(14 * STALL_AFTER_S, waiting, processed=3) == "stalled"
    finally:
        kafka.close()


def test_compact_view_shows_the_stalled_stage_of_a_run(kafka_bootstrap: str, topics: Topology) -> None:
    """The Observer of a run whose ohlcv stage stopped committing while md.trades grows: after
    STALL_AFTER_S of standing offsets that stage reads `stalled` in the 80x24 view."""
    kafka = KafkaLag({"bootstrap.servers": kafka_bootstrap})
    _wait_for_leaders(kafka, topics)
    _produce(kafka_bootstrap, topics.trades, 8)
    _commit(kafka_bootstrap, topics.ohlcv_group, topics.trades, 3)
    endpoints = [
        Endpoint(f"produce-{e}", "producer", port=free_port(), exchange=e, state="running", pid=100)
        for e in EXCHANGES
    ]
    endpoints += [Endpoint("stream-1", "stream", state="running", pid=11)]
    endpoints += [Endpoint("sink", "sink", state="running", pid=12)]
    observer = Observer(_state("live", endpoints, prefix=topics.prefix), kafka)
    try:
        observer.collect(now=1000.0)
        _produce(kafka_bootstrap, topics.trades, 4)
        picture = observer.collect(now=1000.0 + STALL_AFTER_S + 1)
    finally:
        observer.close()

    stages = {s.stage: s for s in picture.stages}
    assert (stages[STAGE_NAMES[2]].state, stages[STAGE_NAMES[2]].lag) == ("stalled", 9), picture.notes
    assert stages[STAGE_NAMES[1]].state == "idle"  # nothing in raw.*: nothing to do
    lines = _screen(picture)
    _assert_fits(lines)
    [ohlcv] = [line for line in lines if line.startswith(STAGE_NAMES[2])]
    assert ohlcv.split()[4] == "stalled", ohlcv
    assert any('stage="ohlcv md.trades -> md.ohlcv" state=stalled' in line for line in plain_lines(picture))


def test_full_view_is_a_key_away() -> None:
    """--view full (or the f key) shows every table; auto picks it only where it fits."""
    endpoints = [Endpoint(f"produce-{e}", "producer", exchange=e, state="running", pid=1) for e in EXCHANGES]
    observer = Observer(_state("live", endpoints, prefix=f"v{uuid.uuid4().hex[:6]}."), kafka=None)
    try:
        picture = observer.collect()
    finally:
        observer.close()
    assert "┏" in "\n".join(_screen(picture, "full"))  # the boxed tables
    assert "┏" not in "\n".join(_screen(picture, "auto"))  # they do not fit 80x24
    _assert_fits(_screen(picture, "auto"))


def test_the_run_says_it_starts_the_broker_before_waiting_for_it(tmp_path: Path) -> None:
    """What `make run` shows while the local broker starts (it used to be a blank screen until
    the broker answered): here the broker's port is taken, so the wait ends at once in an error,
    after the line that says what the run is doing."""
    import click

    from marketpipe.config import Settings
    from marketpipe.run_cli import _start_broker

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        local = {"port": port, "controller_port": free_port()}
        settings = Settings.model_validate(
            {"data_dir": str(tmp_path), "kafka": {"bootstrap_servers": "", "local": local}}
        )
        said: list[str] = []
        shown: list[str] = []
        with pytest.raises(click.ClickException, match=f"port {port} on 127.0.0.1 is already in use"):
            _start_broker(settings, said.append, shown.append)
    assert said == [
        f"event=kafka_starting bootstrap=127.0.0.1:{port} started_here=True "
        f"log={tmp_path / 'kafka' / 'kafka.log'}"
    ]
    assert shown == [f"Starting Kafka on 127.0.0.1:{port} (a first start takes up to a minute) ..."]
