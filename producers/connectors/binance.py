"""Binance spot: combined streams, SUBSCRIBE messages, REST depth snapshots for book sync;
trades, diff depth, the 24 h ticker and 1m klines per symbol."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from urllib.parse import quote

import orjson

from marketpipe.exchanges.binance import (
    COMBINED_STREAM_PATH,
    DEPTH_PATH,
    INSTRUMENTS_PATH,
    REST_BASE,
    SERVER_SHUTDOWN,
    STREAMS,
    SUBSCRIBE,
    WS_BASE,
)
from producers.base import RestSnapshotConnector

_SHUTDOWN_MARK = f'"{SERVER_SHUTDOWN}"'.encode()


class BinanceConnector(RestSnapshotConnector):
    exchange = "binance"
    default_ws_base = WS_BASE
    default_rest_base = REST_BASE
    streams = STREAMS
    depth_limit = 1000
    max_symbols_per_connection = 1024 // 4  # 1024 streams per connection, four per symbol
    streams_per_message = 200
    send_interval_s = 0.25  # 5 incoming messages/s per connection, pings and pongs included
    connect_interval_s = 1.0  # 300 connection attempts per 5 minutes per IP
    rest_min_interval_s = 0.6  # depth limit=1000 weighs 50 of the 6000/minute budget
    silence_timeout_s = 60.0  # the server pings every 20 s (answered by the websocket client itself)
    max_connection_age_s = 23.5 * 3600  # connections are cut at 24 h: hand over before that

    _ids = itertools.count(1)

    def ws_url(self) -> str:
        return f"{self.ws_base}{COMBINED_STREAM_PATH}"

    def all_instruments_url(self) -> str:
        return f"{self.rest_base}{INSTRUMENTS_PATH}"

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        names = quote(orjson.dumps(list(exchange_symbols)).decode(), safe="")
        return [f"{self.rest_base}{INSTRUMENTS_PATH}?symbols={names}"]

    def depth_url(self, exchange_symbol: str) -> str:
        return f"{self.rest_base}{DEPTH_PATH}?symbol={exchange_symbol}&limit={self.depth_limit}"

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        streams = self.settings.streams or self.streams
        params = [f"{symbol.lower()}@{stream}" for symbol in symbols for stream in streams]
        return [
            self._request(SUBSCRIBE, params[start : start + self.streams_per_message])
            for start in range(0, len(params), self.streams_per_message)
        ]

    def _request(self, method: str, params: list[str]) -> str:
        return orjson.dumps({"method": method, "params": params, "id": next(self._ids)}).decode()

    def planned_reconnect_reason(self, data: bytes) -> str | None:
        if len(data) < 256 and _SHUTDOWN_MARK in data:
            return SERVER_SHUTDOWN
        return None
