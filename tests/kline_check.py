"""Exchange tickers and candles through the simulator, checked against the trades of the same run.

The simulator builds its klines and 24 h tickers from the very trades it sends (simulator/klines.py)
and its dialects send a step's trades before the ticker and kline frames of that step, on the same
connection. So a candle (or ticker) record must equal what the trades received before it on its
connection add up to, provided the exchange counted no trade the client did not receive: the feed
tests start the simulator without trades and turn them on once every channel is subscribed
(``start_trading``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from producers_support import wait_until

import simulator
from marketpipe.raw import RawRecord, read_capture
from marketpipe.records import ExchangeCandle, Ticker, Trade
from streams.feed import FeedOutput
from streams.parsers import processor_for

MINUTE_US = 60_000_000


@dataclass
class Replayed:
    """Everything a fresh processor publishes from a capture, in order."""

    trades: list[Trade] = field(default_factory=list)
    tickers: list[Ticker] = field(default_factory=list)
    candles: list[ExchangeCandle] = field(default_factory=list)
    errors: list[tuple[RawRecord, str]] = field(default_factory=list)


def replay(capture: Path, exchange: str) -> Replayed:
    processor = processor_for(exchange)
    found = Replayed()
    for raw in read_capture(capture):
        out = FeedOutput()
        processor.process(raw, out)
        found.trades += out.trades
        found.tickers += out.tickers
        found.candles += out.exchange_candles
        found.errors += out.errors
    return found


async def start_trading(
    sim: simulator.Simulator, exchange: str, subscriptions: int, trades_per_second: float
) -> None:
    """Turn on the trade flow of a simulator started with ``trade_rate=0``, once it holds
    ``subscriptions`` (every channel of every symbol the connector asks for)."""
    venue = sim.venues[exchange]

    def held() -> int:
        return sum(len(session.subs) for dialect in venue.dialects for session in dialect.sessions)

    await wait_until(lambda: held() >= subscriptions, 20, f"{subscriptions} {exchange} subscriptions")
    for feed in venue.feeds.values():
        for market in feed.markets.values():
            market.trades_per_step = trades_per_second / feed.config.book_rate


async def wait_for_candles(folder: Path, exchange: str, count: int) -> None:
    # the capture is read again on every poll: fine for the few hundred frames of a feed test
    """Until the capture holds ``count`` exchange candles (every connector frame is in it)."""

    def enough() -> bool:
        return len(replay(folder / f"{exchange}.jsonl", exchange).candles) >= count

    await wait_until(enough, 30, f"{count} {exchange} exchange candles")


async def wait_for_symbols(folder: Path, exchange: str, symbols: list[str]) -> Replayed:
    """Until every symbol has a ticker and an exchange candle in the capture; returns the replay."""
    found = Replayed()

    def complete() -> bool:
        nonlocal found
        found = replay(folder / f"{exchange}.jsonl", exchange)
        return {c.symbol for c in found.candles} == {t.symbol for t in found.tickers} == set(symbols)

    await wait_until(complete, 30, f"a ticker and a candle of each of {len(symbols)} {exchange} symbols")
    return found


def _close(one: float | None, other: float) -> bool:
    return one is not None and math.isclose(one, other, rel_tol=1e-9, abs_tol=1e-12)


def _before(trades: list[Trade], record: Ticker | ExchangeCandle) -> list[Trade]:
    """The trades of the record's symbol its connection delivered before it."""
    return [t for t in trades if t.conn == record.conn and t.seq < record.seq and t.symbol == record.symbol]


def check_candles(found: Replayed, interval_us: int = MINUTE_US) -> int:
    """Every window's latest exchange candle equals the candle of the trades received before it
    (open, high, low, close, base volume, and the trade count where the exchange sends one).
    Returns the number of trades the compared candles cover."""
    latest: dict[tuple[str, str, int], ExchangeCandle] = {}
    for candle in found.candles:
        latest[(candle.conn, candle.symbol, candle.open_time)] = candle
    covered = 0
    for (_, _, open_time), candle in latest.items():
        assert candle.close_time == open_time + interval_us, candle
        window = [t for t in _before(found.trades, candle) if open_time <= t.ts < open_time + interval_us]
        assert window, f"an exchange candle without any trade received: {candle}"
        window.sort(key=lambda t: t.ts)
        prices = [t.price for t in window]
        ours = (prices[0], max(prices), min(prices), prices[-1])
        assert (candle.open, candle.high, candle.low, candle.close) == ours, (candle, window)
        assert _close(candle.volume, sum(t.size for t in window)), (candle, window)
        if candle.trades is not None:
            assert candle.trades == len(window), candle
        covered += len(window)
    return covered


def check_tickers(found: Replayed) -> int:
    """Every ticker's last price, 24 h open/high/low, base volume and trade count (those it has)
    equal those of the trades received before it (the simulator's 24 h window holds the whole
    run); returns how many were checked."""
    checked = 0
    for ticker in found.tickers:
        trades = sorted(_before(found.trades, ticker), key=lambda t: t.ts)
        if not trades:
            continue
        prices = [t.price for t in trades]
        assert ticker.last_price == prices[-1], (ticker, trades[-1])
        if ticker.open_24h is not None:
            assert _close(ticker.open_24h, prices[0]), ticker
        if ticker.high_24h is not None:  # sent by every exchange here but KuCoin's ticker topic
            assert (ticker.high_24h, ticker.low_24h) == (max(prices), min(prices)), ticker
            assert _close(ticker.volume_24h, sum(t.size for t in trades)), ticker
        if ticker.trades_24h is not None:
            assert ticker.trades_24h == len(trades), ticker
        checked += 1
    return checked
