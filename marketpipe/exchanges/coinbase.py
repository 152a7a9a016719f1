"""Coinbase Advanced Trade wire: endpoints, channel names, the products reader and the msgspec
structs of every message the websocket sends (``{"channel","timestamp","sequence_num","events"}``).

Shared by the connector (producers/connectors/coinbase.py), the parser
(streams/parsers/coinbase.py) and the simulator.
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketpipe.instruments import Instruments, read_entries, spot_name
from marketpipe.records import Side
from marketpipe.wire import ParseError, decode_json

WS_BASE = "wss://advanced-trade-ws.coinbase.com"
REST_BASE = "https://api.coinbase.com"
INSTRUMENTS_PATH = "/api/v3/brokerage/market/products"
INSTRUMENTS_PATHS = (INSTRUMENTS_PATH, "/api/v3/brokerage/products", "/products")
"""Advanced Trade public and authenticated product lists, and the Exchange API's ``/products``"""
CHANNELS = ("heartbeats", "market_trades", "level2", "ticker", "candles")
"""subscribed one channel per message; ``level2`` answers on ``l2_data``"""
BOOK_CHANNEL = "level2"
TAKER_SIDE: dict[str, Side] = {"BUY": "sell", "SELL": "buy"}
"""public ``market_trades`` report the maker's side"""
CANDLE_US = 300 * 1_000_000
"""the candles channel's only granularity: five minutes"""


class L2Update(msgspec.Struct):
    """One level of an ``l2_data`` event: ``side`` ``bid`` or ``offer``, absolute ``new_quantity``."""

    side: str
    price_level: str
    new_quantity: str
    event_time: str = ""


class MarketTrade(msgspec.Struct):
    product_id: str
    trade_id: str
    price: str
    size: str
    side: str
    time: str


class Ticker(msgspec.Struct):
    product_id: str
    price: str
    volume_24_h: str = ""
    low_24_h: str = ""
    high_24_h: str = ""
    best_bid: str = ""
    best_ask: str = ""
    best_bid_quantity: str = ""
    best_ask_quantity: str = ""


class Candle(msgspec.Struct):
    product_id: str
    start: str
    open: str
    high: str
    low: str
    close: str
    volume: str


class Event(msgspec.Struct):
    """One ``events[]`` element; which list is filled depends on the channel."""

    type: str = ""
    product_id: str = ""
    updates: list[L2Update] = []
    trades: list[MarketTrade] = []
    tickers: list[Ticker] = []
    candles: list[Candle] = []


class Message(msgspec.Struct):
    channel: str
    timestamp: str = ""
    sequence_num: int | None = None
    events: list[Event] = []


class ErrorMessage(msgspec.Struct):
    """``{"type":"error","message":...,"reason":...}``: a rejected request (no ``channel``)."""

    type: str
    message: Any = None
    reason: Any = ""


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """Products -> {"BTC-USD": "BTC-USD", ...} from the base/quote currency fields, in every form:
    Advanced Trade ``{"products": [...]}`` or one product (``product_id``, ``base_currency_id``,
    ``quote_currency_id``), the Exchange API list or one product (``id``, ``base_currency``,
    ``quote_currency``). Non-spot products (futures) are skipped: no normalised name yet."""
    found = decode_json(body)
    if isinstance(found, dict) and "products" in found:
        rows = found["products"]
    elif isinstance(found, dict) and ("product_id" in found or "id" in found):
        rows = [found]
    elif isinstance(found, list):
        rows = found
    else:
        raise ParseError(f"coinbase products response has no products: {str(found)[:200]}")
    if not isinstance(rows, list):
        raise ParseError("coinbase products response: products is not a list")
    return read_entries(rows, _product, "coinbase product", ("product_id", "id"))


def _product(row: dict[str, Any], found: Instruments) -> None:
    product_id = row["product_id"] if "product_id" in row else row["id"]
    kind = row.get("product_type") or "SPOT"
    if kind != "SPOT":
        raise ParseError(f"{kind} product: not normalised yet (derivatives)", "unnamed_instrument")
    if "product_id" in row:
        base, quote = row["base_currency_id"], row["quote_currency_id"]
    else:
        base, quote = row["base_currency"], row["quote_currency"]
    found.add(product_id, spot_name(base, quote))
