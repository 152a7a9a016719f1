"""Bybit v5 public (spot or linear): at most 10 args per subscribe, JSON ping every 20 s; book,
trades, the 24 h ticker and 1m klines per symbol."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import orjson

from producers.base import Connector


class BybitConnector(Connector):
    exchange = "bybit"
    default_ws_base = "wss://stream.bybit.com"
    default_rest_base = "https://api.bybit.com"
    book_depth = 200
    args_per_request = 10
    max_symbols_per_connection = 25  # the args of one connection must stay under 21,000 characters
    send_interval_s = 0.05
    connect_interval_s = 0.6  # 500 connections per 5 minutes per domain
    rest_min_interval_s = 0.05
    ping_interval_s = 20.0
    silence_timeout_s = 45.0  # a pong answers every ping, so 20 s + slack

    _ids = itertools.count(1)

    @property
    def category(self) -> str:
        return self.settings.category

    def ws_url(self) -> str:
        return f"{self.ws_base}/v5/public/{self.category}"

    def all_instruments_url(self) -> str:
        return f"{self.rest_base}/v5/market/instruments-info?category={self.category}"

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        # the endpoint filters by one symbol at a time
        return [f"{self.all_instruments_url()}&symbol={symbol}" for symbol in exchange_symbols]

    def book_topic(self, symbol: str) -> str:
        return f"orderbook.{self.settings.book_depth or self.book_depth}.{symbol}"

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        topics = [topic for symbol in symbols for topic in self.symbol_topics(symbol)]
        return [
            self._op("subscribe", topics[start : start + self.args_per_request])
            for start in range(0, len(topics), self.args_per_request)
        ]

    def symbol_topics(self, symbol: str) -> tuple[str, ...]:
        """Book, trades, the 24 h ticker and 1m klines."""
        return (self.book_topic(symbol), f"publicTrade.{symbol}", f"tickers.{symbol}", f"kline.1.{symbol}")

    def resubscribe_book_messages(self, symbol: str) -> list[str]:
        return [self._op(op, [self.book_topic(symbol)]) for op in ("unsubscribe", "subscribe")]

    @staticmethod
    def _op(op: str, args: list[str]) -> str:
        return orjson.dumps({"op": op, "args": args}).decode()

    def ping_message(self) -> str:
        return orjson.dumps({"req_id": str(next(self._ids)), "op": "ping"}).decode()
