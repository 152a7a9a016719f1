"""Publishers: capture files, Kafka headers and keys, bounded buffering with explicit gap markers."""

from __future__ import annotations

import asyncio
import socket
import time

import orjson
import pytest
from producers_support import by_connection, read_topic, wait_until

from marketpipe.config import ProducerSettings
from marketpipe.raw import RawRecord, read_capture
from marketpipe.topics import Topology
from producers.publisher import GAP_CLOSE_CODE, CaptureRawPublisher, KafkaRawPublisher


def _records(conn: str, count: int, start: int = 0, exchange: str = "binance") -> list[RawRecord]:
    now = time.time_ns()
    return [
        RawRecord(exchange, conn, seq, "recv", now + seq, f'{{"n":{seq},"pad":"{"x" * 200}"}}'.encode())
        for seq in range(start, start + count)
    ]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_capture_publisher_writes_records_readable_back(tmp_path):
    path = tmp_path / "session.jsonl.zst"
    publisher = CaptureRawPublisher(path)
    records = [
        *_records("binance.x.0", 5),
        RawRecord("binance", "binance.x.0", 5, "recv", 1, b"\xff\x00binary"),
    ]
    for record in records:
        assert publisher.publish(record)
    await publisher.close()
    back = list(read_capture(path))
    assert [(r.conn, r.seq, r.kind, r.recv_ns, r.payload) for r in back] == [
        (r.conn, r.seq, r.kind, r.recv_ns, r.payload) for r in records
    ]


async def test_unreachable_kafka_buffers_bounded_then_drops_with_gap(tmp_path):
    bound = 50
    publisher = KafkaRawPublisher(
        {"bootstrap.servers": f"127.0.0.1:{_closed_port()}"},
        Topology(prefix="unreachable."),
        producer=ProducerSettings(buffer_max_messages=bound, message_timeout_ms=60_000),
    )
    await publisher.start()
    try:
        accepted = [publisher.publish(r) for r in _records("binance.x.0", 500)]
        assert sum(accepted) == bound
        assert accepted[:bound] == [True] * bound  # the first ones fit, everything after is dropped
        depth = publisher.queue_depth()  # also counts a few client events (connection errors)
        assert depth < bound + 10
        assert publisher.stats.dropped == 500 - bound
        assert publisher.is_lossy("binance.x.0")
        assert not publisher.writable()
        # a second connection publishing meanwhile is dropped too, and gets its own gap
        assert not publisher.publish(_records("binance.x.1", 1)[0])
        gaps = {gap.conn: gap for gap in publisher.pending_gaps()}
        assert gaps["binance.x.0"].first_seq == bound
        assert gaps["binance.x.0"].last_seq == 499
        assert gaps["binance.x.0"].dropped == 500 - bound
        marker = gaps["binance.x.0"].marker()
        assert marker.kind == "close" and marker.seq == 500
        assert orjson.loads(marker.payload)["gap"]["dropped"] == 500 - bound
        for record in _records("binance.x.2", 200):
            publisher.publish(record)
        await asyncio.sleep(0.3)
        assert publisher.queue_depth() < bound + 10  # nothing grows while Kafka stays away
    finally:
        publisher.close_timeout_s = 0.5
        await publisher.close()


@pytest.mark.kafka
async def test_full_buffer_gap_marker_lands_in_kafka_as_the_connections_last_record(kafka_bootstrap, topics):
    bound = 20
    publisher = KafkaRawPublisher(
        {"bootstrap.servers": kafka_bootstrap},
        topics,
        linger_ms=2000,  # keep the first records queued while the rest arrive
        producer=ProducerSettings(buffer_max_messages=bound),
    )
    conn = "binance.gap.0"
    for record in _records(conn, 100):
        publisher.publish(record)
    await publisher.start()
    await wait_until(lambda: not publisher.pending_gaps(), 20, "the gap marker to be queued")
    assert not publisher.publish(_records(conn, 1, start=100)[0])  # the lossy connection stays closed
    await publisher.close()

    records = [c.record for c in by_connection(read_topic(kafka_bootstrap, topics.raw("binance")))[conn]]
    assert [r.seq for r in records] == [*range(bound), 100]
    assert [r.kind for r in records[:-1]] == ["recv"] * bound
    marker = records[-1]
    assert marker.kind == "close"
    body = orjson.loads(marker.payload)
    assert body["code"] == GAP_CLOSE_CODE
    assert body["gap"] == {
        "dropped": 100 - bound,
        "first_seq": bound,
        "last_seq": 99,
        "first_recv_ns": body["gap"]["first_recv_ns"],
        "reason": body["gap"]["reason"],
    }
    assert publisher.stats.gap_markers == 1
    assert publisher.stats.dropped == 100 - bound + 1


async def test_undeliverable_records_are_counted_and_make_the_connection_lossy():
    publisher = KafkaRawPublisher(
        {"bootstrap.servers": f"127.0.0.1:{_closed_port()}"},
        Topology(prefix="undeliverable."),
        producer=ProducerSettings(message_timeout_ms=1000),
    )
    await publisher.start()
    try:
        assert all(publisher.publish(r) for r in _records("okx.y.0", 10, exchange="okx"))
        assert not publisher.is_lossy("okx.y.0")
        await wait_until(lambda: publisher.stats.delivery_errors == 10, 20, "delivery failures")
        assert publisher.is_lossy("okx.y.0")
        assert publisher.stats.dropped == 10
        (gap,) = publisher._gaps.gaps.values()
        assert (gap.exchange, gap.last_seq, gap.dropped) == ("okx", 9, 10)
        assert (
            orjson.loads(gap.marker().payload)["gap"]["first_seq"] is None
        )  # unknown after a failed delivery
    finally:
        publisher.close_timeout_s = 0.5
        await publisher.close()
