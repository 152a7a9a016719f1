"""ClickHouse (chDB): the ticker and exchange_candles tables, ticker_latest and candle_check."""

from __future__ import annotations

import time

import msgspec
from clickhouse_support import insert, rows
from prometheus_client import REGISTRY

from marketpipe.records import Candle, ExchangeCandle, Record, Ticker
from sinks.metrics import set_candle_check
from sinks.worker import CANDLE_CHECK_QUERY, ClickHouseLink

T0 = 1_714_560_000_000_000  # 2024-05-01T10:40:00Z in µs
MIN = 60_000_000


def ticker(ts: int, last: float, seq: int, symbol: str = "BTC-USDT") -> Ticker:
    return Ticker(
        exchange="binance",
        symbol=symbol,
        exchange_symbol=symbol.replace("-", ""),
        last_price=last,
        bid_price=last - 0.5,
        volume_24h=10.0,
        trades_24h=7,
        ts=ts,
        recv_ts=ts + 100,
        conn="binance.0",
        seq=seq,
    )


def ours(minute: int, close: float = 101.0, trades: int = 3, volume: float = 0.3) -> Candle:
    open_time = T0 + minute * MIN
    return Candle(
        exchange="binance",
        symbol="BTC-USDT",
        interval="1m",
        open_time=open_time,
        close_time=open_time + MIN,
        open=100.0,
        high=102.0,
        low=99.0,
        close=close,
        volume=volume,
        quote_volume=30.0,
        buy_volume=0.1,
        sell_volume=0.2,
        trades=trades,
        vwap=100.0,
        first_trade_ts=open_time + 1,
        last_trade_ts=open_time + 2,
        closed=True,
        version=2,
    )


def theirs(minute: int, *, closed: bool = True, recv: int = 0, **changes: object) -> ExchangeCandle:
    open_time = T0 + minute * MIN
    candle = ExchangeCandle(
        exchange="binance",
        symbol="BTC-USDT",
        exchange_symbol="BTCUSDT",
        interval="1m",
        open_time=open_time,
        close_time=open_time + MIN,
        open=100.0,
        high=102.0,
        low=99.0,
        close=101.0,
        volume=0.3,
        quote_volume=30.0,
        trades=3,
        first_trade_id="10",
        last_trade_id="12",
        closed=closed,
        ts=open_time + MIN,
        recv_ts=open_time + MIN + recv,
        conn="binance.0",
        seq=minute,
    )
    return msgspec.structs.replace(candle, **changes)


def test_tickers_stored_once_and_latest_per_symbol(link: ClickHouseLink) -> None:
    client = link.client
    assert client is not None
    batch: list[Record] = [ticker(T0, 100.0, 1), ticker(T0 + 5, 101.0, 2), ticker(T0, 3.0, 3, "ETH-USDT")]
    insert(link, "ticker", batch, "t1")
    insert(link, "ticker", batch[:1], "t2")  # a compacted-topic replay of one ticker
    assert rows(client, "SELECT count() FROM ticker FINAL") == [(3,)]
    latest = rows(
        client, "SELECT symbol, last_price, ask_price, trades_24h FROM ticker_latest ORDER BY symbol"
    )
    assert latest == [("BTC-USDT", 101.0, None, 7), ("ETH-USDT", 3.0, None, 7)]


def test_exchange_candles_final_version_wins(link: ClickHouseLink) -> None:
    client = link.client
    assert client is not None
    open_update = theirs(1, closed=False, recv=5, close=100.5)  # received after the final one
    insert(link, "exchange_candles", [theirs(1, closed=False, close=99.5), theirs(1)], "c1")
    insert(link, "exchange_candles", [open_update, theirs(1)], "c2")  # and a replay
    client.command("OPTIMIZE TABLE exchange_candles FINAL")
    assert rows(client, "SELECT close, closed, trades FROM exchange_candles") == [(101.0, True, 3)]


def test_candle_check_reports_each_disagreeing_window(link: ClickHouseLink) -> None:
    client = link.client
    assert client is not None
    insert(
        link,
        "ohlcv",
        [
            ours(0, trades=1),  # our first window: the pipeline may have started inside it
            ours(1),
            ours(2, trades=2, volume=0.2),  # one trade missed
            ours(3, volume=0.3 + 1e-12),  # float sums: within the tolerance
            ours(4, close=101.5),
            ours(6),
        ],
        "o",
    )
    insert(
        link,
        "exchange_candles",
        [theirs(m) for m in range(6)] + [theirs(6, closed=False), theirs(7)],
        "e",
    )
    check = rows(
        client,
        "SELECT toUnixTimestamp64Micro(open_time), ours_missing, trades_diff, close_diff, disagrees "
        "FROM candle_check ORDER BY open_time",
    )
    assert check == [
        (T0 + 1 * MIN, False, 0, 0.0, False),
        (T0 + 2 * MIN, False, -1, 0.0, True),
        (T0 + 3 * MIN, False, 0, 0.0, False),
        (T0 + 4 * MIN, False, 0, 0.5, True),
        (T0 + 5 * MIN, True, -3, None, True),  # we have nothing although we moved past it
    ]  # 6: the exchange's is not final; 7: ours has not got there


def test_candle_check_without_a_trade_count_compares_volume(link: ClickHouseLink) -> None:
    client = link.client
    assert client is not None
    insert(link, "ohlcv", [ours(0), ours(1), ours(2, volume=0.25)], "o")
    insert(
        link,
        "exchange_candles",
        [theirs(m, trades=None, first_trade_id=None, last_trade_id=None) for m in (1, 2)],
        "e",
    )
    check = rows(
        client, "SELECT trades_diff, round(volume_diff, 6), disagrees FROM candle_check ORDER BY open_time"
    )
    assert check == [(None, 0.0, False), (None, -0.05, True)]


def test_the_sink_metric_counts_recent_disagreeing_windows(link: ClickHouseLink) -> None:
    """What SinkWorker exports every candle_check_s: the query over the last 24 h, as gauges."""
    client = link.client
    assert client is not None
    now_minute = int(time.time() // 60 * 60) * 1_000_000
    shift = now_minute - 10 * MIN - T0  # the same windows, ten minutes ago
    moved = [
        msgspec.structs.replace(c, open_time=c.open_time + shift, close_time=c.close_time + shift)
        for c in (ours(0), ours(1), ours(2, trades=2), ours(3))
    ]
    insert(link, "ohlcv", list(moved), "o")
    theirs_moved = [
        msgspec.structs.replace(
            c,
            open_time=c.open_time + shift,
            close_time=c.close_time + shift,
            ts=c.ts + shift,
            recv_ts=c.recv_ts + shift,
        )
        for c in (theirs(1), theirs(2), theirs(3))
    ]
    insert(link, "exchange_candles", list(theirs_moved), "e")
    insert(link, "exchange_candles", [theirs(2)], "old")  # a day and more ago: not counted
    insert(link, "ohlcv", [ours(1), ours(2, trades=1), ours(3)], "old-o")
    counts = rows(client, CANDLE_CHECK_QUERY)
    assert counts == [("binance", "1m", 1, 3)]
    set_candle_check(counts)
    labels = {"exchange": "binance", "interval": "1m"}
    assert REGISTRY.get_sample_value("marketpipe_candle_check_disagreeing_windows", labels) == 1
    assert REGISTRY.get_sample_value("marketpipe_candle_check_windows", labels) == 3
