"""Bybit v5 public, every category in one connector: spot, linear (USDT/USDC perpetuals and
futures) and inverse, each on its own endpoint /v5/public/{category}.

At start the instrument list of each configured category is read (``limit=1000`` with cursor
paging: linear lists more than the default 500), and each requested name (``BTC-USDT``,
``BTC-USDT-PERP``, ``BTC-USD-PERP-INV``) is resolved to its (category, exchange symbol); spot and
linear share wire names (``BTCUSDT``), so a shard serves one category and its connections go to
that category's endpoint. Per symbol: book, trades, tickers (on derivatives: mark, index,
funding, open interest) and 1m klines, and ``allLiquidation`` on derivatives. At most 10 args per
subscribe (spot's limit; derivatives have none), a JSON ping every 20 s.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from urllib.parse import quote

import orjson

from marketpipe.config import ConnectorSettings, ProducerSettings
from marketpipe.exchanges.bybit import (
    BOOK_TOPIC,
    CATEGORIES,
    INSTRUMENTS_PATH,
    KLINE_TOPIC,
    LIQUIDATION_TOPIC,
    TICKERS_TOPIC,
    TRADE_TOPIC,
    WS_PATH,
    Category,
    next_page_cursor,
)
from marketpipe.instruments import Instruments
from marketpipe.logs import log_event
from producers.base import RUN_ID, Connection, Connector, Shard, SymbolError, shard_key
from producers.publisher import RawPublisher

log = logging.getLogger("producers")

DERIVATIVES: frozenset[str] = frozenset({"linear", "inverse"})
PAGE_LIMIT = 1000
MAX_PAGES = 50
"""a cursor that never ends is a broken answer, not a 50 000-instrument listing"""


class CategorySymbols(tuple[str, ...]):
    """A shard's exchange symbols and the category they belong to (every per-connection hook
    gets the symbols, so the category travels with them)."""

    category: Category

    def __new__(cls, category: Category, symbols: Sequence[str]) -> CategorySymbols:
        found = super().__new__(cls, symbols)
        found.category = category
        return found


class CategoryShard(Shard):
    """The symbols of one category; keyed apart from another category's same-named symbols."""

    def __init__(self, connector: Connector, index: int, category: Category, symbols: Sequence[str]) -> None:
        super().__init__(connector, index, symbols)
        self.category = category
        self.symbols = CategorySymbols(category, symbols)
        if category != "spot":  # spot keeps the key (and raw partition) it always had
            self.key = shard_key(connector.exchange, [f"{category}:{s}" for s in symbols])


def category_of(symbols: Sequence[str]) -> Category:
    return symbols.category if isinstance(symbols, CategorySymbols) else "spot"


class BybitConnector(Connector):
    exchange = "bybit"
    default_ws_base = "wss://stream.bybit.com"
    default_rest_base = "https://api.bybit.com"
    book_depth = 200
    args_per_request = 10
    max_symbols_per_connection = 25  # the args of one connection must stay under 21,000 characters
    send_interval_s = 0.05
    connect_interval_s = 0.6  # 500 connections per 5 minutes per domain
    rest_min_interval_s = 0.05  # 600 requests per 5 s per IP
    ping_interval_s = 20.0
    silence_timeout_s = 45.0  # a pong answers every ping, so 20 s + slack

    _ids = itertools.count(1)

    def __init__(
        self,
        symbols: Sequence[str],
        publisher: RawPublisher,
        settings: ConnectorSettings | None = None,
        producer: ProducerSettings | None = None,
        *,
        strict_symbols: bool = True,
        run_id: str = RUN_ID,
    ) -> None:
        super().__init__(symbols, publisher, settings, producer, strict_symbols=strict_symbols, run_id=run_id)
        self.categories: tuple[Category, ...] = tuple(dict.fromkeys(self.settings.categories))
        self.category_of_symbol: dict[str, Category] = {}
        """normalised name -> the category it was resolved in"""

    # -- endpoints ---------------------------------------------------------------------------

    def ws_url(self, category: Category | None = None) -> str:
        return f"{self.ws_base}{WS_PATH}/{category or self.categories[0]}"

    async def connect_url(self, conn: Connection) -> str:
        return self.ws_url(category_of(conn.symbols))

    def all_instruments_url(self, category: Category | None = None, cursor: str = "") -> str:
        url = f"{self.rest_base}{INSTRUMENTS_PATH}?category={category or self.categories[0]}"
        url += f"&limit={PAGE_LIMIT}"
        return url + (f"&cursor={quote(cursor, safe='')}" if cursor else "")

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        # the endpoint filters by one symbol at a time
        base = f"{self.rest_base}{INSTRUMENTS_PATH}?category={category_of(exchange_symbols)}"
        return [f"{base}&symbol={symbol}" for symbol in exchange_symbols]

    # -- symbols and shards ------------------------------------------------------------------

    async def start(self) -> list[Shard]:
        resolved = await self._resolve()
        self.shards = []
        size = self.symbols_per_connection
        for category in CATEGORIES:
            names = [resolved[s][1] for s in self.requested if s in resolved and resolved[s][0] == category]
            for start in range(0, len(names), size):
                self.shards.append(
                    CategoryShard(self, len(self.shards), category, names[start : start + size])
                )
        return self.shards

    async def resolve_symbols(self) -> list[str]:
        """The exchange symbols of the requested names (one category's and another's may be equal)."""
        return [exchange_symbol for _, exchange_symbol in (await self._resolve()).values()]

    async def _resolve(self) -> dict[str, tuple[Category, str]]:
        """Requested name -> (category, exchange symbol), from every configured category's list."""
        listed: dict[str, tuple[Category, str]] = {}
        counts: dict[str, int] = {}
        for category in self.categories:
            names = await self._listing(category)
            counts[category] = len(names)
            for exchange_symbol, name in names.items():
                listed.setdefault(name, (category, exchange_symbol))
        missing = [symbol for symbol in self.requested if symbol not in listed]
        if missing and (self.strict_symbols or len(missing) == len(self.requested)):
            where = ", ".join(f"{count} {category}" for category, count in counts.items())
            raise SymbolError(f"bybit does not list {', '.join(missing)} (instruments: {where})")
        if missing:
            log_event(
                log,
                logging.WARNING,
                "symbols not listed, skipped",
                exchange="bybit",
                symbols=",".join(missing),
            )
        found = {symbol: listed[symbol] for symbol in self.requested if symbol in listed}
        self.exchange_symbols = {symbol: exchange_symbol for symbol, (_, exchange_symbol) in found.items()}
        self.category_of_symbol = {symbol: category for symbol, (category, _) in found.items()}
        self.symbol_map = {f"{c}:{e}" if c != "spot" else e: s for s, (c, e) in found.items()}
        return found

    async def list_instruments(self) -> Instruments:
        """Every configured category's instruments; a derivative's key is ``category:symbol``
        (spot and linear ``BTCUSDT`` are two instruments)."""
        listed = Instruments()
        for category in self.categories:
            for exchange_symbol, name in (await self._listing(category)).items():
                listed.add(exchange_symbol if category == "spot" else f"{category}:{exchange_symbol}", name)
        return listed

    async def _listing(self, category: Category) -> dict[str, str]:
        """Exchange symbol -> name of one category, every page."""
        names: dict[str, str] = {}
        cursor = ""
        for _ in range(MAX_PAGES):
            url = self.all_instruments_url(category, cursor)
            body = await self.rest.get(url)
            page = self.parse_instruments(body, url)
            if page.skipped:
                log_event(
                    log,
                    logging.WARNING,
                    "instrument entries skipped",
                    exchange="bybit",
                    category=category,
                    skipped=len(page.skipped),
                    examples="; ".join(list(page.skipped.values())[:3]),
                )
            names.update(page)
            cursor = next_page_cursor(body)
            if not cursor:
                return names
        raise SymbolError(f"bybit {category} instruments-info: still paging after {MAX_PAGES} pages")

    # -- subscriptions -----------------------------------------------------------------------

    def book_topic(self, symbol: str) -> str:
        return f"{BOOK_TOPIC}.{self.settings.book_depth or self.book_depth}.{symbol}"

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        derivative = category_of(symbols) in DERIVATIVES
        topics = [topic for symbol in symbols for topic in self.symbol_topics(symbol, derivative)]
        return [
            self._op("subscribe", topics[start : start + self.args_per_request])
            for start in range(0, len(topics), self.args_per_request)
        ]

    def symbol_topics(self, symbol: str, derivative: bool = False) -> tuple[str, ...]:
        """Book, trades, tickers and 1m klines; on derivatives also liquidations."""
        topics = (
            self.book_topic(symbol),
            f"{TRADE_TOPIC}.{symbol}",
            f"{TICKERS_TOPIC}.{symbol}",
            f"{KLINE_TOPIC}.1.{symbol}",
        )
        return (*topics, f"{LIQUIDATION_TOPIC}.{symbol}") if derivative else topics

    def resubscribe_book_messages(self, symbol: str) -> list[str]:
        return [self._op(op, [self.book_topic(symbol)]) for op in ("unsubscribe", "subscribe")]

    async def request_resync(self, symbol: str, conn_id: str | None = None) -> bool:
        """A resync names the connection whose book failed: its shard is the one to resync (spot
        and linear shards may both carry ``BTCUSDT``); without one, the name's category decides."""
        for shard in self.shards:
            current = shard.current
            if conn_id and current is not None and current.id == conn_id:
                exchange_symbol = self.exchange_symbols.get(symbol, symbol)
                if exchange_symbol in shard.symbols:
                    return await shard.resync(exchange_symbol, conn_id)
        category = self.category_of_symbol.get(symbol)
        if category is not None:
            for shard in self.shards:
                if isinstance(shard, CategoryShard) and shard.category == category:
                    exchange_symbol = self.exchange_symbols[symbol]
                    if exchange_symbol in shard.symbols:
                        return await shard.resync(exchange_symbol, conn_id)
        return await super().request_resync(symbol, conn_id)

    @staticmethod
    def _op(op: str, args: list[str]) -> str:
        return orjson.dumps({"op": op, "args": args}).decode()

    def ping_message(self) -> str:
        return orjson.dumps({"req_id": str(next(self._ids)), "op": "ping"}).decode()


__all__ = ["BybitConnector", "CategoryShard", "CategorySymbols"]
