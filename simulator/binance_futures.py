"""Binance USDⓈ-M futures (``binance-futures``): the spot dialect's combined streams and SUBSCRIBE
grammar (simulator/binance.py) on fstream's two routed paths, ``/public/stream`` (diff depth,
partial depth, bookTicker, trade) and ``/market/stream`` (aggTrade, markPrice[@1s], forceOrder,
ticker, kline_1m). A stream subscribed on the other path is acknowledged and never pushes, as
on fstream.

- Diff depth carries ``U``/``u``/``pu`` and ``T``. Update ids are not contiguous per symbol
  (``U == pu + 2``), as on real futures books: only the ``pu`` chain connects them, and the REST
  snapshot's ``lastUpdateId`` is the ``u`` of the last event it contains. The ``gap`` fault
  drops one diff event, so the next one's ``pu`` breaks the chain.
- markPriceUpdate every 1 s (``@markPrice@1s``) or 3 s: the mark is the book's mid, the index
  drifts a few ticks around it, ``r`` follows their premium and ``T`` is the next 8-hourly
  funding time; dated contracts send ``r`` ``"0.00000000"`` and ``T`` 0.
- forceOrder: every ``LIQUIDATION_EVERY_MS`` per symbol the latest liquidation, alternately of
  a long (SELL) and a short (BUY); every fourth order expired unfilled (``X`` EXPIRED).
- Protocol pings and the pong timeout as on the spot dialect (``binance_ping_interval_s``,
  ``binance_pong_timeout_s``; fstream itself pings every 3 minutes and waits 10 for the pong).
- REST: ``/fapi/v1/exchangeInfo`` (the futures shape: contractType, deliveryDate, marginAsset),
  ``/fapi/v1/depth`` (with ``E``/``T``) and ``/fapi/v1/openInterest`` (a value that moves with
  the market's steps).

Listing: ``BASE-QUOTE`` and ``BASE-QUOTE-PERP`` names list the pair's perpetual (``BTCUSDT``),
``BASE-QUOTE-YYYYMMDD`` a quarterly contract delivering that day at 08:00 UTC
(``BTCUSDT_261225``); inverse, quanto and option names are not USDⓈ-M and are left out.
"""

from __future__ import annotations

import dataclasses
import re
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from aiohttp import web

from simulator.base import Decimals, Feed, Session, SimConfig, SubKey, Venue, dumps
from simulator.binance import BinanceDialect
from simulator.kline_frames import StatsTexts
from simulator.klines import MarketStats
from simulator.market import Step, SymbolMarket, SymbolSpec, Trade

EXCHANGE = "binance-futures"
PERPETUAL_DELIVERY_MS = 4133404800000  # 2100-12-25, what fapi sends for perpetuals
FUNDING_PERIOD_MS = 8 * 3600 * 1000
LIQUIDATION_EVERY_MS = 2000
_STREAM = re.compile(
    r"^([a-z0-9_]+)@(aggTrade|trade|depth|depth@100ms|depth@500ms|depth(?:5|10|20)(?:@100ms|@500ms)?|"
    r"bookTicker|ticker|kline_1m|markPrice|markPrice@1s|forceOrder)$"
)
_NAME = re.compile(r"^([A-Z0-9]+)-([A-Z0-9]+)(?:-(PERP|\d{8}))?$")
_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)


@dataclasses.dataclass(frozen=True, slots=True)
class Contract:
    name: str  # the normalised name marketpipe gives it (the feed's market key)
    wire: str
    base: str
    quote: str
    contract_type: str
    delivery_ms: int

    @property
    def perpetual(self) -> bool:
        return self.contract_type == "PERPETUAL"


def contract_of(name: str) -> Contract | None:
    """The USDⓈ-M contract a listed name stands for (None: not a USDⓈ-M name)."""
    match = _NAME.match(name)
    if match is None:
        return None
    base, quote, suffix = match.groups()
    if suffix is None or suffix == "PERP":
        return Contract(f"{base}-{quote}-PERP", base + quote, base, quote, "PERPETUAL", PERPETUAL_DELIVERY_MS)
    delivery = datetime.strptime(suffix, "%Y%m%d").replace(hour=8, tzinfo=UTC)
    wire = f"{base}{quote}_{suffix[2:]}"
    return Contract(
        f"{base}-{quote}-{suffix}", wire, base, quote, "CURRENT_QUARTER", int(delivery.timestamp() * 1000)
    )


def futures_feed(config: SimConfig) -> tuple[Feed, dict[str, Contract]]:
    """One feed whose markets are the listed contracts, keyed by their normalised names."""
    contracts = {c.name: c for c in map(contract_of, config.listed(EXCHANGE)) if c is not None}
    feed = Feed(EXCHANGE, "usdm", (), config)
    params = config.market_params()
    for name, contract in contracts.items():
        spec = dataclasses.replace(SymbolSpec.for_symbol(f"{contract.base}-{contract.quote}"), symbol=name)
        feed.markets[name] = SymbolMarket(spec, params, config.seed, EXCHANGE)
        feed.stats[name] = MarketStats(spec)
    return feed, contracts


def futures_ids(step_first: int, step_last: int) -> tuple[int, int, int]:
    """(U, u, pu) of a step's diff event: ids scaled by 2, so ``U == pu + 2``, never ``pu + 1``."""
    return 2 * step_first, 2 * step_last, 2 * (step_first - 1)


class FuturesPublicDialect(BinanceDialect):
    """``/public/stream``: books (diff and partial depth), bookTicker and raw trades."""

    exchange = EXCHANGE
    name = "binance-futures-public"
    path = "/public/stream"
    routed: ClassVar[frozenset[str]] = frozenset(
        {"depth", "depth@100ms", "depth@500ms", "bookTicker", "trade"}
        | {f"depth{n}{speed}" for n in (5, 10, 20) for speed in ("", "@100ms", "@500ms")}
    )

    def __init__(self, feed: Feed, contracts: dict[str, Contract]) -> None:
        super().__init__(feed)
        self.contracts = contracts
        self.native = {c.wire: name for name, c in contracts.items()}
        self.wire = {name: c.wire for name, c in contracts.items()}
        # fapi prints numbers at the contract's precision ("0.2463", "631")
        self.price = {
            s: Decimals(m.spec.price_decimals, m.spec.price_decimals) for s, m in feed.markets.items()
        }
        self.qty = {s: Decimals(m.spec.qty_decimals, m.spec.qty_decimals) for s, m in feed.markets.items()}
        self.texts = StatsTexts(feed, trim=False)  # klines and tickers at that precision too

    def _key(self, name: Any) -> SubKey | None:
        match = _STREAM.match(name) if isinstance(name, str) else None
        if match is None:
            return None
        wire = match.group(1).upper()
        return (match.group(2), self.native.get(wire, wire), 0)

    def subscribe(self, session: Session, key: SubKey) -> bool:
        """A stream of the other path is acknowledged but never registered (never pushes)."""
        return key[0] in self.routed and super().subscribe(session, key)

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        keys = {k[0]: k for k in self.subscribers if k[1] == symbol}
        if not keys:
            return
        ms = ts_ns // 1_000_000
        if step.book_changed:
            self._publish_depth(market, step, ms, keys)
        if "bookTicker" in keys:
            self._publish_bbo(market, keys["bookTicker"])
        if step.trades and "trade" in keys:
            for trade in step.trades:
                self._emit(keys["trade"], self._trade(symbol, trade, ms), "trade")

    def _publish_depth(self, market: SymbolMarket, step: Step, ms: int, keys: dict[str, SubKey]) -> None:
        symbol = market.spec.symbol
        first, last, previous = futures_ids(step.first_update_id, step.last_update_id)
        head = {
            "e": "depthUpdate",
            "E": ms,
            "T": ms,
            "s": self.wire[symbol],
            "U": first,
            "u": last,
            "pu": previous,
        }
        diff: str | None = None
        for channel, key in keys.items():
            if channel in ("depth", "depth@100ms", "depth@500ms"):
                if diff is None:
                    levels = {"b": self._levels(symbol, step.bids), "a": self._levels(symbol, step.asks)}
                    diff = dumps(head | levels)
                self._emit(key, diff, "book")
            elif channel.startswith("depth"):
                limit = int(channel[5:].split("@")[0])
                body = self.snapshot_body(market, limit)
                levels = {"b": body["bids"], "a": body["asks"]}
                self._emit(key, dumps(head | levels), "snapshot")

    def _trade(self, symbol: str, trade: Trade, ms: int) -> str:
        """The futures ``trade`` event: ``X`` the order type (MARKET here), no ``M``."""
        return dumps(
            {
                "e": "trade",
                "E": ms,
                "T": ms,
                "s": self.wire[symbol],
                "t": trade.trade_id,
                "p": self.price[symbol](trade.price),
                "q": self.qty[symbol](trade.qty),
                "X": "MARKET",
                "m": not trade.taker_buy,
            }
        )

    def snapshot_body(self, market: SymbolMarket, limit: int) -> dict[str, Any]:
        body = super().snapshot_body(market, limit)
        ms = int(time.time() * 1000)
        return {
            "lastUpdateId": 2 * market.update_id,
            "E": ms,
            "T": ms,
            "bids": body["bids"],
            "asks": body["asks"],
        }


class FuturesMarketDialect(FuturesPublicDialect):
    """``/market/stream``: aggTrade, mark price and funding, liquidations, 24 h ticker, klines."""

    name = "binance-futures-market"
    path = "/market/stream"
    faults = frozenset({"disconnect", "silent", "malformed"})
    routed = frozenset({"aggTrade", "markPrice", "markPrice@1s", "forceOrder", "ticker", "kline_1m"})
    mark_periods_ms: ClassVar[dict[str, int]] = {"markPrice@1s": 1000, "markPrice": 3000}

    def __init__(self, feed: Feed, contracts: dict[str, Contract]) -> None:
        super().__init__(feed, contracts)
        self.next_push: dict[tuple[str, str], int] = {}
        self.liquidations: dict[str, int] = {}
        self.mark_text = {
            s: Decimals(m.spec.price_decimals + 1, max(8, m.spec.price_decimals + 1))
            for s, m in feed.markets.items()
        }

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        keys = {k[0]: k for k in self.subscribers if k[1] == symbol}
        final = self.finals.due(symbol, self.feed.stats[symbol], ts_ns)
        if not keys:
            return
        ms = ts_ns // 1_000_000
        if step.trades and "aggTrade" in keys:
            for data in self._agg_trades(symbol, step.trades, ms):
                self._emit(keys["aggTrade"], data, "trade")
        self._publish_stats(market, step, ms, keys, final)
        for channel, period in self.mark_periods_ms.items():
            if channel in keys and self._due(channel, symbol, ms, period):
                self._emit(keys[channel], self._mark_price(market, ms), "ticker")
        if "forceOrder" in keys and self._due("forceOrder", symbol, ms, LIQUIDATION_EVERY_MS):
            self._emit(keys["forceOrder"], self._force_order(market, ms), "trade")

    def _due(self, channel: str, symbol: str, ms: int, period: int) -> bool:
        key = (channel, symbol)
        if ms < self.next_push.get(key, 0):
            return False
        self.next_push[key] = ms - ms % period + period
        return True

    def _agg_trades(self, symbol: str, trades: list[Trade], ms: int) -> list[str]:
        # the spot grouping; futures aggTrades have no "M" (best-match) flag
        return [text.replace(',"M":true', "") for text in super()._agg_trades(symbol, trades, ms)]

    def _ticker(self, market: SymbolMarket, ms: int) -> str | None:
        """The spot 24hrTicker without what the futures one lacks (bid/ask, previous close)."""
        text = super()._ticker(market, ms)
        if text is None:
            return None
        ticker = orjson.loads(text)
        for field in ("x", "b", "B", "a", "A"):
            del ticker[field]
        return dumps(ticker)

    def mark_and_index(self, market: SymbolMarket) -> tuple[int, int]:
        """(mark, index) in tenths of a tick: the mid, and the mid moved by -2..2 ticks."""
        mark = 5 * (market.bids.top(1)[0][0] + market.asks.top(1)[0][0])
        return mark, mark - 10 * ((market.steps // 25) % 5 - 2)

    def _mark_price(self, market: SymbolMarket, ms: int) -> str:
        symbol = market.spec.symbol
        contract = self.contracts[symbol]
        mark, index = self.mark_and_index(market)
        text = self.mark_text[symbol]
        if contract.perpetual:
            rate = max(-0.0075, min(0.0075, 0.0001 + (mark - index) / index))
            funding, next_funding = f"{rate:.8f}", ms - ms % FUNDING_PERIOD_MS + FUNDING_PERIOD_MS
        else:
            funding, next_funding = "0.00000000", 0
        return dumps(
            {
                "e": "markPriceUpdate",
                "E": ms,
                "s": contract.wire,
                "p": text(mark),
                "P": text(index),
                "i": text(index),
                "r": funding,
                "T": next_funding,
            }
        )

    def _force_order(self, market: SymbolMarket, ms: int) -> str:
        """A long (SELL) or short (BUY) liquidated at the touch; every fourth expired unfilled."""
        symbol = market.spec.symbol
        count = self.liquidations[symbol] = self.liquidations.get(symbol, 0) + 1
        sell = count % 2 == 1
        touch = market.bids.top(1)[0][0] if sell else market.asks.top(1)[0][0]
        limit = touch - 20 if sell else touch + 20
        qty = max(1, int(market.trade_lots)) * (1 + count % 3)
        filled = count % 4 != 0
        price, size = self.price[symbol], self.qty[symbol]
        order = {
            "s": self.wire[symbol],
            "S": "SELL" if sell else "BUY",
            "o": "LIMIT",
            "f": "IOC",
            "q": size(qty),
            "p": price(limit),
            "ap": price(touch) if filled else price(0),
            "X": "FILLED" if filled else "EXPIRED",
            "l": size(qty if filled else 0),
            "z": size(qty if filled else 0),
            "T": ms,
        }
        return dumps({"e": "forceOrder", "E": ms, "o": order})

    def open_interest(self, market: SymbolMarket) -> int:
        """Open contracts in lots: a base that moves with the market's steps."""
        base = int(market.level_lots * 400)
        return base + (market.steps * 7) % max(1, base // 10)


# -- REST -------------------------------------------------------------------------------------


def _error(code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "msg": message}, status=400, dumps=dumps)


def _symbol_info(dialect: FuturesPublicDialect, name: str) -> dict[str, Any]:
    contract, spec = dialect.contracts[name], dialect.feed.markets[name].spec
    price, qty = dialect.price[name], dialect.qty[name]
    return {
        "symbol": contract.wire,
        "pair": contract.base + contract.quote,
        "contractType": contract.contract_type,
        "deliveryDate": contract.delivery_ms,
        "onboardDate": 1569398400000,
        "status": "TRADING",
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": contract.base,
        "quoteAsset": contract.quote,
        "marginAsset": contract.quote,
        "pricePrecision": spec.price_decimals,
        "quantityPrecision": spec.qty_decimals,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "settlePlan": 0,
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": price(1), "maxPrice": "1000000", "tickSize": price(1)},
            {"filterType": "LOT_SIZE", "stepSize": qty(1), "maxQty": "1000", "minQty": qty(1)},
            {"filterType": "MARKET_LOT_SIZE", "stepSize": qty(1), "maxQty": "120", "minQty": qty(1)},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": "5"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
    }


def _rest(public: FuturesPublicDialect, market: FuturesMarketDialect) -> list[tuple[str, Any]]:
    def contract_of_query(request: web.Request) -> str | None:
        return public.native.get(request.query.get("symbol", ""))

    async def exchange_info(request: web.Request) -> web.Response:
        body = {
            "timezone": "UTC",
            "serverTime": int(time.time() * 1000),
            "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400}
            ],
            "exchangeFilters": [],
            "symbols": [_symbol_info(public, name) for name in public.contracts],
        }
        return web.json_response(body, dumps=dumps)

    async def depth(request: web.Request) -> web.Response:
        name = contract_of_query(request)
        if name is None:
            return _error(-1121, "Invalid symbol.")
        try:
            limit = int(request.query.get("limit", "500"))
        except ValueError:
            return _error(-1100, "Illegal characters found in parameter 'limit'.")
        limit = min((n for n in _DEPTH_LIMITS if n >= limit), default=_DEPTH_LIMITS[-1])
        return web.json_response(public.snapshot_body(public.feed.markets[name], limit), dumps=dumps)

    async def open_interest(request: web.Request) -> web.Response:
        name = contract_of_query(request)
        if name is None:
            return _error(-1121, "Invalid symbol.")
        lots = market.open_interest(public.feed.markets[name])
        body = {
            "symbol": public.wire[name],
            "openInterest": public.qty[name](lots),
            "time": int(time.time() * 1000),
        }
        return web.json_response(body, dumps=dumps)

    return [
        ("/fapi/v1/exchangeInfo", exchange_info),
        ("/fapi/v1/depth", depth),
        ("/fapi/v1/openInterest", open_interest),
    ]


def create(config: SimConfig) -> Venue:
    feed, contracts = futures_feed(config)
    public = FuturesPublicDialect(feed, contracts)
    market = FuturesMarketDialect(feed, contracts)
    return Venue(EXCHANGE, {"usdm": feed}, [public, market], _rest(public, market))
