"""Kraken: WS v2 (default) or the legacy v1 protocol; heartbeats flow once subscribed. Book,
trades, the ticker and 1-minute OHLC per symbol."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import orjson

from marketpipe.exchanges.kraken import (
    BOOK,
    INSTRUMENTS_PATH,
    OHLC,
    REST_BASE,
    TICKER,
    TRADE,
    V2_PATH,
    WS_BASE,
)
from producers.base import Connector

OHLC_MINUTES = 1


class KrakenConnector(Connector):
    exchange = "kraken"
    default_ws_base = WS_BASE
    default_rest_base = REST_BASE
    default_depth = 1000
    max_symbols_per_connection = 50
    send_interval_s = 0.1  # the message rate limit is undocumented; stay gentle
    connect_interval_s = 0.5
    rest_min_interval_s = 1.0  # public REST: about one call per second
    silence_timeout_s = 10.0  # heartbeats arrive about once a second

    _ids = itertools.count(1)

    @property
    def v2(self) -> bool:
        return self.settings.protocol == "v2"

    @property
    def depth(self) -> int:
        return self.settings.book_depth or self.default_depth

    def ws_url(self) -> str:
        return f"{self.ws_base}{V2_PATH}" if self.v2 else self.ws_base

    def all_instruments_url(self) -> str:
        return f"{self.rest_base}{INSTRUMENTS_PATH}"

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        return [f"{self.all_instruments_url()}?pair={','.join(exchange_symbols)}"]

    def choose_exchange_symbol(self, symbol: str, candidates: list[str]) -> str:
        # parse_instruments lists the v1 wsname (XBT/USD) and the v2 name (BTC/USD).
        v2_name = symbol.replace("-", "/")
        if self.v2:
            return v2_name if v2_name in candidates else candidates[0]
        return next((name for name in candidates if name != v2_name), candidates[0])

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        return [self._book("subscribe", symbols), self._trades(symbols), *self._stats(symbols)]

    def resubscribe_book_messages(self, symbol: str) -> list[str]:
        return [self._book("unsubscribe", [symbol]), self._book("subscribe", [symbol])]

    def _book(self, op: str, symbols: Sequence[str]) -> str:
        if self.v2:
            params = {"channel": BOOK, "symbol": list(symbols), "depth": self.depth}
            if op == "subscribe":
                params["snapshot"] = True
            return orjson.dumps({"method": op, "params": params, "req_id": next(self._ids)}).decode()
        subscription = {"name": BOOK, "depth": self.depth}
        return orjson.dumps({"event": op, "pair": list(symbols), "subscription": subscription}).decode()

    def _stats(self, symbols: Sequence[str]) -> list[str]:
        """The ticker (a snapshot, then an update per trade) and 1m OHLC (recent candles first)."""
        if self.v2:
            return [
                orjson.dumps({"method": "subscribe", "params": params, "req_id": next(self._ids)}).decode()
                for params in (
                    {"channel": TICKER, "symbol": list(symbols)},
                    {"channel": OHLC, "symbol": list(symbols), "interval": OHLC_MINUTES},
                )
            ]
        return [
            orjson.dumps({"event": "subscribe", "pair": list(symbols), "subscription": subscription}).decode()
            for subscription in ({"name": TICKER}, {"name": OHLC, "interval": OHLC_MINUTES})
        ]

    def _trades(self, symbols: Sequence[str]) -> str:
        if self.v2:
            params = {"channel": TRADE, "symbol": list(symbols), "snapshot": False}
            return orjson.dumps({"method": "subscribe", "params": params, "req_id": next(self._ids)}).decode()
        return orjson.dumps(
            {"event": "subscribe", "pair": list(symbols), "subscription": {"name": TRADE}}
        ).decode()
