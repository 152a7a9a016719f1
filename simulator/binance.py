"""Binance spot: combined streams at /stream, SUBSCRIBE/UNSUBSCRIBE by id, protocol pings,
depthUpdate with contiguous U/u bridged by the REST depth snapshot's lastUpdateId, and the
``<s>@ticker`` (24hrTicker) and ``<s>@kline_1m`` streams from the simulator's own klines: the
open kline after each step with trades, and the closed one once with ``x:true`` when its
window ends (no subscribe snapshot, as on Binance)."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from aiohttp import web

from simulator.base import Decimals, Dialect, Feed, Frame, Session, SimConfig, SubKey, Venue, dumps
from simulator.kline_frames import FinalCandles, StatsTexts
from simulator.klines import Kline
from simulator.market import Step, SymbolMarket, Trade

_STREAM = re.compile(
    r"^([a-z0-9]+)@(trade|aggTrade|depth|depth@100ms|bookTicker|ticker|kline_1m|depth(?:5|10|20)(?:@100ms)?)$"
)
_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000, 5000)


class BinanceDialect(Dialect):
    exchange = "binance"
    name = "binance"
    path = "/stream"

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.native = {s.replace("-", ""): s for s in feed.markets}
        self.wire = {s: s.replace("-", "") for s in feed.markets}
        self.price = {s: Decimals(m.spec.price_decimals, 8) for s, m in feed.markets.items()}
        self.qty = {s: Decimals(m.spec.qty_decimals, 8) for s, m in feed.markets.items()}
        self.agg_id = {s: 3_000_000 + i * 1_000_000 for i, s in enumerate(feed.markets)}
        self.last_bbo: dict[str, tuple[int, int, int, int]] = {}
        self.texts = StatsTexts(feed, places=8, trim=False)
        self.finals = FinalCandles()

    # -- requests -----------------------------------------------------------------------

    def accept_query(self, session: Session, request: web.Request) -> None:
        streams = request.query.get("streams", "")
        for name in filter(None, streams.split("/")):
            key = self._key(name)
            if key is not None:
                self.subscribe(session, key)

    def on_text(self, session: Session, text: str) -> None:
        try:
            request = orjson.loads(text)
            method, req_id = request["method"], request.get("id")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            session.send({"error": {"code": 3, "msg": "Invalid JSON: expected a request object"}, "id": None})
            return
        if method == "LIST_SUBSCRIPTIONS":
            session.send({"result": sorted(self._stream_name(k) for k in session.subs), "id": req_id})
            return
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            session.send(
                {"error": {"code": 2, "msg": f"Invalid request: unknown method {method}"}, "id": req_id}
            )
            return
        params = request.get("params")
        keys = [self._key(p) for p in params] if isinstance(params, list) else [None]
        if any(k is None for k in keys):
            session.send({"error": {"code": 2, "msg": "Invalid request: invalid stream name"}, "id": req_id})
            return
        action = self.subscribe if method == "SUBSCRIBE" else self.unsubscribe
        for key in keys:
            if key is not None:
                action(session, key)
        session.send({"result": None, "id": req_id})

    def _key(self, name: Any) -> SubKey | None:
        match = _STREAM.match(name) if isinstance(name, str) else None
        if match is None:
            return None
        symbol = self.native.get(match.group(1).upper(), match.group(1).upper())
        return (match.group(2), symbol, 0)

    def _stream_name(self, key: SubKey) -> str:
        return f"{self.wire.get(key[1], key[1]).lower()}@{key[0]}"

    def on_timer(self, session: Session, now: float) -> None:
        if session.ping_sent_at is not None:
            if now - session.ping_sent_at > self.config.binance_pong_timeout_s:
                session.abort(1008, "pong timeout")
        elif now - session.last_server_ping >= self.config.binance_ping_interval_s:
            session.last_server_ping = session.ping_sent_at = now
            session.send_ping(str(int(time.time() * 1000)).encode())

    # -- market data ----------------------------------------------------------------------

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        keys = {k[0]: k for k in self.subscribers if k[1] == symbol}
        final = self.finals.due(symbol, self.feed.stats[symbol], ts_ns)
        if not keys:
            return
        ms = ts_ns // 1_000_000
        if step.book_changed:
            self._publish_depth(market, step, ms, keys)
        if "bookTicker" in keys:
            self._publish_bbo(market, keys["bookTicker"])
        if step.trades:
            if "trade" in keys:
                for trade in step.trades:
                    self._emit(keys["trade"], self._trade(symbol, trade, ms), "trade")
            if "aggTrade" in keys:
                for data in self._agg_trades(symbol, step.trades, ms):
                    self._emit(keys["aggTrade"], data, "trade")
        self._publish_stats(market, step, ms, keys, final)

    # -- ticker and kline ---------------------------------------------------------------

    def _publish_stats(
        self, market: SymbolMarket, step: Step, ms: int, keys: dict[str, SubKey], final: Kline | None
    ) -> None:
        """After the step's trades: the closed kline once (``x:true``) when its window ended,
        and the 24 h ticker and open kline when the step traded."""
        symbol = market.spec.symbol
        stats = self.feed.stats[symbol]
        kline_key = keys.get("kline_1m")
        if kline_key is not None and final is not None:
            self._emit(kline_key, self._kline(symbol, final, ms, closed=True), "kline")
        if not step.trades:
            return
        if kline_key is not None and stats.current is not None:
            self._emit(kline_key, self._kline(symbol, stats.current, ms, closed=False), "kline")
        if "ticker" in keys:
            ticker = self._ticker(market, ms)
            if ticker is not None:
                self._emit(keys["ticker"], ticker, "ticker")

    def _kline(self, symbol: str, kline: Kline, ms: int, closed: bool) -> str:
        texts = self.texts
        price, qty = texts.price[symbol], texts.qty[symbol]
        open_ms = kline.open_ns // 1_000_000
        return dumps(
            {
                "e": "kline",
                "E": ms,
                "s": self.wire[symbol],
                "k": {
                    "t": open_ms,
                    "T": open_ms + kline.interval_ns // 1_000_000 - 1,
                    "s": self.wire[symbol],
                    "i": "1m",
                    "f": kline.first_trade_id,
                    "L": kline.last_trade_id,
                    "o": price(kline.open),
                    "c": price(kline.close),
                    "h": price(kline.high),
                    "l": price(kline.low),
                    "v": qty(kline.volume_lots),
                    "n": kline.trades,
                    "x": closed,
                    "q": texts.quote[symbol](kline.quote_units),
                    "V": qty(0),  # taker-buy volumes: not kept by the simulator's klines
                    "Q": texts.quote[symbol](0),
                    "B": "0",
                },
            }
        )

    def _ticker(self, market: SymbolMarket, ms: int) -> str | None:
        symbol = market.spec.symbol
        stats = self.feed.stats[symbol]
        day = stats.ticker()
        if day is None or stats.current is None:
            return None
        texts = self.texts
        price, qty = texts.price[symbol], texts.qty[symbol]
        (bid, bid_qty), (ask, ask_qty) = market.bids.top(1)[0], market.asks.top(1)[0]
        change = day.last - day.open
        last_id = stats.current.last_trade_id
        spec = market.spec
        weighted = day.quote_units / day.volume_lots / 10**spec.price_decimals
        return dumps(
            {
                "e": "24hrTicker",
                "E": ms,
                "s": self.wire[symbol],
                "p": ("-" if change < 0 else "") + price(abs(change)),
                "P": f"{100 * change / day.open:.3f}",
                "w": f"{weighted:.8f}",
                "x": price(day.open),
                "c": price(day.last),
                "Q": qty(day.last_qty),
                "b": price(bid),
                "B": qty(bid_qty),
                "a": price(ask),
                "A": qty(ask_qty),
                "o": price(day.open),
                "h": price(day.high),
                "l": price(day.low),
                "v": qty(day.volume_lots),
                "q": texts.quote[symbol](day.quote_units),
                "O": ms - 86_400_000,
                "C": ms,
                "F": last_id - day.trades + 1,
                "L": last_id,
                "n": day.trades,
            }
        )

    def _emit(self, key: SubKey, data: str, kind: str) -> None:
        self.fan_out(key, Frame(f'{{"stream":"{self._stream_name(key)}","data":{data}}}', kind, key[1]))

    def _levels(self, symbol: str, levels: list[tuple[int, int]]) -> list[list[str]]:
        price, qty = self.price[symbol], self.qty[symbol]
        return [[price[p], qty[q]] for p, q in levels]

    def _publish_depth(self, market: SymbolMarket, step: Step, ms: int, keys: dict[str, SubKey]) -> None:
        symbol = market.spec.symbol
        diff: str | None = None
        for channel, key in keys.items():
            if channel in ("depth", "depth@100ms"):
                if diff is None:
                    diff = dumps(
                        {
                            "e": "depthUpdate",
                            "E": ms,
                            "s": self.wire[symbol],
                            "U": step.first_update_id,
                            "u": step.last_update_id,
                            "b": self._levels(symbol, step.bids),
                            "a": self._levels(symbol, step.asks),
                        }
                    )
                self._emit(key, diff, "book")
            elif channel.startswith("depth"):
                limit = int(channel[5:].split("@")[0])
                partial = self.snapshot_body(market, limit)
                self._emit(key, dumps(partial), "snapshot")

    def _publish_bbo(self, market: SymbolMarket, key: SubKey) -> None:
        symbol = market.spec.symbol
        (bid, bid_qty), (ask, ask_qty) = market.bids.top(1)[0], market.asks.top(1)[0]
        bbo = (bid, bid_qty, ask, ask_qty)
        if self.last_bbo.get(symbol) == bbo:
            return
        self.last_bbo[symbol] = bbo
        price, qty = self.price[symbol], self.qty[symbol]
        data = {
            "u": market.update_id,
            "s": self.wire[symbol],
            "b": price(bid),
            "B": qty(bid_qty),
            "a": price(ask),
            "A": qty(ask_qty),
        }
        self._emit(key, dumps(data), "bbo")

    def _trade(self, symbol: str, trade: Trade, ms: int) -> str:
        return dumps(
            {
                "e": "trade",
                "E": ms,
                "s": self.wire[symbol],
                "t": trade.trade_id,
                "p": self.price[symbol](trade.price),
                "q": self.qty[symbol](trade.qty),
                "T": ms,
                "m": not trade.taker_buy,
                "M": True,
            }
        )

    def _agg_trades(self, symbol: str, trades: list[Trade], ms: int) -> list[str]:
        """Consecutive fills at one price by one taker side form one aggregate trade."""
        groups: list[list[Trade]] = []
        for trade in trades:
            last = groups[-1][-1] if groups else None
            if last is not None and last.price == trade.price and last.taker_buy == trade.taker_buy:
                groups[-1].append(trade)
            else:
                groups.append([trade])
        out = []
        for group in groups:
            self.agg_id[symbol] += 1
            out.append(
                dumps(
                    {
                        "e": "aggTrade",
                        "E": ms,
                        "s": self.wire[symbol],
                        "a": self.agg_id[symbol],
                        "p": self.price[symbol](group[0].price),
                        "q": self.qty[symbol](sum(t.qty for t in group)),
                        "f": group[0].trade_id,
                        "l": group[-1].trade_id,
                        "T": ms,
                        "m": not group[0].taker_buy,
                        "M": True,
                    }
                )
            )
        return out

    def snapshot_body(self, market: SymbolMarket, limit: int) -> dict[str, Any]:
        symbol = market.spec.symbol
        return {
            "lastUpdateId": market.update_id,
            "bids": self._levels(symbol, market.bids.top(limit)),
            "asks": self._levels(symbol, market.asks.top(limit)),
        }


# -- REST -------------------------------------------------------------------------------------


def _invalid_symbol() -> web.Response:
    return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400, dumps=dumps)


def _symbol_info(dialect: BinanceDialect, symbol: str) -> dict[str, Any]:
    spec = dialect.feed.markets[symbol].spec
    price, qty = dialect.price[symbol], dialect.qty[symbol]
    return {
        "symbol": dialect.wire[symbol],
        "status": "TRADING",
        "baseAsset": spec.base,
        "baseAssetPrecision": 8,
        "quoteAsset": spec.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": True,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": price(1),
                "maxPrice": "1000000.00000000",
                "tickSize": price(1),
            },
            {"filterType": "LOT_SIZE", "minQty": qty(1), "maxQty": "9000.00000000", "stepSize": qty(1)},
        ],
        "permissions": [],
        "permissionSets": [["SPOT", "MARGIN"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def _rest(dialect: BinanceDialect) -> list[tuple[str, Any]]:
    async def exchange_info(request: web.Request) -> web.Response:
        if "symbols" in request.query:
            try:
                wanted = orjson.loads(request.query["symbols"])
            except orjson.JSONDecodeError:
                return _invalid_symbol()
        elif "symbol" in request.query:
            wanted = [request.query["symbol"]]
        else:
            wanted = list(dialect.native)
        if not isinstance(wanted, list) or any(w not in dialect.native for w in wanted):
            return _invalid_symbol()
        body = {
            "timezone": "UTC",
            "serverTime": int(time.time() * 1000),
            "rateLimits": [],
            "exchangeFilters": [],
            "symbols": [_symbol_info(dialect, dialect.native[w]) for w in wanted],
        }
        return web.json_response(body, dumps=dumps)

    async def depth(request: web.Request) -> web.Response:
        symbol = dialect.native.get(request.query.get("symbol", ""))
        if symbol is None:
            return _invalid_symbol()
        try:
            limit = min(int(request.query.get("limit", "100")), _DEPTH_LIMITS[-1])
        except ValueError:
            return web.json_response(
                {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."},
                status=400,
                dumps=dumps,
            )
        body = dialect.snapshot_body(dialect.feed.markets[symbol], max(limit, 1))
        return web.json_response(body, dumps=dumps)

    return [("/api/v3/exchangeInfo", exchange_info), ("/api/v3/depth", depth)]


def create(config: SimConfig) -> Venue:
    feed = Feed("binance", "spot", config.listed("binance"), config)
    dialect = BinanceDialect(feed)
    return Venue("binance", {"spot": feed}, [dialect], _rest(dialect))
