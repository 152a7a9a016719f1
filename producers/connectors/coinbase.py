"""Coinbase Advanced Trade: one channel per subscribe message, heartbeats channel keeps it alive;
trades, level2, the ticker and the (five-minute) candles per product."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlencode

import orjson

from marketpipe.exchanges.coinbase import BOOK_CHANNEL, CHANNELS, INSTRUMENTS_PATH, REST_BASE, WS_BASE
from producers.base import Connector


class CoinbaseConnector(Connector):
    exchange = "coinbase"
    default_ws_base = WS_BASE
    default_rest_base = REST_BASE
    channels = CHANNELS
    book_channel = BOOK_CHANNEL
    max_symbols_per_connection = 10  # level2 snapshots are up to ~5 MB per product
    send_interval_s = 0.125  # 8 unauthenticated messages/s per IP
    send_gate_shared = True
    connect_interval_s = 0.125  # 8 connections/s per IP
    rest_min_interval_s = 0.1
    silence_timeout_s = 10.0  # heartbeats arrive every second

    def ws_url(self) -> str:
        return self.ws_base

    def all_instruments_url(self) -> str:
        return f"{self.rest_base}{INSTRUMENTS_PATH}"

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        query = urlencode([("product_ids", symbol) for symbol in exchange_symbols])
        return [f"{self.all_instruments_url()}?{query}"]

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        return [self._message("subscribe", symbols, channel) for channel in self.channels]

    def resubscribe_book_messages(self, symbol: str) -> list[str]:
        return [self._message(op, [symbol], self.book_channel) for op in ("unsubscribe", "subscribe")]

    @staticmethod
    def _message(op: str, symbols: Sequence[str], channel: str) -> str:
        return orjson.dumps({"type": op, "product_ids": list(symbols), "channel": channel}).decode()
