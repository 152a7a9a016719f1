"""Gate.io v4 spot wire: endpoints, channel names, the currency_pairs reader and the msgspec structs
of every frame the websocket (``{"time","time_ms","channel","event","result"}`` pushes, subscribe
acks, ``spot.pong``, ``error`` replies) and the REST order_book snapshot send.

Shared by the connector (producers/connectors/gateio.py) and the parser (streams/parsers/gateio.py).
Decoders run with ``strict=False``: the price and size strings of books and trades arrive as numbers.
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketpipe.instruments import Instruments, read_entries, spot_name
from marketpipe.wire import ParseError, decode_json

WS_BASE = "wss://api.gateio.ws"
REST_BASE = "https://api.gateio.ws"
WS_PATH = "/ws/v4/"
INSTRUMENTS_PATH = "/api/v4/spot/currency_pairs"
ORDER_BOOK_PATH = "/api/v4/spot/order_book"

BOOK_CHANNEL = "spot.order_book_update"
TRADES_CHANNEL = "spot.trades"
TICKERS_CHANNEL = "spot.tickers"
CANDLES_CHANNEL = "spot.candlesticks"
PING_CHANNEL = "spot.ping"
PONG_CHANNEL = "spot.pong"
UPDATE = "update"
"""the event of every push"""
ACK_EVENTS = frozenset({"subscribe", "unsubscribe"})
INTERVALS = {
    "10s": "10s", "1m": "1m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "1h", "4h": "4h",
    "8h": "8h", "1d": "1d", "7d": "7d", "30d": "1M",
}  # fmt: skip
"""Gate.io candlestick intervals -> marketpipe's spelling (``30d`` is the calendar month)"""


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """currency_pairs (a list) or currency_pairs/{pair} (one object) -> {"BTC_USDT": "BTC-USDT"}
    from the ``base``/``quote`` fields (an entry without them is skipped)."""
    found = decode_json(body)
    if isinstance(found, dict):
        if "label" in found:  # {"label":"INVALID_CURRENCY_PAIR","message":...}
            raise ParseError(f"gateio currency_pairs error {found['label']}: {found.get('message')!r}")
        found = [found]
    elif not isinstance(found, list):
        raise ParseError("gateio currency_pairs response is neither a list nor an object")
    return read_entries(found, _pair, "gateio currency_pairs", ("id",))


def _pair(row: dict[str, Any], found: Instruments) -> None:
    found.add(row["id"], spot_name(row["base"], row["quote"]))


def create_time_ms_to_us(text: str) -> int:
    """``"1619093543708.2642"`` (milliseconds with a decimal fraction, as text) -> µs."""
    millis, _, fraction = text.partition(".")
    return int(millis) * 1000 + (int((fraction + "000")[:3]) if fraction else 0)


# ------------------------------------------------------------------------------ websocket


class Frame(msgspec.Struct, gc=False):
    """Every websocket frame; ``result`` is decoded by the channel's struct (pushes) or read as
    JSON (acks: ``{"status":"success"}``)."""

    channel: Any = None
    event: Any = None
    """``channel`` and ``event`` are compared, not typed: an unknown one is unsupported"""
    result: msgspec.Raw = msgspec.Raw()
    error: Any = None
    time: Any = None
    """seconds, read only when ``time_ms`` is absent"""
    time_ms: Any = None
    """absent on the 2021 frames; read only by tickers and candles"""


class BookUpdate(msgspec.Struct, gc=False):
    """``spot.order_book_update``: sizes are absolute, ``"0"`` deletes the level."""

    t: int
    s: str
    U: int
    u: int
    b: list[tuple[float, float]]
    a: list[tuple[float, float]]


class Trade(msgspec.Struct, gc=False):
    """``spot.trades``: ``side`` is the taker's, ``create_time_ms`` milliseconds as decimal text."""

    id: int | str
    create_time_ms: str
    side: Any
    """unknown or absent values are an unknown side"""
    currency_pair: str
    amount: float
    price: float


Number = str | float | None
"""a field as sent: text, a JSON number, empty or absent"""


class Ticker(msgspec.Struct, gc=False):
    """``spot.tickers``: best bid/ask prices (no sizes), 24 h high/low and base/quote volume."""

    currency_pair: str
    last: Number = None
    highest_bid: Number = None
    lowest_ask: Number = None
    high_24h: Number = None
    low_24h: Number = None
    base_volume: Number = None
    quote_volume: Number = None


class Candle(msgspec.Struct, gc=False):
    """``spot.candlesticks``: ``t`` start (s), ``v`` the QUOTE volume, ``a`` the base amount
    (absent on the 2021 frames), ``n`` = ``<interval>_<pair>``, ``w`` true once closed (may be
    missing; only a JSON ``true`` counts)."""

    n: str
    t: int
    o: str | float
    h: str | float
    l: str | float  # noqa: E741 - the wire name
    c: str | float
    v: str | float
    a: Number = None
    w: Any = None


# ----------------------------------------------------------------------------------- REST


class BookSnapshot(msgspec.Struct, gc=False):
    """``GET /api/v4/spot/order_book?...&with_id=true``: ``id`` only with ``with_id``."""

    id: int | msgspec.UnsetType = msgspec.UNSET
    update: int | None = None
    current: int | None = None
    bids: list[tuple[float, float]] | None = None
    asks: list[tuple[float, float]] | None = None


frames = msgspec.json.Decoder(Frame, strict=False)
book_updates = msgspec.json.Decoder(BookUpdate, strict=False)
trades = msgspec.json.Decoder(Trade, strict=False)
tickers = msgspec.json.Decoder(Ticker, strict=False)
candles = msgspec.json.Decoder(Candle, strict=False)
snapshots = msgspec.json.Decoder(BookSnapshot, strict=False)
