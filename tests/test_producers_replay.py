"""Capture -> produce --from-capture -> Kafka -> capture reproduces every record byte for byte;
the CLI commands run end to end against the simulator."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from producers_support import read_topic, sim_settings, wait_until

from marketpipe.config import ProducerSettings
from marketpipe.raw import CaptureWriter, RawRecord, read_capture
from producers.connectors import connector_class
from producers.publisher import CaptureRawPublisher, KafkaRawPublisher
from producers.replay import replay_captures

simulator = pytest.importorskip("simulator", reason="the exchange simulator (simulator/) is not available")

FAST = ProducerSettings(backoff_initial_s=0.05, backoff_max_s=0.2)
MARKETPIPE = Path(sys.executable).with_name("marketpipe")


def _fields(record: RawRecord) -> tuple[object, ...]:
    return (
        record.exchange,
        record.conn,
        record.seq,
        record.kind,
        record.recv_ns,
        record.url,
        record.payload,
        record.shard,
    )


async def _capture_live(path: Path, exchange: str, symbol: str, seconds: float) -> None:
    server = await simulator.start_simulator(seed=5, exchanges=(exchange,))
    try:
        publisher = CaptureRawPublisher(path)
        connector = connector_class(exchange)(
            [symbol], publisher, sim_settings(server.urls(), exchange), FAST
        )
        await connector.start()
        task = asyncio.create_task(connector.run())
        await wait_until(lambda: connector.shards[0].stats.frames >= 10, 20, "frames")
        await asyncio.sleep(seconds)
        server.fault(exchange, "disconnect")  # a second connection in the same capture
        await wait_until(lambda: connector.shards[0].stats.connections >= 2, 20, "reconnect")
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await publisher.close()
    finally:
        await server.stop()


@pytest.mark.kafka
async def test_capture_replay_kafka_capture_round_trip_is_byte_exact(kafka_bootstrap, topics, tmp_path):
    live = tmp_path / "live.jsonl.gz"
    await _capture_live(live, "binance", "BTC-USDT", 1.0)
    original = list(read_capture(live))
    assert len({r.conn for r in original}) == 2
    assert {r.kind for r in original} == {"open", "rest", "sent", "recv", "close"}

    publisher = KafkaRawPublisher({"bootstrap.servers": kafka_bootstrap}, topics, linger_ms=5)
    await publisher.start()
    assert await replay_captures([live], publisher, speed=0) == len(original)
    await publisher.close()

    consumed = read_topic(kafka_bootstrap, topics.raw("binance"))
    consumed.sort(key=lambda c: (c.record.conn, c.record.seq))
    back = tmp_path / "back.jsonl.zst"
    with CaptureWriter(back) as writer:
        writer.write_all(c.record for c in consumed)
    expected = sorted(original, key=lambda r: (r.conn, r.seq))
    assert [_fields(r) for r in read_capture(back)] == [_fields(r) for r in expected]
    # both connections of the shard: one key (the live one), one partition, in order
    (key,) = {r.shard for r in original}
    assert key is not None and key.startswith("binance:")
    assert {item.key for item in consumed} == {key.encode()}
    assert len({item.partition for item in consumed}) == 1
    assert [(c.record.conn, c.record.seq) for c in sorted(consumed, key=lambda c: c.offset)] == [
        (r.conn, r.seq) for r in original
    ]


async def test_replay_speed_follows_recv_ns_gaps(tmp_path):
    source = tmp_path / "paced.jsonl"
    with CaptureWriter(source) as writer:
        for seq in range(3):
            writer.write(RawRecord("okx", "okx.a.0", seq, "recv", 1_000_000_000 + seq * 400_000_000, b"{}"))
    out = CaptureRawPublisher(tmp_path / "out.jsonl")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await replay_captures([source], out, speed=2.0)  # 0.8 s of recorded time at twice the speed
    assert loop.time() - started >= 0.39
    started = loop.time()
    await replay_captures([source], out, speed=0)
    assert out.stats.published == 6
    await out.close()


@pytest.mark.kafka
@pytest.mark.slow
async def test_cli_capture_then_produce_from_capture(kafka_bootstrap, topics, tmp_path):
    server = await simulator.start_simulator(seed=9, exchanges=("okx",))
    out = tmp_path / "cli.jsonl.zst"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MARKETPIPE_KAFKA__TOPIC_PREFIX": topics.prefix,
        "MARKETPIPE_METRICS_PORT": "0",
    }
    ws, rest = server.urls()["okx"]
    try:
        capture = await asyncio.create_subprocess_exec(
            str(MARKETPIPE),
            "capture",
            "--exchange",
            "okx",
            "--symbols",
            "BTC-USDT",
            "--ws-url",
            ws,
            "--rest-url",
            rest,
            "--duration",
            "3",
            "--out",
            str(out),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            stdout, stderr = await capture.communicate()
        assert capture.returncode == 0, stderr.decode()
        bad = await asyncio.create_subprocess_exec(
            str(MARKETPIPE),
            "capture",
            "--exchange",
            "okx",
            "--symbols",
            "NOPE-USDT",
            "--ws-url",
            ws,
            "--rest-url",
            rest,
            "--duration",
            "3",
            "--out",
            str(tmp_path / "bad.jsonl"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            _, bad_err = await bad.communicate()
        assert bad.returncode != 0 and b"NOPE-USDT" in bad_err
    finally:
        await server.stop()
    records = list(read_capture(out))
    assert records[0].kind == "open" and any(r.kind == "recv" for r in records)

    replay = await asyncio.create_subprocess_exec(
        str(MARKETPIPE),
        "produce",
        "--from-capture",
        str(out),
        "--speed",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await replay.communicate()
    assert replay.returncode == 0, stderr.decode()
    assert f"published {len(records)} records".encode() in stdout
    consumed = read_topic(kafka_bootstrap, topics.raw("okx"))
    assert sorted(_fields(c.record) for c in consumed) == sorted(_fields(r) for r in records)
