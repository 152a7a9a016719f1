"""Bitfinex WS v2 public: conf flags (SEQ_ALL + OB_CHECKSUM), P0 books, trades, the ticker and
1m trade candles, resync by unsubscribe (chanId) + subscribe, reconnect on info 20051 (server
restart) and 20061.

The ``conf`` frame goes out first, before the subscribes, so every channel frame of the
connection carries its sequence number and the first snapshots are already checksummed.

Resync needs the book's chanId (``unsubscribe`` takes nothing else); the connector learns it
from the ``subscribed`` replies (a cheap prefix check per frame, parsed only on a match), keyed
by symbol: a symbol lives on one shard, and the newest ``subscribed`` for it belongs to the
shard's current connection, the one a resync acts on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from marketpipe.exchanges.bitfinex import (
    BOOK_CHANNEL,
    BOOK_LENGTHS,
    CANDLES_CHANNEL,
    INSTRUMENTS_PATH,
    OB_CHECKSUM,
    SEQ_ALL,
    TICKER_CHANNEL,
    TRADES_CHANNEL,
    WS_PATH,
)
from marketpipe.logs import log_event
from producers.base import Connector

log = logging.getLogger("producers")

_SUBSCRIBED = b'{"event":"subscribed"'
_INFO = b'{"event":"info"'
RECONNECT_CODES = {
    b'"code":20051': "info 20051 (server restart)",
    b'"code":20061': "info 20061 (maintenance ended)",
}


class BitfinexConnector(Connector):
    exchange = "bitfinex"
    default_ws_base = "wss://api-pub.bitfinex.com"
    default_rest_base = "https://api-pub.bitfinex.com"
    default_depth = 25  # the checksum covers the top 25
    max_symbols_per_connection = 30 // 4  # 30 public channels per connection, four per symbol
    candle_timeframe = "1m"
    send_interval_s = 0.05
    connect_interval_s = 3.0  # 20 connections per minute per IP
    rest_min_interval_s = 1.0  # public REST: 90 requests per minute on /conf
    silence_timeout_s = 40.0  # an idle channel heartbeats every 15 s

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.book_channels: dict[str, int] = {}
        """exchange symbol -> chanId of its book on the newest connection carrying it"""

    @property
    def depth(self) -> int:
        wanted = self.settings.book_depth or self.default_depth
        return next((length for length in BOOK_LENGTHS if length >= wanted), BOOK_LENGTHS[-1])

    def ws_url(self) -> str:
        return f"{self.ws_base}{WS_PATH}"

    def all_instruments_url(self) -> str:
        return f"{self.rest_base}{INSTRUMENTS_PATH}"

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        return [self.all_instruments_url()]  # the lists cannot be filtered

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        conf = orjson.dumps({"event": "conf", "flags": SEQ_ALL + OB_CHECKSUM}).decode()
        return [
            conf,
            *(
                message
                for symbol in symbols
                for message in (
                    self._book(symbol),
                    self._trades(symbol),
                    self._ticker(symbol),
                    self._candles(symbol),
                )
            ),
        ]

    def resubscribe_book_messages(self, symbol: str) -> list[str]:
        chan = self.book_channels.get(symbol)
        if chan is None:
            log_event(log, logging.WARNING, "resync: book chanId unknown, subscribing only", symbol=symbol)
            return [self._book(symbol)]
        return [orjson.dumps({"event": "unsubscribe", "chanId": chan}).decode(), self._book(symbol)]

    def _book(self, symbol: str) -> str:
        request = {
            "event": "subscribe",
            "channel": BOOK_CHANNEL,
            "symbol": symbol,
            "prec": "P0",
            "freq": "F0",
        }
        return orjson.dumps({**request, "len": str(self.depth)}).decode()

    @staticmethod
    def _trades(symbol: str) -> str:
        return orjson.dumps({"event": "subscribe", "channel": TRADES_CHANNEL, "symbol": symbol}).decode()

    @staticmethod
    def _ticker(symbol: str) -> str:
        return orjson.dumps({"event": "subscribe", "channel": TICKER_CHANNEL, "symbol": symbol}).decode()

    def _candles(self, symbol: str) -> str:
        key = f"trade:{self.candle_timeframe}:{symbol}"
        return orjson.dumps({"event": "subscribe", "channel": CANDLES_CHANNEL, "key": key}).decode()

    def planned_reconnect_reason(self, data: bytes) -> str | None:
        if data[:15] != _INFO:
            return None
        return next((reason for code, reason in RECONNECT_CODES.items() if code in data), None)

    def answer_frame(self, data: bytes) -> str | None:
        """Nothing to answer (the server heartbeats); learns book chanIds from ``subscribed``."""
        if data[:21] == _SUBSCRIBED:
            # a malformed reply is the parser's to dead-letter; it must not end the connection
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                reply = orjson.loads(data)
                if reply.get("channel") == BOOK_CHANNEL:
                    self.book_channels[reply["symbol"]] = int(reply["chanId"])
        return None
