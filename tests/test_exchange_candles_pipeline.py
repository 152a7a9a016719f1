"""Tickers and exchange candles end to end, and the candle check: simulator -> producers -> Kafka ->
streams -> sink -> ClickHouse (chDB), each a `marketpipe` process on a fresh topic namespace.

The simulator builds its klines from the very trades it sends, so on a clean run marketpipe's
own candles equal the exchange's final ones and ``candle_check`` shows no difference. Then the
same raw records are normalised again into a second namespace with one Binance trade frame
left out (as if the connector had missed it): ``candle_check`` must show exactly that window.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from pipeline_support import Pipeline, pipeline, query, read_topic

from marketpipe.config import StreamSettings
from marketpipe.exchanges import REGISTRY, subset
from sinks.worker import CANDLE_CHECK_QUERY

pytestmark = pytest.mark.slow

EXCHANGES = tuple(row.name for row in REGISTRY if row.lists_spot)  # the spot exchanges
SYMBOLS = "BTC-USDT,BTC-USD"  # coinbase, kraken and bitfinex list BTC-USD, the others BTC-USDT
ONE_MINUTE_EXCHANGES = set(EXCHANGES) - {"coinbase"}  # coinbase's candles are 5 minutes
TRADE_COUNTS = subset("binance", "kraken", "htx")  # the exchanges whose candles count their trades
GRACE_S = StreamSettings().ohlcv_grace_s
CHECK_COLUMNS = (
    "exchange, symbol, interval, toUnixTimestamp64Micro(open_time), ours_missing, trades_diff,"
    " open_diff, high_diff, low_diff, close_diff, volume_diff, disagrees"
)


@dataclass
class Run:
    pipeline: Pipeline
    compared_minute: int  # µs: the first minute the connectors saw from its start
    tickers: list[tuple[Any, ...]]
    candles: list[tuple[Any, ...]]
    check: list[tuple[Any, ...]]


def _run_seconds() -> tuple[float, int]:
    """(seconds to run, the first whole minute of the run): the connectors are up within a few
    seconds, the minute after must close on both sides (the exchange's final candle, and ours
    once trades reach past its end plus the grace), and Kraken's final needs a later candle."""
    now = time.time()
    first_whole = int(now // 60 + 1) * 60
    if first_whole - now < 10:
        first_whole += 60
    end = first_whole + 60 + GRACE_S + 8
    return end - now, first_whole * 1_000_000


def _wait_running(p: Pipeline, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        p.check_alive()
        time.sleep(1.0)


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("exchange-candles")
    with pipeline(kafka_bootstrap, root, EXCHANGES, SYMBOLS, prefix="x") as p:
        p.start_sim(trade_rate=4, seed=13)
        p.start("stream", "stream")
        p.start_sink()
        seconds, minute = _run_seconds()
        p.start("produce", "produce")
        _wait_running(p, seconds)
        p.stop("produce")
        p.wait_drained()
        yield Run(
            pipeline=p,
            compared_minute=minute,
            tickers=query(p.dsn, "SELECT exchange, symbol, last_price, ts FROM ticker_latest"),
            candles=query(
                p.dsn,
                "SELECT exchange, interval, countIf(closed), count() FROM exchange_candles FINAL"
                " GROUP BY exchange, interval",
            ),
            check=query(p.dsn, f"SELECT {CHECK_COLUMNS} FROM candle_check"),
        )


def test_ticker_and_exchange_candles_are_filled_for_every_exchange(run: Run) -> None:
    assert {row[0] for row in run.tickers} == set(EXCHANGES)
    assert all(row[2] > 0 for row in run.tickers)
    intervals = {row[0]: row[1] for row in run.candles}
    assert intervals == {exchange: "1m" for exchange in ONE_MINUTE_EXCHANGES} | {"coinbase": "5m"}
    closed = {row[0]: row[2] for row in run.candles}
    assert all(closed[exchange] >= 1 for exchange in ONE_MINUTE_EXCHANGES), run.candles


def test_candle_check_shows_no_difference_on_simulator_data(run: Run) -> None:
    compared = {(row[0], row[3]) for row in run.check}
    for exchange in ONE_MINUTE_EXCHANGES:  # the first whole minute of each was compared
        assert (exchange, run.compared_minute) in compared, (exchange, run.check)
    disagreeing = [row for row in run.check if row[-1]]
    assert disagreeing == []
    with_counts = [row for row in run.check if row[0] in TRADE_COUNTS]
    assert {row[0] for row in with_counts} == set(TRADE_COUNTS)
    assert all(row[5] == 0 for row in with_counts)  # trade counts compared, equal
    (metric,) = [row for row in query(run.pipeline.dsn, CANDLE_CHECK_QUERY) if row[0] == "binance"]
    assert metric[2] == 0 and metric[3] >= 1  # what the sink exports as the Prometheus gauges


def _copy_without_one_trade(source: Pipeline, target: Pipeline, minute: int) -> str:
    """Every raw record of the source run into the target's raw topics, except one Binance trade
    frame inside ``minute`` (one trade per frame there); returns its trade id."""
    producer = Producer({"bootstrap.servers": source.bootstrap, "enable.idempotence": True})
    dropped = ""
    for exchange in EXCHANGES:
        messages: list[Message] = read_topic(source.bootstrap, source.topics.raw(exchange))
        for message in messages:
            if not dropped and exchange == "binance" and _trade_in(message, minute):
                dropped = json.loads(message.value() or b"")["data"]["t"]
                continue
            producer.produce(
                target.topics.raw(exchange),
                message.value(),
                message.key(),
                partition=message.partition() or 0,
                headers=message.headers(),
            )
        producer.flush(30)
    assert dropped, "no binance trade frame in the compared minute"
    return str(dropped)


def _trade_in(message: Message, minute: int) -> bool:
    value = message.value() or b""
    if b'"e":"trade"' not in value:
        return False
    trade_ms = json.loads(value)["data"]["T"]
    return minute + 10_000_000 <= trade_ms * 1000 < minute + 50_000_000


def test_one_missed_trade_shows_as_exactly_one_disagreeing_window(
    run: Run, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("exchange-candles-missed")
    with pipeline(kafka_bootstrap, root, EXCHANGES, SYMBOLS, prefix="m") as p:
        _copy_without_one_trade(run.pipeline, p, run.compared_minute)
        p.start("stream", "stream")
        p.start_sink()
        p.wait_drained(timeout_s=120)
        check = query(p.dsn, f"SELECT {CHECK_COLUMNS} FROM candle_check")
        metric = query(p.dsn, CANDLE_CHECK_QUERY)
    disagreeing = [row for row in check if row[-1]]
    assert len(disagreeing) == 1, disagreeing
    (row,) = disagreeing
    assert row[:4] == ("binance", "BTC-USDT", "1m", run.compared_minute)
    assert not row[4] and row[5] == -1  # one trade fewer than the exchange counted
    assert row[10] < 0  # and less volume
    assert sum(found[2] for found in metric) == 1
