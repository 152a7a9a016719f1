"""Binance USDⓈ-M futures (exchange ``binance-futures``): the spot connector's combined streams and
SUBSCRIBE messages (producers/connectors/binance.py) on fstream's routed paths.

Since 2026 fstream serves each stream on one path only: ``/public`` the high-frequency ones
(``@depth@100ms``, also ``@bookTicker`` and ``@trade``), ``/market`` the rest (``@aggTrade``,
``@markPrice@1s``, ``@forceOrder``, ``@ticker``, ``@kline_1m``); a stream subscribed on the
other path is accepted but never pushes. So every group of symbols has two connections: its
public shard (books, synced from REST depth snapshots as on spot) and a ``MarketShard``.

Open interest has no stream: the market connection polls ``GET /fapi/v1/openInterest`` for each
of its symbols in turn, each symbol every ``open_interest_period_s()`` (10 s, longer when there
are more than 10 symbols: the polling uses at most half of the REST request slots), and
publishes the answers as ``rest`` records like the depth snapshots. A failed poll is logged and
retried next round; it never ends the connection.

REST weight (2400 per minute per IP): depth ``limit=1000`` weighs 20 and openInterest 1; all
requests are spaced ``rest_min_interval_s`` = 0.5 s, so even depth snapshots alone stay at the
limit and the polling (at most one request a second) adds at most 60 per minute. exchangeInfo
(weight 1) takes no symbol filter on fapi: each connection fetches the whole list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from marketpipe.exchanges.binance_futures import (
    DEPTH_PATH,
    INSTRUMENTS_PATH,
    MARKET_STREAM_PATH,
    MARKET_STREAMS,
    OPEN_INTEREST_PATH,
    PUBLIC_STREAM_PATH,
    PUBLIC_STREAMS,
    REST_BASE,
    SUBSCRIBE,
    WS_BASE,
    parse_instruments,
)
from marketpipe.instruments import Instruments
from marketpipe.logs import log_event
from producers.base import Connection, RestError, Shard
from producers.connectors.binance import BinanceConnector

log = logging.getLogger("producers")


class MarketShard(Shard):
    """The ``/market`` connection of a group of symbols (trades, mark price and funding,
    liquidations, tickers, klines, open interest)."""


class BinanceFuturesConnector(BinanceConnector):
    exchange = "binance-futures"
    default_ws_base = WS_BASE
    default_rest_base = REST_BASE
    public_streams = PUBLIC_STREAMS
    market_streams = MARKET_STREAMS
    max_symbols_per_connection = 200 // 5  # 200 streams per connection, five per symbol on /market
    send_interval_s = 0.125  # 10 incoming messages/s per connection, pongs included
    rest_min_interval_s = 0.5  # 2400 weight/minute; a depth snapshot (limit=1000) weighs 20
    silence_timeout_s = 90.0  # /market pushes mark prices every second; quiet /public books less
    open_interest_interval_s = 10.0
    open_interest_request_share = 0.5
    """the share of the REST request slots the open-interest polling may use"""

    def ws_url(self) -> str:
        return f"{self.ws_base}{PUBLIC_STREAM_PATH}"

    def market_ws_url(self) -> str:
        return f"{self.ws_base}{MARKET_STREAM_PATH}"

    async def connect_url(self, conn: Connection) -> str:
        return self.market_ws_url() if isinstance(conn.shard, MarketShard) else self.ws_url()

    def build_shards(self, exchange_symbols: Sequence[str]) -> list[Shard]:
        public = super().build_shards(exchange_symbols)
        market: list[Shard] = [MarketShard(self, len(public) + i, s.symbols) for i, s in enumerate(public)]
        self.shards = public + market  # public first: a book resync goes to the public shard
        return self.shards

    def all_instruments_url(self) -> str:
        return f"{self.rest_base}{INSTRUMENTS_PATH}"

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        return [self.all_instruments_url()]

    def parse_instruments(self, body: bytes, url: str | None = None) -> Instruments:
        return parse_instruments(body)

    def depth_url(self, exchange_symbol: str) -> str:
        return f"{self.rest_base}{DEPTH_PATH}?symbol={exchange_symbol}&limit={self.depth_limit}"

    def open_interest_url(self, exchange_symbol: str) -> str:
        return f"{self.rest_base}{OPEN_INTEREST_PATH}?symbol={exchange_symbol}"

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        """Every stream of the symbols (both paths); a connection subscribes its path's only."""
        return self.stream_requests(symbols, (*self.public_streams, *self.market_streams))

    def connection_subscribe_messages(self, conn: Connection) -> list[str]:
        streams = self.market_streams if isinstance(conn.shard, MarketShard) else self.public_streams
        return self.stream_requests(conn.symbols, streams)

    def stream_requests(self, symbols: Sequence[str], streams: Sequence[str]) -> list[str]:
        params = [f"{symbol.lower()}@{stream}" for symbol in symbols for stream in streams]
        return [
            self._request(SUBSCRIBE, params[start : start + self.streams_per_message])
            for start in range(0, len(params), self.streams_per_message)
        ]

    async def on_subscribed(self, conn: Connection) -> None:
        if isinstance(conn.shard, MarketShard):
            await self.poll_open_interest(conn)
        else:
            await super().on_subscribed(conn)  # the depth snapshots

    def open_interest_period_s(self, conn: Connection) -> float:
        """Seconds between two polls of one symbol: every symbol of the connector shares the
        REST gate, of which the polling takes at most ``open_interest_request_share``."""
        symbols = max(len(self.symbol_map), len(conn.symbols), 1)
        spacing = self.rest.gate.interval_s / self.open_interest_request_share
        return max(self.open_interest_interval_s, symbols * spacing)

    async def poll_open_interest(self, conn: Connection) -> None:
        """Each symbol of the connection in turn, evenly spread over the period, until it ends."""
        while not conn.ended.is_set():
            pause = self.open_interest_period_s(conn) / max(1, len(conn.symbols))
            for symbol in conn.symbols:
                try:
                    if not await conn.fetch_rest(self.open_interest_url(symbol)):
                        return
                except RestError as exc:
                    log_event(
                        log,
                        logging.WARNING,
                        "open interest poll failed",
                        exchange=self.exchange,
                        error=str(exc),
                    )
                await asyncio.sleep(pause)
