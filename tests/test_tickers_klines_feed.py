"""Tickers and exchange candles of Binance, Coinbase, Kraken, Bybit and OKX through the simulator
and the real connectors, checked against the trades of the same run (no Kafka: the pipeline
version with ClickHouse and ``candle_check`` is tests/test_exchange_candles_pipeline.py).

Trades start only once every channel is subscribed (``start_trading``), so the simulated
exchange counted no trade the connector missed: each candle and ticker must equal what the
trades received before it on its connection add up to (tests/kline_check.py). OKX sends its
candles on a second connection (/ws/v5/business), so there the final candles are compared
with every trade of their window in the capture.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from feed_rig import running_rig
from kline_check import Replayed, check_candles, check_tickers, replay, start_trading, wait_for_candles
from producers_support import wait_until

from marketpipe.records import ExchangeCandle

MINUTE_US = 60_000_000
CASES = {
    # exchange: (symbols, subscriptions the connector holds, candle length in µs)
    "binance": (["BTC-USDT", "ETH-USDT"], 8, MINUTE_US),
    "coinbase": (["BTC-USD", "ETH-USD"], 9, 5 * MINUTE_US),  # + heartbeats; 5-minute candles
    "kraken": (["BTC-USD", "ETH-USD"], 8, MINUTE_US),
    "bybit": (["BTC-USDT", "ETH-USDT"], 8, MINUTE_US),
}


@pytest.mark.parametrize("exchange", list(CASES))
async def test_candles_and_tickers_equal_what_the_trades_add_up_to(exchange: str, tmp_path: Path) -> None:
    symbols, subscriptions, length = CASES[exchange]
    async with running_rig(exchange, symbols, tmp_path, trade_rate=0.0) as rig:
        await start_trading(rig.sim, exchange, subscriptions, 20.0)
        await wait_for_candles(tmp_path, exchange, 30)
    found = replay(tmp_path / f"{exchange}.jsonl", exchange)
    assert found.errors == []
    assert {c.symbol for c in found.candles} == {t.symbol for t in found.tickers} == set(symbols)
    assert check_tickers(found) == len(found.tickers)
    assert len(found.trades) >= check_candles(found, length) > 20
    del found.trades[len(found.trades) // 2]  # one trade missed: the check must see it
    with pytest.raises(AssertionError):
        check_candles(found, length)


def final_candles(found: Replayed) -> list[ExchangeCandle]:
    return [candle for candle in found.candles if candle.closed]


def check_final_candles(found: Replayed) -> int:
    """Each final candle equals the candle of every captured trade of its window; returns how
    many trades they cover."""
    covered = 0
    for candle in final_candles(found):
        window = sorted(
            (
                t
                for t in found.trades
                if t.symbol == candle.symbol and candle.open_time <= t.ts < candle.close_time
            ),
            key=lambda t: t.ts,
        )
        assert window, candle
        prices = [t.price for t in window]
        assert (candle.open, candle.high, candle.low, candle.close) == (
            prices[0],
            max(prices),
            min(prices),
            prices[-1],
        ), candle
        assert candle.volume is not None and math.isclose(
            candle.volume, sum(t.size for t in window), rel_tol=1e-9
        )
        covered += len(window)
    return covered


async def test_okx_candles_on_the_business_connection_equal_their_trades(tmp_path: Path) -> None:
    symbols = ["BTC-USDT", "ETH-USDT"]
    async with running_rig("okx", symbols, tmp_path, trade_rate=0.0) as rig:
        await start_trading(rig.sim, "okx", 4 * len(symbols), 20.0)

        def closed_for_every_symbol() -> bool:
            found = replay(tmp_path / "okx.jsonl", "okx")
            return {c.symbol for c in final_candles(found)} == set(symbols)

        await wait_until(closed_for_every_symbol, 90, "a final okx candle of every symbol")
        endpoints = {
            (shard.current.url or "").rsplit("/", 1)[-1] for shard in rig.connector.shards if shard.current
        }
    assert endpoints == {"public", "business"}
    found = replay(tmp_path / "okx.jsonl", "okx")
    assert found.errors == []
    assert {t.conn for t in found.tickers} == {t.conn for t in found.trades}
    assert {c.conn for c in found.candles}.isdisjoint({t.conn for t in found.trades})
    assert check_tickers(found) == len(found.tickers)
    assert check_final_candles(found) > 0
    first = final_candles(found)[0]
    missed = next(
        i
        for i, t in enumerate(found.trades)
        if t.symbol == first.symbol and first.open_time <= t.ts < first.close_time
    )
    del found.trades[missed]  # one trade missed: the check must see it
    with pytest.raises(AssertionError):
        check_final_candles(found)
