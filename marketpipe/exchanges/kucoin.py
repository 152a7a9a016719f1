"""KuCoin classic spot wire: endpoints, topic names, the symbols reader and the msgspec structs of
every frame the websocket (``{"type":"message","topic","subject","data"}`` pushes and the
``welcome``/``ack``/``pong``/``notice``/``error`` control frames) and the level2 REST snapshot send.

Shared by the connector (producers/connectors/kucoin.py) and the parser (streams/parsers/kucoin.py).
Decoders run with ``strict=False``: the price and size strings arrive as numbers.
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketpipe.instruments import Instruments, read_entries, spot_name
from marketpipe.wire import ParseError, json_object

WS_BASE = "wss://ws-api-spot.kucoin.com"
"""informational: bullet-public names the endpoint"""
REST_BASE = "https://api.kucoin.com"
TOKEN_PATH = "/api/v1/bullet-public"
INSTRUMENTS_PATH = "/api/v2/symbols"
INSTRUMENTS_PATHS = (INSTRUMENTS_PATH, "/api/v1/symbols")
SNAPSHOT_PATH = "/api/v1/market/orderbook/level2_100"
OK = "200000"
"""the ``code`` of a successful REST answer"""

BOOK_TOPIC = "/market/level2"
TRADE_TOPIC = "/market/match"
TICKER_TOPICS = ("/market/ticker", "/market/snapshot")
"""best bid/ask + last trade, 24 h stats"""
ALL_TICKERS_TOPIC = "/market/ticker:all"
"""names the symbol in the subject instead of the topic"""
CANDLE_TOPIC = "/market/candles"
CANDLE_TYPES = {
    "1min": "1m", "3min": "3m", "5min": "5m", "15min": "15m", "30min": "30m", "1hour": "1h",
    "2hour": "2h", "4hour": "4h", "6hour": "6h", "8hour": "8h", "12hour": "12h", "1day": "1d",
    "1week": "1w", "1month": "1M",
}  # fmt: skip
"""KuCoin candle types -> marketpipe's interval spelling"""

L2_UPDATE = "trade.l2update"
MATCH = "trade.l3match"
TICKER = "trade.ticker"
SNAPSHOT = "trade.snapshot"
CANDLES = ("trade.candles.add", "trade.candles.update")
CONTROL_ACKS = frozenset({"welcome", "ack"})


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """``/api/v2/symbols`` or ``/api/v1/symbols`` (a list), ``/api/v2/symbols/{symbol}`` (one
    object) -> {"BTC-USDT": "BTC-USDT", ...} from baseCurrency/quoteCurrency (both versions carry
    them; an entry without them is skipped)."""
    info = json_object(body, "kucoin symbols response")
    if info.get("code") != OK:
        raise ParseError(f"kucoin symbols error {info.get('code')}: {info.get('msg')!r}")
    data = info["data"]
    rows = [data] if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ParseError(f"kucoin symbols response data is {type(data).__name__}, not a list or object")
    return read_entries(rows, _symbol, "kucoin symbols")


def _symbol(row: dict[str, Any], found: Instruments) -> None:
    found.add(row["symbol"], spot_name(row["baseCurrency"], row["quoteCurrency"]))


# ------------------------------------------------------------------------------ websocket


class Frame(msgspec.Struct, gc=False):
    """Every websocket frame: a push (``type`` message) or a control frame; ``data`` is decoded
    by the subject's struct. ``type``, ``topic`` and ``subject`` are compared, not typed: a frame
    naming no known kind is unsupported, and a topic only the ticker and candles read."""

    type: Any = None
    topic: Any = msgspec.UNSET
    subject: Any = None
    data: msgspec.Raw = msgspec.Raw()
    code: Any = None

    def topic_or(self, default: Any) -> Any:
        return default if self.topic is msgspec.UNSET else self.topic


Change = tuple[float, float, int]
"""``[price, size, sequence]``; ``["0","0",seq]`` only advances the sequence"""


class Changes(msgspec.Struct, gc=False):
    bids: list[Change]
    asks: list[Change]


class L2Update(msgspec.Struct, gc=False):
    """``/market/level2``: ``time`` (ms) is absent on the 2021 frames."""

    changes: Changes
    sequenceStart: int
    sequenceEnd: int
    symbol: str
    time: int | None = None


class Match(msgspec.Struct, gc=False):
    """``/market/match``: ``side`` is the taker's, ``time`` in nanoseconds."""

    symbol: str
    side: Any
    """unknown or absent values are an unknown side"""
    price: float
    size: float
    time: int
    tradeId: str | int


Number = str | float | None
"""a ticker field as sent: text, a JSON number, empty or absent"""


class BboTicker(msgspec.Struct, gc=False):
    """``/market/ticker``: the last trade and the best bid/ask, ``time`` in ms."""

    time: int
    price: Number = None
    size: Number = None
    bestBid: Number = None
    bestBidSize: Number = None
    bestAsk: Number = None
    bestAskSize: Number = None


class DayStats(msgspec.Struct, gc=False):
    """The inner ``data`` of ``/market/snapshot``: 24 h stats as JSON numbers, ``datetime`` in ms."""

    symbol: str
    datetime: int
    lastTradedPrice: Number | msgspec.UnsetType = msgspec.UNSET
    """the last price when present (null included), else ``close``"""
    close: Number = None
    open: Number = None
    high: Number = None
    low: Number = None
    vol: Number = None
    volValue: Number = None


class DaySnapshot(msgspec.Struct, gc=False):
    data: DayStats


class Candle(msgspec.Struct, gc=False):
    """``/market/candles:<symbol>_<type>``: ``candles`` is ``[start s, open, close, high, low,
    volume, turnover]`` (close before high), ``time`` in nanoseconds."""

    symbol: str
    candles: list[float]
    time: int


# ----------------------------------------------------------------------------------- REST


class BookSnapshot(msgspec.Struct, gc=False):
    """The ``data`` of ``GET /api/v1/market/orderbook/level2_100``; ``time`` (ms) may be absent."""

    sequence: int | None = None
    bids: list[tuple[float, float]] | None = None
    asks: list[tuple[float, float]] | None = None
    time: int | None = None


class SnapshotAnswer(msgspec.Struct, gc=False):
    code: Any = None
    msg: Any = None
    data: BookSnapshot | None = None


frames = msgspec.json.Decoder(Frame)
l2_updates = msgspec.json.Decoder(L2Update, strict=False)
matches = msgspec.json.Decoder(Match, strict=False)
bbo_tickers = msgspec.json.Decoder(BboTicker, strict=False)
day_snapshots = msgspec.json.Decoder(DaySnapshot, strict=False)
candles = msgspec.json.Decoder(Candle, strict=False)
snapshots = msgspec.json.Decoder(SnapshotAnswer, strict=False)
