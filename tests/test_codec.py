"""Avro codec: single-object encoding, Confluent wire format, and schema evolution."""

from __future__ import annotations

import io
import json
import struct
import typing
from collections.abc import Callable
from operator import attrgetter
from pathlib import Path
from typing import Any

import fastavro
import msgspec
import pytest
from feed_helpers import BINANCE_INFO_URL, Feed, binance_info
from samples import messages

from marketpipe import _avro_writer
from marketpipe.codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    AvroSchema,
    DecodeError,
    compile_reader,
    compile_writer,
    long_bytes,
    native_program,
    read_long,
)
from marketpipe.records import (
    BBO,
    RECORD_TYPES,
    BookBuckets,
    BookChange,
    BookState,
    Bucket,
    Candle,
    ControlRequest,
    DeadLetter,
    DepthBand,
    ExchangeCandle,
    FundingRate,
    Instrument,
    Level,
    Liquidation,
    MarkPrice,
    OpenInterest,
    Record,
    Side,
    StatusEvent,
    Ticker,
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
    assert codec.decode(data, type(record)) == record  # type: ignore[type-var]


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


# -- compiled writers: byte-identical to fastavro ----------------------------------------

BIG = 2**62 + 12_345  # near the top of an Avro long
UNICODE = "Ünïcödé €→✓ 比特币 \U0001f680"  # 1- to 4-byte UTF-8


def _edge_values() -> list[Record]:
    """Every record type with None in each nullable field, empty arrays, unicode, extreme longs."""
    trades = [
        Trade(
            exchange=UNICODE,
            symbol="",
            exchange_symbol="x" * 200,  # length needs a two-byte varint
            trade_id=str(-BIG),
            price=-0.0,
            size=1e-300,
            side=side,
            ts=ts,
            recv_ts=~ts,  # -ts - 1: stays inside 64 bits
            conn="c",
            seq=seq,
        )
        for side, ts, seq in zip(typing.get_args(Side), (BIG, -(2**63), 2**63 - 1), (0, -1, 63), strict=True)
    ]
    empty_book = BookChange(
        exchange="okx",
        symbol="BTC-USDT",
        exchange_symbol="BTC-USDT",
        snapshot=True,
        bids=[],
        asks=[],
        ts=-BIG,
        recv_ts=BIG,
        conn=UNICODE,
        seq=64,
    )
    deep_book = msgspec.structs.replace(
        empty_book,
        snapshot=False,
        bids=[Level(65000.0 - i / 7, i * 1e-8) for i in range(200)],
        asks=[Level(1e300, -1e-300)],
        first_update_id=-(2**62),
        last_update_id=BIG,
        checksum=-2_147_483_648,
    )
    buckets = BookBuckets(
        exchange="all",
        symbol=UNICODE,
        ts=BIG,
        mid=-1.5,
        best_bid=0.0,
        best_ask=float("inf"),
        spread=float("-inf"),
        bucket_size=1e-9,
        bids=[],
        asks=[Bucket(1.0, 2.0, 3.0)] * 65,
        bands=[],
    )
    candles = [
        Candle(
            exchange="bybit",
            symbol="BTC-USDT",
            interval="1m",
            open_time=-BIG,
            close_time=BIG,
            open=1.0,
            high=2.0,
            low=0.5,
            close=1.5,
            volume=0.0,
            quote_volume=-0.0,
            buy_volume=1e308,
            sell_volume=5e-324,
            trades=-1,
            vwap=1.2,
            first_trade_ts=0,
            last_trade_ts=-64,
            closed=closed,
            late=late,
            version=BIG,
            markets=markets,
        )
        for closed, late, markets in ((True, False, []), (False, True, [UNICODE, ""] * 40))
    ]
    statuses = [
        StatusEvent(exchange="kraken", symbol="ETH-USD", ts=BIG, state=state, reason="", conn=conn, gaps=BIG)
        for state, conn in zip(typing.get_args(BookState), (None, UNICODE, None, "c"), strict=True)
    ]
    controls = [
        ControlRequest(
            exchange="b", symbol="s", exchange_symbol=UNICODE, action="resync", reason="", ts=-1, conn=conn
        )
        for conn in (None, "binance.k3.0")
    ]
    letters = [
        DeadLetter(
            stage="sink", source_topic="md.trades", partition=0, offset=0, reason="", payload=b"", ts=0
        ),
        DeadLetter(
            stage=UNICODE,
            source_topic="raw.okx",
            partition=2**31 - 1,
            offset=BIG,
            exchange="okx",
            conn="okx.a.1",
            seq=-BIG,
            reason="bad",
            payload=bytes(range(256)) * 3,
            ts=BIG,
        ),
    ]
    bbos = [
        BBO(
            exchange=UNICODE,
            symbol="ETH-USD",
            exchange_symbol="",
            bid_price=-0.0,
            bid_size=5e-324,
            ask_price=1e308,
            ask_size=float("inf"),
            ts=-BIG,
            recv_ts=2**63 - 1,
        )
    ]
    tickers = [
        Ticker(
            exchange="htx", symbol="BTC-USDT", exchange_symbol="btcusdt", ts=0, recv_ts=BIG, conn="", seq=0
        ),
        Ticker(
            exchange=UNICODE,
            symbol="ETH-USD",
            exchange_symbol=UNICODE,
            last_price=1e308,
            last_size=5e-324,
            bid_price=-0.0,
            bid_size=0.0,
            ask_price=float("inf"),
            ask_size=1.0,
            open_24h=2.0,
            high_24h=3.0,
            low_24h=-1.0,
            volume_24h=4.0,
            quote_volume_24h=5.0,
            trades_24h=-BIG,
            ts=-BIG,
            recv_ts=2**63 - 1,
            conn=UNICODE,
            seq=BIG,
        ),
    ]
    exchange_candles = [
        ExchangeCandle(
            exchange="binance",
            symbol="BTC-USDT",
            exchange_symbol="BTCUSDT",
            interval="1m",
            open_time=-BIG,
            close_time=BIG,
            open=1.0,
            high=2.0,
            low=0.5,
            close=1.5,
            volume=volume,
            quote_volume=volume,
            trades=trades,
            first_trade_id=first,
            last_trade_id=first,
            closed=closed,
            ts=0,
            recv_ts=-1,
            conn="binance.a.1",
            seq=1,
        )
        for volume, trades, first, closed in ((None, None, None, False), (1e308, BIG, UNICODE, True))
    ]
    instruments = [
        Instrument(
            exchange="okx",
            symbol="BTC-USDT",
            exchange_symbol="BTC-USDT",
            kind="spot",
            base="BTC",
            quote="USDT",
            contract_size=1.0,
            contract_size_currency="BTC",
            ts=0,
        ),
        *(
            Instrument(
                exchange=UNICODE,
                symbol=UNICODE,
                exchange_symbol="",
                kind=kind,
                contract_type=contract_type,
                base=UNICODE,
                quote="",
                settle_currency=UNICODE,
                contract_size=size,
                contract_size_currency=UNICODE,
                expiry_ts=expiry,
                strike=strike,
                option_type=option_type,
                tick_size=5e-324,
                lot_size=-0.0,
                ts=-BIG,
            )
            for kind, contract_type, size, expiry, strike, option_type in (
                ("perpetual", "inverse", 1e308, None, None, None),
                ("future", "linear", 5e-324, BIG, None, None),
                ("option", "quanto", float("inf"), -BIG, 1e308, "put"),
                ("option", "linear", 0.01, 0, -0.0, "call"),
            )
        ),
    ]
    where = {
        "exchange": UNICODE,
        "symbol": "BTC-USDT-PERP",
        "exchange_symbol": "",
        "recv_ts": -1,
        "conn": UNICODE,
    }
    derivatives: list[Record] = [
        FundingRate(rate=-0.0, ts=0, seq=0, **where),  # type: ignore[arg-type]
        FundingRate(
            rate=1.0, predicted_rate=-1e-12, next_funding_ts=BIG, interval_s=-BIG, ts=BIG, seq=BIG, **where
        ),  # type: ignore[arg-type]
        OpenInterest(open_interest=0.0, ts=0, seq=1, **where),  # type: ignore[arg-type]
        OpenInterest(open_interest=1e308, value=5e-324, ts=-BIG, seq=-BIG, **where),  # type: ignore[arg-type]
        MarkPrice(ts=0, seq=1, **where),  # type: ignore[arg-type]
        MarkPrice(mark_price=1e308, index_price=5e-324, settle_price=-0.0, ts=BIG, seq=2, **where),  # type: ignore[arg-type]
        *(
            Liquidation(side=side, price=p, size=sz, liquidation_id=lid, ts=BIG, seq=3, **where)  # type: ignore[arg-type]
            for side, p, sz, lid in (
                ("buy", 5e-324, 1e308, None),
                ("sell", 1.0, 0.5, UNICODE),
                ("unknown", 2.0, 0.0, ""),
            )
        ),
    ]
    return [
        *trades,
        empty_book,
        deep_book,
        *bbos,
        buckets,
        *candles,
        *tickers,
        *exchange_candles,
        *statuses,
        *controls,
        *letters,
        *instruments,
        *derivatives,
    ]


EDGE_VALUES = _edge_values()


def _fastavro_body(codec: AvroCodec, record: Record) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(
        out, codec.schema_for(type(record)).parsed, msgspec.to_builtins(record, builtin_types=(bytes,))
    )
    return out.getvalue()


def _assert_encodes_like_fastavro(codec: AvroCodec, record: Record) -> None:
    data = codec.encode(record)
    assert data[:10] == SINGLE_OBJECT_MAGIC + codec.schema_for(type(record)).fingerprint
    assert data[10:] == _fastavro_body(codec, record), record
    assert codec.decode(data) == record


# the two compiled writers: C (marketpipe/_avro_writer.c, built by every install `make` does)
# and the generated Python writers it falls back to
WRITERS = pytest.mark.parametrize("native", [True, False], ids=["c-writer", "python-writer"])


def test_the_c_writer_is_built() -> None:
    """`make bootstrap` compiles it: without it every record would take the slower path."""
    from marketpipe import _avro_writer

    assert callable(_avro_writer.Writer)


@pytest.mark.parametrize(
    ("program", "error"),
    [
        ("record", TypeError),
        ((), TypeError),
        ((99,), ValueError),
        ((_avro_writer.ARRAY,), ValueError),
        ((_avro_writer.RECORD, (("price", "double"),)), TypeError),
        ((_avro_writer.RECORD, ((1, (_avro_writer.LONG,)),)), TypeError),
    ],
    ids=["not-a-tuple", "empty", "unknown-step", "array-without-items", "bad-field-step", "bad-field-name"],
)
def test_a_malformed_c_writer_program_is_a_clear_error(program: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        _avro_writer.Writer(program)


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
def test_every_schema_compiles_to_a_writer(record_type: type[Record]) -> None:
    """No schema of ours falls back to fastavro for encoding."""
    parsed = AvroCodec().schema_for(record_type).parsed
    assert compile_writer(parsed) is not None
    assert native_program(parsed) is not None


def test_edge_values_cover_every_record_type() -> None:
    assert {type(r) for r in EDGE_VALUES} == set(RECORD_TYPES)


@WRITERS
@pytest.mark.parametrize("record", SAMPLES + EDGE_VALUES, ids=lambda r: type(r).__name__)
def test_compiled_writer_is_byte_identical_to_fastavro(record: Record, native: bool) -> None:
    _assert_encodes_like_fastavro(AvroCodec(native=native), record)


@WRITERS
def test_confluent_framing_wraps_the_same_body(native: bool) -> None:
    record = EDGE_VALUES[4]
    data = AvroCodec("mock://marketpipe-tests", native=native).encode(record, topic="md.books")
    assert data[:1] == CONFLUENT_MAGIC and data[5:] == AvroCodec().encode(record)[10:]


@WRITERS
def test_records_from_the_binance_parser_encode_like_fastavro(native: bool) -> None:
    """Trades, snapshot and diff book changes, BBOs and status events parsed from real frames."""
    feed = Feed("binance")
    feed.open("wss://stream.binance.com:9443/stream", ["NKNUSDT", "LRCBTC"])
    feed.rest(BINANCE_INFO_URL, binance_info(("NKNUSDT", "NKN", "USDT"), ("LRCBTC", "LRC", "BTC")))
    depth_url = "https://api.binance.com/api/v3/depth?symbol=NKNUSDT&limit=1000"
    outputs = [
        feed.recv_all(messages("binance.json", "trade")),
        feed.rest(depth_url, messages("binance.json", "book_snapshot")[0]),
        feed.recv_all(messages("binance.json", "book_update")),
    ]
    records: list[Record] = [r for out in outputs for r in (*out.trades, *out.books, *out.bbos, *out.status)]
    assert {type(r) for r in records} == {Trade, BookChange, BBO, StatusEvent}
    assert any(isinstance(r, BookChange) and len(r.bids) > 100 for r in records)
    codec = AvroCodec(native=native)
    for record in records:
        _assert_encodes_like_fastavro(codec, record)


class _Item(msgspec.Struct):
    n: int | None
    flag: bool
    ratio: float


ITEM_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Item",
    "fields": [
        {"name": "n", "type": ["long", "null"]},  # null second: the branch index follows the schema
        {"name": "flag", "type": "boolean"},
        {"name": "ratio", "type": "float"},
    ],
}


def _item_writers(schema: AvroSchema) -> list[Callable[[Any], bytes]]:
    """The generated Python writer and the C writer of one schema, each returning the body."""
    write, program = compile_writer(schema.parsed), native_program(schema.parsed)
    assert write is not None and program is not None

    def python_writer(value: Any) -> bytes:
        out = bytearray()
        write(out, value)
        return bytes(out)

    return [python_writer, _avro_writer.Writer(program)]


@pytest.mark.parametrize("item", [_Item(5, True, 0.5), _Item(None, False, -3.25), _Item(-BIG, True, 1e30)])
def test_union_with_null_last_and_float_match_fastavro(item: _Item) -> None:
    schema = AvroSchema.from_dict(ITEM_SCHEMA)
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, schema.parsed, msgspec.to_builtins(item))
    for write in _item_writers(schema):
        assert write(item) == expected.getvalue(), write


@pytest.mark.parametrize(
    ("item", "error"),
    [
        (_Item(2**63, True, 0.5), OverflowError),  # outside an Avro long
        (_Item(5, True, 1e39), OverflowError),  # outside a float
        (_Item(5, True, "0.5"), (TypeError, struct.error)),  # type: ignore[arg-type]
        (_Item(1.5, True, 0.5), TypeError),  # type: ignore[arg-type]
    ],
    ids=["long-overflow", "float-overflow", "str-for-float", "float-for-long"],
)
def test_values_that_do_not_fit_their_schema_are_errors_in_both_writers(
    item: _Item, error: type[Exception] | tuple[type[Exception], ...]
) -> None:
    for write in _item_writers(AvroSchema.from_dict(ITEM_SCHEMA)):
        with pytest.raises(error):
            write(item)


@WRITERS
def test_a_wrong_type_in_a_record_is_an_error_not_a_record(native: bool) -> None:
    codec = AvroCodec(native=native)
    book = next(r for r in SAMPLES if isinstance(r, BookChange))
    for bad in (
        msgspec.structs.replace(TRADE, symbol=None),
        msgspec.structs.replace(TRADE, ts="now"),
        msgspec.structs.replace(book, bids=[(1.0, 2.0)]),
        msgspec.structs.replace(book, asks=5),
    ):
        with pytest.raises((TypeError, AttributeError, struct.error)):
            codec.encode(bad)


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "map", "values": "long"},
        {"type": "fixed", "name": "F", "size": 4},
        ["null", "long", "string"],
        {"type": "long", "logicalType": "timestamp-micros"},
    ],
    ids=["map", "fixed", "three-branch-union", "logical-type"],
)
def test_unsupported_types_fall_back_to_fastavro(field_type: object) -> None:
    schema = AvroSchema.from_dict(
        {"type": "record", "name": "X", "fields": [{"name": "x", "type": field_type}]}
    )
    assert compile_writer(schema.parsed) is None


def test_a_schema_the_compiler_does_not_handle_is_encoded_by_fastavro(tmp_path: Path) -> None:
    for path in SCHEMA_DIR.glob("*.avsc"):
        (tmp_path / path.name).write_text(path.read_text())
    status = json.loads((SCHEMA_DIR / "status.avsc").read_text())
    conn = next(f for f in status["fields"] if f["name"] == "conn")
    conn["type"] = ["null", "string", "long"]  # a three-branch union: not compiled
    (tmp_path / "status.avsc").write_text(json.dumps(status))
    codec = AvroCodec(schema_dir=tmp_path)
    assert compile_writer(codec.schema_for(StatusEvent).parsed) is None
    record = next(r for r in EDGE_VALUES if isinstance(r, StatusEvent) and r.conn is not None)
    _assert_encodes_like_fastavro(codec, record)
    assert codec.encode(TRADE) == AvroCodec().encode(TRADE)  # the other schemas stay compiled


def test_longs_outside_64_bits_are_rejected_like_fastavro() -> None:
    assert long_bytes(2**63 - 1) == bytes.fromhex("feffffffffffffffff01")
    assert long_bytes(-(2**63)) == bytes.fromhex("ffffffffffffffffff01")
    for value in (2**63, -(2**63) - 1):
        with pytest.raises(OverflowError):
            long_bytes(value)


@WRITERS
def test_longs_outside_64_bits_in_a_record_are_rejected(native: bool) -> None:
    codec = AvroCodec(native=native)
    assert codec.decode(codec.encode(msgspec.structs.replace(TRADE, seq=2**63 - 1))).seq == 2**63 - 1
    for value in (2**63, -(2**63) - 1):
        with pytest.raises(OverflowError):
            codec.encode(msgspec.structs.replace(TRADE, seq=value))


@WRITERS
def test_bad_enum_symbol_is_a_clear_error(native: bool) -> None:
    bad = msgspec.structs.replace(TRADE, side="sideways")
    with pytest.raises(ValueError, match=r"'sideways' is not a symbol of enum io\.marketpipe\.Side"):
        AvroCodec(native=native).encode(bad)


# -- compiled readers: the same records as fastavro + msgspec.convert ----------------------


def _fastavro_decode(codec: AvroCodec, data: bytes, record_type: type[Record]) -> Record:
    schema = codec.schema_for(record_type).parsed
    return msgspec.convert(
        fastavro.schemaless_reader(io.BytesIO(data[10:]), schema, schema), type=record_type
    )


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=lambda t: t.__name__)
def test_every_schema_compiles_to_a_reader(record_type: type[Record]) -> None:
    assert compile_reader(AvroCodec().schema_for(record_type).parsed, record_type) is not None


@pytest.mark.parametrize("record", SAMPLES + EDGE_VALUES, ids=lambda r: type(r).__name__)
def test_compiled_reader_decodes_like_fastavro(record: Record) -> None:
    codec = AvroCodec()
    data = codec.encode(record)
    read = compile_reader(codec.schema_for(type(record)).parsed, type(record))
    assert read is not None
    compiled, end = read(data, 10)
    assert end == len(data)
    assert compiled == _fastavro_decode(codec, data, type(record)) == record
    assert type(compiled) is type(record)
    assert codec.decode(data) == codec.decode(bytearray(data)) == codec.decode(memoryview(data)) == record


def test_trailing_bytes_are_ignored_like_fastavro() -> None:
    codec = AvroCodec()
    data = codec.encode(TRADE) + b"\x00trailing"
    assert codec.decode(data) == _fastavro_decode(codec, data, Trade) == TRADE


TRADE_FIELDS = ("exchange", "symbol", "ts", "price", "size", "side")  # the ohlcv stage's


def test_field_reader_reads_the_fields_decode_reads() -> None:
    codec = AvroCodec()
    read = codec.field_reader(Trade, TRADE_FIELDS)
    trades = [r for r in SAMPLES + EDGE_VALUES if isinstance(r, Trade)]
    assert len(trades) > 1
    for trade in trades:
        assert read(codec.encode(trade)) == attrgetter(*TRADE_FIELDS)(trade)


def test_field_reader_needs_the_body_up_to_its_last_field_only() -> None:
    codec = AvroCodec()
    data = codec.encode(TRADE)
    read = codec.field_reader(Trade, TRADE_FIELDS)
    project = compile_reader(codec.schema_for(Trade).parsed, Trade, TRADE_FIELDS)
    assert project is not None
    _, end = project(data, 10)
    assert end < len(data)  # recv_ts, conn and seq are not read
    for cut in range(10, end):
        with pytest.raises(DecodeError, match="cannot decode"):
            read(data[:cut])
    assert read(data[:end]) == read(data) == attrgetter(*TRADE_FIELDS)(TRADE)


def test_field_reader_resolves_other_writer_schemas() -> None:
    codec = AvroCodec()
    newer = json.loads((SCHEMA_DIR / "trade.avsc").read_text())
    newer["fields"].append({"name": "venue", "type": "string", "default": ""})
    codec.add_writer_schema(newer)
    data = codec.encode_with(newer, TRADE.to_dict() | {"venue": "spot"})
    assert data[2:10] != codec.schema_for(Trade).fingerprint
    assert codec.field_reader(Trade, TRADE_FIELDS)(data) == attrgetter(*TRADE_FIELDS)(TRADE)


@pytest.mark.parametrize("record", SAMPLES + EDGE_VALUES[:6], ids=lambda r: type(r).__name__)
def test_every_truncation_is_a_decode_error(record: Record) -> None:
    codec = AvroCodec()
    data = codec.encode(record)
    for end in range(10, len(data)):
        with pytest.raises(DecodeError, match="cannot decode"):
            codec.decode(data[:end])


# ControlRequest(exchange="b", symbol="s", exchange_symbol="x", action="resync", reason="", ts=1):
# strings "b" "s" "x", enum index 0, empty reason, ts 1, conn null
CONTROL_BODY = bytes.fromhex("02620273027800000200")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (CONTROL_BODY[:6] + b"\x02" + CONTROL_BODY[7:], "enum io.marketpipe.ControlAction index 1"),
        (CONTROL_BODY[:6] + b"\x01" + CONTROL_BODY[7:], "enum io.marketpipe.ControlAction index -1"),
        (CONTROL_BODY[:9] + b"\x04", "union index 2"),
        (CONTROL_BODY[:9] + b"\x02\x06ab", "3 bytes at offset"),  # conn longer than the body
        (CONTROL_BODY[:9] + b"\x02\x03", "-2 bytes at offset"),  # negative length
        (b"\x04\xff\xfe" + CONTROL_BODY[2:], "utf-8"),
        (CONTROL_BODY[:8] + b"\xff" * 10 + b"\x7f\x00", "does not fit in an Avro long"),
    ],
    ids=[
        "enum-index",
        "negative-enum-index",
        "union-index",
        "string-past-end",
        "negative-length",
        "utf8",
        "varint",
    ],
)
def test_bad_bodies_are_decode_errors(body: bytes, reason: str) -> None:
    codec = AvroCodec()
    header = SINGLE_OBJECT_MAGIC + codec.schema_for(ControlRequest).fingerprint
    assert codec.decode(header + CONTROL_BODY) == ControlRequest(
        exchange="b", symbol="s", exchange_symbol="x", action="resync", reason="", ts=1
    )
    with pytest.raises(
        DecodeError, match=f"cannot decode io.marketpipe.ControlRequest as ControlRequest: .*{reason}"
    ):
        codec.decode(header + body)


class _Blocks(msgspec.Struct):
    levels: list[Level]
    names: list[str]


BLOCKS_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Blocks",
    "fields": [
        {
            "name": "levels",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Level",
                    "fields": [{"name": "price", "type": "double"}, {"name": "size", "type": "double"}],
                },
            },
        },
        {"name": "names", "type": {"type": "array", "items": "string"}},
    ],
}


def test_arrays_in_several_blocks_decode_like_fastavro() -> None:
    """Other Avro writers split arrays into blocks, some with a negative count and a byte size."""
    level = struct.pack("<dd", 1.5, 2.5)
    body = (
        long_bytes(-1)
        + long_bytes(16)
        + level
        + long_bytes(2)
        + level * 2
        + b"\x00"
        + long_bytes(-2)
        + long_bytes(4)
        + b"\x02a\x02b"
        + long_bytes(1)
        + b"\x02c"
        + b"\x00"
    )
    schema = AvroSchema.from_dict(BLOCKS_SCHEMA)
    read = compile_reader(schema.parsed, _Blocks)
    assert read is not None
    expected = msgspec.convert(
        fastavro.schemaless_reader(io.BytesIO(body), schema.parsed, schema.parsed), _Blocks
    )
    assert read(body, 0) == (expected, len(body))
    assert expected == _Blocks([Level(1.5, 2.5)] * 3, ["a", "b", "c"])


@pytest.mark.parametrize(
    "struct_type",
    [
        msgspec.defstruct("Renamed", [("levels", list[Level]), ("labels", list[str])]),
        msgspec.defstruct("WrongType", [("levels", list[Level]), ("names", list[int])]),
        msgspec.defstruct(
            "Constrained",
            [("levels", list[Level]), ("names", typing.Annotated[list[str], msgspec.Meta(max_length=1)])],
        ),
    ],
    ids=lambda t: t.__name__,
)
def test_structs_that_do_not_match_the_schema_are_not_compiled(struct_type: type[Any]) -> None:
    """msgspec.convert validates those (and rejects or renames); the compiled reader would not."""
    assert compile_reader(AvroSchema.from_dict(BLOCKS_SCHEMA).parsed, struct_type) is None


def test_a_schema_the_compiler_does_not_read_is_decoded_by_fastavro(tmp_path: Path) -> None:
    for path in SCHEMA_DIR.glob("*.avsc"):
        (tmp_path / path.name).write_text(path.read_text())
    trade = json.loads((SCHEMA_DIR / "trade.avsc").read_text())
    seq = next(f for f in trade["fields"] if f["name"] == "seq")
    seq["type"] = {"type": "long", "logicalType": "timestamp-micros"}  # read by fastavro as a datetime
    (tmp_path / "trade.avsc").write_text(json.dumps(trade))
    codec = AvroCodec(schema_dir=tmp_path)
    assert compile_reader(codec.schema_for(Trade).parsed, Trade) is None
    body = AvroCodec().encode(TRADE)[10:]
    with pytest.raises(DecodeError, match=r"cannot decode io\.marketpipe\.Trade as Trade"):
        codec.decode(SINGLE_OBJECT_MAGIC + codec.schema_for(Trade).fingerprint + body)


@pytest.mark.parametrize("bits", range(64))
def test_read_long_inverts_long_bytes_at_every_width(bits: int) -> None:
    for value in (2**bits - 1, -(2**bits), 2**bits + 12_345 if bits < 62 else 2**63 - 1):
        data = long_bytes(value)
        for before, after in ((b"", b""), (b"\x00", b"\xff" * 9), (b"\x80\x05", b"")):
            assert read_long(before + data + after, len(before)) == (value, len(before) + len(data))
