"""MEXC spot v3: SUBSCRIPTION/UNSUBSCRIPTION and PING as JSON text, replies ``{"id":0,"code":0,
"msg":...}``; market data as binary protobuf ``PushDataV3ApiWrapper`` frames (aggregated depth
with contiguous fromVersion/toVersion bridged by the REST depth snapshot's lastUpdateId, and
aggregated deals), and after every step with trades (sent after its deals) the 1m kline
(``spot@public.kline.v3.api.pb@<SYMBOL>@Min1``, no final flag) and the rolling 24 h miniTicker
(``spot@public.miniTicker.v3.api.pb@<SYMBOL>@<timezone>``: last price, high, low, quote ``volume``
and base ``quantity``); at most 30 subscriptions per connection; closed after 30 s without any."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from aiohttp import web

from marketpipe.exchanges.mexc_pb import PushDataV3ApiWrapper
from simulator.base import Decimals, Dialect, Feed, Frame, Session, SimConfig, SubKey, Venue, dumps
from simulator.kline_frames import StatsTexts
from simulator.market import Step, SymbolMarket

DEPTH = "spot@public.aggre.depth.v3.api.pb"
DEALS = "spot@public.aggre.deals.v3.api.pb"
_CHANNEL = re.compile(r"^(spot@public\.aggre\.(?:depth|deals)\.v3\.api\.pb)@(100ms|10ms)@([A-Z0-9]+)$")
KLINE = "spot@public.kline.v3.api.pb"
MINI_TICKER = "spot@public.miniTicker.v3.api.pb"
_STATS_CHANNEL = re.compile(r"^(spot@public\.(?:kline|miniTicker)\.v3\.api\.pb)@([A-Z0-9]+)@(\S+)$")
KLINE_INTERVAL = "Min1"  # the simulator's klines are 1 minute (simulator/klines.py)
MAX_SUBSCRIPTIONS = 30
NO_SUBSCRIPTION_TIMEOUT_S = 30.0
MAX_DEPTH_LIMIT = 5000


def reply(msg: str) -> dict[str, Any]:
    return {"id": 0, "code": 0, "msg": msg}


class MexcDialect(Dialect):
    exchange = "mexc"
    name = "mexc"
    path = "/ws"

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.native = {s.replace("-", ""): s for s in feed.markets}
        self.wire = {s: s.replace("-", "") for s in feed.markets}
        self.price = {
            s: Decimals(m.spec.price_decimals, m.spec.price_decimals) for s, m in feed.markets.items()
        }
        self.qty = {s: Decimals(m.spec.qty_decimals, 8) for s, m in feed.markets.items()}
        self.quote = StatsTexts(feed).quote  # quote volumes (tick x lot units) as decimal text

    # -- requests -----------------------------------------------------------------------

    def on_text(self, session: Session, text: str) -> None:
        try:
            request = orjson.loads(text)
            method = request["method"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            session.send(reply(f"Invalid request: {text[:100]}"))
            return
        if method == "PING":
            session.send(reply("PONG"))
            return
        params = request.get("params")
        if method not in ("SUBSCRIPTION", "UNSUBSCRIPTION") or not isinstance(params, list):
            session.send(reply(f"Invalid request: {text[:100]}"))
            return
        found = [(p, self._key(p)) for p in params]
        keys = [key for _, key in found if key is not None]
        if len(keys) < len(found):
            bad = [p for p, key in found if key is None]
            session.send(reply(f"Not Subscribed successfully! {bad}.  Reason: Blocked! "))
            return
        if method == "UNSUBSCRIPTION":
            for key in keys:
                self.unsubscribe(session, key)
        else:
            new = {k for k in keys if k not in session.subs}
            if len(session.subs) + len(new) > MAX_SUBSCRIPTIONS:
                session.send(reply(f"Not Subscribed successfully! {params}.  Reason: Blocked! "))
                return
            for key in new:
                self.subscribe(session, key)
        session.send(reply(",".join(params)))

    def _key(self, name: Any) -> SubKey | None:
        stats = _STATS_CHANNEL.match(name) if isinstance(name, str) else None
        if stats is not None:
            prefix, wire, suffix = stats.groups()
            if wire not in self.native or (prefix == KLINE and suffix != KLINE_INTERVAL):
                return None
            return (f"{prefix}@*@{suffix}", self.native[wire], 0)  # * stands for the symbol
        match = _CHANNEL.match(name) if isinstance(name, str) else None
        if match is None or match.group(3) not in self.native:
            return None
        return (f"{match.group(1)}@{match.group(2)}", self.native[match.group(3)], 0)

    def on_timer(self, session: Session, now: float) -> None:
        if not session.subs and now - session.opened_at > NO_SUBSCRIPTION_TIMEOUT_S:
            session.abort(1000, "no valid subscription")

    # -- market data ----------------------------------------------------------------------

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        keys = [k for k in self.subscribers if k[1] == symbol]
        if not keys:
            return
        ms = ts_ns // 1_000_000
        for key in keys:
            if key[0].startswith(DEPTH) and step.book_changed:
                self.fan_out(key, Frame(self._depth(key, market, step, ms), "book", symbol))
            elif key[0].startswith(DEALS) and step.trades:
                self.fan_out(key, Frame(self._deals(key, market, step, ms), "trade", symbol))
        for key in keys if step.trades else ():  # after the deals: a kline counts no unseen trade
            if key[0].startswith(KLINE):
                self.fan_out(key, Frame(self._kline(key, ms), "kline", symbol))
            elif key[0].startswith(MINI_TICKER):
                self.fan_out(key, Frame(self._mini_ticker(key, ms), "ticker", symbol))

    def _stats_wrapper(self, key: SubKey, ms: int) -> PushDataV3ApiWrapper:
        wire = self.wire[key[1]]
        return PushDataV3ApiWrapper(channel=key[0].replace("*", wire), symbol=wire, sendTime=ms)

    def _kline(self, key: SubKey, ms: int) -> bytes:
        kline = self.feed.stats[key[1]].current
        assert kline is not None, "published after a trade"
        price = self.price[key[1]]
        push = self._stats_wrapper(key, ms)
        body = push.publicSpotKline
        body.interval = KLINE_INTERVAL
        body.windowStart = kline.open_ns // 1_000_000_000
        body.windowEnd = kline.close_ns // 1_000_000_000
        body.openingPrice, body.closingPrice = price(kline.open), price(kline.close)
        body.highestPrice, body.lowestPrice = price(kline.high), price(kline.low)
        body.volume = self.qty[key[1]](kline.volume_lots)
        body.amount = self.quote[key[1]](kline.quote_units)
        return push.SerializeToString()

    def _mini_ticker(self, key: SubKey, ms: int) -> bytes:
        day = self.feed.stats[key[1]].ticker()
        assert day is not None, "published after a trade"
        price = self.price[key[1]]
        push = self._stats_wrapper(key, ms)
        body = push.publicMiniTicker
        body.symbol = self.wire[key[1]]
        body.price, body.high, body.low = price(day.last), price(day.high), price(day.low)
        body.rate = f"{(day.last - day.open) / day.open:.4f}"
        body.volume = self.quote[key[1]](day.quote_units)
        body.quantity = self.qty[key[1]](day.volume_lots)
        return push.SerializeToString()

    def _wrapper(self, key: SubKey, ms: int) -> PushDataV3ApiWrapper:
        wire = self.wire[key[1]]
        return PushDataV3ApiWrapper(channel=f"{key[0]}@{wire}", symbol=wire, sendTime=ms)

    def _depth(self, key: SubKey, market: SymbolMarket, step: Step, ms: int) -> bytes:
        push = self._wrapper(key, ms)
        body = push.publicAggreDepths
        price, qty = self.price[key[1]], self.qty[key[1]]
        for p, q in step.asks:
            body.asks.add(price=price(p), quantity=qty(q))
        for p, q in step.bids:
            body.bids.add(price=price(p), quantity=qty(q))
        body.eventType = key[0]
        body.fromVersion = str(step.first_update_id)
        body.toVersion = str(step.last_update_id)
        return push.SerializeToString()

    def _deals(self, key: SubKey, market: SymbolMarket, step: Step, ms: int) -> bytes:
        push = self._wrapper(key, ms)
        body = push.publicAggreDeals
        price, qty = self.price[key[1]], self.qty[key[1]]
        for trade in step.trades:
            body.deals.add(
                price=price(trade.price),
                quantity=qty(trade.qty),
                tradeType=1 if trade.taker_buy else 2,
                time=ms,
            )
        body.eventType = key[0]
        return push.SerializeToString()

    def snapshot_body(self, market: SymbolMarket, limit: int) -> dict[str, Any]:
        symbol = market.spec.symbol
        price, qty = self.price[symbol], self.qty[symbol]
        return {
            "lastUpdateId": market.update_id,
            "bids": [[price(p), qty(q)] for p, q in market.bids.top(limit)],
            "asks": [[price(p), qty(q)] for p, q in market.asks.top(limit)],
            "timestamp": int(time.time() * 1000),
        }


# -- REST -------------------------------------------------------------------------------------


def _error(code: int, msg: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=400, dumps=dumps)


def _symbol_info(dialect: MexcDialect, symbol: str) -> dict[str, Any]:
    spec = dialect.feed.markets[symbol].spec
    return {
        "symbol": dialect.wire[symbol],
        "status": "1",
        "baseAsset": spec.base,
        "baseAssetPrecision": spec.qty_decimals,
        "quoteAsset": spec.quote,
        "quotePrecision": spec.price_decimals,
        "quoteAssetPrecision": spec.price_decimals,
        "baseCommissionPrecision": spec.qty_decimals,
        "quoteCommissionPrecision": spec.price_decimals,
        "orderTypes": ["LIMIT", "MARKET", "LIMIT_MAKER"],
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "quoteAmountPrecision": "1",
        "baseSizePrecision": "0",
        "permissions": ["SPOT"],
        "filters": [],
        "maxQuoteAmount": "2000000",
        "makerCommission": "0",
        "takerCommission": "0.0005",
        "fullName": spec.base,
    }


def _rest(dialect: MexcDialect) -> list[tuple[str, Any]]:
    async def exchange_info(request: web.Request) -> web.Response:
        if "symbols" in request.query:
            wanted = [name for name in request.query["symbols"].split(",") if name]
        elif "symbol" in request.query:
            wanted = [request.query["symbol"]]
        else:
            wanted = list(dialect.native)
        if any(name not in dialect.native for name in wanted):
            return _error(-1121, "Invalid symbol.")
        body = {
            "timezone": "CST",
            "serverTime": int(time.time() * 1000),
            "rateLimits": [],
            "exchangeFilters": [],
            "symbols": [_symbol_info(dialect, dialect.native[name]) for name in wanted],
        }
        return web.json_response(body, dumps=dumps)

    async def depth(request: web.Request) -> web.Response:
        symbol = dialect.native.get(request.query.get("symbol", ""))
        if symbol is None:
            return _error(-1121, "Invalid symbol.")
        try:
            limit = min(max(int(request.query.get("limit", "100")), 1), MAX_DEPTH_LIMIT)
        except ValueError:
            return _error(-1100, "Illegal characters found in parameter 'limit'.")
        return web.json_response(dialect.snapshot_body(dialect.feed.markets[symbol], limit), dumps=dumps)

    return [("/api/v3/exchangeInfo", exchange_info), ("/api/v3/depth", depth)]


def create(config: SimConfig) -> Venue:
    feed = Feed("mexc", "spot", config.listed("mexc"), config)
    dialect = MexcDialect(feed)
    return Venue("mexc", {"spot": feed}, [dialect], _rest(dialect))
