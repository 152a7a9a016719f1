"""Kraken spot wire, WS v2 (objects with ``channel``/``method``) and the legacy WS v1 (array
frames ``[channelID, payload..., channelName, pair]`` and ``{"event": ...}`` objects): endpoints,
channel names, book depths, asset aliases, the AssetPairs reader and the msgspec structs of the
v2 and v1 messages.

v2 book prices and sizes are JSON numbers whose exact text matters for the CRC32 checksum: the
structs type them ``Any`` and are decoded with ``float_hook=str``, so every non-integer number
stays the text it was sent as. A v1 frame's shape depends on its channel name (the
penultimate element), so the parser decodes the outer array into ``msgspec.Raw`` elements and
each payload element with the channel's struct; v1 sends prices and volumes as strings.

Shared by the connector (producers/connectors/kraken.py), the parser (streams/parsers/kraken.py,
kraken_v1.py) and the simulator.
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketpipe.instruments import Instruments, read_entries, spot_name
from marketpipe.records import Side
from marketpipe.wire import ParseError, json_object

WS_BASE = "wss://ws.kraken.com"
"""the v1 endpoint; v2 is ``WS_BASE + V2_PATH``"""
V2_PATH = "/v2"
REST_BASE = "https://api.kraken.com"
INSTRUMENTS_PATH = "/0/public/AssetPairs"
DEFAULT_DEPTH = 10
"""the book depth when a subscription names none"""
DEPTHS = (10, 25, 100, 500, 1000)
"""the subscribable book depths"""
ASSET_ALIASES = {"XBT": "BTC", "XDG": "DOGE"}
"""v1 (and AssetPairs ``wsname``) asset codes -> the v2 and marketpipe ones"""
TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
V1_TAKER_SIDES: dict[str, Side] = {"b": "buy", "s": "sell"}
BOOK, TRADE, TICKER, OHLC, HEARTBEAT, STATUS = "book", "trade", "ticker", "ohlc", "heartbeat", "status"
"""the v2 channel names (v1 names its channels ``book-<depth>``, ``trade``, ``ticker``, ``ohlc-<minutes>``)"""


def asset(code: str) -> str:
    return ASSET_ALIASES.get(code, code)


# ------------------------------------------------------------------------------ v2 channels


class BookLevel(msgspec.Struct):
    price: Any
    qty: Any


class BookData(msgspec.Struct):
    symbol: str
    bids: list[BookLevel]
    asks: list[BookLevel]
    checksum: int | None = None
    timestamp: str | None = None


class BookMessage(msgspec.Struct, tag_field="channel", tag=BOOK):
    type: str
    data: list[BookData]


class TradeData(msgspec.Struct):
    symbol: str
    trade_id: Any
    price: Any
    qty: Any
    side: str
    timestamp: str


class TradeMessage(msgspec.Struct, tag_field="channel", tag=TRADE):
    data: list[TradeData]


class TickerData(msgspec.Struct):
    """No open price (``change`` is the 24 h change in quote), no quote volume, no trade count."""

    symbol: str
    last: Any
    change: Any = None
    timestamp: str | None = None
    bid: Any = None
    bid_qty: Any = None
    ask: Any = None
    ask_qty: Any = None
    high: Any = None
    low: Any = None
    volume: Any = None


class TickerMessage(msgspec.Struct, tag_field="channel", tag=TICKER):
    data: list[TickerData]


class OhlcData(msgspec.Struct):
    """``interval`` in minutes; the item's own ``timestamp`` is deprecated (the interval end)."""

    symbol: str
    interval: Any
    interval_begin: str
    open: Any
    high: Any
    low: Any
    close: Any
    volume: Any = None
    trades: Any = None


class OhlcMessage(msgspec.Struct, tag_field="channel", tag=OHLC):
    data: list[OhlcData]
    timestamp: str | None = None


class HeartbeatMessage(msgspec.Struct, tag_field="channel", tag=HEARTBEAT):
    pass


class StatusMessage(msgspec.Struct, tag_field="channel", tag=STATUS):
    data: Any = None


ChannelMessage = BookMessage | TradeMessage | TickerMessage | OhlcMessage | HeartbeatMessage | StatusMessage
CHANNELS: dict[str, type[ChannelMessage]] = {
    BOOK: BookMessage,
    TRADE: TradeMessage,
    TICKER: TickerMessage,
    OHLC: OhlcMessage,
    HEARTBEAT: HeartbeatMessage,
    STATUS: StatusMessage,
}


class MethodResponse(msgspec.Struct):
    """The answer to a request (``subscribe``, ``unsubscribe``, ``ping`` -> ``pong``)."""

    method: str
    success: bool | None = None
    result: Any = None
    error: Any = None


# ------------------------------------------------------------------------------ v1 channels


class V1TradeRow(msgspec.Struct, array_like=True, gc=False):
    """``[price, volume, time, side, orderType, misc]``; no trade id."""

    price: str
    volume: str
    time: str
    side: str


class V1BookLevel(msgspec.Struct, array_like=True, gc=False):
    """``[price, volume, timestamp]`` (an update may add ``"r"``, a republish); the texts are kept
    for the checksum."""

    price: str
    volume: str
    timestamp: str


class V1BookPayload(msgspec.Struct):
    """A snapshot carries ``as``/``bs``; an update ``a`` and/or ``b`` (possibly split over two
    payloads) with the checksum ``c`` in the last one."""

    snapshot_asks: list[V1BookLevel] | None = msgspec.field(default=None, name="as")
    snapshot_bids: list[V1BookLevel] | None = msgspec.field(default=None, name="bs")
    a: list[V1BookLevel] = []
    b: list[V1BookLevel] = []
    c: str | int | None = None


class V1Ticker(msgspec.Struct):
    """``a``/``b`` ``[price, wholeLotVolume, lotVolume]``, ``c`` ``[price, lotVolume]``, the rest
    ``[today, last 24 h]``. No time is sent."""

    a: tuple[str, Any, str]
    b: tuple[str, Any, str]
    c: tuple[str, str]
    v: tuple[str, str]
    t: tuple[int, int]
    l: tuple[str, str]  # noqa: E741 (the wire name)
    h: tuple[str, str]
    o: tuple[str, str]


class V1Candle(msgspec.Struct, array_like=True, gc=False):
    """``[time, etime, open, high, low, close, vwap, volume, count]``; ``etime`` is the interval end."""

    time: str
    etime: str
    open: str
    high: str
    low: str
    close: str
    vwap: str
    volume: str
    count: int


class V1Event(msgspec.Struct, rename="camel"):
    """``{"event": ...}``: heartbeat, pong, systemStatus, subscriptionStatus, error."""

    event: str
    status: str | None = None
    error_message: Any = None
    pair: Any = None


# ------------------------------------------------------------------------------- metadata


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """AssetPairs -> v1 ``wsname`` and v2 names -> BASE-QUOTE, e.g. "XBT/USD" and "BTC/USD" -> "BTC-USD"
    (both names of the pair ``XXBTZUSD``). Pairs without a ``wsname`` (the dark-pool ``.d`` pairs,
    not on the websocket) and unreadable entries are skipped."""
    info = json_object(body, "kraken AssetPairs response")
    if info.get("error"):
        raise ParseError(f"kraken AssetPairs error: {info['error']}")
    result = info.get("result")
    if not isinstance(result, dict):
        raise ParseError(f"kraken AssetPairs response has no 'result' object: {str(info)[:200]}")
    found = Instruments()
    for key, pair in result.items():
        read_entries([(key, pair)], _pair, "kraken AssetPairs", found=found)
    return found


def _pair(entry: tuple[str, Any], found: Instruments) -> None:
    key, pair = entry
    wsname = pair.get("wsname")
    if not wsname:
        raise ParseError(f"{key}: no wsname (not traded on the websocket, e.g. a dark-pool '.d' pair)")
    base, slash, quote = wsname.partition("/")
    if not slash:
        raise ParseError(f"{key}: wsname {wsname!r} is not BASE/QUOTE")
    name = spot_name(asset(base), asset(quote))
    found.add(wsname, name, key)
    found.add(f"{asset(base)}/{asset(quote)}", name, key)
