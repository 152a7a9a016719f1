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

Instruments: ``GET /v2/conf/<keys>`` answers one list per requested key, in the order of the
keys in the path: ``pub:list:pair:exchange`` (the pairs), ``pub:info:pair`` (``[[pair, info],
...]``), ``pub:map:currency:sym`` (``[[code, name], ...]``); the connector asks for the pair list
and the currency map, other recorders for the pair list alone. The legacy ``/v1/symbols``
(``["btcusd", ...]``) and ``/v1/symbols_details`` (``[{"pair": "btcusd"}, ...]``) are read too.
Bitfinex publishes no base/quote fields, so the pair is split by its documented naming rule:
six characters are BASE(3)+QUOTE(3) ("BTCUSD"); longer pairs put ':' between base and quote
("TESTBTC:TESTUSD"). Each currency code then goes through the currency map, upper-cased (UST ->
"USDt" -> USDT); without a map in the answer, through ``CURRENCY_NAMES``, a copy of Bitfinex's
published ``pub:map:currency:sym``, so a pair has the same name whichever form named it. The
websocket symbol is ``t`` + pair; a ``t`` symbol no answer named is read by the same rule.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from marketpipe.raw import RawRecord
from marketpipe.records import Level, Side
from streams.feed import ClockWindow
from streams.instruments import Instruments, read_entries, spot_name
from streams.parsers.base import (
    BookState,
    Connection,
    FeedOutput,
    FeedProcessor,
    ParseError,
    decode_json,
    interval_span_us,
    load_text_levels,
    ms_to_us,
    okx_checksum,
)

INSTRUMENTS_PATH = "/v2/conf/pub:list:pair:exchange,pub:map:currency:sym"
SEQ_ALL = 65536
OB_CHECKSUM = 131072
NOTICE_CODES = {
    20051: "server restart: reconnect",
    20060: "maintenance started: pause",
    20061: "maintenance ended: resubscribe",
}
_BASE_LENGTH = {"hb": 2, "cs": 3, "te": 3, "tu": 3}
"""length of a channel frame with a string at index 1, without the SEQ_ALL number"""
TIMEFRAMES = {
    "1m": "1m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "1h", "3h": "3h", "6h": "6h",
    "12h": "12h", "1D": "1d", "1W": "1w", "14D": "14d", "1M": "1M",
}  # fmt: skip
"""Bitfinex candle timeframes -> marketpipe's interval spelling"""
TICKER_FIELDS = 10
"""a trading-pair ticker array (funding ``f`` symbols send a longer one)"""
CANDLE_FIELDS = 6

_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(float_hook=str)


PAIRS = "pub:list:pair:exchange"
PAIR_INFO = "pub:info:pair"
CURRENCY_MAP = "pub:map:currency:sym"
V1_PATHS = ("/v1/symbols", "/v1/symbols_details")
CURRENCY_NAMES = {
    code: name.upper()
    for code, name in (
        ("ABS", "ABYSS"), ("AIO", "AION"), ("ALG", "ALGO"), ("AMP", "AMPL"), ("ATO", "ATOM"),
        ("BAB", "BCH"), ("CNHT", "CNHt"), ("CSX", "CS"), ("CTX", "CTXC"), ("DAT", "DATA"),
        ("DOG", "MDOGE"), ("DRN", "DRGN"), ("DSH", "DASH"), ("DTX", "DT"), ("EDO", "PNT"),
        ("EUS", "EURS"), ("EUT", "EURt"), ("GSD", "GUSD"), ("IOS", "IOST"), ("IOT", "IOTA"),
        ("LBT", "LBTC"), ("MIT", "MITH"), ("MNA", "MANA"), ("NCA", "NCASH"), ("OMN", "OMNI"),
        ("PAS", "PASS"), ("POY", "POLY"), ("QSH", "QASH"), ("QTM", "QTUM"), ("RBT", "RBTC"),
        ("REP", "REP2"), ("SCR", "XD"), ("SNG", "SNGLS"), ("SPK", "SPANK"), ("STJ", "STORJ"),
        ("TSD", "TUSD"), ("UDC", "USDC"), ("USK", "USDK"), ("UST", "USDt"), ("UTN", "UTNP"),
        ("VSY", "VSYS"), ("WBT", "WBTC"), ("XAUT", "XAUt"), ("XCH", "XCHF"), ("YGG", "YEED"),
        ("YYW", "YOYOW"),
    )
}  # fmt: skip
"""Bitfinex's ``pub:map:currency:sym`` as published (upper-cased), for answers without the map"""


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """A conf (or v1 symbols) answer -> {"tBTCUSD": "BTC-USD", "tBTCUST": "BTC-USDT", ...}."""
    found = decode_json(body)
    if isinstance(found, list) and found and found[0] == "error":
        raise ParseError(f"bitfinex conf error {found[1:]}")
    if path.endswith(V1_PATHS):
        return _v1_symbols(found)
    keys = path.rsplit("/", 1)[-1].split(",")
    if not isinstance(found, list) or len(found) != len(keys) or not all(isinstance(x, list) for x in found):
        raise ParseError(f"bitfinex conf response is not one list per requested key {keys}")
    lists = dict(zip(keys, found, strict=True))
    names = dict(CURRENCY_NAMES)
    if CURRENCY_MAP in lists:
        names = {str(code): str(name).upper() for code, name in lists[CURRENCY_MAP]}
    if PAIRS in lists:
        pairs = lists[PAIRS]
    elif PAIR_INFO in lists:
        pairs = [row[0] if isinstance(row, list) and row else row for row in lists[PAIR_INFO]]
    else:
        raise ParseError(f"bitfinex conf response for {keys} lists no trading pairs")
    return read_entries(pairs, lambda pair, into: _pair(pair, names, into), "bitfinex pair")


def _v1_symbols(found: Any) -> Instruments:
    if not isinstance(found, list):
        raise ParseError("bitfinex v1 symbols response is not a list")
    pairs = [row.get("pair") if isinstance(row, dict) else row for row in found]
    return read_entries(pairs, lambda pair, into: _pair(pair.upper(), CURRENCY_NAMES, into), "bitfinex pair")


def _pair(pair: str, names: dict[str, str], found: Instruments) -> None:
    found.add(f"t{pair}", pair_name(pair, names))


def pair_name(pair: str, names: dict[str, str]) -> str:
    base, colon, quote = pair.partition(":")
    if not colon:
        if len(pair) != 6:
            raise ParseError(f"bitfinex pair {pair!r} is neither BASEQUOTE (3+3) nor BASE:QUOTE")
        base, quote = pair[:3], pair[3:]
    return spot_name(names.get(base, base), names.get(quote, quote))


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _price_token(text: str) -> str:
    if "e" in text or "E" in text:
        return format(Decimal(text), "f")
    return text


class BitfinexConnection(Connection):
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
        if path.endswith(V1_PATHS):
            return True
        keys = path.rsplit("/", 1)[-1].split(",")
        return "/conf/" in path and (PAIRS in keys or PAIR_INFO in keys)

    def fallback_instrument(self, exchange_symbol: str) -> tuple[str, str] | None:
        """``t`` + pair by the documented naming rule (funding ``f`` symbols have no pair)."""
        if not exchange_symbol.startswith("t") or not exchange_symbol[1:].replace(":", "").isalnum():
            return None
        return pair_name(exchange_symbol[1:], CURRENCY_NAMES), exchange_symbol

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        assert isinstance(conn, BitfinexConnection)
        msg = decode_json(raw.data, _decoder)
        if isinstance(msg, list):
            self._channel_frame(conn, msg, raw, out)
        elif isinstance(msg, dict):
            self._event(conn, msg)
        else:
            raise ParseError("bitfinex frame is neither an array nor an object")

    # ------------------------------------------------------------------ events

    def _event(self, conn: BitfinexConnection, msg: dict[str, Any]) -> None:
        event = msg.get("event")
        if event == "subscribed":
            # candles name their channel by key (``trade:1m:tBTCUSD``), the others by symbol
            name = msg["key"] if msg["channel"] == "candles" else msg["symbol"]
            conn.channels[int(msg["chanId"])] = (msg["channel"], name)
            self.counters.acks += 1
        elif event == "unsubscribed":
            conn.channels.pop(int(msg["chanId"]), None)
            self.counters.acks += 1
        elif event == "info":
            if "code" in msg:
                self.counters.notices += 1  # 20051/20061: the connector reconnects
            else:
                self.counters.acks += 1
        elif event == "conf":
            if msg.get("status") != "OK":
                raise ParseError(f"bitfinex conf rejected: {msg}")
            self.counters.acks += 1
        elif event == "pong":
            self.counters.heartbeats += 1
        elif event == "error":
            raise ParseError(f"bitfinex error {msg.get('code')}: {msg.get('msg')!r}")
        else:
            raise ParseError(f"unsupported bitfinex event {event!r}")

    # --------------------------------------------------------- channel frames

    def _channel_frame(
        self, conn: BitfinexConnection, msg: list[Any], raw: RawRecord, out: FeedOutput
    ) -> None:
        if len(msg) < 2 or not isinstance(msg[0], int):
            raise ParseError("bitfinex channel frame is not [chanId, ...]")
        body = msg[1]
        code = body if isinstance(body, str) else None
        base = 2 if code is None else _BASE_LENGTH.get(code)
        if base is None:
            raise ParseError(f"unsupported bitfinex channel message {code!r}")
        if len(msg) == base + 1:
            self._check_sequence(conn, msg[base], raw, out)
        elif len(msg) != base:
            raise ParseError(f"bitfinex {code or 'data'} frame with {len(msg)} elements")
        if code == "hb":
            self.counters.heartbeats += 1
            return
        channel, symbol = self._channel(conn, msg[0])
        if channel == "book":
            self._book(conn, symbol, code, msg, raw, out)
        elif channel == "trades":
            self._trades(symbol, code, msg[2] if code else body, raw, out)
        elif channel == "ticker" and code is None:
            self._ticker(symbol, body, raw, out)
        elif channel == "candles" and code is None:
            self._candles(conn, symbol, body, raw, out)
        else:
            raise ParseError(f"unsupported bitfinex channel {channel!r}")

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

    def _trades(self, symbol: str, code: str | None, body: Any, raw: RawRecord, out: FeedOutput) -> None:
        if code is None:  # the snapshot of recent trades on subscribe, newest first
            if not isinstance(body, list):
                raise ParseError("bitfinex trades snapshot is not a list")
            for row in sorted(body, key=lambda row: (row[1], row[0])):
                self._trade(symbol, row, raw, out)
            return
        if code == "tu":
            self.skipped_trades += 1
            return
        self._trade(symbol, body, raw, out)

    def _trade(self, symbol: str, row: list[Any], raw: RawRecord, out: FeedOutput) -> None:
        trade_id, mts, amount, price = row
        size = float(amount)
        side: Side = "buy" if size > 0 else "sell"
        self.trade(raw, out, symbol, str(trade_id), float(price), abs(size), side, ms_to_us(mts))

    # ----------------------------------------------------------- ticker, candles

    def _ticker(self, symbol: str, body: Any, raw: RawRecord, out: FeedOutput) -> None:
        if not isinstance(body, list) or len(body) != TICKER_FIELDS:
            raise ParseError(f"bitfinex ticker of {symbol} is not a {TICKER_FIELDS}-field array")
        bid, bid_size, ask, ask_size, change, _, last, volume, high, low = (_number(v) for v in body)
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
        self, conn: BitfinexConnection, key: str, body: Any, raw: RawRecord, out: FeedOutput
    ) -> None:
        kind, _, rest = key.partition(":")
        timeframe, _, symbol = rest.partition(":")
        interval = TIMEFRAMES.get(timeframe)
        if kind != "trade" or interval is None or not symbol:
            raise ParseError(f"unsupported bitfinex candles key {key!r}")
        if not isinstance(body, list):
            raise ParseError(f"bitfinex candles of {key} is not an array")
        # a snapshot lists rows newest first: the newest is the open candle, the rest are final
        rows = body if body and isinstance(body[0], list) else [body] if body else []
        for row in rows:
            self._candle(conn, symbol, interval, row, raw, out)

    def _candle(
        self, conn: BitfinexConnection, symbol: str, interval: str, row: Any, raw: RawRecord, out: FeedOutput
    ) -> None:
        if not isinstance(row, list) or len(row) != CANDLE_FIELDS or not isinstance(row[0], int):
            raise ParseError(f"bitfinex candle {str(row)[:100]} is not [MTS, OPEN, CLOSE, HIGH, LOW, VOLUME]")
        open_time = ms_to_us(row[0])
        open_, close, high, low, volume = (float(v) for v in row[1:])
        self.exchange_candle(
            conn,
            raw,
            out,
            symbol,
            interval,
            open_time,
            interval_span_us(interval, open_time),
            open_,
            high,
            low,
            close,
            volume=volume,
        )

    # ------------------------------------------------------------------- books

    def _book(
        self,
        conn: BitfinexConnection,
        symbol: str,
        code: str | None,
        msg: list[Any],
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        state = self.book_state(conn, symbol)
        if code == "cs":
            self._verify(state, msg[2], raw, out)
            return
        if code is not None:
            raise ParseError(f"bitfinex book message {code!r}")
        self.counters.book_messages += 1
        body = msg[1]
        ts = raw.recv_ns // 1000  # book frames carry no exchange time (TIMESTAMP flag off)
        if not body or isinstance(body[0], list):
            self._snapshot(state, body, ts, raw, out)
        else:
            self._update(state, body, ts, raw, out)

    def _snapshot(self, state: BookState, rows: list[Any], ts: int, raw: RawRecord, out: FeedOutput) -> None:
        bids: list[tuple[Level, str]] = []
        asks: list[tuple[Level, str]] = []
        for row in rows:
            level, token, is_bid = _entry(row)
            (bids if is_bid else asks).append((level, token))
        load_text_levels(state.book.bids, bids)
        load_text_levels(state.book.asks, asks)
        self.accept_snapshot(state, raw, out, ts)

    def _update(self, state: BookState, row: list[Any], ts: int, raw: RawRecord, out: FeedOutput) -> None:
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

    def _verify(self, state: BookState, expected: object, raw: RawRecord, out: FeedOutput) -> None:
        if not isinstance(expected, int):
            raise ParseError(f"bitfinex checksum {expected!r} is not an integer")
        if not state.synced:
            return  # nothing to compare; the snapshot that re-syncs the book is on its way
        actual = okx_checksum(state.book)  # the same interleaved top-25 signed CRC32
        self.checksum_result(state, actual == expected, expected, actual, raw, out)


def _number(value: object) -> Decimal:
    """A JSON number as decoded (text for decimals, int for whole numbers) -> Decimal."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ParseError(f"bitfinex value {value!r} is not a number")
    try:
        return Decimal(value)
    except InvalidOperation:
        raise ParseError(f"bitfinex value {value!r} is not a number") from None


def _entry(row: list[Any]) -> tuple[Level, str, bool]:
    """``[PRICE, COUNT, AMOUNT]`` -> (Level with size >= 0, checksum token, is_bid)."""
    price, count, amount = row
    price_text, amount_text = _text(price), _text(amount)
    signed = float(amount_text)
    if signed == 0.0:
        raise ParseError(f"bitfinex book entry {row!r} has a zero amount (no side)")
    size = 0.0 if count == 0 else abs(signed)
    return Level(float(price_text), size), f"{_price_token(price_text)}:{amount_text}", signed > 0
