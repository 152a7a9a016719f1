"""MEXC spot v3 wire: endpoints, channel names, the exchangeInfo reader and the message schemas:
protobuf pushes (``PushDataV3ApiWrapper``, ``marketpipe/exchanges/mexc_pb``: our own ``.proto`` of
the fields we read) and the JSON control replies and REST depth snapshot.

Shared by the connector (producers/connectors/mexc.py), the parser (streams/parsers/mexc.py) and,
for the protobuf schema only, the simulator (simulator/mexc.py encodes its pushes with it).
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketpipe.exchanges.mexc_pb import PushDataV3ApiWrapper
from marketpipe.instruments import Instruments, read_entries, spot_name
from marketpipe.wire import ParseError, json_object

__all__ = [
    "CHANNELS",
    "DEPTH_PATH",
    "INSTRUMENTS_PATH",
    "INTERVALS",
    "REST_BASE",
    "STATS_CHANNELS",
    "WS_BASE",
    "WS_PATH",
    "ControlReply",
    "DepthSnapshot",
    "PushDataV3ApiWrapper",
    "parse_instruments",
]

WS_BASE = "wss://wbs-api.mexc.com"
REST_BASE = "https://api.mexc.com"
WS_PATH = "/ws"
INSTRUMENTS_PATH = "/api/v3/exchangeInfo"
DEPTH_PATH = "/api/v3/depth"
CHANNELS = ("spot@public.aggre.depth.v3.api.pb@100ms", "spot@public.aggre.deals.v3.api.pb@100ms")
"""subscribed as ``<channel>@<SYMBOL>``"""
STATS_CHANNELS = (
    "spot@public.kline.v3.api.pb@{symbol}@Min1",
    "spot@public.miniTicker.v3.api.pb@{symbol}@24H",
)
"""the symbol sits before the interval / time zone in these names"""
SUBSCRIBE = "SUBSCRIPTION"
PING = '{"method":"PING"}'
PONG = "PONG"
INTERVALS = {
    "Min1": "1m", "Min5": "5m", "Min15": "15m", "Min30": "30m", "Min60": "1h", "Hour4": "4h",
    "Hour8": "8h", "Day1": "1d", "Week1": "1w", "Month1": "1M",
}  # fmt: skip
"""MEXC kline intervals -> marketpipe's interval spelling"""


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """exchangeInfo -> {"BTCUSDT": "BTC-USDT", ...} from baseAsset/quoteAsset (an entry without
    them is skipped). Concatenated names are never split without metadata."""
    info = json_object(body, "mexc exchangeInfo response")
    if not isinstance(info.get("symbols"), list):
        raise ParseError(f"mexc exchangeInfo response has no 'symbols' list: {str(info)[:200]}")
    return read_entries(info["symbols"], _symbol, "mexc exchangeInfo")


def _symbol(row: dict[str, Any], found: Instruments) -> None:
    found.add(row["symbol"], spot_name(row["baseAsset"], row["quoteAsset"]))


class ControlReply(msgspec.Struct, gc=False):
    """A JSON text frame: ``{"id":0,"code":0,"msg":"<channel>"}`` subscription replies and the
    ``PONG`` reply; a JSON push with ``channel`` and no ``msg`` is the pre-protobuf format."""

    code: Any = 0
    msg: Any = msgspec.UNSET
    channel: Any = msgspec.UNSET


class DepthSnapshot(msgspec.Struct, gc=False):
    """``GET /api/v3/depth`` (decoded with ``strict=False``: price and size strings as numbers)."""

    lastUpdateId: int | msgspec.UnsetType = msgspec.UNSET
    bids: list[tuple[float, float]] | None = None
    asks: list[tuple[float, float]] | None = None


control_replies = msgspec.json.Decoder(ControlReply)
depth_snapshots = msgspec.json.Decoder(DepthSnapshot, strict=False)
