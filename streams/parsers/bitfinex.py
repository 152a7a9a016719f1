"""Bitfinex WS v2 public channels: ``[chanId, ...]`` arrays for data, ``{"event"}`` objects for the rest.

Channel frames name only a ``chanId``; the ``subscribed`` events (seen in order in the same
connection's ``recv`` records) map it to ``(channel, symbol)``. The connector turns on
SEQ_ALL (flag 65536), so every channel frame, heartbeats and checksums included, ends with a
per-connection sequence number: a frame whose number is not the previous one + 1 marks every
book of the connection unsynced. The number is recognised by the frame's length (each frame
type has a fixed length, one more with SEQ_ALL), so frames sent before the ``conf`` took
effect parse too.

Books (``prec`` P0): entries ``[PRICE, COUNT, AMOUNT]``; AMOUNT > 0 is a bid, < 0 an ask;
COUNT = 0 deletes the level (AMOUNT is then 1 for bids, -1 for asks). With OB_CHECKSUM
(flag 131072) ``[chanId, "cs", CHECKSUM, seq]`` follows book changes: a signed CRC32 of
``bidPrice:bidAmount:askPrice:askAmount:...`` over the best 25 levels of each side,
interleaved, asks with their negative amounts. Prices and amounts are JSON numbers whose
wire text is kept (decoded with ``float_hook=str``, as the Kraken v2 parser does); a price
in exponent notation (``5e-7``) enters the checksum in positional form (``0.0000005``), as the
official client library converts it.

Trades: the subscribe snapshot ``[chanId, [[ID, MTS, AMOUNT, PRICE], ...], seq]`` lists recent
trades and is re-sent at every (re)subscribe. Its trades go through the feed's trade-id
deduplication, oldest first: those already published are dropped, the others fill the gap of
a reconnect. Each live trade arrives twice, ``te`` (executed) then ``tu`` (update, same ID):
``te`` is published, ``tu`` skipped. AMOUNT < 0 is a sell (the taker sold).

Ticker: ``[chanId, [BID, BID_SIZE, ASK, ASK_SIZE, DAILY_CHANGE, DAILY_CHANGE_RELATIVE, LAST_PRICE,
VOLUME, HIGH, LOW]]``; no time (the receive time stands in), no quote volume, the open is
``LAST_PRICE - DAILY_CHANGE`` (computed on the wire decimals). Candles (``key``
``trade:<timeframe>:<symbol>``, named by the ``subscribed`` event): ``[MTS, OPEN, CLOSE, HIGH, LOW,
VOLUME]`` (close before high), a snapshot of such rows newest first on subscribe, then single rows.
There is no final flag: a candle is final once a later one arrives on the connection (published
newest first, the snapshot's older rows are final at once).

Instruments, flags and the wire structs: ``marketpipe/exchanges/bitfinex.py``
(``parse_instruments`` is re-exported here); a ``t`` symbol no instrument answer named is read
by the same naming rule.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType
from msgspec.structs import astuple

from marketpipe.exchanges.bitfinex import (
    ANY,
    BOOK_CHANNEL,
    CANDLES_CHANNEL,
    CURRENCY_NAMES,
    DATA_FRAME,
    DATA_FRAME_LENGTH,
    FRAME,
    FRAME_LENGTHS,
    INSTRUMENTS_PATH,
    TICKER_CHANNEL,
    TICKER_FIELDS,
    TIMEFRAMES,
    TRADES_CHANNEL,
    BookEntry,
    CandleRow,
    ChannelFrame,
    TickerRow,
    TradeRow,
    event,
    is_instruments_path,
    pair_name,
    parse_instruments,
    rows,
)
from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side
from streams.feed import ClockWindow
from streams.parsers.base import (
    BookSync,
    ConnectionState,
    FeedOutput,
    FeedProcessor,
    ParseError,
    decode_json,
    interval_span_us,
    load_text_levels,
    ms_to_us,
    okx_checksum,
)

# parse_instruments stays importable from here until every caller reads it from the wire module
__all__ = ["BitfinexConnection", "BitfinexProcessor", "parse_instruments"]


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _price_token(text: str) -> str:
    if "e" in text or "E" in text:
        return format(Decimal(text), "f")
    return text


class BitfinexConnection(ConnectionState):
    def __init__(self, conn: str, url: str | None) -> None:
        super().__init__(conn, url)
        self.channels: dict[int, tuple[str, str]] = {}
        """chanId -> (channel, exchange symbol), from ``subscribed`` events"""
        self.last_seq: int | None = None


class BitfinexProcessor(FeedProcessor):
    exchange = "bitfinex"
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)
    keep_text = True
    connection_type = BitfinexConnection

    def __init__(self, clock: ClockWindow | None = None) -> None:
        super().__init__(clock)
        self.skipped_trades = 0
        """``tu`` repeats of ``te`` trades (never published, see the module docstring)"""

    def is_instruments_path(self, path: str) -> bool:
        return is_instruments_path(path)

    def fallback_instrument(self, exchange_symbol: str) -> tuple[str, str] | None:
        """``t`` + pair by the documented naming rule (funding ``f`` symbols have no pair)."""
        if not exchange_symbol.startswith("t") or not exchange_symbol[1:].replace(":", "").isalnum():
            return None
        return pair_name(exchange_symbol[1:], CURRENCY_NAMES), exchange_symbol

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        assert isinstance(conn, BitfinexConnection)
        data = raw.data
        if not data:
            raise ParseError("empty frame")
        try:
            msg = FRAME.decode(data)
        except msgspec.ValidationError as exc:
            self._data_frame(conn, data, exc, raw, out)
            return
        except msgspec.DecodeError as exc:
            raise ParseError(f"invalid JSON: {exc}") from None
        if isinstance(msg, ChannelFrame):
            self._channel_frame(conn, msg, raw, out)
        else:
            self._event(conn, msg)

    def _data_frame(
        self, conn: BitfinexConnection, data: bytes | str, unfit: Exception, raw: RawRecord, out: FeedOutput
    ) -> None:
        """A frame ``ChannelFrame`` does not fit (``unfit`` says why): a snapshot, ticker or candle."""
        try:
            frame = DATA_FRAME.decode(data)
        except msgspec.DecodeError as exc:
            self._unfit(conn, data, unfit, exc, raw, out)
            return
        self._frame_shape(conn, None, frame.length(), frame.third, raw, out)
        channel, symbol = self._channel(conn, frame.chan_id)
        self._data(conn, channel, symbol, frame.body, raw, out)

    def _unfit(
        self,
        conn: BitfinexConnection,
        data: bytes | str,
        as_channel: Exception,
        as_data: Exception,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        """A frame no struct fits: what is wrong with it, checked in the order the typed path
        checks (the sequence number counts when the frame's shape carries one)."""
        msg = decode_json(data, ANY)
        if not isinstance(msg, list):
            raise ParseError("bitfinex frame is neither an array nor an object")
        if len(msg) < 2 or not isinstance(msg[0], int):
            raise ParseError("bitfinex channel frame is not [chanId, ...]")
        code = msg[1] if isinstance(msg[1], str) else None
        self._frame_shape(conn, code, len(msg), msg[-1], raw, out)
        raise ParseError(
            f"malformed bitfinex {code or 'data'} frame: {as_data if code is None else as_channel}"
        )

    # ------------------------------------------------------------------ events

    def _event(self, conn: BitfinexConnection, fields: dict[str, Any]) -> None:
        msg = event(fields)
        kind = msg.event
        if kind == "subscribed":
            # candles name their channel by key (``trade:1m:tBTCUSD``), the others by symbol
            name = msg.key if msg.channel == CANDLES_CHANNEL else msg.symbol
            if msg.chanId is None or name is None:
                raise ParseError(f"malformed bitfinex subscribed event: no chanId or key/symbol: {fields}")
            conn.channels[msg.chanId] = (msg.channel, name)
            self.counters.acks += 1
        elif kind == "unsubscribed":
            if msg.chanId is None:
                raise ParseError(f"malformed bitfinex unsubscribed event: no chanId: {fields}")
            conn.channels.pop(msg.chanId, None)
            self.counters.acks += 1
        elif kind == "info":
            if msg.code is not None:
                self.counters.notices += 1  # 20051/20061: the connector reconnects
            else:
                self.counters.acks += 1
        elif kind == "conf":
            if msg.status != "OK":
                raise ParseError(f"bitfinex conf rejected: {fields}")
            self.counters.acks += 1
        elif kind == "pong":
            self.counters.heartbeats += 1
        elif kind == "error":
            raise ParseError(f"bitfinex error {msg.code}: {msg.msg!r}")
        else:
            raise ParseError(f"unsupported bitfinex event {kind!r}")

    # --------------------------------------------------------- channel frames

    def _channel_frame(
        self, conn: BitfinexConnection, frame: ChannelFrame, raw: RawRecord, out: FeedOutput
    ) -> None:
        body = frame.body
        if isinstance(body, str):
            self._message(conn, frame, body, raw, out)
            return
        if frame.fourth is not UNSET:
            raise ParseError("bitfinex data frame with 4 elements")
        if frame.third is not UNSET:
            self._check_sequence(conn, frame.third, raw, out)
        channel, symbol = self._channel(conn, frame.chan_id)
        if channel == BOOK_CHANNEL:
            state = self.book_state(conn, symbol)
            self.counters.book_messages += 1
            # book frames carry no exchange time (TIMESTAMP flag off)
            self._update(state, body, raw.recv_ns // 1000, raw, out)
        else:  # one book entry fits no other channel's data: its reader says what is wrong
            self._data(conn, channel, symbol, [body.price, body.count, body.amount], raw, out)

    def _message(
        self, conn: BitfinexConnection, frame: ChannelFrame, code: str, raw: RawRecord, out: FeedOutput
    ) -> None:
        """``[chanId, code, ...]``: a heartbeat, a book checksum or a trade."""
        length = frame.length()
        self._frame_shape(conn, code, length, frame.third if length == 3 else frame.fourth, raw, out)
        if code == "hb":
            self.counters.heartbeats += 1
            return
        channel, symbol = self._channel(conn, frame.chan_id)
        if channel == BOOK_CHANNEL:
            self._book_message(conn, symbol, code, frame.third, raw, out)
        elif channel == TRADES_CHANNEL:
            self._trade_message(symbol, code, frame.third, raw, out)
        else:
            raise ParseError(f"unsupported bitfinex channel {channel!r}")

    def _data(
        self,
        conn: BitfinexConnection,
        channel: str,
        symbol: str,
        body: list[Any],
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        if channel == BOOK_CHANNEL:
            self._book_snapshot(conn, symbol, body, raw, out)
        elif channel == TRADES_CHANNEL:
            self._trades_snapshot(symbol, body, raw, out)
        elif channel == TICKER_CHANNEL:
            self._ticker(symbol, body, raw, out)
        elif channel == CANDLES_CHANNEL:
            self._candles(conn, symbol, body, raw, out)
        else:
            raise ParseError(f"unsupported bitfinex channel {channel!r}")

    def _frame_shape(
        self,
        conn: BitfinexConnection,
        code: str | None,
        length: int,
        last: object,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        """Each frame type has a fixed length, one more with SEQ_ALL: then ``last`` is the number."""
        base = DATA_FRAME_LENGTH if code is None else FRAME_LENGTHS.get(code)
        if base is None:
            raise ParseError(f"unsupported bitfinex channel message {code!r}")
        if length == base + 1:
            self._check_sequence(conn, last, raw, out)
        elif length != base:
            raise ParseError(f"bitfinex {code or 'data'} frame with {length} elements")

    def _check_sequence(self, conn: BitfinexConnection, seq: object, raw: RawRecord, out: FeedOutput) -> None:
        if not isinstance(seq, int):
            raise ParseError(f"bitfinex sequence number {seq!r} is not an integer")
        last = conn.last_seq
        conn.last_seq = seq
        if last is not None and seq != last + 1:
            self.connection_gap(conn, f"sequence {seq} after {last}", raw, out)

    @staticmethod
    def _channel(conn: BitfinexConnection, chan_id: int) -> tuple[str, str]:
        found = conn.channels.get(chan_id)
        if found is None:
            raise ParseError(f"bitfinex frame for channel {chan_id}, which no subscribed event named")
        return found

    # ------------------------------------------------------------------ trades

    def _trades_snapshot(self, symbol: str, body: list[Any], raw: RawRecord, out: FeedOutput) -> None:
        """The recent trades sent on subscribe, newest first: published oldest first."""
        try:
            found = rows(body, list[TradeRow])
        except msgspec.ValidationError as exc:
            raise ParseError(
                f"bitfinex trades snapshot is not a list of [ID, MTS, AMOUNT, PRICE]: {exc}"
            ) from None
        for row in sorted(found, key=lambda row: (row.mts, row.id)):
            self._trade(symbol, row, raw, out)

    def _trade_message(
        self, symbol: str, code: str, trade: int | str | TradeRow | UnsetType, raw: RawRecord, out: FeedOutput
    ) -> None:
        if code == "tu":
            self.skipped_trades += 1
            return
        if not isinstance(trade, TradeRow):
            raise ParseError(f"bitfinex {code} frame of {symbol} carries no [ID, MTS, AMOUNT, PRICE] trade")
        self._trade(symbol, trade, raw, out)

    def _trade(self, symbol: str, row: TradeRow, raw: RawRecord, out: FeedOutput) -> None:
        side: Side = "buy" if row.amount > 0 else "sell"
        self.trade(raw, out, symbol, str(row.id), row.price, abs(row.amount), side, ms_to_us(row.mts))

    # ----------------------------------------------------------- ticker, candles

    def _ticker(self, symbol: str, body: list[Any], raw: RawRecord, out: FeedOutput) -> None:
        try:
            row = rows(body, TickerRow)
        except msgspec.ValidationError:
            raise ParseError(f"bitfinex ticker of {symbol} is not a {TICKER_FIELDS}-field array") from None
        bid, bid_size, ask, ask_size, change, _, last, volume, high, low = (_number(v) for v in astuple(row))
        self.ticker(
            raw,
            out,
            symbol,
            None,
            last_price=float(last),
            bid_price=float(bid),
            bid_size=float(bid_size),
            ask_price=float(ask),
            ask_size=float(ask_size),
            open_24h=float(last - change),
            high_24h=float(high),
            low_24h=float(low),
            volume_24h=float(volume),
        )

    def _candles(
        self, conn: BitfinexConnection, key: str, body: list[Any], raw: RawRecord, out: FeedOutput
    ) -> None:
        kind, _, rest = key.partition(":")
        timeframe, _, symbol = rest.partition(":")
        interval = TIMEFRAMES.get(timeframe)
        if kind != "trade" or interval is None or not symbol:
            raise ParseError(f"unsupported bitfinex candles key {key!r}")
        # a snapshot lists rows newest first: the newest is the open candle, the rest are final
        for row in _candle_rows(body):
            self._candle(conn, symbol, interval, row, raw, out)

    def _candle(
        self,
        conn: BitfinexConnection,
        symbol: str,
        interval: str,
        row: CandleRow,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        open_time = ms_to_us(row.mts)
        self.exchange_candle(
            conn,
            raw,
            out,
            symbol,
            interval,
            open_time,
            interval_span_us(interval, open_time),
            row.open,
            row.high,
            row.low,
            row.close,
            volume=row.volume,
        )

    # ------------------------------------------------------------------- books

    def _book_message(
        self,
        conn: BitfinexConnection,
        symbol: str,
        code: str,
        checksum: int | str | TradeRow | UnsetType,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        state = self.book_state(conn, symbol)
        if code != "cs":
            raise ParseError(f"bitfinex book message {code!r}")
        self._verify(state, checksum, raw, out)

    def _book_snapshot(
        self, conn: BitfinexConnection, symbol: str, body: list[Any], raw: RawRecord, out: FeedOutput
    ) -> None:
        state = self.book_state(conn, symbol)
        self.counters.book_messages += 1
        try:
            entries = rows(body, list[BookEntry])
        except msgspec.ValidationError as exc:
            raise ParseError(
                f"bitfinex book data is neither [PRICE, COUNT, AMOUNT] nor a list of them: {exc}"
            ) from None
        self._snapshot(state, entries, raw.recv_ns // 1000, raw, out)  # no exchange time either

    def _snapshot(
        self, state: BookSync, entries: list[BookEntry], ts: int, raw: RawRecord, out: FeedOutput
    ) -> None:
        bids: list[tuple[Level, str]] = []
        asks: list[tuple[Level, str]] = []
        for row in entries:
            level, token, is_bid = _entry(row)
            (bids if is_bid else asks).append((level, token))
        load_text_levels(state.book.bids, bids)
        load_text_levels(state.book.asks, asks)
        self.accept_snapshot(state, raw, out, ts)

    def _update(self, state: BookSync, row: BookEntry, ts: int, raw: RawRecord, out: FeedOutput) -> None:
        level, token, is_bid = _entry(row)
        if not state.synced:
            self.skip_unsynced(state, raw, out)
            return
        book = state.book
        if is_bid:
            book.bids.apply_tokens(((level, token),))
            self.accept_update(state, raw, out, ts, [level], [])
        else:
            book.asks.apply_tokens(((level, token),))
            self.accept_update(state, raw, out, ts, [], [level])

    def _verify(self, state: BookSync, expected: object, raw: RawRecord, out: FeedOutput) -> None:
        if not isinstance(expected, int):
            raise ParseError(f"bitfinex checksum {expected!r} is not an integer")
        if not state.synced:
            return  # nothing to compare; the snapshot that re-syncs the book is on its way
        actual = okx_checksum(state.book)  # the same interleaved top-25 signed CRC32
        self.checksum_result(state, actual == expected, expected, actual, raw, out)


def _candle_rows(body: list[Any]) -> list[CandleRow]:
    """One candle, or a snapshot of them (a list, newest first)."""
    if not body:
        return []
    try:
        return rows(body, list[CandleRow]) if isinstance(body[0], list) else [rows(body, CandleRow)]
    except msgspec.ValidationError:
        raise ParseError(
            f"bitfinex candle {str(body)[:100]} is not [MTS, OPEN, CLOSE, HIGH, LOW, VOLUME]"
        ) from None


def _number(value: object) -> Decimal:
    """A JSON number as decoded (text for decimals, int for whole numbers) -> Decimal."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ParseError(f"bitfinex value {value!r} is not a number")
    try:
        return Decimal(value)
    except InvalidOperation:
        raise ParseError(f"bitfinex value {value!r} is not a number") from None


def _entry(row: BookEntry) -> tuple[Level, str, bool]:
    """``[PRICE, COUNT, AMOUNT]`` -> (Level with size >= 0, checksum token, is_bid)."""
    price_text, amount_text = _text(row.price), _text(row.amount)
    signed = float(amount_text)
    if signed == 0.0:
        raise ParseError(
            f"bitfinex book entry {[row.price, row.count, row.amount]!r} has a zero amount (no side)"
        )
    size = 0.0 if row.count == 0 else abs(signed)
    return Level(float(price_text), size), f"{_price_token(price_text)}:{amount_text}", signed > 0
