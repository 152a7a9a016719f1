"""Avro records through the real broker: produce with confluent-kafka, consume, decode."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer

from marketpipe.codec import AvroCodec
from marketpipe.records import Trade
from marketpipe.topics import Topology


def _trades(n: int) -> list[Trade]:
    return [
        Trade(
            exchange="okx",
            symbol="BTC-USDT",
            exchange_symbol="BTC-USDT",
            trade_id=str(1000 + i),
            price=30236.0 + i / 10,
            size=0.0002 * (i + 1),
            side="buy" if i % 2 else "sell",
            ts=1_652_459_224_818_000 + i,
            recv_ts=1_652_459_224_900_000 + i,
            conn="okx.t.0",
            seq=i,
        )
        for i in range(n)
    ]


def _consume_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rt-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        for _ in range(60):
            for message in consumer.consume(num_messages=500, timeout=0.5):
                assert message.error() is None, message.error()
                values.append(message.value())
            if len(values) >= expected:
                break
    finally:
        consumer.close()
    return values


def test_avro_records_round_trip_through_kafka(kafka_bootstrap: str, topics: Topology) -> None:
    codec = AvroCodec()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "acks": "all"})
    sent = _trades(250)
    for trade in sent:
        producer.produce(topics.trades, key=trade.key().encode(), value=codec.encode(trade, topics.trades))
    assert producer.flush(30) == 0

    values = _consume_all(kafka_bootstrap, topics.trades, len(sent))
    received = sorted((codec.decode(v, Trade) for v in values), key=lambda t: t.seq)
    assert received == sent


def test_confluent_wire_format_through_kafka(kafka_bootstrap: str, topics: Topology) -> None:
    codec = AvroCodec("mock://roundtrip")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    sent = _trades(20)
    for trade in sent:
        producer.produce(topics.trades, key=trade.key().encode(), value=codec.encode(trade, topics.trades))
    assert producer.flush(30) == 0
    values = _consume_all(kafka_bootstrap, topics.trades, len(sent))
    assert all(v[:1] == b"\x00" for v in values)
    assert sorted((codec.decode(v, Trade) for v in values), key=lambda t: t.seq) == sent
