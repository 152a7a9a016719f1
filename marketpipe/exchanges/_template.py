"""Template of an exchange's wire module: copy to ``marketpipe/exchanges/<module>.py``.

The exchange's protocol facts, shared by its connector, its parser and (structs only) its
simulator dialect. It defines:

- the REST paths and websocket channel names both sides use;
- ``parse_instruments(body, path) -> Instruments``: the instrument list read entry by entry
  (``read_entries`` skips an unreadable entry with its reason), names built from metadata
  (``marketpipe.instruments``), never from the wire name;
- one msgspec ``Struct`` per message the exchange sends, and a reused ``msgspec.json.Decoder``.

It imports only marketpipe core and third-party packages (tests/test_import_rules.py). Not
registered: ``tests/test_registry.py`` registers a copy to check that a row plus the four
modules is all an exchange needs.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from marketpipe.instruments import Instruments, read_entries, spot_name
from marketpipe.wire import ParseError, json_object

WS_PATH = "/ws"
INSTRUMENTS_PATH = "/api/v1/symbols"
TRADES_CHANNEL = "trades"


class Listed(msgspec.Struct):
    """One entry of the instrument list."""

    symbol: str
    base: str
    quote: str


class TradeMessage(msgspec.Struct, tag_field="type", tag="trade"):
    symbol: str
    id: str
    price: str
    size: str
    side: Literal["buy", "sell"]
    ts_ms: int


class Subscribed(msgspec.Struct, tag_field="type", tag="subscribed"):
    channel: str


Message = TradeMessage | Subscribed
MESSAGES = msgspec.json.Decoder(Message)
"""every frame the exchange sends (an undocumented one fails to decode: a dead letter)"""


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """``{"symbols": [{"symbol", "base", "quote"}, ...]}`` -> {"BTCUSDT": "BTC-USDT", ...}."""
    listing = json_object(body, "template instrument list")
    if not isinstance(listing.get("symbols"), list):
        raise ParseError(f"template instrument list has no 'symbols' list: {str(listing)[:200]}")
    return read_entries(listing["symbols"], _entry, "template symbols")


def _entry(row: dict[str, Any], found: Instruments) -> None:
    listed = msgspec.convert(row, Listed)  # a ValidationError skips this entry only
    found.add(listed.symbol, spot_name(listed.base, listed.quote))
