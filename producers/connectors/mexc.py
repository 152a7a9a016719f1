"""MEXC spot v3: protobuf push channels (JSON control frames): aggregated depth and deals, the 1m
kline and the rolling 24 h miniTicker per symbol, at most 30 subscriptions per connection, JSON
``PING`` keep-alive, REST depth snapshots for book sync (like Binance)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from marketpipe.exchanges import mexc as wire
from producers.base import RestSnapshotConnector


class MexcConnector(RestSnapshotConnector):
    exchange = "mexc"
    default_ws_base = wire.WS_BASE
    default_rest_base = wire.REST_BASE
    channels = wire.CHANNELS
    stats_channels = wire.STATS_CHANNELS
    depth_limit = 5000  # the documented local-book procedure asks for the 5000-level snapshot
    max_symbols_per_connection = 30 // 4  # 30 subscriptions per connection, four per symbol
    send_interval_s = 0.1
    connect_interval_s = 0.5
    rest_min_interval_s = 0.1
    # The server drops a subscribed connection after a minute without data: ping when quiet.
    ping_interval_s = 20.0
    ping_only_when_idle = True
    silence_timeout_s = 60.0
    max_connection_age_s = 23.5 * 3600  # connections are cut at 24 h: hand over before that

    def ws_url(self) -> str:
        return f"{self.ws_base}{wire.WS_PATH}"

    def all_instruments_url(self) -> str:
        return f"{self.rest_base}{wire.INSTRUMENTS_PATH}"

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        return [f"{self.rest_base}{wire.INSTRUMENTS_PATH}?symbols={','.join(exchange_symbols)}"]

    def depth_url(self, exchange_symbol: str) -> str:
        return f"{self.rest_base}{wire.DEPTH_PATH}?symbol={exchange_symbol}&limit={self.depth_limit}"

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        params = [f"{channel}@{symbol}" for symbol in symbols for channel in self.channels]
        params += [channel.format(symbol=symbol) for symbol in symbols for channel in self.stats_channels]
        return [orjson.dumps({"method": wire.SUBSCRIBE, "params": params}).decode()]

    def ping_message(self) -> str:
        return wire.PING
