"""Bybit v5 public streams, spot (/v5/public/spot) and linear (/v5/public/linear): op
subscribe/unsubscribe (spot: at most 10 args), JSON ping/pong, ``orderbook.{depth}.{symbol}``
snapshot then deltas (``u`` +1 per delta, cross sequence ``seq``), ``publicTrade``,
``tickers.{symbol}`` (spot: a whole snapshot after each step with trades, no bid/ask; linear: a
snapshot on subscribe, then deltas with bid/ask) and ``kline.1.{symbol}`` from the simulator's
own klines (the open candle after trades; the final one with ``confirm:true`` when its window
ends: on its own on spot, together with the next open candle on linear when that has begun);
connections that stop pinging are closed."""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar

import orjson
from aiohttp import web

from simulator.base import Decimals, Dialect, Feed, Frame, Session, SimConfig, SubKey, Venue, dumps
from simulator.kline_frames import FinalCandles, StatsTexts
from simulator.klines import Kline
from simulator.market import Step, SymbolMarket, Trade

Levels = list[tuple[int, int]]


class BybitBase(Dialect):
    exchange = "bybit"
    category: ClassVar[str]
    depths: ClassVar[tuple[int, ...]]
    max_args: ClassVar[int | None] = None
    ts_first: ClassVar[bool]  # spot frames put "ts" before "type"
    faults = frozenset({"gap", "disconnect", "silent", "malformed", "snapshot"})

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.wire = {s: s.replace("-", "") for s in feed.markets}
        self.native = {w: s for s, w in self.wire.items()}
        self.update_ids: dict[tuple[str, int], int] = {}
        self.price: dict[str, Decimals] = {}
        self.size = {
            s: Decimals(m.spec.qty_decimals, m.spec.qty_decimals, True) for s, m in feed.markets.items()
        }
        self.last_trade_price: dict[str, int] = {}
        self.texts = StatsTexts(feed)
        self.finals = FinalCandles()

    # -- requests -------------------------------------------------------------------------

    def on_text(self, session: Session, text: str) -> None:
        try:
            request = orjson.loads(text)
            op = request["op"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            session.send(self.reply(session, False, "error:request not json or op missing", "", None))
            return
        req_id = request.get("req_id")
        if op == "ping":
            session.last_client_ping = time.monotonic()
            session.send(self.reply(session, True, "pong", "ping", req_id))
        elif op in ("subscribe", "unsubscribe"):
            self._subscription(session, op, request.get("args") or [], req_id)
        else:
            session.send(self.reply(session, False, f"error:illegal op {op}", op, req_id))

    def reply(self, session: Session, ok: bool, message: str, op: str, req_id: Any) -> dict[str, Any]:
        raise NotImplementedError

    def ack_message(self, op: str) -> str:
        raise NotImplementedError

    def _subscription(self, session: Session, op: str, args: list[Any], req_id: Any) -> None:
        if self.max_args is not None and len(args) > self.max_args:
            session.send(self.reply(session, False, f"args size >{self.max_args}", op, req_id))
            return
        keys: list[tuple[str, SubKey]] = []
        for topic in args:
            key = self._key(topic)
            if key is None:
                session.send(self.reply(session, False, self.bad_topic(str(topic)), op, req_id))
                return
            keys.append((str(topic), key))
        for topic, key in keys:
            if op == "subscribe" and key in session.subs:
                session.send(
                    self.reply(session, False, f"error:already subscribed,topic:{topic}", op, req_id)
                )
                return
        for _, key in keys:
            (self.subscribe if op == "subscribe" else self.unsubscribe)(session, key)
        session.send(self.reply(session, True, self.ack_message(op), op, req_id))
        if op == "subscribe":
            for _, key in keys:
                if key[0] == "orderbook":
                    session.offer(self._snapshot(key, time.time_ns()))
                elif key[0] == "tickers":
                    session.extra.setdefault("ticker_snapshots", set()).discard(key[1])
                    self._send_ticker(session, self.feed.markets[key[1]], time.time_ns())

    def bad_topic(self, topic: str) -> str:
        return f"error:handler not found,topic:{topic}"

    def _key(self, topic: Any) -> SubKey | None:
        parts = topic.split(".") if isinstance(topic, str) else []
        if len(parts) == 3 and parts[0] == "orderbook" and parts[1].isdigit():
            depth, symbol = int(parts[1]), self.native.get(parts[2])
            return ("orderbook", symbol, depth) if symbol and depth in self.depths else None
        if len(parts) == 2 and parts[0] in ("publicTrade", "tickers") and parts[1] in self.native:
            return (parts[0], self.native[parts[1]], 0)
        if len(parts) == 3 and parts[0] == "kline" and parts[1] == "1" and parts[2] in self.native:
            return ("kline", self.native[parts[2]], 0)  # the simulator's klines are 1 minute
        return None

    def on_timer(self, session: Session, now: float) -> None:
        if now - session.last_client_ping > self.config.bybit_ping_timeout_s:
            session.abort(1000, "no ping received")

    # -- frames ---------------------------------------------------------------------------

    def _head(self, topic: str, kind: str, ms: int) -> str:
        if self.ts_first:
            return f'{{"topic":"{topic}","ts":{ms},"type":"{kind}"'
        return f'{{"topic":"{topic}","type":"{kind}","ts":{ms}'

    def _levels(self, symbol: str, levels: Levels) -> str:
        price, size = self.price[symbol], self.size[symbol]
        return dumps([[price(p), size(q)] for p, q in levels])

    def _book_text(self, key: SubKey, kind: str, bids: Levels, asks: Levels, seq: int, ts_ns: int) -> str:
        symbol, depth = key[1], key[2]
        ms = ts_ns // 1_000_000
        data = (
            f'{{"s":"{self.wire[symbol]}","b":{self._levels(symbol, bids)},"a":{self._levels(symbol, asks)},'
            f'"u":{self.update_ids[(symbol, depth)]},"seq":{seq}}}'
        )
        return (
            f'{self._head(f"orderbook.{depth}.{self.wire[symbol]}", kind, ms)},"data":{data},"cts":{ms - 3}}}'
        )

    def _snapshot(self, key: SubKey, ts_ns: int) -> Frame:
        market = self.feed.markets[key[1]]
        self.update_ids.setdefault((key[1], key[2]), market.update_id)
        text = self._book_text(
            key, "snapshot", market.bids.top(key[2]), market.asks.top(key[2]), market.seq, ts_ns
        )
        return Frame(text, "snapshot", key[1])

    def resend_snapshots(self, session: Session, symbol: str | None) -> None:
        ts_ns = time.time_ns()
        for key in list(session.subs):
            if key[0] == "orderbook" and symbol in (None, key[1]):
                session.offer(self._snapshot(key, ts_ns))

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        if step.book_changed:
            for key in self.keys_for("orderbook", symbol):
                self._publish_book(market, step, key, ts_ns)
        trade_key = ("publicTrade", symbol, 0)
        if step.trades and trade_key in self.subscribers:
            self.fan_out(trade_key, Frame(self._trade_text(symbol, step, ts_ns), "trade", symbol))
        self._publish_stats(market, step, ts_ns)

    # -- tickers and klines -----------------------------------------------------------------

    def _publish_stats(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        stats = self.feed.stats[symbol]
        final = self.finals.due(symbol, stats, ts_ns)
        kline_key: SubKey = ("kline", symbol, 0)
        if kline_key in self.subscribers:
            candles = [(final, True)] if final is not None else []
            current = stats.current if step.trades else None
            if current is not None and candles and self.category == "spot":
                self._send_klines(symbol, candles, ts_ns)
                candles = []
            if current is not None and current is not final:
                candles.append((current, False))
            if candles:
                self._send_klines(symbol, candles, ts_ns)
        ticker_key: SubKey = ("tickers", symbol, 0)
        if step.trades and ticker_key in self.subscribers:
            for session in list(self.subscribers[ticker_key]):
                self._send_ticker(session, market, ts_ns)

    def _send_ticker(self, session: Session, market: SymbolMarket, ts_ns: int) -> None:
        """Spot: always a snapshot. Linear: a snapshot first on each subscription (the first
        one the simulator can build: none before the first trade), then deltas."""
        symbol = market.spec.symbol
        sent: set[str] = session.extra.setdefault("ticker_snapshots", set())
        kind = "delta" if self.category == "linear" and symbol in sent else "snapshot"
        ticker = self._ticker(market, kind, ts_ns)
        if ticker is not None:
            sent.add(symbol)
            session.offer(Frame(ticker, "ticker", symbol))

    def _send_klines(self, symbol: str, candles: list[tuple[Kline, bool]], ts_ns: int) -> None:
        ms = ts_ns // 1_000_000
        data = dumps([self._kline(symbol, kline, closed, ms) for kline, closed in candles])
        topic = f"kline.1.{self.wire[symbol]}"
        text = f'{{"topic":"{topic}","data":{data},"ts":{ms},"type":"snapshot"}}'
        self.fan_out(("kline", symbol, 0), Frame(text, "kline", symbol))

    def _kline(self, symbol: str, kline: Kline, closed: bool, ms: int) -> dict[str, Any]:
        texts = self.texts
        price = texts.price[symbol]
        start = kline.open_ns // 1_000_000
        return {
            "start": start,
            "end": start + kline.interval_ns // 1_000_000 - 1,
            "interval": "1",
            "open": price(kline.open),
            "close": price(kline.close),
            "high": price(kline.high),
            "low": price(kline.low),
            "volume": texts.qty[symbol](kline.volume_lots),
            "turnover": texts.quote[symbol](kline.quote_units),
            "confirm": closed,
            "timestamp": kline.last_trade_ns // 1_000_000 if not closed else ms,
        }

    def _ticker(self, market: SymbolMarket, kind: str, ts_ns: int) -> str | None:
        symbol = market.spec.symbol
        day = self.feed.stats[symbol].ticker()
        if day is None:
            return None
        texts = self.texts
        price = texts.price[symbol]
        data: dict[str, Any] = {
            "symbol": self.wire[symbol],
            "lastPrice": price(day.last),
            "highPrice24h": price(day.high),
            "lowPrice24h": price(day.low),
            "prevPrice24h": price(day.open),
            "volume24h": texts.qty[symbol](day.volume_lots),
            "turnover24h": texts.quote[symbol](day.quote_units),
            "price24hPcnt": f"{(day.last - day.open) / day.open:.4f}",
        }
        if self.category == "linear":
            (bid, bid_qty), (ask, ask_qty) = market.bids.top(1)[0], market.asks.top(1)[0]
            size = texts.qty[symbol]
            data.update(
                bid1Price=price(bid), bid1Size=size(bid_qty), ask1Price=price(ask), ask1Size=size(ask_qty)
            )
        ms = ts_ns // 1_000_000
        return (
            f'{self._head(f"tickers.{self.wire[symbol]}", kind, ms)},"cs":{market.seq},"data":{dumps(data)}}}'
        )

    def _publish_book(self, market: SymbolMarket, step: Step, key: SubKey, ts_ns: int) -> None:
        view = step.views.get(key[2])
        if view is None or view.empty(with_out=True):
            return
        ids = self.update_ids
        ids[(key[1], key[2])] = ids.get((key[1], key[2]), market.update_id) + 1
        if key[2] == 1:  # level 1 is snapshot-only
            frame = Frame(
                self._book_text(key, "snapshot", market.bids.top(1), market.asks.top(1), step.seq, ts_ns),
                "snapshot",
                key[1],
            )
        else:
            bids = sorted(view.bids + [(p, 0) for p in view.bids_out], reverse=True)
            asks = sorted(view.asks + [(p, 0) for p in view.asks_out])
            frame = Frame(self._book_text(key, "delta", bids, asks, step.seq, ts_ns), "book", key[1])
        self.fan_out(key, frame)

    def _trade_text(self, symbol: str, step: Step, ts_ns: int) -> str:
        ms = ts_ns // 1_000_000
        entries = dumps([self.trade_entry(symbol, t, ms, step.seq) for t in step.trades])
        return f'{self._head(f"publicTrade.{self.wire[symbol]}", "snapshot", ms)},"data":{entries}}}'

    def trade_entry(self, symbol: str, trade: Trade, ms: int, seq: int) -> dict[str, Any]:
        raise NotImplementedError


class BybitSpot(BybitBase):
    name = "bybit-spot"
    path = "/v5/public/spot"
    category = "spot"
    depths = (1, 50, 200, 1000)
    max_args = 10
    ts_first = True

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.price = {
            s: Decimals(m.spec.price_decimals, m.spec.price_decimals, True) for s, m in feed.markets.items()
        }

    def reply(self, session: Session, ok: bool, message: str, op: str, req_id: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"success": ok, "ret_msg": message, "conn_id": session.conn_id}
        if req_id is not None:
            body["req_id"] = req_id
        body["op"] = op
        return body

    def ack_message(self, op: str) -> str:
        return op

    def trade_entry(self, symbol: str, trade: Trade, ms: int, seq: int) -> dict[str, Any]:
        return {
            "i": str(2290000000000000000 + trade.trade_id),
            "T": ms,
            "p": self.price[symbol](trade.price),
            "v": self.size[symbol](trade.qty),
            "S": "Buy" if trade.taker_buy else "Sell",
            "seq": seq,
            "s": self.wire[symbol],
            "BT": False,
            "RPI": False,
        }


class BybitLinear(BybitBase):
    name = "bybit-linear"
    path = "/v5/public/linear"
    category = "linear"
    depths = (1, 50, 200, 500, 1000)
    ts_first = False

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.price = {
            s: Decimals(m.spec.price_decimals, max(m.spec.price_decimals, 2)) for s, m in feed.markets.items()
        }

    def reply(self, session: Session, ok: bool, message: str, op: str, req_id: Any) -> dict[str, Any]:
        return {
            "success": ok,
            "ret_msg": message,
            "conn_id": session.conn_id,
            "req_id": "" if req_id is None else req_id,
            "op": op,
        }

    def ack_message(self, op: str) -> str:
        return ""

    def bad_topic(self, topic: str) -> str:
        return f"Invalid symbol :[{topic}]"

    def trade_entry(self, symbol: str, trade: Trade, ms: int, seq: int) -> dict[str, Any]:
        last = self.last_trade_price.get(symbol, trade.price)
        self.last_trade_price[symbol] = trade.price
        tick = "PlusTick" if trade.price > last else "MinusTick" if trade.price < last else "ZeroPlusTick"
        return {
            "T": ms,
            "s": self.wire[symbol],
            "S": "Buy" if trade.taker_buy else "Sell",
            "v": self.size[symbol](trade.qty),
            "p": self.price[symbol](trade.price),
            "L": tick,
            "i": str(uuid.UUID(int=trade.trade_id * 0x9E3779B97F4A7C15 % (1 << 128))),
            "BT": False,
            "RPI": False,
            "seq": seq,
        }


# -- REST ---------------------------------------------------------------------------------------


def _instrument(dialect: BybitBase, symbol: str) -> dict[str, Any]:
    spec = dialect.feed.markets[symbol].spec
    tick = Decimals(spec.price_decimals, spec.price_decimals)(1)
    step = Decimals(spec.qty_decimals, spec.qty_decimals)(1)
    common = {"symbol": dialect.wire[symbol]}
    if dialect.category == "spot":
        return {
            **common,
            "baseCoin": spec.base,
            "quoteCoin": spec.quote,
            "innovation": "0",
            "status": "Trading",
            "marginTrading": "utaOnly",
            "stTag": "0",
            "lotSizeFilter": {
                "basePrecision": step,
                "quotePrecision": "0.00000001",
                "minOrderQty": step,
                "maxOrderQty": "71.73956243",
                "minOrderAmt": "1",
                "maxOrderAmt": "4000000",
            },
            "priceFilter": {"tickSize": tick},
            "riskParameters": {"priceLimitRatioX": "0.05", "priceLimitRatioY": "0.05"},
        }
    return {
        **common,
        "contractType": "LinearPerpetual",
        "status": "Trading",
        "baseCoin": spec.base,
        "quoteCoin": spec.quote,
        "launchTime": "1585526400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": str(spec.price_decimals),
        "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
        "priceFilter": {"minPrice": tick, "maxPrice": "1999999.80", "tickSize": tick},
        "lotSizeFilter": {
            "maxOrderQty": "1190.000",
            "minOrderQty": step,
            "qtyStep": step,
            "postOnlyMaxOrderQty": "1190.000",
            "maxMktOrderQty": "500.000",
            "minNotionalValue": "5",
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "settleCoin": spec.quote,
        "copyTrading": "both",
        "upperFundingRate": "0.005",
        "lowerFundingRate": "-0.005",
        "isPreListing": False,
        "preListingInfo": None,
    }


def _rest(dialects: dict[str, BybitBase]) -> list[tuple[str, Any]]:
    async def instruments(request: web.Request) -> web.Response:
        category = request.query.get("category", "")
        dialect = dialects.get(category)
        now = int(time.time() * 1000)
        if dialect is None:
            return web.json_response(
                {"retCode": 10001, "retMsg": "Illegal category", "result": {}, "retExtInfo": {}, "time": now},
                dumps=dumps,
            )
        wanted = request.query.get("symbol")
        if wanted is not None and wanted not in dialect.native:
            return web.json_response(
                {
                    "retCode": 10001,
                    "retMsg": "Not supported symbols",
                    "result": {},
                    "retExtInfo": {},
                    "time": now,
                },
                dumps=dumps,
            )
        symbols = [dialect.native[wanted]] if wanted else list(dialect.feed.markets)
        result = {
            "category": category,
            "list": [_instrument(dialect, s) for s in symbols],
            "nextPageCursor": "",
        }
        return web.json_response(
            {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": now}, dumps=dumps
        )

    return [("/v5/market/instruments-info", instruments)]


def create(config: SimConfig) -> Venue:
    symbols = config.listed("bybit")
    spot, linear = Feed("bybit", "spot", symbols, config), Feed("bybit", "linear", symbols, config)
    dialects: dict[str, BybitBase] = {"spot": BybitSpot(spot), "linear": BybitLinear(linear)}
    return Venue("bybit", {"spot": spot, "linear": linear}, list(dialects.values()), _rest(dialects))
