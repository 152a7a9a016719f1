"""The exchange registry: one row per supported exchange, the only list of them.

Everything that needs the set of exchanges derives it from :data:`REGISTRY`: the settings
(``marketpipe/config.py`` ``EXCHANGES`` and one ``[producers.<name>]`` table each), the
connector and parser lookups, the simulator, ``marketpipe exchanges`` and the tests'
parametrisation; ``tests/test_registry.py`` fails on any other hand-written list.

A row names where the exchange's code lives, by the module name ``m`` it uses everywhere:

- ``marketpipe.exchanges.m``: protocol facts shared by both sides (REST paths, channel names,
  ``parse_instruments``, msgspec wire structs);
- ``producers.connectors.m``: the connector class ``row.connector``;
- ``streams.parsers.m``: the processor class ``row.processor``;
- ``simulator.m``: ``create(config) -> Venue``, the simulated exchange.

``_template`` in each of those packages shows what a module must define (docs/architecture.md,
"Adding an exchange, a channel, a table").

Core module: imports nothing but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Markets = Literal["spot", "derivatives", "spot+derivatives"]
CHANNEL_KINDS = ("book", "trades", "ticker", "candles")
"""what each of a row's ``channels`` is"""


@dataclass(frozen=True, slots=True)
class Exchange:
    name: str
    """the exchange's name everywhere outside Python identifiers (topics, settings, records)"""
    module: str
    """the module name of its code in marketpipe.exchanges, producers.connectors,
    streams.parsers and simulator"""
    connector: str
    processor: str
    channels: tuple[str, str, str, str]
    """book, trades, 24 h ticker, candles as the exchange names them in its subscribe
    messages; "" = not subscribed (tests/test_catalog.py checks them against the connector)"""
    markets: Markets = "spot"
    """what it lists: the simulator lists the default symbols of these kinds"""
    fiat_quotes: bool = False
    """its spot pairs quote fiat (BTC-USD), not stablecoins (BTC-USDT)"""

    @property
    def settings_key(self) -> str:
        """its ``[producers.<key>]`` table (MARKETPIPE_PRODUCERS__<KEY>__...)"""
        return self.name.replace("-", "_")

    @property
    def lists_spot(self) -> bool:
        return self.markets != "derivatives"


REGISTRY: tuple[Exchange, ...] = (
    Exchange(
        name="binance",
        module="binance",
        connector="BinanceConnector",
        processor="BinanceProcessor",
        channels=("depth@100ms", "trade", "ticker", "kline_1m"),
    ),
    Exchange(
        name="binance-futures",
        module="binance_futures",
        connector="BinanceFuturesConnector",
        processor="BinanceFuturesProcessor",
        channels=("depth@100ms", "aggTrade", "ticker", "kline_1m"),
        markets="derivatives",
    ),
    Exchange(
        name="coinbase",
        module="coinbase",
        connector="CoinbaseConnector",
        processor="CoinbaseProcessor",
        channels=("level2", "market_trades", "ticker", "candles"),
        fiat_quotes=True,
    ),
    Exchange(
        name="kraken",
        module="kraken",
        connector="KrakenConnector",
        processor="KrakenProcessor",
        channels=("book", "trade", "ticker", "ohlc"),
        fiat_quotes=True,
    ),
    Exchange(
        name="bybit",
        module="bybit",
        connector="BybitConnector",
        processor="BybitProcessor",
        channels=("orderbook.200", "publicTrade", "tickers", "kline.1"),
        markets="spot+derivatives",
    ),
    Exchange(
        name="okx",
        module="okx",
        connector="OkxConnector",
        processor="OkxProcessor",
        channels=("books", "trades", "tickers", ""),
        markets="spot+derivatives",
    ),
    Exchange(
        name="bitfinex",
        module="bitfinex",
        connector="BitfinexConnector",
        processor="BitfinexProcessor",
        channels=("book", "trades", "ticker", "candles"),
        fiat_quotes=True,
    ),
    Exchange(
        name="kucoin",
        module="kucoin",
        connector="KucoinConnector",
        processor="KucoinProcessor",
        channels=("/market/level2", "/market/match", "/market/ticker", "/market/candles"),
    ),
    Exchange(
        name="gateio",
        module="gateio",
        connector="GateioConnector",
        processor="GateioProcessor",
        channels=("spot.order_book_update", "spot.trades", "spot.tickers", "spot.candlesticks"),
    ),
    Exchange(
        name="htx",
        module="htx",
        connector="HtxConnector",
        processor="HtxProcessor",
        channels=("mbp.150", "trade.detail", "ticker", "kline.1min"),
    ),
    Exchange(
        name="mexc",
        module="mexc",
        connector="MexcConnector",
        processor="MexcProcessor",
        channels=(
            "spot@public.aggre.depth.v3.api.pb@100ms",
            "spot@public.aggre.deals.v3.api.pb@100ms",
            "spot@public.miniTicker.v3.api.pb",
            "spot@public.kline.v3.api.pb",
        ),
    ),
    Exchange(
        name="deribit",
        module="deribit",
        connector="DeribitConnector",
        processor="DeribitProcessor",
        channels=("book", "trades", "ticker", ""),
        markets="derivatives",
    ),
)

EXCHANGES: tuple[str, ...] = tuple(row.name for row in REGISTRY)
"""every supported exchange, in registry order (all run when ``exchanges`` is not set)"""


def exchange(name: str) -> Exchange:
    """The registry row of ``name``; a ValueError naming the known ones when there is none."""
    for row in REGISTRY:  # read at each call: a test may register a row
        if row.name == name:
            return row
    known = ", ".join(row.name for row in REGISTRY)
    raise ValueError(f"unknown exchange {name!r}; known: {known}")


def subset(*names: str) -> tuple[str, ...]:
    """A chosen sample of registered exchanges (a test's representatives), checked against the
    registry; tests/test_registry.py allows these samples only while they stay small."""
    for name in names:
        exchange(name)
    return names
