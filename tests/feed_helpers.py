"""Drive a FeedProcessor with raw records the way a connector would write them."""

from __future__ import annotations

import json
from typing import Any

from marketpipe.raw import Kind, RawRecord
from streams.feed import ClockWindow, FeedOutput, FeedProcessor
from streams.parsers import processor_for

BASE_NS = 1_786_000_000_000_000_000
SAMPLE_CLOCK = ClockWindow(ahead_s=100 * 365 * 86_400.0, behind_s=100 * 365 * 86_400.0)
"""The sample frames were recorded between 2020 and 2026 (some tests use tiny times) while
``Feed`` stamps them with receive times from ``BASE_NS``: tests of parsing accept any exchange
time; the clock-window tests pass ``clock=ClockWindow()`` and realistic receive times."""

# Instrument-metadata responses in the real shapes (trimmed to the fields that matter).
BINANCE_INFO_URL = "https://api.binance.com/api/v3/exchangeInfo?symbols=%5B%22NKNUSDT%22%2C%22LRCBTC%22%5D"
COINBASE_PRODUCTS_URL = (
    "https://api.coinbase.com/api/v3/brokerage/market/products?product_ids=BTC-USD&product_ids=ETH-USD"
)
KRAKEN_PAIRS_URL = "https://api.kraken.com/0/public/AssetPairs?pair=XMRUSD,GRTETH,ETHUSD,XBTUSD"
BYBIT_INFO_URL = "https://api.bybit.com/v5/market/instruments-info?category=spot&symbol=BTCUSDT"
OKX_INSTRUMENTS_URL = "https://www.okx.com/api/v5/public/instruments?instType=SPOT&instId=BTC-USDT"


def binance_info(*pairs: tuple[str, str, str]) -> str:
    symbols = [
        {
            "symbol": s,
            "status": "TRADING",
            "baseAsset": b,
            "baseAssetPrecision": 8,
            "quoteAsset": q,
            "quotePrecision": 8,
        }
        for s, b, q in pairs
    ]
    return json.dumps({"timezone": "UTC", "serverTime": 1633998511000, "rateLimits": [], "symbols": symbols})


def coinbase_products(*pairs: tuple[str, str, str]) -> str:
    products = [
        {"product_id": p, "price": "1", "base_currency_id": b, "quote_currency_id": q, "status": "online"}
        for p, b, q in pairs
    ]
    return json.dumps({"products": products, "num_products": len(products)})


def kraken_pairs(*pairs: tuple[str, str, str, str, str]) -> str:
    result = {
        key: {
            "altname": key,
            "wsname": wsname,
            "base": base,
            "quote": quote,
            "pair_decimals": 2,
            "lot_decimals": 8,
        }
        for key, wsname, base, quote, _ in pairs
    }
    return json.dumps({"error": [], "result": result})


def bybit_instruments(*pairs: tuple[str, str, str]) -> str:
    rows = [{"symbol": s, "baseCoin": b, "quoteCoin": q, "status": "Trading"} for s, b, q in pairs]
    return json.dumps({"retCode": 0, "retMsg": "OK", "result": {"category": "spot", "list": rows}, "time": 1})


def okx_instruments(*pairs: tuple[str, str, str]) -> str:
    rows = [
        {"instId": i, "baseCcy": b, "quoteCcy": q, "state": "live", "instType": "SPOT"} for i, b, q in pairs
    ]
    return json.dumps({"code": "0", "msg": "", "data": rows})


class Feed:
    """One connection of one exchange: each call feeds one raw record and returns its output."""

    def __init__(
        self,
        exchange: str,
        conn: str | None = None,
        processor: FeedProcessor | None = None,
        *,
        clock: ClockWindow = SAMPLE_CLOCK,
        base_ns: int = BASE_NS,
    ) -> None:
        self.exchange = exchange
        self.conn = conn or f"{exchange}.t1.0"
        self.proc = processor or processor_for(exchange, clock)
        self.seq = 0
        self.base_ns = base_ns
        self.records: list[RawRecord] = []

    def record(self, kind: Kind, data: str | bytes | None, url: str | None = None) -> RawRecord:
        raw = RawRecord(
            self.exchange, self.conn, self.seq, kind, self.base_ns + self.seq * 1_000_000, data, url
        )
        self.seq += 1
        self.records.append(raw)
        return raw

    def feed(self, kind: Kind, data: str | bytes | None, url: str | None = None) -> FeedOutput:
        out = FeedOutput()
        self.proc.process(self.record(kind, data, url), out)
        return out

    def open(self, url: str, symbols: list[str]) -> FeedOutput:
        return self.feed("open", json.dumps({"symbols": symbols}), url)

    def rest(self, url: str, body: str) -> FeedOutput:
        return self.feed("rest", body, url)

    def recv(self, frame: str | bytes) -> FeedOutput:
        return self.feed("recv", frame)

    def recv_all(self, frames: list[str]) -> FeedOutput:
        out = FeedOutput()
        for frame in frames:
            self.proc.process(self.record("recv", frame), out)
        return out

    def close(self, code: int = 1006, reason: str = "") -> FeedOutput:
        return self.feed("close", json.dumps({"code": code, "reason": reason}))

    def recv_us(self, index: int) -> int:
        """recv_ts (µs) of the index-th record fed."""
        return self.records[index].recv_ns // 1000


def empty(out: FeedOutput) -> bool:
    return not (out.trades or out.books or out.bbos or out.status or out.control or out.errors)


def published(out: FeedOutput) -> bool:
    return bool(out.books or out.bbos)


def patched(frame: str, **changes: Any) -> str:
    """The frame with top-level keys replaced (for constructed variants of real frames)."""
    msg = json.loads(frame)
    msg.update(changes)
    return json.dumps(msg)
