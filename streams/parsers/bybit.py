"""Bybit v5 public, spot (/v5/public/spot), linear (/v5/public/linear: USDT/USDC perpetuals and
futures) and inverse (/v5/public/inverse): ``{"topic","type","ts","data"}`` pushes plus op replies.

One exchange, three categories: a connection's category is the last part of its URL (the ``open``
record), an instrument-metadata answer's is ``result.category``. Spot and linear share wire names
(``BTCUSDT``), so instruments are told apart by (category, symbol): ids ``spot:BTCUSDT`` and
``linear:BTCUSDT``, named ``BTC-USDT`` and ``BTC-USDT-PERP``, and every connection resolves its
symbols from its own category's metadata (each connection fetches it before subscribing). A
connection whose ``open`` this processor never saw (it started mid-connection) has no category:
its symbols resolve through the names every metadata answer agrees on, as on other exchanges
(a ``BTCUSDT`` listed in two categories is dead-lettered; one listed in only the category seen so
far takes that name, right only if the connection is of that category), and its tickers give no
derivative records.

Instruments (``/v5/market/instruments-info``): spot from ``baseCoin``/``quoteCoin``; linear and
inverse from ``contractType`` (``LinearPerpetual``, ``LinearFutures``, ``InversePerpetual``,
``InverseFutures``), ``settleCoin`` and ``deliveryTime`` (the expiry of futures), tick size
``priceFilter.tickSize`` and lot size ``lotSizeFilter.qtyStep`` (spot ``basePrecision``). Bybit
has no multiplier field: a linear contract is 1 base coin, an inverse one 1 USD (the quote).
Options are not normalised (``unnamed_instrument``).

Units: sizes in trades, books, candles, liquidations and open interest are contracts. Bybit
sends linear quantities in base coin (1 contract each) and inverse ones in USD (1 contract
each), so no conversion is needed; a quote-currency amount of an inverse instrument (the 24 h
and candle quote volume, the open-interest value) is contracts x contract size, because Bybit's
own ``turnover``/``openInterestValue`` of an inverse contract is in the base coin.

Orderbook: a ``snapshot`` (any time) resets the book; each ``delta`` must have
``u == previous u + 1``; ``u == 1`` means the service restarted and the message replaces the
book. ``publicTrade`` ``S`` is the taker side.

Tickers: spot sends whole snapshots; linear and inverse send a snapshot, then deltas of only the
changed fields, merged here per symbol per connection. Each frame gives a ``ticker()``; on
derivatives also ``funding()`` (``fundingRate``, ``nextFundingTime``, ``fundingIntervalHour``;
Bybit publishes no predicted rate) when a funding field came, ``open_interest()`` (contracts;
value: linear ``openInterestValue`` in the quote coin) when an OI field came and
``mark_price()`` (``markPrice``, ``indexPrice``) when one of those came.

Liquidations: ``allLiquidation.{symbol}`` ``data[]`` of ``{T,s,S,v,p}`` and the older
``liquidation.{symbol}`` ``{updatedTime,symbol,side,size,price}``: ``S``/``side`` is the side of the
liquidated POSITION (``Buy``: a long was liquidated, so the liquidation order sells); the price is
the bankruptcy price Bybit gives.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET, UnsetType

from marketpipe.raw import RawRecord
from marketpipe.records import ContractType, Instrument, InstrumentKind, Side
from streams.instruments import Instruments, named, read_entries
from streams.parsers.base import (
    Connection,
    FeedOutput,
    FeedProcessor,
    ParseError,
    apply_levels,
    levels,
    ms_to_us,
    opt_float,
)

Category = Literal["spot", "linear", "inverse"]
CATEGORIES: tuple[Category, ...] = ("spot", "linear", "inverse")
INSTRUMENTS_PATH = "/v5/market/instruments-info"
TAKER_SIDES: dict[str, Side] = {"Buy": "buy", "Sell": "sell"}
LIQUIDATION_SIDES: dict[str, Side] = {"Buy": "sell", "Sell": "buy"}
"""the liquidated position's side -> the side of the order that closed it"""
CONTRACT_TYPES: dict[str, tuple[InstrumentKind, ContractType]] = {
    "LinearPerpetual": ("perpetual", "linear"),
    "LinearFutures": ("future", "linear"),
    "InversePerpetual": ("perpetual", "inverse"),
    "InverseFutures": ("future", "inverse"),
}
KLINE_INTERVALS = {
    **{str(minutes): f"{minutes}m" for minutes in (1, 3, 5, 15, 30)},
    **{str(hours * 60): f"{hours}h" for hours in (1, 2, 4, 6, 12)},
    "D": "1d",
    "W": "1w",
    "M": "1M",
}
"""Bybit kline interval -> marketpipe's spelling"""
SECONDS_PER_HOUR = 3_600


# -- wire structs -------------------------------------------------------------------------------


class _PriceFilter(msgspec.Struct):
    tickSize: str = ""


class _LotSizeFilter(msgspec.Struct):
    qtyStep: str = ""
    basePrecision: str = ""


class _InstrumentRow(msgspec.Struct):
    """One ``result.list`` element of instruments-info (spot, linear or inverse)."""

    symbol: str
    baseCoin: str = ""
    quoteCoin: str = ""
    contractType: str = ""
    settleCoin: str = ""
    deliveryTime: str = "0"
    priceFilter: _PriceFilter = msgspec.field(default_factory=_PriceFilter)
    lotSizeFilter: _LotSizeFilter = msgspec.field(default_factory=_LotSizeFilter)


class _InstrumentsResult(msgspec.Struct):
    category: str = "spot"
    rows: list[dict[str, Any]] = msgspec.field(default_factory=list, name="list")
    nextPageCursor: str = ""


class _InstrumentsAnswer(msgspec.Struct):
    retCode: int
    retMsg: str = ""
    result: _InstrumentsResult | None = None


class _Cursor(msgspec.Struct):
    nextPageCursor: str = ""


class _Page(msgspec.Struct):
    result: _Cursor | None = None


class _Frame(msgspec.Struct):
    """A push (``topic`` set; ``data`` decoded by topic) or an op reply."""

    topic: str = ""
    type: str = ""
    ts: int | None = None
    cts: int | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")
    op: str = ""
    success: bool | None = None
    ret_msg: str = ""


class _Trade(msgspec.Struct):
    T: int
    s: str
    S: str
    v: str
    p: str
    i: str


class _BookData(msgspec.Struct):
    s: str
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]
    u: int
    seq: int | None = None


class _Kline(msgspec.Struct):
    start: int
    end: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    confirm: bool
    turnover: str = ""


class _Liquidation(msgspec.Struct):
    """``allLiquidation`` entry; ``S`` is the liquidated position's side."""

    T: int
    s: str
    S: str
    v: str
    p: str


class _LegacyLiquidation(msgspec.Struct):
    """The older ``liquidation.{symbol}`` data object (2023)."""

    updatedTime: int
    symbol: str
    side: str
    size: str
    price: str


Text = str | UnsetType


class _TickerData(msgspec.Struct):
    """A tickers snapshot, or a delta holding only the fields that changed (the rest UNSET)."""

    symbol: str
    lastPrice: Text = UNSET
    bid1Price: Text = UNSET
    bid1Size: Text = UNSET
    ask1Price: Text = UNSET
    ask1Size: Text = UNSET
    prevPrice24h: Text = UNSET
    highPrice24h: Text = UNSET
    lowPrice24h: Text = UNSET
    volume24h: Text = UNSET
    turnover24h: Text = UNSET
    markPrice: Text = UNSET
    indexPrice: Text = UNSET
    openInterest: Text = UNSET
    openInterestValue: Text = UNSET
    fundingRate: Text = UNSET
    nextFundingTime: Text = UNSET
    fundingIntervalHour: Text = UNSET


FUNDING_FIELDS = ("fundingRate", "nextFundingTime", "fundingIntervalHour")
OI_FIELDS = ("openInterest", "openInterestValue")
MARK_FIELDS = ("markPrice", "indexPrice")

_frames = msgspec.json.Decoder(_Frame)
_trades = msgspec.json.Decoder(list[_Trade])
_book = msgspec.json.Decoder(_BookData)
_klines = msgspec.json.Decoder(list[_Kline])
_ticker = msgspec.json.Decoder(_TickerData)
_liquidations = msgspec.json.Decoder(list[_Liquidation])
_legacy_liquidation = msgspec.json.Decoder(_LegacyLiquidation)
_answer = msgspec.json.Decoder(_InstrumentsAnswer)
_page = msgspec.json.Decoder(_Page)
T = TypeVar("T")


def _decode(decoder: msgspec.json.Decoder[T], data: bytes | str, what: str) -> T:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ParseError(f"malformed bybit {what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ParseError(f"invalid JSON: {exc}") from None


def _set(value: Text) -> str | None:
    """A ticker field that came with a value (UNSET and ``""``: None)."""
    return None if isinstance(value, UnsetType) or value == "" else value


def _num(value: Text) -> float | None:
    text = _set(value)
    return None if text is None else float(text)


# -- instruments --------------------------------------------------------------------------------


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """instruments-info -> {"BTCUSDT": "BTC-USDT-PERP", ...} with each entry's Instrument record,
    the instrument ids ``<category>:<symbol>``. One page of a cursor-paged answer names its own
    entries; an entry it cannot read is skipped with the reason."""
    answer = _decode(_answer, body, "instruments-info response")
    if answer.retCode != 0:
        raise ParseError(f"bybit instruments-info error {answer.retCode}: {answer.retMsg!r}")
    result = answer.result
    if result is None:
        raise ParseError("bybit instruments-info response has no result")
    category = result.category

    def entry(fields: dict[str, Any], found: Instruments) -> None:
        row = msgspec.convert(fields, _InstrumentRow)
        record = named(_record(category, row))
        found.add(row.symbol, record.symbol, f"{category}:{row.symbol}")
        found.records[row.symbol] = record

    return read_entries(result.rows, entry, "bybit instruments-info")


def _record(category: str, row: _InstrumentRow) -> Instrument:
    if category == "spot":
        return _spot(row)
    if category in ("linear", "inverse"):
        return _contract(category, row)
    raise ParseError(f"bybit {category} instruments are not normalised", "unnamed_instrument")


def _spot(row: _InstrumentRow) -> Instrument:
    return Instrument(
        exchange="bybit",
        symbol="",
        exchange_symbol=row.symbol,
        kind="spot",
        base=row.baseCoin,
        quote=row.quoteCoin,
        contract_size=1.0,
        contract_size_currency=row.baseCoin,
        tick_size=_positive(row.priceFilter.tickSize, "tickSize"),
        lot_size=_positive(row.lotSizeFilter.basePrecision, "basePrecision"),
        ts=0,
    )


def _contract(category: str, row: _InstrumentRow) -> Instrument:
    found = CONTRACT_TYPES.get(row.contractType)
    if found is None:
        raise ParseError(f"contractType {row.contractType!r} is not a linear or inverse contract")
    kind, contract_type = found
    if contract_type != category:
        raise ParseError(f"{row.contractType} listed under category {category}")
    expiry = int(row.deliveryTime or 0)
    if kind == "future" and expiry <= 0:
        raise ParseError(f"{row.contractType} without a deliveryTime")
    if not row.settleCoin:
        raise ParseError("no settleCoin")
    return Instrument(
        exchange="bybit",
        symbol="",
        exchange_symbol=row.symbol,
        kind=kind,
        contract_type=contract_type,
        base=row.baseCoin,
        quote=row.quoteCoin,
        settle_currency=row.settleCoin,
        contract_size=1.0,  # no multiplier field: 1 base coin (linear), 1 USD (inverse)
        contract_size_currency=row.baseCoin if contract_type == "linear" else row.quoteCoin,
        expiry_ts=ms_to_us(expiry) if kind == "future" else None,
        tick_size=_positive(row.priceFilter.tickSize, "tickSize"),
        lot_size=_positive(row.lotSizeFilter.qtyStep, "qtyStep"),
        ts=0,
    )


def _positive(text: str, field: str) -> float | None:
    if not text:
        return None
    value = float(text)
    if not 0 < value < float("inf"):
        raise ParseError(f"{field} {text!r} is not a positive number")
    return value


def next_page_cursor(body: bytes) -> str:
    """``result.nextPageCursor`` of an instruments-info page: "" on the last one (and on an
    answer that is not a page: ``parse_instruments`` says what is wrong with it)."""
    try:
        page = _page.decode(body)
    except msgspec.DecodeError:
        return ""
    return page.result.nextPageCursor if page.result is not None else ""


def category_of_url(url: str | None) -> Category | None:
    """``wss://stream.bybit.com/v5/public/linear`` -> ``linear``; None when not a v5 public URL."""
    if not url:
        return None
    last = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    for category in CATEGORIES:
        if last == category:
            return category
    return None


# -- the processor ------------------------------------------------------------------------------


class BybitConnection(Connection):
    def __init__(self, conn: str, url: str | None) -> None:
        super().__init__(conn, url)
        self.category = category_of_url(url)
        self.tickers: dict[str, _TickerData] = {}
        """exchange symbol -> the merged tickers state (snapshot + deltas) on this connection"""


class BybitProcessor(FeedProcessor):
    exchange = "bybit"
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)
    connection_type = BybitConnection

    def contracts(self) -> dict[tuple[str, str], Instrument]:
        """(category, exchange symbol) -> its metadata (created on first use: a processor
        restored from a checkpoint of an older version has none)."""
        found: dict[tuple[str, str], Instrument] = self.__dict__.setdefault("_contracts", {})
        return found

    def instruments_from(self, body: bytes, path: str) -> Instruments:
        learned = parse_instruments(body, path)
        contracts = self.contracts()
        for exchange_symbol, record in learned.records.items():
            category = learned.instrument(exchange_symbol).partition(":")[0]
            contracts[(category, exchange_symbol)] = record
        return learned

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        if not raw.data:
            raise ParseError("empty frame")
        msg = _decode(_frames, raw.data, "frame")
        topic = msg.topic
        if not topic:
            self._op_reply(msg)
            return
        channel = topic.partition(".")[0]
        if channel == "orderbook":
            self._book(conn, msg, raw, out)
        elif channel == "publicTrade":
            self._trades(msg, raw, out)
        elif channel == "tickers":
            self._ticker(conn, msg, raw, out)
        elif channel == "kline":
            self._klines(conn, topic, msg, raw, out)
        elif channel == "allLiquidation":
            self._liquidations(msg, raw, out)
        elif channel == "liquidation":
            self._legacy_liquidation(msg, raw, out)
        else:
            raise ParseError(f"unsupported bybit topic {topic!r}")

    def _op_reply(self, msg: _Frame) -> None:
        op = msg.op
        if msg.success is False:
            raise ParseError(f"bybit {op} rejected: {msg.ret_msg!r}")
        if op in ("ping", "pong"):
            self.counters.heartbeats += 1
        elif op in ("subscribe", "unsubscribe"):
            self.counters.acks += 1
        else:
            raise ParseError(f"unrecognised bybit frame (op {op!r}, no topic)")

    def _category(self, conn: Connection) -> str | None:
        return getattr(conn, "category", None)

    def _record(self, conn: Connection, exchange_symbol: str) -> Instrument | None:
        category = self._category(conn)
        return None if category is None else self.contracts().get((category, exchange_symbol))

    def _quote_amount(self, conn: Connection, exchange_symbol: str, contracts: float | None) -> float | None:
        """Contracts of a contract sized in its quote currency (inverse: USD) in that currency."""
        record = self._record(conn, exchange_symbol)
        if contracts is None or record is None or record.contract_size_currency != record.quote:
            return None
        return contracts * record.contract_size

    def _is_inverse(self, conn: Connection) -> bool:
        return self._category(conn) == "inverse"

    # -- trades, klines, liquidations ------------------------------------------------------

    def _trades(self, msg: _Frame, raw: RawRecord, out: FeedOutput) -> None:
        for item in _decode(_trades, msg.data, "publicTrade data"):
            side = TAKER_SIDES.get(item.S, "unknown")
            self.trade(raw, out, item.s, item.i, float(item.p), float(item.v), side, ms_to_us(item.T))

    def _klines(self, conn: Connection, topic: str, msg: _Frame, raw: RawRecord, out: FeedOutput) -> None:
        """``kline.{interval}.{symbol}``; one frame may carry several candles (a closed one and
        the next open one); ``confirm`` is the final flag. Inverse ``turnover`` is in the base
        coin: the quote volume is the contracts' USD."""
        _, interval_code, symbol = topic.split(".", 2)
        interval = KLINE_INTERVALS.get(interval_code)
        if interval is None:
            raise ParseError(f"unsupported bybit kline interval {interval_code!r}")
        ts = ms_to_us(msg.ts) if msg.ts is not None else None
        inverse = self._is_inverse(conn)
        for item in _decode(_klines, msg.data, "kline data"):
            volume = float(item.volume)
            self.exchange_candle(
                conn,
                raw,
                out,
                symbol,
                interval,
                ms_to_us(item.start),
                ms_to_us(item.end) + 1000,  # end is the window's last millisecond
                float(item.open),
                float(item.high),
                float(item.low),
                float(item.close),
                volume=volume,
                quote_volume=self._quote_amount(conn, symbol, volume)
                if inverse
                else opt_float(item.turnover),
                closed=item.confirm,
                ts=ts,
            )

    def _liquidations(self, msg: _Frame, raw: RawRecord, out: FeedOutput) -> None:
        for item in _decode(_liquidations, msg.data, "allLiquidation data"):
            side = LIQUIDATION_SIDES.get(item.S)
            if side is None:
                raise ParseError(f"bybit allLiquidation side {item.S!r} is neither Buy nor Sell")
            self.liquidation(
                raw, out, item.s, ms_to_us(item.T), side=side, price=float(item.p), size=float(item.v)
            )

    def _legacy_liquidation(self, msg: _Frame, raw: RawRecord, out: FeedOutput) -> None:
        item = _decode(_legacy_liquidation, msg.data, "liquidation data")
        side = LIQUIDATION_SIDES.get(item.side)
        if side is None:
            raise ParseError(f"bybit liquidation side {item.side!r} is neither Buy nor Sell")
        ts = ms_to_us(item.updatedTime)
        self.liquidation(raw, out, item.symbol, ts, side=side, price=float(item.price), size=float(item.size))

    # -- tickers ---------------------------------------------------------------------------

    def _ticker(self, conn: Connection, msg: _Frame, raw: RawRecord, out: FeedOutput) -> None:
        """Merge a delta into the connection's state of the symbol (a snapshot replaces it),
        then publish the ticker and, on derivatives, what the frame changed."""
        change = _decode(_ticker, msg.data, "tickers data")
        latest: dict[str, _TickerData] = conn.__dict__.setdefault("tickers", {})
        symbol = change.symbol
        if msg.type == "delta":
            previous = latest.get(symbol)
            if previous is None:
                raise ParseError(f"bybit tickers delta for {symbol} before its snapshot")
            state = latest[symbol] = _merged(previous, change)
        elif msg.type == "snapshot":
            state = latest[symbol] = change
        else:
            raise ParseError(f"bybit tickers message type {msg.type!r}")
        ts = ms_to_us(msg.ts) if msg.ts is not None else None
        self._publish_ticker(conn, symbol, state, ts, raw, out)
        if self._category(conn) in ("linear", "inverse"):
            self._derivative_fields(conn, symbol, change, state, ts, raw, out)

    def _publish_ticker(
        self,
        conn: Connection,
        symbol: str,
        state: _TickerData,
        ts: int | None,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        volume = _num(state.volume24h)
        inverse = self._is_inverse(conn)
        self.ticker(
            raw,
            out,
            symbol,
            ts,
            last_price=_num(state.lastPrice),
            bid_price=_num(state.bid1Price),
            bid_size=_num(state.bid1Size),
            ask_price=_num(state.ask1Price),
            ask_size=_num(state.ask1Size),
            open_24h=_num(state.prevPrice24h),
            high_24h=_num(state.highPrice24h),
            low_24h=_num(state.lowPrice24h),
            volume_24h=volume,
            quote_volume_24h=self._quote_amount(conn, symbol, volume) if inverse else _num(state.turnover24h),
        )

    def _derivative_fields(
        self,
        conn: Connection,
        symbol: str,
        change: _TickerData,
        state: _TickerData,
        ts: int | None,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        rate = _num(state.fundingRate)
        if rate is not None and _came(change, FUNDING_FIELDS):
            next_time = _set(state.nextFundingTime)
            hours = _set(state.fundingIntervalHour)
            self.funding(
                raw,
                out,
                symbol,
                ts,
                rate=rate,
                next_funding_ts=ms_to_us(next_time) if next_time else None,
                interval_s=int(hours) * SECONDS_PER_HOUR if hours else None,
            )
        open_interest = _num(state.openInterest)
        if open_interest is not None and _came(change, OI_FIELDS):
            value = (
                self._quote_amount(conn, symbol, open_interest)
                if self._is_inverse(conn)
                else _num(state.openInterestValue)
            )
            self.open_interest(raw, out, symbol, ts, open_interest=open_interest, value=value)
        if _came(change, MARK_FIELDS):
            mark, index = _num(state.markPrice), _num(state.indexPrice)
            if mark is not None or index is not None:
                self.mark_price(raw, out, symbol, ts, mark_price=mark, index_price=index)

    # -- books -----------------------------------------------------------------------------

    def _book(self, conn: Connection, msg: _Frame, raw: RawRecord, out: FeedOutput) -> None:
        self.counters.book_messages += 1
        data = _decode(_book, msg.data, "orderbook data")
        update_id = data.u
        bids, asks = levels(data.b), levels(data.a)
        stamp = msg.cts or msg.ts
        if stamp is None:
            raise ParseError("bybit orderbook frame without cts or ts")
        ts = ms_to_us(stamp)
        state = self.book_state(conn, data.s)
        book = state.book
        kind = msg.type
        if kind == "snapshot" or (kind == "delta" and update_id == 1):
            book.bids.load((level.price, level.size) for level in bids)
            book.asks.load((level.price, level.size) for level in asks)
            self.accept_snapshot(state, raw, out, ts, last_id=update_id)
        elif kind == "delta":
            if not state.synced:
                self.skip_unsynced(state, raw, out)
                return
            if state.last_id is not None and update_id != state.last_id + 1:
                self.unsync(state, "gap", f"delta u={update_id} after u={state.last_id}", raw, out)
                return
            apply_levels(book.bids, bids)
            apply_levels(book.asks, asks)
            self.accept_update(state, raw, out, ts, bids, asks, first_id=update_id, last_id=update_id)
        else:
            raise ParseError(f"bybit orderbook message type {kind!r}")


def _merged(previous: _TickerData, change: _TickerData) -> _TickerData:
    updates = {
        name: value
        for name in change.__struct_fields__
        if not isinstance(value := getattr(change, name), UnsetType)
    }
    return msgspec.structs.replace(previous, **updates)


def _came(change: _TickerData, fields: tuple[str, ...]) -> bool:
    return any(not isinstance(getattr(change, name), UnsetType) for name in fields)
