"""Bitfinex WS v2 public: the protocol facts the connector, the parser and the simulator share.

Flags (the ``conf`` event): SEQ_ALL (65536) appends a per-connection sequence number to every
channel frame, OB_CHECKSUM (131072) adds ``[chanId, "cs", CHECKSUM]`` frames after book changes.
Books take ``len`` 1, 25, 100 or 250 (``BOOK_LENGTHS``). Info codes: ``NOTICE_CODES``.

Channel frames are arrays ``[chanId, body, ...]``: ``body`` is the data (an array) or a message
code (``hb``, ``cs``, ``te``, ``tu``), each frame type of a fixed length (``FRAME_LENGTHS``, one
more with SEQ_ALL). ``ChannelFrame`` reads, in one pass, every frame whose body is a code or one
book entry (``BookEntry``, ``[PRICE, COUNT, AMOUNT]``; with ``te``/``tu`` the ``TradeRow`` after
it, ``[ID, MTS, AMOUNT, PRICE]``): all but a few in a hundred. The others, book and trades
snapshots, tickers (``TickerRow``: ``[BID, BID_SIZE, ASK, ASK_SIZE, DAILY_CHANGE,
DAILY_CHANGE_RELATIVE, LAST_PRICE, VOLUME, HIGH, LOW]``) and candles (``CandleRow``: ``[MTS, OPEN,
CLOSE, HIGH, LOW, VOLUME]``, a snapshot being a list of them), are a ``DataFrame`` whose rows are
converted by channel (``rows``). Book and ticker numbers keep their wire text (decoded with
``float_hook=str``: a decimal arrives as its text, a whole number as an int), which the book
checksum and the ticker's open (``LAST_PRICE - DAILY_CHANGE``) are computed on. ``{"event": ...}``
objects are an ``Event``.

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
websocket symbol is ``t`` + pair.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from marketpipe.instruments import Instruments, read_entries, spot_name
from marketpipe.wire import ParseError, decode_json

INSTRUMENTS_PATH = "/v2/conf/pub:list:pair:exchange,pub:map:currency:sym"
WS_PATH = "/ws/2"
BOOK_CHANNEL = "book"
TRADES_CHANNEL = "trades"
TICKER_CHANNEL = "ticker"
CANDLES_CHANNEL = "candles"
"""named by ``key`` (``trade:<timeframe>:<symbol>``), the others by ``symbol``"""
SEQ_ALL = 65536
OB_CHECKSUM = 131072
BOOK_LENGTHS = (1, 25, 100, 250)
NOTICE_CODES = {
    20051: "server restart: reconnect",
    20060: "maintenance started: pause",
    20061: "maintenance ended: resubscribe",
}
FRAME_LENGTHS = {"hb": 2, "cs": 3, "te": 3, "tu": 3}
"""length of a channel frame with a message code at index 1, without the SEQ_ALL number"""
DATA_FRAME_LENGTH = 2
TIMEFRAMES = {
    "1m": "1m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "1h", "3h": "3h", "6h": "6h",
    "12h": "12h", "1D": "1d", "1W": "1w", "14D": "14d", "1M": "1M",
}  # fmt: skip
"""Bitfinex candle timeframes -> marketpipe's interval spelling"""
TICKER_FIELDS = 10
"""a trading-pair ticker array (funding ``f`` symbols send a longer one)"""
CANDLE_FIELDS = 6

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


# -- wire structs -------------------------------------------------------------------------------


class BookEntry(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """``[PRICE, COUNT, AMOUNT]`` (P0): AMOUNT > 0 a bid, < 0 an ask; COUNT 0 deletes the level
    (AMOUNT then 1 for bids, -1 for asks). PRICE and AMOUNT as wire text (or int)."""

    price: Any
    count: int
    amount: Any


class TradeRow(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """``[ID, MTS, AMOUNT, PRICE]``; AMOUNT < 0 is a sell (the taker sold)."""

    id: int
    mts: int
    amount: float
    price: float


class TickerRow(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A trading pair's ticker, numbers as wire text (or int); no time, no quote volume."""

    bid: Any
    bid_size: Any
    ask: Any
    ask_size: Any
    daily_change: Any
    daily_change_relative: Any
    last_price: Any
    volume: Any
    high: Any
    low: Any


class CandleRow(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """``[MTS, OPEN, CLOSE, HIGH, LOW, VOLUME]`` (close before high)."""

    mts: int
    open: float
    close: float
    high: float
    low: float
    volume: float


class ChannelFrame(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """A channel frame whose body is a message code or one book entry: every frame but the
    snapshots, tickers and candles (``DataFrame``), decoded in one pass.

    ``third`` is the sequence number of a data or ``hb`` frame, the checksum of ``cs`` or the trade
    of ``te``/``tu``; ``fourth`` the sequence number of the latter three. A string there is kept
    so that the parser can say which value is not an integer."""

    chan_id: int
    body: str | BookEntry
    third: int | str | TradeRow | UnsetType = UNSET
    fourth: int | str | UnsetType = UNSET

    def length(self) -> int:
        return 2 + (self.third is not UNSET) + (self.fourth is not UNSET)


class DataFrame(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """``[chanId, rows]`` with the SEQ_ALL number after: a book or trades snapshot, a ticker or
    candles. The rows are read by channel (``rows``: ``BookEntry``, ``TradeRow``, ``TickerRow``,
    ``CandleRow``), numbers as wire text until then."""

    chan_id: int
    body: list[Any]
    third: int | str | UnsetType = UNSET

    def length(self) -> int:
        return 2 + (self.third is not UNSET)


class Event(msgspec.Struct):
    """``{"event": ...}``: ``info``, ``conf``, ``subscribed``/``unsubscribed``, ``pong``, ``error``."""

    event: str | None = None
    channel: str = ""
    chanId: int | None = None
    symbol: str | None = None
    key: str | None = None
    code: int | None = None
    status: str | None = None
    msg: str | None = None


FRAME = msgspec.json.Decoder(ChannelFrame | dict[str, Any], float_hook=str)
"""a channel frame, or an event object (``event`` reads it)"""
DATA_FRAME = msgspec.json.Decoder(DataFrame, float_hook=str)
ANY = msgspec.json.Decoder(float_hook=str)
"""frames no struct fits, decoded to say what is wrong with them"""
T = TypeVar("T")


def event(fields: dict[str, Any]) -> Event:
    try:
        return msgspec.convert(fields, Event)
    except msgspec.ValidationError as exc:
        raise ParseError(f"malformed bitfinex event: {exc}") from None


def rows(body: list[Any], kind: type[T]) -> T:
    """A data frame's body as ``kind`` (``TickerRow``, ``list[TradeRow]``...); numbers that came as
    wire text become the fields' floats. Raises ``msgspec.ValidationError`` when it does not fit."""
    return msgspec.convert(body, kind, strict=False)


# -- instruments --------------------------------------------------------------------------------


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


def is_instruments_path(path: str) -> bool:
    """A conf path that lists the pairs (with or without other keys), or a v1 symbols path."""
    if path.endswith(V1_PATHS):
        return True
    keys = path.rsplit("/", 1)[-1].split(",")
    return "/conf/" in path and (PAIRS in keys or PAIR_INFO in keys)


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
