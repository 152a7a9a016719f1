"""Binance spot wire: endpoints, stream names, the exchangeInfo reader and the msgspec structs of
every message the combined streams (``{"stream","data"}``) and the REST depth snapshot send.

Shared by the connector (producers/connectors/binance.py), the parser (streams/parsers/binance.py)
and the simulator; Binance USDⓈ-M futures (``binance_futures``) reuses the event structs it has in
common with spot.
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketpipe.instruments import Instruments, read_entries, spot_name
from marketpipe.wire import ParseError, json_object

WS_BASE = "wss://stream.binance.com:9443"
REST_BASE = "https://api.binance.com"
COMBINED_STREAM_PATH = "/stream"
INSTRUMENTS_PATH = "/api/v3/exchangeInfo"
DEPTH_PATH = "/api/v3/depth"
STREAMS = ("trade", "depth@100ms", "ticker", "kline_1m")
"""the per-symbol streams subscribed as ``<symbol>@<stream>`` (``producers.binance.streams``
chooses a subset)"""
BOOK_STREAM = "depth@100ms"
"""the stream the book is synced from (with REST snapshots)"""
BOOK_TICKER_MARK = b'@bookTicker"'
"""the end of a bookTicker frame's stream name (it comes first in the frame)"""
SUBSCRIBE = "SUBSCRIBE"
SERVER_SHUTDOWN = "serverShutdown"
"""the event a server sends before it closes its connections for maintenance"""
KLINE_INTERVALS = frozenset(
    ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
)
"""Binance's kline intervals are spelled as marketpipe spells them"""


# ------------------------------------------------------------------- stream events (``data``)


class DepthUpdate(msgspec.Struct, tag_field="e", tag="depthUpdate"):
    """``<symbol>@depth@100ms``: a diff of absolute level sizes (decoded with ``strict=False``,
    so the price and size strings arrive as numbers)."""

    E: int
    s: str
    U: int
    u: int
    b: list[tuple[float, float]]
    a: list[tuple[float, float]]


class AggTrade(msgspec.Struct, tag_field="e", tag="aggTrade"):
    """``<symbol>@aggTrade``: ``a`` the aggregate trade id, ``m`` true when the buyer is the maker."""

    s: str
    a: int
    p: str
    q: str
    T: int
    m: bool
    E: int = 0


class Trade(msgspec.Struct, tag_field="e", tag="trade"):
    """``<symbol>@trade``: ``t`` the trade id, ``m`` true when the buyer is the maker."""

    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    E: int = 0


class Ticker24h(msgspec.Struct, tag_field="e", tag="24hrTicker"):
    """``<symbol>@ticker`` and the items of ``!ticker@arr``: rolling 24 h statistics."""

    E: int
    s: str
    c: str
    o: str
    h: str
    l: str  # noqa: E741 - the wire name
    v: str
    q: str
    n: int
    Q: str = ""
    b: str = ""
    B: str = ""
    a: str = ""
    A: str = ""


class Kline(msgspec.Struct):
    """The ``k`` object of a kline event; ``T`` is the window's last millisecond, ``x`` whether it
    closed (checked, not typed: a wrong flag is a reason of its own)."""

    s: str
    i: str
    t: int
    T: int
    o: str
    h: str
    l: str  # noqa: E741 - the wire name
    c: str
    v: str
    q: str
    n: int
    f: int
    L: int
    x: Any


class KlineEvent(msgspec.Struct, tag_field="e", tag="kline"):
    E: int
    k: Kline
    s: str = ""


class ServerShutdown(msgspec.Struct, tag_field="e", tag=SERVER_SHUTDOWN):
    E: int | None = None


class BookTicker(msgspec.Struct):
    """``<symbol>@bookTicker`` on spot: no event name, ``u`` the book update id."""

    u: int
    s: str
    b: str
    B: str
    a: str
    A: str


SpotEvent = DepthUpdate | AggTrade | Trade | Ticker24h | KlineEvent | ServerShutdown
"""the spot events that name themselves in ``e`` (bookTicker does not)"""
EVENTS: dict[str, type[SpotEvent]] = {
    "depthUpdate": DepthUpdate,
    "aggTrade": AggTrade,
    "trade": Trade,
    "24hrTicker": Ticker24h,
    "kline": KlineEvent,
    SERVER_SHUTDOWN: ServerShutdown,
}


# ----------------------------------------------------------------------------- envelopes


class BookTickerFrame(msgspec.Struct):
    """``<symbol>@bookTicker``: told apart by its stream name, as its event has no ``e``."""

    stream: str
    data: BookTicker


class CombinedFrame(msgspec.Struct):
    """What every combined-stream frame may carry besides its ``data``: control frames (acks,
    errors, a top-level ``serverShutdown``) have no ``data``. Spot and futures add their own."""

    stream: Any = ""
    result: Any = msgspec.UNSET
    id: Any = msgspec.UNSET
    e: Any = None
    error: Any = msgspec.UNSET
    code: Any = msgspec.UNSET


class StreamFrame(CombinedFrame):
    """A combined-stream frame with a typed event (or the ``!ticker@arr`` list)."""

    data: SpotEvent | list[Ticker24h] | None = None


# ---------------------------------------------------------------------------------- REST


class DepthSnapshot(msgspec.Struct):
    """``GET /api/v3/depth`` (decoded with ``strict=False``: price and size strings as numbers)."""

    lastUpdateId: int
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """exchangeInfo -> {"BTCUSDT": "BTC-USDT", ...} from baseAsset/quoteAsset (an entry without
    them is skipped). Concatenated names are never split without metadata."""
    info = json_object(body, "binance exchangeInfo response")
    if not isinstance(info.get("symbols"), list):
        raise ParseError(f"binance exchangeInfo response has no 'symbols' list: {str(info)[:200]}")
    return read_entries(info["symbols"], _entry, "binance exchangeInfo")


def _entry(row: dict[str, Any], found: Instruments) -> None:
    found.add(row["symbol"], spot_name(row["baseAsset"], row["quoteAsset"]))
