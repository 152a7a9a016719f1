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

Instruments, the wire structs and the category of a URL: ``marketpipe/exchanges/bybit.py``
(``parse_instruments`` is re-exported here for callers that still look it up in the parser).

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

import msgspec
from msgspec import UnsetType

from marketpipe.exchanges.bybit import (
    BOOK,
    BOOK_TOPIC,
    FRAMES,
    INSTRUMENTS_PATH,
    KLINE_TOPIC,
    KLINES,
    LEGACY_LIQUIDATION,
    LEGACY_LIQUIDATION_TOPIC,
    LIQUIDATION_TOPIC,
    LIQUIDATIONS,
    TICKER,
    TICKERS_TOPIC,
    TRADE_TOPIC,
    TRADES,
    Frame,
    Text,
    TickerData,
    category_of_url,
    decode,
    parse_instruments,
)
from marketpipe.instruments import Instruments
from marketpipe.raw import RawRecord
from marketpipe.records import Instrument, Side
from streams.parsers.base import (
    ConnectionState,
    FeedOutput,
    FeedProcessor,
    ParseError,
    apply_levels,
    levels,
    ms_to_us,
    opt_float,
)

# parse_instruments stays importable from here until every caller reads it from the wire module
__all__ = ["BybitConnection", "BybitProcessor", "parse_instruments"]

TAKER_SIDES: dict[str, Side] = {"Buy": "buy", "Sell": "sell"}
LIQUIDATION_SIDES: dict[str, Side] = {"Buy": "sell", "Sell": "buy"}
"""the liquidated position's side -> the side of the order that closed it"""
KLINE_INTERVALS = {
    **{str(minutes): f"{minutes}m" for minutes in (1, 3, 5, 15, 30)},
    **{str(hours * 60): f"{hours}h" for hours in (1, 2, 4, 6, 12)},
    "D": "1d",
    "W": "1w",
    "M": "1M",
}
"""Bybit kline interval -> marketpipe's spelling"""
SECONDS_PER_HOUR = 3_600
FUNDING_FIELDS = ("fundingRate", "nextFundingTime", "fundingIntervalHour")
OI_FIELDS = ("openInterest", "openInterestValue")
MARK_FIELDS = ("markPrice", "indexPrice")


def _set(value: Text) -> str | None:
    """A ticker field that came with a value (UNSET and ``""``: None)."""
    return None if isinstance(value, UnsetType) or value == "" else value


def _num(value: Text) -> float | None:
    text = _set(value)
    return None if text is None else float(text)


# -- the processor ------------------------------------------------------------------------------


class BybitConnection(ConnectionState):
    def __init__(self, conn: str, url: str | None) -> None:
        super().__init__(conn, url)
        self.category = category_of_url(url)
        self.tickers: dict[str, TickerData] = {}
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

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        if not raw.data:
            raise ParseError("empty frame")
        msg = decode(FRAMES, raw.data, "frame")
        topic = msg.topic
        if not topic:
            self._op_reply(msg)
            return
        channel = topic.partition(".")[0]
        if channel == BOOK_TOPIC:
            self._book(conn, msg, raw, out)
        elif channel == TRADE_TOPIC:
            self._trades(msg, raw, out)
        elif channel == TICKERS_TOPIC:
            self._ticker(conn, msg, raw, out)
        elif channel == KLINE_TOPIC:
            self._klines(conn, topic, msg, raw, out)
        elif channel == LIQUIDATION_TOPIC:
            self._liquidations(msg, raw, out)
        elif channel == LEGACY_LIQUIDATION_TOPIC:
            self._legacy_liquidation(msg, raw, out)
        else:
            raise ParseError(f"unsupported bybit topic {topic!r}")

    def _op_reply(self, msg: Frame) -> None:
        op = msg.op
        if msg.success is False:
            raise ParseError(f"bybit {op} rejected: {msg.ret_msg!r}")
        if op in ("ping", "pong"):
            self.counters.heartbeats += 1
        elif op in ("subscribe", "unsubscribe"):
            self.counters.acks += 1
        else:
            raise ParseError(f"unrecognised bybit frame (op {op!r}, no topic)")

    def _category(self, conn: ConnectionState) -> str | None:
        return getattr(conn, "category", None)

    def _record(self, conn: ConnectionState, exchange_symbol: str) -> Instrument | None:
        category = self._category(conn)
        return None if category is None else self.contracts().get((category, exchange_symbol))

    def _quote_amount(
        self, conn: ConnectionState, exchange_symbol: str, contracts: float | None
    ) -> float | None:
        """Contracts of a contract sized in its quote currency (inverse: USD) in that currency."""
        record = self._record(conn, exchange_symbol)
        if contracts is None or record is None or record.contract_size_currency != record.quote:
            return None
        return contracts * record.contract_size

    def _is_inverse(self, conn: ConnectionState) -> bool:
        return self._category(conn) == "inverse"

    # -- trades, klines, liquidations ------------------------------------------------------

    def _trades(self, msg: Frame, raw: RawRecord, out: FeedOutput) -> None:
        for item in decode(TRADES, msg.data, "publicTrade data"):
            side = TAKER_SIDES.get(item.S, "unknown")
            self.trade(raw, out, item.s, item.i, float(item.p), float(item.v), side, ms_to_us(item.T))

    def _klines(self, conn: ConnectionState, topic: str, msg: Frame, raw: RawRecord, out: FeedOutput) -> None:
        """``kline.{interval}.{symbol}``; one frame may carry several candles (a closed one and
        the next open one); ``confirm`` is the final flag. Inverse ``turnover`` is in the base
        coin: the quote volume is the contracts' USD."""
        _, interval_code, symbol = topic.split(".", 2)
        interval = KLINE_INTERVALS.get(interval_code)
        if interval is None:
            raise ParseError(f"unsupported bybit kline interval {interval_code!r}")
        ts = ms_to_us(msg.ts) if msg.ts is not None else None
        inverse = self._is_inverse(conn)
        for item in decode(KLINES, msg.data, "kline data"):
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

    def _liquidations(self, msg: Frame, raw: RawRecord, out: FeedOutput) -> None:
        for item in decode(LIQUIDATIONS, msg.data, "allLiquidation data"):
            side = LIQUIDATION_SIDES.get(item.S)
            if side is None:
                raise ParseError(f"bybit allLiquidation side {item.S!r} is neither Buy nor Sell")
            self.liquidation(
                raw, out, item.s, ms_to_us(item.T), side=side, price=float(item.p), size=float(item.v)
            )

    def _legacy_liquidation(self, msg: Frame, raw: RawRecord, out: FeedOutput) -> None:
        item = decode(LEGACY_LIQUIDATION, msg.data, "liquidation data")
        side = LIQUIDATION_SIDES.get(item.side)
        if side is None:
            raise ParseError(f"bybit liquidation side {item.side!r} is neither Buy nor Sell")
        ts = ms_to_us(item.updatedTime)
        self.liquidation(raw, out, item.symbol, ts, side=side, price=float(item.price), size=float(item.size))

    # -- tickers ---------------------------------------------------------------------------

    def _ticker(self, conn: ConnectionState, msg: Frame, raw: RawRecord, out: FeedOutput) -> None:
        """Merge a delta into the connection's state of the symbol (a snapshot replaces it),
        then publish the ticker and, on derivatives, what the frame changed."""
        change = decode(TICKER, msg.data, "tickers data")
        latest: dict[str, TickerData] = conn.__dict__.setdefault("tickers", {})
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
        conn: ConnectionState,
        symbol: str,
        state: TickerData,
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
        conn: ConnectionState,
        symbol: str,
        change: TickerData,
        state: TickerData,
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

    def _book(self, conn: ConnectionState, msg: Frame, raw: RawRecord, out: FeedOutput) -> None:
        self.counters.book_messages += 1
        data = decode(BOOK, msg.data, "orderbook data")
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


def _merged(previous: TickerData, change: TickerData) -> TickerData:
    updates = {
        name: value
        for name in change.__struct_fields__
        if not isinstance(value := getattr(change, name), UnsetType)
    }
    return msgspec.structs.replace(previous, **updates)


def _came(change: TickerData, fields: tuple[str, ...]) -> bool:
    return any(not isinstance(getattr(change, name), UnsetType) for name in fields)
