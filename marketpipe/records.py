"""Typed records that mirror the Avro schemas in ``schemas/`` one to one.

``tests/test_schemas.py`` checks that every struct's fields, order and optionality
match its ``.avsc`` file, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import msgspec

Side = Literal["buy", "sell", "unknown"]
BookState = Literal["synced", "unsynced", "connected", "disconnected"]
InstrumentKind = Literal["spot", "perpetual", "future", "option"]
ContractType = Literal["linear", "inverse", "quanto"]
OptionType = Literal["call", "put"]


class Record(msgspec.Struct, kw_only=True, frozen=True):
    """Base of every Avro-mapped record; ``schema_name`` names its ``.avsc`` file."""

    schema_name: ClassVar[str]

    def to_dict(self) -> dict[str, object]:
        return msgspec.to_builtins(self)

    def key(self) -> str:
        """The Kafka key records of this type are published under."""
        exchange = getattr(self, "exchange", None)
        symbol = getattr(self, "symbol", None)
        return f"{exchange}:{symbol}"


class Level(msgspec.Struct, frozen=True):
    price: float
    size: float


class Trade(Record, frozen=True, kw_only=True):
    schema_name: ClassVar[str] = "trade"
    exchange: str
    symbol: str
    exchange_symbol: str
    trade_id: str
    price: float
    size: float
    side: Side
    ts: int
    recv_ts: int
    conn: str
    seq: int


class BookChange(Record, frozen=True, kw_only=True):
    schema_name: ClassVar[str] = "book_change"
    exchange: str
    symbol: str
    exchange_symbol: str
    snapshot: bool
    bids: list[Level]
    asks: list[Level]
    ts: int
    recv_ts: int
    first_update_id: int | None = None
    last_update_id: int | None = None
    checksum: int | None = None
    conn: str
    seq: int


class BBO(Record, frozen=True, kw_only=True):
    schema_name: ClassVar[str] = "bbo"
    exchange: str
    symbol: str
    exchange_symbol: str
    bid_price: float
    bid_size: float
    ask_price: float
    ask_size: float
    ts: int
    recv_ts: int


class Bucket(msgspec.Struct, frozen=True):
    price: float
    size: float
    notional: float


class DepthBand(msgspec.Struct, frozen=True):
    pct: float
    bid_size: float
    ask_size: float
    imbalance: float


class BookBuckets(Record, frozen=True, kw_only=True):
    schema_name: ClassVar[str] = "book_buckets"
    exchange: str
    symbol: str
    ts: int
    mid: float
    best_bid: float
    best_ask: float
    spread: float
    bucket_size: float
    bids: list[Bucket]
    asks: list[Bucket]
    bands: list[DepthBand]
    markets: list[str] = []


class Candle(Record, frozen=True, kw_only=True):
    schema_name: ClassVar[str] = "ohlcv"
    exchange: str
    symbol: str
    interval: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    buy_volume: float
    sell_volume: float
    trades: int
    vwap: float
    first_trade_ts: int
    last_trade_ts: int
    closed: bool
    late: bool = False
    version: int
    markets: list[str] = []

    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}:{self.interval}:{self.open_time}"


class Ticker(Record, frozen=True, kw_only=True):
    """The exchange's own ticker; a field the exchange does not send stays None."""

    schema_name: ClassVar[str] = "ticker"
    exchange: str
    symbol: str
    exchange_symbol: str
    last_price: float | None = None
    last_size: float | None = None
    bid_price: float | None = None
    bid_size: float | None = None
    ask_price: float | None = None
    ask_size: float | None = None
    open_24h: float | None = None
    high_24h: float | None = None
    low_24h: float | None = None
    volume_24h: float | None = None
    quote_volume_24h: float | None = None
    trades_24h: int | None = None
    ts: int
    recv_ts: int
    conn: str
    seq: int


class ExchangeCandle(Record, frozen=True, kw_only=True):
    """A candle (kline) built by the exchange itself."""

    schema_name: ClassVar[str] = "exchange_candle"
    exchange: str
    symbol: str
    exchange_symbol: str
    interval: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float | None = None
    quote_volume: float | None = None
    trades: int | None = None
    first_trade_id: str | None = None
    last_trade_id: str | None = None
    closed: bool
    ts: int
    recv_ts: int
    conn: str
    seq: int

    def key(self) -> str:
        return f"{self.exchange}:{self.symbol}:{self.interval}:{self.open_time}"


class StatusEvent(Record, frozen=True, kw_only=True):
    schema_name: ClassVar[str] = "status"
    exchange: str
    symbol: str
    ts: int
    state: BookState
    reason: str
    detail: str = ""
    conn: str | None = None
    gaps: int = 0
    checksum_failures: int = 0
    resyncs: int = 0
    crossed: int = 0


class ControlRequest(Record, frozen=True, kw_only=True):
    schema_name: ClassVar[str] = "control"
    exchange: str
    symbol: str
    exchange_symbol: str
    action: Literal["resync"]
    reason: str
    ts: int
    conn: str | None = None


class DeadLetter(Record, frozen=True, kw_only=True):
    schema_name: ClassVar[str] = "dlq"
    stage: str
    source_topic: str
    partition: int
    offset: int
    exchange: str | None = None
    conn: str | None = None
    seq: int | None = None
    reason: str
    payload: bytes
    ts: int

    def key(self) -> str:
        return f"{self.exchange}:{self.conn}"


class Instrument(Record, frozen=True, kw_only=True):
    """One instrument as its metadata describes it; ``symbol`` is named from these fields
    (``marketpipe/instruments.py``), never the other way round."""

    schema_name: ClassVar[str] = "instrument"
    exchange: str
    symbol: str
    exchange_symbol: str
    kind: InstrumentKind
    contract_type: ContractType | None = None
    base: str
    quote: str
    settle_currency: str | None = None
    contract_size: float
    contract_size_currency: str
    expiry_ts: int | None = None
    strike: float | None = None
    option_type: OptionType | None = None
    tick_size: float | None = None
    lot_size: float | None = None
    ts: int


class FundingRate(Record, frozen=True, kw_only=True):
    """A perpetual's funding: the running period's rate and when it is next settled."""

    schema_name: ClassVar[str] = "funding"
    exchange: str
    symbol: str
    exchange_symbol: str
    rate: float
    predicted_rate: float | None = None
    next_funding_ts: int | None = None
    interval_s: int | None = None
    ts: int
    recv_ts: int
    conn: str
    seq: int


class OpenInterest(Record, frozen=True, kw_only=True):
    """Open contracts of one instrument (in contracts, see ``Instrument.contract_size``)."""

    schema_name: ClassVar[str] = "open_interest"
    exchange: str
    symbol: str
    exchange_symbol: str
    open_interest: float
    value: float | None = None
    ts: int
    recv_ts: int
    conn: str
    seq: int


class MarkPrice(Record, frozen=True, kw_only=True):
    """The venue's mark price of a contract and the index price of its underlying."""

    schema_name: ClassVar[str] = "mark_price"
    exchange: str
    symbol: str
    exchange_symbol: str
    mark_price: float | None = None
    index_price: float | None = None
    settle_price: float | None = None
    ts: int
    recv_ts: int
    conn: str
    seq: int


class Liquidation(Record, frozen=True, kw_only=True):
    """A forced close; ``side`` is the liquidation order's side (``sell``: a long was liquidated)."""

    schema_name: ClassVar[str] = "liquidation"
    exchange: str
    symbol: str
    exchange_symbol: str
    side: Side
    price: float
    size: float
    liquidation_id: str | None = None
    ts: int
    recv_ts: int
    conn: str
    seq: int


RECORD_TYPES: tuple[type[Record], ...] = (
    Trade,
    BookChange,
    BBO,
    BookBuckets,
    Candle,
    Ticker,
    ExchangeCandle,
    StatusEvent,
    ControlRequest,
    DeadLetter,
    Instrument,
    FundingRate,
    OpenInterest,
    MarkPrice,
    Liquidation,
)
