"""HTX (Huobi) spot wire: endpoints, topic names, the symbols reader and the msgspec structs of
every frame the websocket sends (gzip-compressed JSON: ``{"ch","ts","tick"}`` pushes, ``rep``
request replies, ``subbed`` acks, ``{"ping":n}`` heartbeats, ``status: error`` replies).

Shared by the connector (producers/connectors/htx.py) and the parser (streams/parsers/htx.py).
Numbers are JSON doubles; decoders run with ``strict=False`` so numeric text reads as it did.
"""

from __future__ import annotations

import zlib
from typing import Any, Generic, TypeVar

import msgspec

from marketpipe.instruments import Instruments, read_entries, spot_name
from marketpipe.wire import ParseError, json_object

WS_BASE = "wss://api.huobi.pro"
REST_BASE = "https://api.huobi.pro"
WS_PATH = "/feed"
"""HTX's endpoint for ``market.<sym>.mbp.<levels>`` (it carries the other topics too)"""
INSTRUMENTS_PATH = "/v2/settings/common/symbols"
INSTRUMENTS_PATHS = (
    INSTRUMENTS_PATH,
    "/v1/settings/common/symbols",
    "/v1/settings/common/market-symbols",
    "/v1/common/symbols",
)
"""the v2 and v1 symbol settings (``sc``/``symbol``, ``bc``, ``qc``) and the older
``/v1/common/symbols`` (``symbol``, ``base-currency``, ``quote-currency``)"""
MBP_LEVELS = (5, 20, 150, 400)
"""the depths ``market.<sym>.mbp.<levels>`` is offered in"""
TRADE_TOPIC = "trade.detail"
TICKER_TOPICS = ("ticker", "detail")
KLINE_TOPIC = "kline"
PERIODS = {
    "1min": "1m", "5min": "5m", "15min": "15m", "30min": "30m", "60min": "1h", "4hour": "4h",
    "1day": "1d", "1week": "1w", "1mon": "1M", "1year": "12M",
}  # fmt: skip
"""HTX kline periods -> marketpipe's interval spelling"""
GZIP_MAGIC = b"\x1f\x8b"
PING_PREFIX = b'{"ping":'


def channel(symbol: str, topic: str) -> str:
    """``market.<symbol>.<topic>``, the name pushes, subscribes and requests use."""
    return f"market.{symbol}.{topic}"


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """Any of ``INSTRUMENTS_PATHS`` -> {"btcusdt": "BTC-USDT", ...} from the base/quote currency
    (an entry without them is skipped)."""
    info = json_object(body, "htx symbols response")
    if info.get("status") != "ok" or not isinstance(info.get("data"), list):
        raise ParseError(f"htx symbols error: {str(info)[:200]}")
    return read_entries(info["data"], _symbol, "htx symbols", ("sc", "symbol"))


def _symbol(row: dict[str, Any], found: Instruments) -> None:
    symbol = row["sc"] if "sc" in row else row["symbol"]
    base = row["bc"] if "bc" in row else row["base-currency"]
    quote = row["qc"] if "qc" in row else row["quote-currency"]
    found.add(symbol, spot_name(base.upper(), quote.upper()))


def inflate(data: bytes | str | None) -> bytes | str | None:
    """A gzip frame as its JSON text; anything else is returned as is (decoded sample text)."""
    if isinstance(data, bytes) and data[:2] == GZIP_MAGIC:
        try:
            return zlib.decompress(data, 31)
        except zlib.error as exc:
            raise ParseError(f"htx frame is not valid gzip: {exc}") from None
    return data


# ------------------------------------------------------------------------------ websocket


class Frame(msgspec.Struct, gc=False):
    """Every websocket frame (inflated): a push names its channel in ``ch`` (then decoded whole
    as the topic's ``Push``); a request reply names it in ``rep`` and carries ``data``."""

    ch: Any = None
    ts: Any = msgspec.UNSET
    tick: msgspec.Raw = msgspec.Raw()
    ping: Any = msgspec.UNSET
    rep: str | msgspec.UnsetType = msgspec.UNSET
    data: msgspec.Raw = msgspec.Raw()
    status: Any = None
    subbed: Any = msgspec.UNSET
    unsubbed: Any = msgspec.UNSET
    err_code: Any = msgspec.field(default=None, name="err-code")
    err_msg: Any = msgspec.field(default=None, name="err-msg")


Tick = TypeVar("Tick")


class Push(msgspec.Struct, Generic[Tick], gc=False):
    """A push decoded whole with its topic's ``tick`` struct (the parser reads the channel first)."""

    ch: str
    tick: Tick
    ts: Any = msgspec.UNSET
    """ms; read only by the pushes that use it (trades carry their own)"""


class Trade(msgspec.Struct, gc=False):
    """An item of ``trade.detail``'s ``tick.data``: ``direction`` is the taker side, ``ts`` in ms;
    ``tradeId`` names the trade, else the (older, very long) ``id``."""

    id: Any
    """required, read only without ``tradeId``"""
    price: float
    amount: float
    direction: Any
    """unknown values are an unknown side"""
    ts: int
    tradeId: int | str | msgspec.UnsetType = msgspec.UNSET


class Trades(msgspec.Struct, gc=False):
    data: list[Trade]


Level = tuple[float, float]


class MbpUpdate(msgspec.Struct, gc=False):
    """``mbp.<levels>``: the update covers ``prevSeqNum+1..seqNum``; size 0 deletes."""

    seqNum: int
    prevSeqNum: int
    bids: list[Level] | None = None
    asks: list[Level] | None = None


class MbpSnapshot(msgspec.Struct, gc=False):
    """The ``data`` of the ``{"req":"market.<sym>.mbp.<levels>"}`` reply."""

    seqNum: int
    bids: list[Level]
    asks: list[Level]


class FullBook(msgspec.Struct, gc=False):
    """``depth.step<n>``: a complete top-N book; a smaller ``version`` than the last is stale."""

    bids: list[Level]
    asks: list[Level]
    version: int | None = None


Number = str | float | None
"""a field as sent: a JSON number (text, empty or absent on odd frames)"""


class DayTicker(msgspec.Struct, gc=False):
    """``ticker`` (24 h stats, best bid/ask, last trade) and ``detail`` (the 24 h stats only):
    base ``amount``, quote ``vol``, the trade ``count``."""

    lastPrice: Number | msgspec.UnsetType = msgspec.UNSET
    """the last price when present (null included), else ``close``"""
    close: Number = None
    lastSize: Number = None
    bid: Number = None
    bidSize: Number = None
    ask: Number = None
    askSize: Number = None
    open: Number = None
    high: Number = None
    low: Number = None
    amount: Number = None
    vol: Number = None
    count: Any = None
    """checked, not typed: a non-integer count is a reason of its own"""


class Kline(msgspec.Struct, gc=False):
    """``kline.<period>``: ``id`` the window start (s), base ``amount``, quote ``vol``; no final flag."""

    id: int
    open: str | float
    high: str | float
    low: str | float
    close: str | float
    amount: Number = None
    vol: Number = None
    count: Any = None


frames = msgspec.json.Decoder(Frame, strict=False)
trades = msgspec.json.Decoder(Push[Trades], strict=False)
mbp_updates = msgspec.json.Decoder(Push[MbpUpdate], strict=False)
full_books = msgspec.json.Decoder(Push[FullBook], strict=False)
day_tickers = msgspec.json.Decoder(Push[DayTicker], strict=False)
klines = msgspec.json.Decoder(Push[Kline], strict=False)
mbp_snapshots = msgspec.json.Decoder(MbpSnapshot, strict=False)
