"""Deribit API v2: JSON-RPC 2.0 over one websocket per shard (``/ws/api/v2``).

Per connection: ``public/set_heartbeat`` (the server then sends ``test_request`` notifications,
each answered with ``public/test`` at once, or it closes the connection) and one
``public/subscribe`` of ``book.<instrument>.100ms``, ``trades.<instrument>.100ms`` and
``ticker.<instrument>.100ms`` per symbol (``raw`` intervals need an authorised connection; the
100 ms ones carry the same ``change_id`` chain). A resync unsubscribes and subscribes the book
channel again: Deribit then sends a fresh snapshot.

Instrument metadata is ``public/get_instruments?currency=<C>&kind=<kind>&expired=false``, fetched
over HTTP GET so the raw topic carries it as a ``rest`` record like other exchanges' REST answers
(the JSON-RPC answer over the websocket would be a ``recv`` frame). At start the connector reads
the futures (and, when an option is requested, options) of every currency a requested name
mentions that Deribit lists (BTC, ETH, USDC, USDT); each connection then fetches the lists its
own symbols were found in. ``get_instruments`` is limited to a sustained 1 request/s, hence
``rest_min_interval_s``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import orjson

from marketpipe.exchanges.deribit import (
    BOOK_CHANNEL,
    INSTRUMENTS_PATH,
    TICKER_CHANNEL,
    TRADES_CHANNEL,
    WS_PATH,
)
from marketpipe.instruments import Instruments
from marketpipe.logs import log_event
from producers.base import Connection, Connector, SymbolError, log

CURRENCIES = ("BTC", "ETH", "USDC", "USDT")
"""the currencies ``get_instruments`` is asked for (linear USDC/USDT contracts are listed under
the settlement currency, inverse ones under their coin)"""
HEARTBEAT_S = 10  # the smallest interval Deribit accepts
_TEST_REQUEST = b'"test_request"'
_MAX_HEARTBEAT_FRAME = 256


class DeribitConnector(Connector):
    exchange = "deribit"
    default_ws_base = "wss://www.deribit.com"
    default_rest_base = "https://www.deribit.com"
    channels = (BOOK_CHANNEL, TRADES_CHANNEL, TICKER_CHANNEL)
    interval = "100ms"
    max_symbols_per_connection = 50  # 150 channels in one subscribe
    send_interval_s = 0.05  # non-matching-engine requests: about 20/s sustained per account
    connect_interval_s = 0.5
    rest_min_interval_s = 1.0  # get_instruments: 1 request/s sustained
    silence_timeout_s = 2.5 * HEARTBEAT_S  # a test_request comes every heartbeat interval

    _ids = itertools.count(1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listed_in: dict[str, tuple[str, str]] = {}
        """exchange symbol -> (currency, kind) of the get_instruments list that names it"""

    def ws_url(self) -> str:
        return f"{self.ws_base}{WS_PATH}"

    # -- instruments ---------------------------------------------------------------------

    def instruments_url(self, currency: str, kind: str = "future") -> str:
        query = urlencode({"currency": currency, "kind": kind, "expired": "false"})
        return f"{self.rest_base}{INSTRUMENTS_PATH}?{query}"

    def all_instruments_url(self) -> str:
        return self.instruments_url("BTC")

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        lists = dict.fromkeys(self.listed_in[s] for s in exchange_symbols if s in self.listed_in)
        return [self.instruments_url(currency, kind) for currency, kind in lists]

    def wanted_lists(self) -> list[tuple[str, str]]:
        """(currency, kind) lists to read at start: the currencies the requested names mention
        (all of them when none does); options only when an option is requested."""
        parts = {part for symbol in self.requested for part in symbol.split("-")}
        currencies = [c for c in CURRENCIES if c in parts] or list(CURRENCIES)
        kinds = ["future"]
        if any(_option_name(symbol) for symbol in self.requested):
            kinds.append("option")
        return [(currency, kind) for currency in currencies for kind in kinds]

    async def list_instruments(self) -> Instruments:
        """The instruments of every wanted list (``wanted_lists``)."""
        listed = Instruments()
        for currency, kind in self.wanted_lists():
            url = self.instruments_url(currency, kind)
            part: Instruments = self.parse_instruments(await self.rest.get(url), url)
            for exchange_symbol, symbol in part.items():
                listed.add(exchange_symbol, symbol)
                self.listed_in.setdefault(exchange_symbol, (currency, kind))
            listed.skipped.update(part.skipped)
        return listed

    async def resolve_symbols(self) -> list[str]:
        """Map the requested names to Deribit instruments from every wanted list."""
        by_symbol: dict[str, str] = {}
        for exchange_symbol, symbol in (await self.list_instruments()).items():
            by_symbol.setdefault(symbol, exchange_symbol)
        missing = [symbol for symbol in self.requested if symbol not in by_symbol]
        if missing and (self.strict_symbols or len(missing) == len(self.requested)):
            raise SymbolError(
                f"deribit does not list {', '.join(missing)} ({len(by_symbol)} instruments read)"
            )
        if missing:
            log_event(
                log,
                logging.WARNING,
                "symbols not listed, skipped",
                exchange="deribit",
                symbols=",".join(missing),
            )
        self.exchange_symbols = {s: by_symbol[s] for s in self.requested if s in by_symbol}
        self.symbol_map = {v: k for k, v in self.exchange_symbols.items()}
        return list(self.exchange_symbols.values())

    # -- subscriptions ---------------------------------------------------------------------

    def channel_names(self, symbol: str) -> list[str]:
        return [f"{channel}.{symbol}.{self.interval}" for channel in self.channels]

    def connection_subscribe_messages(self, conn: Connection) -> list[str]:
        heartbeat = self._request("public/set_heartbeat", {"interval": HEARTBEAT_S})
        return [*self.subscribe_messages(conn.symbols), heartbeat]

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        channels = [name for symbol in symbols for name in self.channel_names(symbol)]
        return [self._request("public/subscribe", {"channels": channels})]

    def resubscribe_book_messages(self, symbol: str) -> list[str]:
        channel = [f"book.{symbol}.{self.interval}"]
        return [
            self._request(method, {"channels": channel})
            for method in ("public/unsubscribe", "public/subscribe")
        ]

    def answer_frame(self, data: bytes) -> str | None:
        """``test_request`` must be answered at once with ``public/test``, or Deribit closes."""
        if len(data) < _MAX_HEARTBEAT_FRAME and _TEST_REQUEST in data and b'"heartbeat"' in data:
            return self._request("public/test", {})
        return None

    def _request(self, method: str, params: dict[str, object]) -> str:
        message = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        return orjson.dumps(message).decode()


def _option_name(symbol: str) -> bool:
    """``BASE-QUOTE-YYYYMMDD-STRIKE-C|P`` (with the contract-type suffix, if any)."""
    parts = symbol.removesuffix("-INV").split("-")
    return len(parts) == 5 and parts[-1] in ("C", "P")
