"""marketpipe.client against the real pipeline: records through a real broker into a real
`marketpipe sink` (embedded chDB served on its endpoint), read back as DataFrames; and
`consume` over real md.* topics in both Avro wire formats, committed transactions only."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from confluent_kafka import Producer
from pipeline_support import Pipeline, pipeline

from marketpipe import client
from marketpipe.codec import AvroCodec
from marketpipe.config import Settings, load_settings
from marketpipe.records import BookBuckets, Bucket, Candle, DepthBand, Record, Trade
from marketpipe.topics import Topology

pytestmark = pytest.mark.kafka

T0 = 1_714_560_000_000_000  # 2024-05-01T10:40:00Z in µs
MINUTE = 60_000_000


def _trade(i: int, exchange: str = "binance") -> Trade:
    return Trade(
        exchange=exchange,
        symbol="BTC-USDT",
        exchange_symbol="BTCUSDT",
        trade_id=str(1000 + i),
        price=60_000.0 + i,
        size=0.1 * (i + 1),
        side="buy" if i % 2 else "sell",
        ts=T0 + i * 20_000_000,  # three per minute
        recv_ts=T0 + i * 20_000_000 + 900,
        conn=f"{exchange}.0",
        seq=i,
    )


def _candle(minute: int, version: int, close: float) -> Candle:
    open_time = T0 + minute * MINUTE
    return Candle(
        exchange="binance",
        symbol="BTC-USDT",
        interval="1m",
        open_time=open_time,
        close_time=open_time + MINUTE,
        open=60_000.0,
        high=max(close, 60_000.0),
        low=min(close, 60_000.0),
        close=close,
        volume=1.0,
        quote_volume=60_000.0,
        buy_volume=0.5,
        sell_volume=0.5,
        trades=version,
        vwap=60_000.0,
        first_trade_ts=open_time + 1,
        last_trade_ts=open_time + 2,
        closed=version > 1,
        version=version,
    )


def _buckets(second: int, bid_size: float) -> BookBuckets:
    return BookBuckets(
        exchange="okx",
        symbol="ETH-USDT",
        ts=T0 + second * 1_000_000,
        mid=3000.05,
        best_bid=3000.0,
        best_ask=3000.1,
        spread=0.1,
        bucket_size=1.0,
        bids=[Bucket(3000.0, bid_size, 3000.0 * bid_size), Bucket(2999.0, 2.0, 5998.0)],
        asks=[Bucket(3001.0, 1.5, 4501.5)],
        bands=[DepthBand(0.1, bid_size + 2.0, 1.5, 0.2)],
    )


def _publish(
    bootstrap: str, codec: AvroCodec, batches: list[tuple[str, list[Record]]], *, commit: bool
) -> None:
    """One Kafka transaction with every record, committed or aborted, as the stream workers write."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"client-test-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for topic, records in batches:
        for record in records:
            producer.produce(topic, key=record.key().encode(), value=codec.encode(record, topic))
    if commit:
        producer.commit_transaction(30)
    else:
        producer.abort_transaction(30)


def _settings(bootstrap: str, topics: Topology, tmp_path: Path, registry: str | None = None) -> Settings:
    return load_settings(
        data_dir=tmp_path,
        kafka={"bootstrap_servers": bootstrap, "topic_prefix": topics.prefix},
        schema_registry_url=registry,
    )


# -- ClickHouse: DataFrames through the sink's endpoint -------------------------------------


@pytest.fixture(scope="module")
def sunk(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Trades, candle versions and book buckets published to md.* and stored by a real sink."""
    root = tmp_path_factory.mktemp("client")
    with pipeline(kafka_bootstrap, root, ("binance", "okx"), "BTC-USDT,ETH-USDT", prefix="c") as running:
        codec = AvroCodec()
        topics = running.topics
        trades = [_trade(i) for i in range(9)] + [_trade(0, "okx")]
        candles = [
            _candle(0, 1, 60_010.0),
            _candle(0, 2, 60_020.0),
            _candle(1, 1, 59_990.0),
            _candle(2, 1, 1.0),
        ]
        buckets = [_buckets(0, 1.0), _buckets(1, 3.0), _buckets(1, 3.0)]  # the last one delivered twice
        _publish(
            kafka_bootstrap,
            codec,
            [(topics.trades, trades), (topics.ohlcv, candles), (topics.book_buckets, buckets)],
            commit=True,
        )
        running.start_sink()
        running.wait_drained(streams=False)
        yield running


def test_candles_are_final_versions_in_the_time_range_as_pandas_and_polars(sunk: Pipeline) -> None:
    with client.MarketData(data_dir=sunk.root / "data") as market:
        frame = market.candles(
            "binance", "BTC-USDT", "1m", datetime(2024, 5, 1, 10, 40), "2024-05-01T10:42:00Z"
        )
        assert isinstance(frame, pd.DataFrame)
        assert list(frame["close"]) == [60_020.0, 59_990.0]  # version 2 wins; minute 2 is past `end`
        assert list(frame["closed"]) == [True, False]
        assert frame["open_time"].iloc[0] == pd.Timestamp("2024-05-01T10:40:00Z")
        assert str(frame["open_time"].dt.tz) == "UTC"

        polars_frame = market.candles("binance", "BTC-USDT", "1m", frame="polars")
        assert isinstance(polars_frame, pl.DataFrame)
        assert polars_frame["close"].to_list() == [60_020.0, 59_990.0, 1.0]
        assert polars_frame["open_time"].dtype == pl.Datetime("us", "UTC")


def test_trades_of_one_market_in_time_order(sunk: Pipeline) -> None:
    frame = client.trades(
        "binance", "BTC-USDT", start=T0 + MINUTE, end=T0 + 2 * MINUTE, data_dir=sunk.root / "data"
    )
    assert list(frame["trade_id"]) == ["1003", "1004", "1005"]
    assert list(frame["price"]) == [60_003.0, 60_004.0, 60_005.0]
    assert list(frame["side"]) == ["buy", "sell", "buy"]
    every = client.trades("binance", "BTC-USDT", frame="polars", data_dir=sunk.root / "data")
    assert every.height == 9  # not okx's trade of the same symbol


def test_book_heatmap_rows_count_a_snapshot_delivered_twice_once(sunk: Pipeline) -> None:
    frame = client.book_heatmap("okx", "ETH-USDT", data_dir=sunk.root / "data")
    assert len(frame) == 6  # two snapshots x three buckets
    latest = frame[frame["ts"] == frame["ts"].max()].sort_values(["side", "price"])
    assert list(zip(latest["side"], latest["price"], latest["size"], strict=True)) == [
        ("ask", 3001.0, 1.5),
        ("bid", 2999.0, 2.0),
        ("bid", 3000.0, 3.0),
    ]


def test_bad_arguments_are_clear_errors(sunk: Pipeline) -> None:
    with client.MarketData(data_dir=sunk.root / "data") as market:
        with pytest.raises(ValueError, match="unknown exchange 'binanse'"):
            market.trades("binanse", "BTC-USDT")
        with pytest.raises(ValueError, match="BASE-QUOTE"):
            market.trades("binance", "btcusdt")
        with pytest.raises(ValueError, match="interval"):
            market.candles("binance", "BTC-USDT", "1 minute")
        with pytest.raises(ValueError, match="ISO 8601"):
            market.trades("binance", "BTC-USDT", start="yesterday")
        with pytest.raises(client.ClientError, match="ClickHouse refused the query"):
            market.query("SELECT nope FROM trades")


def test_with_the_sink_stopped_the_client_opens_the_database_itself(sunk: Pipeline) -> None:
    """Runs after the tests above: it stops the module's sink."""
    sunk.stop("sink")
    endpoint_file = sunk.root / "data" / "clickhouse" / "marketpipe-endpoint.json"
    assert not endpoint_file.exists()
    with client.MarketData(data_dir=sunk.root / "data", frame="polars") as market:
        assert market.trades("binance", "BTC-USDT").height == 9
        assert market.candles("binance", "BTC-USDT")["close"].to_list() == [60_020.0, 59_990.0, 1.0]
    # closed, the client no longer holds the directory: a sink opens and serves it again
    sunk.start_sink()
    deadline = time.monotonic() + 60
    while not endpoint_file.exists():
        sunk.check_alive("sink")
        assert time.monotonic() < deadline, "the restarted sink did not serve the database"
        time.sleep(0.2)
    assert len(client.trades("okx", "BTC-USDT", data_dir=sunk.root / "data")) == 1


def test_unreachable_clickhouse_server_is_a_client_error() -> None:
    with pytest.raises(client.ClientError, match="unreachable"):
        client.MarketData("http://marketpipe:pw@127.0.0.1:1/marketpipe")


def test_time_bounds_convert_to_microseconds() -> None:
    assert client.to_micros(datetime(2024, 5, 1, 10, 40, tzinfo=UTC)) == T0
    assert client.to_micros(datetime(2024, 5, 1, 10, 40)) == T0  # naive = UTC
    assert client.to_micros("2024-05-01T12:40:00.000001+02:00") == T0 + 1
    assert client.to_micros(T0) == T0 and client.to_micros(None) is None


# -- Kafka: consume ----------------------------------------------------------------------------


@pytest.mark.parametrize("registry", [None, "mock://client-tests"], ids=["single-object", "confluent"])
def test_consume_yields_committed_records_decoded(
    kafka_bootstrap: str, topics: Topology, tmp_path: Path, registry: str | None
) -> None:
    codec = AvroCodec(registry)
    committed = [_trade(i) for i in range(5)]
    _publish(kafka_bootstrap, codec, [(topics.trades, committed)], commit=True)
    _publish(kafka_bootstrap, codec, [(topics.trades, [_trade(99)])], commit=False)
    settings = _settings(kafka_bootstrap, topics, tmp_path, registry)

    # the mock:// registry lives in the codec's own client, so the reader shares the writer's codec
    reader = codec if registry else None
    received = list(
        client.consume("md.trades", settings=settings, codec=reader, from_beginning=True, stop_at_end=True)
    )

    assert sorted((r.value for r in received), key=lambda t: t.seq) == committed  # type: ignore[union-attr]
    assert {r.topic for r in received} == {topics.trades}
    assert all(r.key == "binance:BTC-USDT" and r.error is None and r.timestamp_ms for r in received)


def test_consume_with_a_group_resumes_after_the_last_record_taken(
    kafka_bootstrap: str, topics: Topology, tmp_path: Path
) -> None:
    codec = AvroCodec()
    sent = [_trade(i) for i in range(4)]  # one key, so one partition, in order
    _publish(kafka_bootstrap, codec, [(topics.trades, sent)], commit=True)
    settings = _settings(kafka_bootstrap, topics, tmp_path)
    group = f"downstream-{uuid.uuid4().hex[:8]}"

    records = client.consume("md.trades", group_id=group, from_beginning=True, settings=settings)
    with contextlib.closing(records):
        taken = [next(records), next(records), next(records)]
    # the third was handed out but not finished: its offset is committed only when the next is asked for
    rest = list(client.consume("md.trades", group_id=group, settings=settings, stop_at_end=True))

    assert [r.value for r in taken] == sent[:3]
    assert [r.value for r in rest] == sent[2:]
    assert rest[0].offset == taken[2].offset


def test_consume_reports_undecodable_records(kafka_bootstrap: str, topics: Topology, tmp_path: Path) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topics.bbo, key=b"k", value=b"not avro")
    assert producer.flush(30) == 0
    settings = _settings(kafka_bootstrap, topics, tmp_path)

    with pytest.raises(client.ClientError, match=r"partition \d+ offset 0: not an Avro record"):
        list(client.consume("md.bbo", settings=settings, from_beginning=True, stop_at_end=True))
    [included] = client.consume(
        "md.bbo", settings=settings, from_beginning=True, stop_at_end=True, errors="include"
    )
    assert included.value is None and "not an Avro record" in (included.error or "")


def test_consume_refuses_raw_and_missing_topics_and_a_dead_broker(
    kafka_bootstrap: str, topics: Topology, tmp_path: Path
) -> None:
    settings = _settings(kafka_bootstrap, topics, tmp_path)
    with pytest.raises(client.ClientError, match="marketpipe tail"):
        next(client.consume("raw.binance", settings=settings))
    with pytest.raises(client.ClientError, match="does not exist"):
        next(client.consume("md.nothing", settings=settings))
    dead = load_settings(data_dir=tmp_path, kafka={"bootstrap_servers": "127.0.0.1:1"})
    with pytest.raises(client.ClientError, match=r"127\.0\.0\.1:1 did not answer"):
        next(client.consume("md.trades", settings=dead))
