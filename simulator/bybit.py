"""Bybit v5 public streams, spot (/v5/public/spot), linear (/v5/public/linear) and inverse
(/v5/public/inverse): op subscribe/unsubscribe (spot: at most 10 args), JSON ping/pong,
``orderbook.{depth}.{symbol}`` snapshot then deltas (``u`` +1 per delta, cross sequence ``seq``;
the ``gap`` fault drops one delta), ``publicTrade``, ``tickers.{symbol}`` (spot: a whole snapshot
after each step with trades, no bid/ask; linear and inverse: a snapshot on subscribe, then deltas
holding only the fields that changed since the connection's last one, with mark, index, open
interest and funding), ``allLiquidation.{symbol}`` on linear and inverse (every fifth trade also
reported as a liquidation: ``S`` the liquidated position's side, ``p`` a bankruptcy price 1 %
beyond the trade), and ``kline.1.{symbol}`` from the simulator's own klines (the open candle
after trades; the final one with ``confirm:true`` when its window ends: on its own on spot,
together with the next open candle on derivatives when that has begun); connections that stop
pinging are closed.

Markets: spot and linear list the configured pairs (``BTC-USDT``; a configured ``BTC-USDT-PERP``
lists its pair), inverse lists ``BASE-USD`` of every configured base. Inverse quantities are whole
USD contracts (the lots' notional rounded up), its klines' and tickers' ``volume`` the USD
notional and ``turnover`` the base coin, as Bybit sends them.

REST ``/v5/market/instruments-info?category=&symbol=&limit=&cursor=``: at most ``limit`` (default
500, at most 1000) entries per page with ``nextPageCursor``; linear also lists
``LINEAR_FILLERS`` listing-only perpetuals before the streamed ones, so a client that does not
follow the cursor misses them."""

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
LIQUIDATION_EVERY = 5
"""every fifth trade (by id) of a derivative is also reported as a liquidation"""
FUNDING_INTERVAL_MS = 8 * 3600 * 1000
LINEAR_FILLERS = 1100
"""listing-only linear perpetuals: the list is longer than one page of 1000, as Bybit's is"""
PAGE_DEFAULT, PAGE_MAX = 500, 1000


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

    @property
    def derivative(self) -> bool:
        return self.category != "spot"

    def qty(self, symbol: str, lots: int, price: int) -> str:
        """A quantity as the category states it (spot and linear: base coin)."""
        return self.size[symbol](lots)

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
                    session.extra.setdefault("tickers_sent", {}).pop(key[1], None)
                    self._send_ticker(session, self.feed.markets[key[1]], time.time_ns())

    def bad_topic(self, topic: str) -> str:
        return f"error:handler not found,topic:{topic}"

    def _key(self, topic: Any) -> SubKey | None:
        parts = topic.split(".") if isinstance(topic, str) else []
        if len(parts) == 3 and parts[0] == "orderbook" and parts[1].isdigit():
            depth, symbol = int(parts[1]), self.native.get(parts[2])
            return ("orderbook", symbol, depth) if symbol and depth in self.depths else None
        channels = (
            ("publicTrade", "tickers", "allLiquidation") if self.derivative else ("publicTrade", "tickers")
        )
        if len(parts) == 2 and parts[0] in channels and parts[1] in self.native:
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
        price = self.price[symbol]
        return dumps([[price(p), self.qty(symbol, q, p)] for p, q in levels])

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
        liquidation_key = ("allLiquidation", symbol, 0)
        if step.trades and liquidation_key in self.subscribers:
            liquidations = [t for t in step.trades if t.trade_id % LIQUIDATION_EVERY == 0]
            if liquidations:
                text = self._liquidation_text(symbol, liquidations, ts_ns)
                self.fan_out(liquidation_key, Frame(text, "liquidation", symbol))

    def _liquidation_text(self, symbol: str, trades: list[Trade], ts_ns: int) -> str:
        """A taker sell closes a long (``S`` Buy: the position's side) at a bankruptcy price 1 %
        below the trade; a taker buy closes a short 1 % above."""
        ms = ts_ns // 1_000_000
        price = self.price[symbol]
        entries = [
            {
                "T": ms,
                "s": self.wire[symbol],
                "S": "Sell" if trade.taker_buy else "Buy",
                "v": self.qty(symbol, trade.qty, trade.price),
                "p": price(trade.price * 101 // 100 if trade.taker_buy else trade.price * 99 // 100),
            }
            for trade in trades
        ]
        topic = f"allLiquidation.{self.wire[symbol]}"
        return f'{{"topic":"{topic}","type":"snapshot","ts":{ms},"data":{dumps(entries)}}}'

    # -- tickers and klines -----------------------------------------------------------------

    def _publish_stats(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        stats = self.feed.stats[symbol]
        final = self.finals.due(symbol, stats, ts_ns)
        kline_key: SubKey = ("kline", symbol, 0)
        if kline_key in self.subscribers:
            candles = [(final, True)] if final is not None else []
            current = stats.current if step.trades else None
            if current is not None and candles and not self.derivative:
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
        """Spot: always a snapshot. Derivatives: a snapshot first on each subscription (the first
        one the simulator can build: none before the first trade), then deltas of the fields
        that changed since the last one this connection got."""
        symbol = market.spec.symbol
        data = self._ticker_data(market, ts_ns)
        if data is None:
            return
        sent: dict[str, dict[str, Any]] = session.extra.setdefault("tickers_sent", {})
        previous = sent.get(symbol) if self.derivative else None
        sent[symbol] = data
        if previous is None:
            kind, fields = "snapshot", data
        else:
            kind = "delta"
            fields = {k: v for k, v in data.items() if k == "symbol" or previous.get(k) != v}
            if len(fields) == 1:
                return
        ms = ts_ns // 1_000_000
        head = self._head(f"tickers.{self.wire[symbol]}", kind, ms)
        text = f'{head},"cs":{market.seq},"data":{dumps(fields)}}}'
        session.offer(Frame(text, "ticker", symbol))

    def _send_klines(self, symbol: str, candles: list[tuple[Kline, bool]], ts_ns: int) -> None:
        ms = ts_ns // 1_000_000
        data = dumps([self._kline(symbol, kline, closed, ms) for kline, closed in candles])
        topic = f"kline.1.{self.wire[symbol]}"
        text = f'{{"topic":"{topic}","data":{data},"ts":{ms},"type":"snapshot"}}'
        self.fan_out(("kline", symbol, 0), Frame(text, "kline", symbol))

    def volumes(self, symbol: str, lots: int, quote_units: int) -> tuple[str, str]:
        """(``volume``, ``turnover``) texts: base coin and quote coin (inverse differs)."""
        return self.texts.qty[symbol](lots), self.texts.quote[symbol](quote_units)

    def _kline(self, symbol: str, kline: Kline, closed: bool, ms: int) -> dict[str, Any]:
        price = self.texts.price[symbol]
        start = kline.open_ns // 1_000_000
        volume, turnover = self.volumes(symbol, kline.volume_lots, kline.quote_units)
        return {
            "start": start,
            "end": start + kline.interval_ns // 1_000_000 - 1,
            "interval": "1",
            "open": price(kline.open),
            "close": price(kline.close),
            "high": price(kline.high),
            "low": price(kline.low),
            "volume": volume,
            "turnover": turnover,
            "confirm": closed,
            "timestamp": kline.last_trade_ns // 1_000_000 if not closed else ms,
        }

    def _ticker_data(self, market: SymbolMarket, ts_ns: int) -> dict[str, Any] | None:
        symbol = market.spec.symbol
        day = self.feed.stats[symbol].ticker()
        if day is None:
            return None
        price = self.texts.price[symbol]
        volume, turnover = self.volumes(symbol, day.volume_lots, day.quote_units)
        data: dict[str, Any] = {
            "symbol": self.wire[symbol],
            "lastPrice": price(day.last),
            "highPrice24h": price(day.high),
            "lowPrice24h": price(day.low),
            "prevPrice24h": price(day.open),
            "volume24h": volume,
            "turnover24h": turnover,
            "price24hPcnt": f"{(day.last - day.open) / day.open:.4f}",
        }
        if not self.derivative:
            return data
        (bid, bid_qty), (ask, ask_qty) = market.bids.top(1)[0], market.asks.top(1)[0]
        mark = (bid + ask) // 2
        data.update(
            bid1Price=price(bid),
            bid1Size=self.qty(symbol, bid_qty, bid),
            ask1Price=price(ask),
            ask1Size=self.qty(symbol, ask_qty, ask),
            markPrice=price(mark),
            indexPrice=price(day.last),
            **self._open_interest(market, day.volume_lots, mark),
            **_funding(day.trades, ts_ns),
        )
        return data

    def _open_interest(self, market: SymbolMarket, traded_lots: int, mark: int) -> dict[str, str]:
        """Open interest grows with the volume traded (a tenth of it stays open)."""
        spec = market.spec
        lots = 1000 * 10**spec.qty_decimals + traded_lots // 10
        notional = lots * mark / 10 ** (spec.qty_decimals + spec.price_decimals)
        return {"openInterest": self.size[spec.symbol](lots), "openInterestValue": f"{notional:.2f}"}

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


def _funding(trades: int, ts_ns: int) -> dict[str, str]:
    """The rate steps every ten trades; the next settlement is the next 8-hour boundary."""
    rate = 100 + 10 * ((trades // 10) % 5)  # millionths
    next_ms = (ts_ns // 1_000_000 // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS
    return {
        "fundingRate": f"0.{rate:06d}".rstrip("0"),
        "nextFundingTime": str(next_ms),
        "fundingIntervalHour": "8",
    }


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
            "v": self.qty(symbol, trade.qty, trade.price),
            "p": self.price[symbol](trade.price),
            "L": tick,
            "i": str(uuid.UUID(int=trade.trade_id * 0x9E3779B97F4A7C15 % (1 << 128))),
            "BT": False,
            "RPI": False,
            "seq": seq,
        }


class BybitInverse(BybitLinear):
    """Quantities are whole USD contracts: a level's or trade's lots at its price, rounded up."""

    name = "bybit-inverse"
    path = "/v5/public/inverse"
    category = "inverse"

    def qty(self, symbol: str, lots: int, price: int) -> str:
        if lots == 0:
            return "0"
        spec = self.feed.markets[symbol].spec
        return str(-(-lots * price // 10 ** (spec.qty_decimals + spec.price_decimals)))

    def volumes(self, symbol: str, lots: int, quote_units: int) -> tuple[str, str]:
        spec = self.feed.markets[symbol].spec
        usd = -(-quote_units // 10 ** (spec.qty_decimals + spec.price_decimals))
        return str(usd), self.texts.qty[symbol](lots)

    def _open_interest(self, market: SymbolMarket, traded_lots: int, mark: int) -> dict[str, str]:
        spec = market.spec
        lots = 1000 * 10**spec.qty_decimals + traded_lots // 10
        usd = self.qty(spec.symbol, lots, mark)
        base = int(usd) * 10**spec.price_decimals / mark
        return {"openInterest": usd, "openInterestValue": f"{base:.8f}"}


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
    inverse = dialect.category == "inverse"
    return _contract(
        dialect.wire[symbol],
        spec.base,
        spec.quote,
        tick,
        "1" if inverse else step,
        spec.price_decimals,
        inverse,
    )


def _contract(
    symbol: str, base: str, quote: str, tick: str, step: str, price_scale: int, inverse: bool
) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "contractType": "InversePerpetual" if inverse else "LinearPerpetual",
        "status": "Trading",
        "baseCoin": base,
        "quoteCoin": quote,
        "launchTime": "1585526400000",
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": str(price_scale),
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
        "settleCoin": base if inverse else quote,
        "copyTrading": "both",
        "upperFundingRate": "0.005",
        "lowerFundingRate": "-0.005",
        "isPreListing": False,
        "preListingInfo": None,
    }


def _fillers() -> list[dict[str, Any]]:
    return [
        _contract(f"SIM{i:04d}USDT", f"SIM{i:04d}", "USDT", "0.0001", "1", 4, False)
        for i in range(LINEAR_FILLERS)
    ]


def _error(message: str) -> dict[str, Any]:
    return {
        "retCode": 10001,
        "retMsg": message,
        "result": {},
        "retExtInfo": {},
        "time": int(time.time() * 1000),
    }


def _page(rows: list[dict[str, Any]], query: Any) -> tuple[list[dict[str, Any]], str] | None:
    """One page of ``rows`` after ``cursor`` (``offset=N``); None for a cursor this never gave."""
    limit = min(max(int(query.get("limit") or PAGE_DEFAULT), 1), PAGE_MAX)
    cursor = query.get("cursor") or "offset=0"
    if not cursor.startswith("offset=") or not cursor[7:].isdigit():
        return None
    start = int(cursor[7:])
    end = start + limit
    return rows[start:end], f"offset={end}" if end < len(rows) else ""


def _rest(dialects: dict[str, BybitBase]) -> list[tuple[str, Any]]:
    fillers = _fillers()

    def listing(dialect: BybitBase) -> list[dict[str, Any]]:
        rows = [_instrument(dialect, s) for s in dialect.feed.markets]
        return fillers + rows if dialect.category == "linear" else rows

    async def instruments(request: web.Request) -> web.Response:
        category = request.query.get("category", "")
        dialect = dialects.get(category)
        if dialect is None:
            return web.json_response(_error("Illegal category"), dumps=dumps)
        wanted = request.query.get("symbol")
        if wanted is not None and wanted not in dialect.native:
            return web.json_response(_error("Not supported symbols"), dumps=dumps)
        if wanted is not None:
            page: tuple[list[dict[str, Any]], str] | None = (
                [_instrument(dialect, dialect.native[wanted])],
                "",
            )
        else:
            try:
                page = _page(listing(dialect), request.query)
            except ValueError:
                page = None
        if page is None:
            return web.json_response(_error("Illegal limit or cursor"), dumps=dumps)
        result = {"category": category, "list": page[0], "nextPageCursor": page[1]}
        answer = {
            "retCode": 0,
            "retMsg": "OK",
            "result": result,
            "retExtInfo": {},
            "time": int(time.time() * 1000),
        }
        return web.json_response(answer, dumps=dumps)

    return [("/v5/market/instruments-info", instruments)]


def listings(config: SimConfig) -> dict[str, list[str]]:
    """The simulated markets per category (see the module docstring)."""
    listed = config.listed("bybit")
    pairs = [s for s in listed if s.count("-") == 1]
    perpetuals = ["-".join(s.split("-")[:2]) for s in listed if s.endswith("-PERP")]
    bases = dict.fromkeys(s.split("-", 1)[0] for s in listed)
    return {
        "spot": pairs,
        "linear": list(dict.fromkeys([*pairs, *perpetuals])),
        "inverse": [f"{base}-USD" for base in bases],
    }


def create(config: SimConfig) -> Venue:
    markets = listings(config)
    feeds = {category: Feed("bybit", category, symbols, config) for category, symbols in markets.items()}
    dialects: dict[str, BybitBase] = {
        "spot": BybitSpot(feeds["spot"]),
        "linear": BybitLinear(feeds["linear"]),
        "inverse": BybitInverse(feeds["inverse"]),
    }
    return Venue("bybit", dict(feeds), list(dialects.values()), _rest(dialects))
