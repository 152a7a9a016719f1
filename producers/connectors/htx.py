"""HTX (Huobi) spot: gzip-compressed server frames, server pings answered with pongs, the
incremental MBP book synced by a snapshot request on the same websocket.

One connection per shard on ``/feed`` (HTX's endpoint for ``market.<sym>.mbp.<levels>``) carries
the MBP book, ``trade.detail``, ``ticker`` (24 h stats with best bid/ask and the last trade) and
the 1min ``kline`` of its symbols. After the subscribe, and on every resync, the
connector sends ``{"req":"market.<sym>.mbp.<levels>"}``; the reply is the snapshot the parser
bridges the buffered updates to.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence

import orjson

from marketpipe.exchanges import htx as wire
from marketpipe.exchanges.htx import MBP_LEVELS, PING_PREFIX
from producers.base import Connection, Connector

_MAX_PING_FRAME = 64
"""a gzip-compressed ``{"ping":<13 digits>}`` is about 40 bytes; data frames are larger"""


class HtxConnector(Connector):
    exchange = "htx"
    default_ws_base = wire.WS_BASE
    default_rest_base = wire.REST_BASE
    ws_path = wire.WS_PATH
    book_levels = 150
    kline_period = "1min"
    max_symbols_per_connection = 50 // 4  # HTX advises against many topics per connection: about 50
    send_interval_s = 0.02
    connect_interval_s = 0.5
    rest_min_interval_s = 0.1  # public REST: 10 requests/s per IP
    silence_timeout_s = 20.0  # the server pings every 5 s

    _ids = itertools.count(1)

    @property
    def levels(self) -> int:
        levels = self.settings.book_depth or self.book_levels
        if levels not in MBP_LEVELS:
            raise ValueError(f"htx MBP book depth must be one of {MBP_LEVELS}, not {levels}")
        return levels

    def ws_url(self) -> str:
        return f"{self.ws_base}{self.ws_path}"

    def all_instruments_url(self) -> str:
        return f"{self.rest_base}{wire.INSTRUMENTS_PATH}"

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        return [f"{self.all_instruments_url()}?symbols={','.join(exchange_symbols)}"]

    def book_topic(self, symbol: str) -> str:
        return wire.channel(symbol, f"mbp.{self.levels}")

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        topics = [
            topic
            for s in symbols
            for topic in (
                self.book_topic(s),
                wire.channel(s, wire.TRADE_TOPIC),
                wire.channel(s, wire.TICKER_TOPICS[0]),
                wire.channel(s, f"{wire.KLINE_TOPIC}.{self.kline_period}"),
            )
        ]
        return [self._message("sub", topic) for topic in topics]

    def snapshot_request(self, symbol: str) -> str:
        return self._message("req", self.book_topic(symbol))

    def _message(self, op: str, topic: str) -> str:
        return orjson.dumps({op: topic, "id": str(next(self._ids))}).decode()

    async def on_subscribed(self, conn: Connection) -> None:
        for symbol in conn.symbols:
            await conn.send(self.snapshot_request(symbol))

    async def resync(self, conn: Connection, symbol: str) -> None:
        await conn.send(self.snapshot_request(symbol))

    def answer_frame(self, data: bytes) -> str | None:
        if len(data) > _MAX_PING_FRAME:
            return None
        try:
            text = zlib.decompress(data, 31)
        except zlib.error:
            return None
        if text.startswith(PING_PREFIX) and text.endswith(b"}") and text[8:-1].isdigit():
            return f'{{"pong":{text[8:-1].decode()}}}'
        return None
