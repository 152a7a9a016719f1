"""OKX v5: fewer than 30 channels per connection, text ping when idle, 64008 notices.

Books, trades and tickers are on /ws/v5/public; candles only on /ws/v5/business, so every group
of symbols has a second connection there (``CandleShard``) subscribed to their 1m candles.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from producers.base import Connection, Connector, Shard


class CandleShard(Shard):
    """The /ws/v5/business connection of a group of symbols (their candles)."""


class OkxConnector(Connector):
    exchange = "okx"
    default_ws_base = "wss://ws.okx.com:8443"
    default_rest_base = "https://www.okx.com"
    channels = ("books", "trades", "tickers")
    candle_channel = "candle1m"
    book_channel = "books"
    max_symbols_per_connection = 29 // 3  # fewer than 30 channels per connection
    send_interval_s = 0.1
    connect_interval_s = 0.34  # 3 connection requests/s per IP
    rest_min_interval_s = 0.1  # 20 requests per 2 s
    ping_interval_s = 20.0  # "ping" after 20 s of silence; the server drops idle connections at 30 s
    ping_only_when_idle = True
    silence_timeout_s = 30.0

    def ws_url(self) -> str:
        return f"{self.ws_base}/ws/v5/public"

    def candle_ws_url(self) -> str:
        return f"{self.ws_base}/ws/v5/business"

    async def connect_url(self, conn: Connection) -> str:
        return self.candle_ws_url() if isinstance(conn.shard, CandleShard) else self.ws_url()

    def build_shards(self, exchange_symbols: Sequence[str]) -> list[Shard]:
        public = super().build_shards(exchange_symbols)
        candles: list[Shard] = [CandleShard(self, len(public) + i, s.symbols) for i, s in enumerate(public)]
        self.shards = public + candles
        return self.shards

    def connection_subscribe_messages(self, conn: Connection) -> list[str]:
        if not isinstance(conn.shard, CandleShard):
            return self.subscribe_messages(conn.symbols)
        args = [{"channel": self.candle_channel, "instId": symbol} for symbol in conn.symbols]
        return [orjson.dumps({"op": "subscribe", "args": args}).decode()]

    def all_instruments_url(self) -> str:
        return f"{self.rest_base}/api/v5/public/instruments?instType=SPOT"

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        # the endpoint filters by one instId at a time
        return [f"{self.all_instruments_url()}&instId={symbol}" for symbol in exchange_symbols]

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        args = [{"channel": channel, "instId": symbol} for symbol in symbols for channel in self.channels]
        return [orjson.dumps({"op": "subscribe", "args": args}).decode()]

    def resubscribe_book_messages(self, symbol: str) -> list[str]:
        arg = {"channel": self.book_channel, "instId": symbol}
        return [orjson.dumps({"op": op, "args": [arg]}).decode() for op in ("unsubscribe", "subscribe")]

    def ping_message(self) -> str:
        return "ping"

    def planned_reconnect_reason(self, data: bytes) -> str | None:
        if len(data) < 512 and b'"64008"' in data and b'"notice"' in data:
            return "notice 64008 (service upgrade)"
        return None
