"""Avro codec: single-object encoding, Confluent wire format, and schema evolution."""

from __future__ import annotations

import json
import struct

import pytest

from marketpipe.codec import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, AvroCodec, DecodeError
from marketpipe.records import (
    BBO,
    BookBuckets,
    BookChange,
    Bucket,
    Candle,
    ControlRequest,
    DeadLetter,
    DepthBand,
    Level,
    StatusEvent,
    Trade,
)
from schemas import SCHEMA_DIR

TRADE = Trade(
    exchange="binance",
    symbol="BTC-USDT",
    exchange_symbol="BTCUSDT",
    trade_id="12345",
    price=65140.5,
    size=0.002705,
    side="buy",
    ts=1_786_310_822_605_000,
    recv_ts=1_786_310_822_611_234,
    conn="binance.k3.0",
    seq=42,
)

SAMPLES = [
    TRADE,
    BookChange(
        exchange="okx",
        symbol="BTC-USDT",
        exchange_symbol="BTC-USDT",
        snapshot=False,
        bids=[Level(30243.5, 1.2112)],
        asks=[Level(30247.5, 0.0)],
        ts=1,
        recv_ts=2,
        first_update_id=11,
        last_update_id=15,
        checksum=-1234567,
        conn="okx.a.1",
        seq=7,
    ),
    BBO(
        exchange="kraken",
        symbol="ETH-USD",
        exchange_symbol="ETH/USD",
        bid_price=1797.24,
        bid_size=0.4,
        ask_price=1797.29,
        ask_size=1.5,
        ts=3,
        recv_ts=4,
    ),
    BookBuckets(
        exchange="all",
        symbol="BTC-USD",
        ts=5,
        mid=65000.0,
        best_bid=64999.5,
        best_ask=65000.5,
        spread=1.0,
        bucket_size=10.0,
        bids=[Bucket(64990.0, 2.0, 129980.0)],
        asks=[],
        bands=[DepthBand(0.1, 2.0, 0.0, 1.0)],
        markets=["coinbase:BTC-USD", "kraken:BTC-USD"],
    ),
    Candle(
        exchange="bybit",
        symbol="BTC-USDT",
        interval="1m",
        open_time=60_000_000,
        close_time=120_000_000,
        open=1.0,
        high=2.0,
        low=0.5,
        close=1.5,
        volume=10.0,
        quote_volume=12.0,
        buy_volume=6.0,
        sell_volume=4.0,
        trades=7,
        vwap=1.2,
        first_trade_ts=60_000_001,
        last_trade_ts=119_999_999,
        closed=True,
        late=True,
        version=9,
    ),
    StatusEvent(
        exchange="coinbase",
        symbol="ETH-USD",
        ts=6,
        state="unsynced",
        reason="gap",
        detail="sequence_num 22 after 20",
        conn="coinbase.x.0",
        gaps=1,
    ),
    ControlRequest(
        exchange="binance", symbol="ETH-USDT", exchange_symbol="ETHUSDT", action="resync", reason="gap", ts=7
    ),
    DeadLetter(
        stage="stream",
        source_topic="raw.okx",
        partition=2,
        offset=99,
        exchange="okx",
        conn="okx.a.1",
        seq=5,
        reason="malformed JSON",
        payload=b"\x00{not json",
        ts=8,
    ),
]


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_single_object_round_trip(record: object) -> None:
    codec = AvroCodec()
    data = codec.encode(record)  # type: ignore[arg-type]
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == codec.schema_for(type(record)).fingerprint  # type: ignore[arg-type]
    assert codec.decode(data) == record
    assert codec.decode(data, type(record)) == record  # type: ignore[arg-type]


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_confluent_wire_format_round_trip(record: object) -> None:
    # confluent-kafka's own in-memory registry (mock:// URL) stands in for a registry server,
    # which cannot run on this machine; the framing and id lookups are the library's real code.
    codec = AvroCodec("mock://marketpipe-tests")
    data = codec.encode(record, topic="md.test")  # type: ignore[arg-type]
    assert data[:1] == CONFLUENT_MAGIC
    (schema_id,) = struct.unpack(">I", data[1:5])
    assert schema_id > 0
    assert codec.decode(data) == record
    # a second encode reuses the registered id
    assert codec.encode(record, topic="md.test")[:5] == data[:5]  # type: ignore[arg-type]


def test_registry_codec_still_decodes_single_object_records() -> None:
    plain = AvroCodec().encode(TRADE)
    assert AvroCodec("mock://marketpipe-tests").decode(plain) == TRADE


def test_confluent_record_without_registry_is_a_clear_error() -> None:
    data = AvroCodec("mock://marketpipe-tests").encode(TRADE, topic="md.trades")
    with pytest.raises(DecodeError, match="SCHEMA_REGISTRY_URL"):
        AvroCodec().decode(data)


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(DecodeError, match="not an Avro record"):
        AvroCodec().decode(b'{"json": true}')
    with pytest.raises(DecodeError, match="unknown schema fingerprint"):
        AvroCodec().decode(SINGLE_OBJECT_MAGIC + b"\x01" * 8 + b"\x00")


def test_truncated_body_is_a_clear_error() -> None:
    data = AvroCodec().encode(TRADE)
    with pytest.raises(DecodeError, match="cannot decode"):
        AvroCodec().decode(data[:20])


def _older_trade_schema() -> dict[str, object]:
    """Trade as a hypothetical v0 without conn/seq: records written by it must still decode."""
    schema = json.loads((SCHEMA_DIR / "trade.avsc").read_text())
    schema["fields"] = [f for f in schema["fields"] if f["name"] not in ("conn", "seq")]
    return schema


def test_backward_compatible_evolution_fills_defaults() -> None:
    """An older Candle without `late` and `markets` (both have defaults) decodes with today's schema."""
    codec = AvroCodec()
    old = json.loads((SCHEMA_DIR / "ohlcv.avsc").read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] not in ("late", "markets")]
    codec.add_writer_schema(old)
    value = {k: v for k, v in SAMPLES[4].to_dict().items() if k not in ("late", "markets")}
    decoded = codec.decode(codec.encode_with(old, value), Candle)
    assert decoded.late is False and decoded.markets == []
    assert decoded.version == 9 and decoded.close == 1.5


def test_incompatible_evolution_is_rejected() -> None:
    """Removing fields that have no default breaks backward compatibility, and decoding says so."""
    codec = AvroCodec()
    old = _older_trade_schema()
    codec.add_writer_schema(old)
    value = {k: v for k, v in TRADE.to_dict().items() if k not in ("conn", "seq")}
    with pytest.raises(DecodeError):
        codec.decode(codec.encode_with(old, value), Trade)
