"""OKX v5: fewer than 30 channels per connection, text ping when idle, 64008 notices.

Books, trades, tickers and the derivative channels are on /ws/v5/public; candles only on
/ws/v5/business, so every group of symbols has a second connection there (``CandleShard``)
subscribed to their 1m candles.

Instruments: spot, and SWAP/FUTURES when a requested symbol is a derivative name
(``BTC-USDT-PERP``, ``BTC-USD-PERP-INV``, ``BTC-USD-20260925-INV``): one
``/api/v5/public/instruments?instType=`` request per type at start (20 requests per 2 s per
instType), then each connection asks for its own instruments by ``instId`` (the metadata the
parser names them and converts units from).

Channels per instrument: spot ``books``, ``trades``, ``tickers``; SWAP and FUTURES add
``mark-price`` and ``open-interest``, SWAP also ``funding-rate``. Per connection, once per
connector: ``index-tickers`` of each underlying index (``uly``, e.g. ``BTC-USDT``) on the first
connection holding a contract on it, and ``liquidation-orders`` per instType (``SWAP``,
``FUTURES``: it reports every contract of the type) on the first connection holding one.
Symbols are packed so that every connection stays under 30 channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from marketpipe.exchanges.okx import (
    BOOKS_CHANNEL,
    BUSINESS_WS_PATH,
    CANDLE_PREFIX,
    FUNDING_CHANNEL,
    INDEX_CHANNEL,
    INSTRUMENTS_PATH,
    LIQUIDATIONS_CHANNEL,
    MARK_CHANNEL,
    OPEN_INTEREST_CHANNEL,
    PUBLIC_WS_PATH,
    TICKERS_CHANNEL,
    TRADES_CHANNEL,
)
from marketpipe.instruments import Instruments
from producers.base import Connection, Connector, Shard

INST_TYPES = {"spot": "SPOT", "perpetual": "SWAP", "future": "FUTURES"}
"""Instrument kind -> the instType OKX lists it under."""
SPOT_CHANNELS = (BOOKS_CHANNEL, TRADES_CHANNEL, TICKERS_CHANNEL)
FUTURES_CHANNELS = (*SPOT_CHANNELS, MARK_CHANNEL, OPEN_INTEREST_CHANNEL)
SWAP_CHANNELS = (*FUTURES_CHANNELS, FUNDING_CHANNEL)
CHANNELS = {"SPOT": SPOT_CHANNELS, "SWAP": SWAP_CHANNELS, "FUTURES": FUTURES_CHANNELS}
MAX_CHANNELS = 29
"""channels per connection: OKX advises fewer than 30"""


class PublicShard(Shard):
    """A /ws/v5/public connection's symbols, plus the per-connector channels it carries
    (``index-tickers`` per index, ``liquidation-orders`` per instType)."""

    def __init__(
        self, connector: Connector, index: int, symbols: Sequence[str], shared: Sequence[dict[str, str]] = ()
    ) -> None:
        super().__init__(connector, index, symbols)
        self.shared_args = list(shared)


class CandleShard(Shard):
    """The /ws/v5/business connection of a group of symbols (their candles)."""


class OkxConnector(Connector):
    exchange = "okx"
    default_ws_base = "wss://ws.okx.com:8443"
    default_rest_base = "https://www.okx.com"
    channels = SPOT_CHANNELS
    candle_channel = f"{CANDLE_PREFIX}1m"
    book_channel = BOOKS_CHANNEL
    max_symbols_per_connection = MAX_CHANNELS // len(SPOT_CHANNELS)
    send_interval_s = 0.1
    connect_interval_s = 0.34  # 3 connection requests/s per IP
    rest_min_interval_s = 0.1  # 20 requests per 2 s
    ping_interval_s = 20.0  # "ping" after 20 s of silence; the server drops idle connections at 30 s
    ping_only_when_idle = True
    silence_timeout_s = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inst_types: dict[str, str] = {}
        """exchange symbol -> its instType (SPOT unless the metadata said otherwise)"""
        self.index_of: dict[str, str] = {}
        """SWAP/FUTURES exchange symbol -> its underlying index instId (``uly``)"""

    def ws_url(self) -> str:
        return f"{self.ws_base}{PUBLIC_WS_PATH}"

    def candle_ws_url(self) -> str:
        return f"{self.ws_base}{BUSINESS_WS_PATH}"

    async def connect_url(self, conn: Connection) -> str:
        return self.candle_ws_url() if isinstance(conn.shard, CandleShard) else self.ws_url()

    # -- instruments ---------------------------------------------------------------------

    def all_instruments_url(self, inst_type: str = "SPOT") -> str:
        return f"{self.rest_base}{INSTRUMENTS_PATH}?instType={inst_type}"

    def listed_types(self) -> tuple[str, ...]:
        """SPOT, and SWAP/FUTURES only when a requested name is a derivative's (more than
        BASE-QUOTE): a spot-only configuration asks for nothing else."""
        if any(symbol.count("-") > 1 for symbol in self.requested):
            return ("SPOT", "SWAP", "FUTURES")
        return ("SPOT",)

    async def list_instruments(self) -> Instruments:
        listed = Instruments()
        for inst_type in self.listed_types():
            url = self.all_instruments_url(inst_type)
            part = self.parse_instruments(await self.rest.get(url), url)
            listed.update(part)
            listed.skipped.update(part.skipped)
            listed.ids.update(part.ids)
            listed.records.update(part.records)
        for exchange_symbol, record in listed.records.items():
            self.inst_types[exchange_symbol] = INST_TYPES.get(record.kind, "SPOT")
            if record.kind != "spot":
                self.index_of[exchange_symbol] = f"{record.base}-{record.quote}"
        return listed

    def inst_type(self, exchange_symbol: str) -> str:
        return self.inst_types.get(exchange_symbol, "SPOT")

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        # the endpoint filters by one instId at a time, within its instType
        return [
            f"{self.all_instruments_url(self.inst_type(symbol))}&instId={symbol}"
            for symbol in exchange_symbols
        ]

    # -- shards and subscriptions --------------------------------------------------------

    def symbol_channels(self, symbol: str) -> tuple[str, ...]:
        return CHANNELS.get(self.inst_type(symbol), SPOT_CHANNELS)

    def shared_args(self, symbol: str, taken: set[str]) -> list[dict[str, str]]:
        """The per-connector channels ``symbol`` brings along that no shard carries yet."""
        args: list[dict[str, str]] = []
        index = self.index_of.get(symbol)
        if index is not None and f"index:{index}" not in taken:
            args.append({"channel": INDEX_CHANNEL, "instId": index})
        inst_type = self.inst_type(symbol)
        if inst_type != "SPOT" and f"liquidations:{inst_type}" not in taken:
            args.append({"channel": LIQUIDATIONS_CHANNEL, "instType": inst_type})
        return args

    def build_shards(self, exchange_symbols: Sequence[str]) -> list[Shard]:
        """Symbols in order, a new connection when the next would take this one to 30 channels
        (or past ``max_symbols_per_connection``)."""
        groups: list[tuple[list[str], list[dict[str, str]]]] = []
        taken: set[str] = set()
        used = MAX_CHANNELS + 1
        for symbol in exchange_symbols:
            shared = self.shared_args(symbol, taken)
            cost = len(self.symbol_channels(symbol)) + len(shared)
            if used + cost > MAX_CHANNELS or len(groups[-1][0]) >= self.symbols_per_connection:
                groups.append(([], []))
                used = 0
            groups[-1][0].append(symbol)
            groups[-1][1].extend(shared)
            taken.update(_shared_key(arg) for arg in shared)
            used += cost
        public: list[Shard] = [
            PublicShard(self, i, symbols, shared) for i, (symbols, shared) in enumerate(groups)
        ]
        candles: list[Shard] = [CandleShard(self, len(public) + i, s.symbols) for i, s in enumerate(public)]
        self.shards = public + candles
        return self.shards

    def connection_subscribe_messages(self, conn: Connection) -> list[str]:
        if isinstance(conn.shard, CandleShard):
            args = [{"channel": self.candle_channel, "instId": symbol} for symbol in conn.symbols]
            return [orjson.dumps({"op": "subscribe", "args": args}).decode()]
        messages = self.subscribe_messages(conn.symbols)
        if isinstance(conn.shard, PublicShard) and conn.shard.shared_args:
            messages.append(orjson.dumps({"op": "subscribe", "args": conn.shard.shared_args}).decode())
        return messages

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        args = [
            {"channel": channel, "instId": symbol}
            for symbol in symbols
            for channel in self.symbol_channels(symbol)
        ]
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


def _shared_key(arg: dict[str, str]) -> str:
    if arg["channel"] == INDEX_CHANNEL:
        return f"index:{arg['instId']}"
    return f"liquidations:{arg['instType']}"
