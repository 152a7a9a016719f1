"""Gate.io v4 spot: ``{"time","channel","event","payload"}`` requests at /ws/v4/, one ack per
request, ``spot.ping`` -> ``spot.pong``, ``spot.trades`` (one trade per frame) and
``spot.order_book_update`` with contiguous ``U``/``u`` bridged by the REST order_book ``id``,
``spot.tickers`` (after every step with trades, sent after its trades) and 1m ``spot.candlesticks``
(``v`` the quote volume, ``a`` the base amount; pushed after every step with trades, and once more
with ``w: true`` when the window has ended before a trade opened the next one).

Clients that send nothing (no ping) for ``client_idle_timeout_s`` are dropped: the simulator's
way of making the connector's application ping matter.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from simulator.base import (
    Dialect,
    Feed,
    Frame,
    Session,
    SimConfig,
    SubKey,
    Venue,
    dumps,
    trimmed_texts,
)
from simulator.kline_frames import StatsTexts
from simulator.klines import Kline
from simulator.market import Step, SymbolMarket, Trade

BOOK = "spot.order_book_update"
TRADES = "spot.trades"
TICKERS = "spot.tickers"
CANDLES = "spot.candlesticks"
CANDLE_INTERVAL = "1m"  # the simulator's klines are 1 minute (simulator/klines.py)
INTERVALS = frozenset({"100ms", "1000ms"})
MAX_BOOK_LIMIT = 100
Levels = list[tuple[int, int]]


class GateioDialect(Dialect):
    exchange = "gateio"
    name = "gateio"
    path = "/ws/v4/"
    client_idle_timeout_s = 60.0

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.native = {s.replace("-", "_"): s for s in feed.markets}
        self.wire = {s: s.replace("-", "_") for s in feed.markets}
        self.price, self.size = trimmed_texts(feed)
        self.quote = StatsTexts(feed).quote  # quote volumes (tick x lot units) as decimal text

    # -- requests -------------------------------------------------------------------------

    def on_text(self, session: Session, text: str) -> None:
        session.last_client_ping = time.monotonic()
        try:
            request = orjson.loads(text)
            channel, event = request["channel"], request.get("event", "")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            session.send(_reply("", "", error={"code": 1, "message": "invalid argument struct"}))
            return
        if channel == "spot.ping":
            session.send(_reply("spot.pong", "", result=None))
            return
        if event not in ("subscribe", "unsubscribe") or channel not in (BOOK, TRADES, TICKERS, CANDLES):
            session.send(_reply(channel, event, error={"code": 2, "message": "unknown channel or event"}))
            return
        keys = self._keys(channel, request.get("payload"))
        if isinstance(keys, str):
            session.send(_reply(channel, event, error={"code": 2, "message": keys}))
            return
        action = self.subscribe if event == "subscribe" else self.unsubscribe
        for key in keys:
            action(session, key)
        session.send(_reply(channel, event, result={"status": "success"}))

    def _keys(self, channel: str, payload: Any) -> list[SubKey] | str:
        """The subscription keys of a request, or the error message."""
        if not isinstance(payload, list) or not payload:
            return "payload must be a non-empty list"
        if channel == BOOK:
            if len(payload) != 2 or payload[1] not in INTERVALS:
                return f"invalid payload {payload!r}: expected [currency_pair, interval]"
            pairs = payload[:1]
        elif channel == CANDLES:
            if len(payload) != 2 or payload[0] != CANDLE_INTERVAL:
                return f"invalid payload {payload!r}: expected [{CANDLE_INTERVAL!r}, currency_pair]"
            pairs = payload[1:]
        else:
            pairs = payload
        unknown = [p for p in pairs if p not in self.native]
        if unknown:
            return f"unknown currency pair: {unknown[0]}"
        return [(channel, self.native[p], 0) for p in pairs]

    def on_timer(self, session: Session, now: float) -> None:
        if now - session.last_client_ping > self.client_idle_timeout_s:
            session.abort(1000, "no ping from the client")
            return
        now_ns = time.time_ns()
        for key in [k for k in session.subs if k[0] == CANDLES]:
            ended = self.feed.stats[key[1]].close_due(now_ns)
            marker = f"final:{key[1]}"
            if ended is not None and session.extra.get(marker) != ended.open_ns:
                session.extra[marker] = ended.open_ns  # one final frame per window
                session.offer(Frame(self._candle(key[1], ended, now_ns, final=True), "kline", key[1]))

    # -- market data ------------------------------------------------------------------------

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        book_key: SubKey = (BOOK, symbol, 0)
        if step.book_changed and book_key in self.subscribers:
            self.fan_out(book_key, Frame(self._update(symbol, step, ts_ns), "book", symbol))
        trade_key: SubKey = (TRADES, symbol, 0)
        if step.trades and trade_key in self.subscribers:
            for trade in step.trades:
                self.fan_out(trade_key, Frame(self._trade(symbol, trade, ts_ns), "trade", symbol))
        if step.trades:  # after the trades: a client has every trade a candle counts
            self._publish_stats(market, ts_ns)

    def _publish_stats(self, market: SymbolMarket, ts_ns: int) -> None:
        symbol = market.spec.symbol
        if (TICKERS, symbol, 0) in self.subscribers:
            self.fan_out((TICKERS, symbol, 0), Frame(self._ticker(market, ts_ns), "ticker", symbol))
        current = self.feed.stats[symbol].current
        if (CANDLES, symbol, 0) in self.subscribers and current is not None:
            self.fan_out((CANDLES, symbol, 0), Frame(self._candle(symbol, current, ts_ns), "kline", symbol))

    def _ticker(self, market: SymbolMarket, ts_ns: int) -> str:
        symbol = market.spec.symbol
        price = self.price[symbol]
        day = self.feed.stats[symbol].ticker()
        assert day is not None, "published after a trade"
        result = {
            "currency_pair": self.wire[symbol],
            "last": price(day.last),
            "lowest_ask": price(market.asks.top(1)[0][0]),
            "highest_bid": price(market.bids.top(1)[0][0]),
            "change_percentage": f"{(day.last - day.open) * 100 / day.open:.4f}",
            "base_volume": self.size[symbol](day.volume_lots),
            "quote_volume": self.quote[symbol](day.quote_units),
            "high_24h": price(day.high),
            "low_24h": price(day.low),
        }
        return _push(TICKERS, result, ts_ns)

    def _candle(self, symbol: str, kline: Kline, ts_ns: int, final: bool = False) -> str:
        price = self.price[symbol]
        result: dict[str, Any] = {
            "t": str(kline.open_ns // 1_000_000_000),
            "v": self.quote[symbol](kline.quote_units),
            "c": price(kline.close),
            "h": price(kline.high),
            "l": price(kline.low),
            "o": price(kline.open),
            "n": f"{CANDLE_INTERVAL}_{self.wire[symbol]}",
            "a": self.size[symbol](kline.volume_lots),
        }
        if final:
            result["w"] = True
        return _push(CANDLES, result, ts_ns)

    def _levels(self, symbol: str, levels: Levels) -> list[list[str]]:
        price, size = self.price[symbol], self.size[symbol]
        return [[price(p), size(q)] for p, q in levels]

    def _update(self, symbol: str, step: Step, ts_ns: int) -> str:
        ms = ts_ns // 1_000_000
        data = {
            "t": ms,
            "e": "depthUpdate",
            "E": ms // 1000,
            "s": self.wire[symbol],
            "U": step.first_update_id,
            "u": step.last_update_id,
            "b": self._levels(symbol, step.bids),
            "a": self._levels(symbol, step.asks),
        }
        return _push(BOOK, data, ts_ns)

    def _trade(self, symbol: str, trade: Trade, ts_ns: int) -> str:
        data = {
            "id": trade.trade_id,
            "create_time": ts_ns // 1_000_000_000,
            "create_time_ms": f"{ts_ns // 1_000_000}.{ts_ns % 1_000_000 // 100:04d}",
            "side": "buy" if trade.taker_buy else "sell",
            "currency_pair": self.wire[symbol],
            "amount": self.size[symbol](trade.qty),
            "price": self.price[symbol](trade.price),
            "range": f"{trade.trade_id}-{trade.trade_id}",
        }
        return _push(TRADES, data, ts_ns)

    def order_book(self, market: SymbolMarket, limit: int, with_id: bool) -> dict[str, Any]:
        symbol = market.spec.symbol
        ms = time.time_ns() // 1_000_000
        body: dict[str, Any] = {"id": market.update_id} if with_id else {}
        body.update(
            current=ms,
            update=ms,
            asks=self._levels(symbol, market.asks.top(limit)),
            bids=self._levels(symbol, market.bids.top(limit)),
        )
        return body


def _push(channel: str, result: dict[str, Any], ts_ns: int) -> str:
    return dumps(
        {
            "time": ts_ns // 1_000_000_000,
            "time_ms": ts_ns // 1_000_000,
            "channel": channel,
            "event": "update",
            "result": result,
        }
    )


def _reply(channel: str, event: str, **fields: Any) -> dict[str, Any]:
    now_ns = time.time_ns()
    body: dict[str, Any] = {
        "time": now_ns // 1_000_000_000,
        "time_ms": now_ns // 1_000_000,
        "channel": channel,
        "event": event,
    }
    if "error" in fields:
        body.update(error=fields["error"], result=None)
    else:
        body.update(result=fields.get("result"))
    return body


# -- REST -------------------------------------------------------------------------------------


def _error(label: str, message: str) -> web.Response:
    return web.json_response({"label": label, "message": message}, status=400, dumps=dumps)


def _pair(dialect: GateioDialect, symbol: str) -> dict[str, Any]:
    spec = dialect.feed.markets[symbol].spec
    return {
        "id": dialect.wire[symbol],
        "base": spec.base,
        "base_name": spec.base,
        "quote": spec.quote,
        "quote_name": spec.quote,
        "fee": "0.2",
        "min_base_amount": dialect.size[symbol](1),
        "min_quote_amount": "3",
        "max_quote_amount": "5000000",
        "amount_precision": spec.qty_decimals,
        "precision": spec.price_decimals,
        "trade_status": "tradable",
        "sell_start": 1516378650,
        "buy_start": 1516378650,
        "delisting_time": 0,
        "type": "normal",
    }


def _rest(dialect: GateioDialect) -> list[tuple[str, Any]]:
    async def currency_pairs(request: web.Request) -> web.Response:
        return web.json_response([_pair(dialect, s) for s in dialect.feed.markets], dumps=dumps)

    async def currency_pair(request: web.Request) -> web.Response:
        symbol = dialect.native.get(request.match_info["pair"])
        if symbol is None:
            return _error("INVALID_CURRENCY_PAIR", f"Invalid currency pair {request.match_info['pair']}")
        return web.json_response(_pair(dialect, symbol), dumps=dumps)

    async def order_book(request: web.Request) -> web.Response:
        symbol = dialect.native.get(request.query.get("currency_pair", ""))
        if symbol is None:
            return _error("INVALID_CURRENCY_PAIR", "Invalid currency pair")
        try:
            limit = min(int(request.query.get("limit", "10")), MAX_BOOK_LIMIT)
        except ValueError:
            return _error("INVALID_PARAM_VALUE", "Invalid limit")
        with_id = request.query.get("with_id") == "true"
        body = dialect.order_book(dialect.feed.markets[symbol], max(limit, 1), with_id)
        return web.json_response(body, dumps=dumps)

    return [
        ("/api/v4/spot/currency_pairs", currency_pairs),
        ("/api/v4/spot/currency_pairs/{pair}", currency_pair),
        ("/api/v4/spot/order_book", order_book),
    ]


def create(config: SimConfig) -> Venue:
    feed = Feed("gateio", "spot", config.listed("gateio"), config)
    dialect = GateioDialect(feed)
    return Venue("gateio", {"spot": feed}, [dialect], _rest(dialect))
