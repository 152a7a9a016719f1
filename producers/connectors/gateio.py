"""Gate.io v4 spot: one spot.order_book_update (100ms) and one 1m spot.candlesticks subscribe per
pair, one spot.trades and one spot.tickers subscribe for all pairs, ``spot.ping`` heartbeats, REST
order_book snapshots (``with_id``) for book sync."""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson

from marketpipe.exchanges import gateio as wire
from producers.base import RestSnapshotConnector


class GateioConnector(RestSnapshotConnector):
    exchange = "gateio"
    default_ws_base = wire.WS_BASE
    default_rest_base = wire.REST_BASE
    book_interval = "100ms"
    candle_interval = "1m"
    depth_limit = 100  # the most the REST order_book returns per side
    max_symbols_per_connection = 50
    send_interval_s = 0.05
    connect_interval_s = 0.5
    rest_min_interval_s = 0.1  # public spot endpoints: 200 requests per 10 s
    ping_interval_s = 15.0
    silence_timeout_s = 45.0  # a spot.pong answers every ping, so 15 s + slack

    def ws_url(self) -> str:
        return f"{self.ws_base}{wire.WS_PATH}"

    def all_instruments_url(self) -> str:
        return f"{self.rest_base}{wire.INSTRUMENTS_PATH}"

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        # the list endpoint has no filter; the per-pair one returns one object
        return [f"{self.all_instruments_url()}/{symbol}" for symbol in exchange_symbols]

    def depth_url(self, exchange_symbol: str) -> str:
        return (
            f"{self.rest_base}{wire.ORDER_BOOK_PATH}?currency_pair={exchange_symbol}"
            f"&limit={self.depth_limit}&with_id=true"
        )

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        # book subscribes first: the server answers in order, so once any frame is back the
        # updates flow and the snapshot taken then is bridged by a buffered update
        books = [self._request(wire.BOOK_CHANNEL, "subscribe", [s, self.book_interval]) for s in symbols]
        candles = [
            self._request(wire.CANDLES_CHANNEL, "subscribe", [self.candle_interval, s]) for s in symbols
        ]
        trades_and_tickers = [
            self._request(c, "subscribe", list(symbols)) for c in (wire.TRADES_CHANNEL, wire.TICKERS_CHANNEL)
        ]
        return [*books, *trades_and_tickers, *candles]

    @staticmethod
    def _request(channel: str, event: str, payload: list[str]) -> str:
        return orjson.dumps(
            {"time": int(time.time()), "channel": channel, "event": event, "payload": payload}
        ).decode()

    def ping_message(self) -> str:
        return orjson.dumps({"time": int(time.time()), "channel": wire.PING_CHANNEL}).decode()
