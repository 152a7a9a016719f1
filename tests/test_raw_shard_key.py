"""The raw record key is the shard key: every connection of one symbol set (successive,
overlapping, after a producer restart) lands in one raw partition in order, so one stream
processor per partition sees the old connection's close after its successor's snapshot and
deduplicates the trades both delivered. Through a real broker, on real OKX frames."""

from __future__ import annotations

import json
import socket
import time

import orjson
import pytest
from feed_helpers import OKX_INSTRUMENTS_URL, okx_instruments
from producers_support import read_topic, wait_until
from samples import messages

from marketpipe.config import ProducerSettings
from marketpipe.raw import RawRecord
from marketpipe.topics import Topology
from producers.base import shard_key
from producers.publisher import KafkaRawPublisher
from streams.feed import ClockWindow, FeedOutput
from streams.parsers import processor_for

SYMBOLS = ["BTC-USDT", "ETH-USDT"]
OKX_AT = 1652459224000 * 1_000_000


def test_shard_key_is_stable_and_names_the_symbol_set() -> None:
    key = shard_key("okx", SYMBOLS)
    assert key == shard_key("okx", list(reversed(SYMBOLS))) and key.startswith("okx:")
    assert key != shard_key("okx", ["BTC-USDT"]) and key != shard_key("binance", SYMBOLS)


class Connection:
    """Records of one connection as the producer writes them (seq from 0, the shard's key)."""

    def __init__(self, conn: str, key: str) -> None:
        self.conn, self.key, self.seq = conn, key, 0

    def record(self, kind: str, data: str, url: str | None = None) -> RawRecord:
        self.seq += 1
        recv_ns = OKX_AT + self.seq * 1_000_000
        return RawRecord("okx", self.conn, self.seq - 1, kind, recv_ns, data.encode(), url, self.key)  # type: ignore[arg-type]

    def start(self) -> list[RawRecord]:
        return [
            self.record("open", json.dumps({"symbols": ["BTC-USDT"]}), "wss://ws.okx.com:8443/ws/v5/public"),
            self.record("rest", okx_instruments(("BTC-USDT", "BTC", "USDT")), OKX_INSTRUMENTS_URL),
        ]


def handover_session(key: str) -> list[RawRecord]:
    """Six connections of one shard in a row: each hands over to the next (make-before-break),
    the successor's subscribe snapshot and replayed latest trade arrive before the old close."""
    snapshot = messages("okx.json", "book_snapshot")[0]
    trades = messages("okx.json", "trade")
    session: list[RawRecord] = []
    previous: Connection | None = None
    for n in range(6):
        conn = Connection(f"okx.run{n // 3}.{n}", key)  # two producer runs
        session += conn.start()
        session.append(conn.record("recv", snapshot))
        session.append(conn.record("recv", trades[n % 3]))  # the latest trade, replayed on subscribe
        if previous is not None:
            session.append(previous.record("recv", trades[n % 3]))  # both deliver it meanwhile
            session.append(
                previous.record("close", json.dumps({"code": 1000, "reason": "planned reconnect"}))
            )
        previous = conn
    return session


@pytest.mark.kafka
async def test_every_connection_of_a_shard_shares_one_partition_and_normalises_once(
    kafka_bootstrap: str, topics: Topology
) -> None:
    key = shard_key("okx", ["BTC-USDT"])
    session = handover_session(key)
    publisher = KafkaRawPublisher({"bootstrap.servers": kafka_bootstrap}, topics, linger_ms=5)
    await publisher.start()
    for record in session:
        await publisher.publish_wait(record)
    await publisher.close()

    consumed = read_topic(kafka_bootstrap, topics.raw("okx"))
    assert len(consumed) == len(session)
    assert {c.key for c in consumed} == {key.encode()}
    assert len({c.partition for c in consumed}) == 1  # 3 partitions, six connections: one partition
    in_order = sorted(consumed, key=lambda c: c.offset)
    assert [(c.record.conn, c.record.seq) for c in in_order] == [(r.conn, r.seq) for r in session]

    # what one stream processor of that partition publishes
    processor = processor_for("okx", ClockWindow())
    out = FeedOutput()
    for item in in_order:
        processor.process(item.record, out)
    assert out.errors == []
    trade_ids = [t.trade_id for t in out.trades]
    assert sorted(trade_ids) == ["338476307", "338476308", "338476309"]  # each distinct trade once
    assert processor.counters.duplicates_dropped == 6 + 5 - 3
    latest = {s.key(): (s.state, s.conn) for s in out.status}
    assert latest == {"okx:BTC-USDT": ("synced", "okx.run1.5")}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_failed_deliveries_keyed_by_shard_make_the_shards_live_connections_lossy() -> None:
    """Kafka reports a failed delivery with the key only: with shard keys the publisher finds the
    shard's connections (both, during a handover) and its gap markers carry the shard key."""
    key = shard_key("okx", SYMBOLS)
    publisher = KafkaRawPublisher(
        {"bootstrap.servers": f"127.0.0.1:{_closed_port()}"},
        Topology(prefix="undeliverable."),
        producer=ProducerSettings(message_timeout_ms=1000),
    )
    await publisher.start()
    try:
        old, new = Connection("okx.z.0", key), Connection("okx.z.1", key)
        records = [*old.start(), *new.start(), new.record("recv", "{}"), old.record("recv", "{}")]
        assert all(publisher.publish(record) for record in records)
        await wait_until(lambda: publisher.stats.delivery_errors == len(records), 20, "delivery failures")
        assert publisher.is_lossy("okx.z.0") and publisher.is_lossy("okx.z.1")
        gaps = publisher._gaps.gaps
        assert {gap.key for gap in gaps.values()} == {key}
        marker = gaps["okx.z.1"].marker()
        assert marker.kind == "close" and marker.shard == key and marker.kafka_key == key
        assert orjson.loads(marker.payload)["code"] == 4900
    finally:
        publisher.close_timeout_s = 0.5
        await publisher.close()


def test_records_without_a_shard_keep_the_connection_id_as_key() -> None:
    """Older captures replayed into Kafka: no shard, keyed by conn as before."""
    record = RawRecord("okx", "okx.old.0", 0, "recv", time.time_ns(), b"{}")
    assert record.kafka_key == "okx.old.0" and record.shard is None
    back = RawRecord.from_kafka(record.payload, record.kafka_headers(), record.kafka_key.encode())
    assert back == record
    sharded = RawRecord("okx", "okx.new.0", 0, "recv", 1, b"{}", None, "okx:abc")
    assert RawRecord.from_kafka(sharded.payload, sharded.kafka_headers(), b"okx:abc") == sharded
