"""KuCoin classic spot: the ``POST /api/v1/bullet-public`` token handshake naming a websocket
endpoint on this simulator, ``welcome`` on connect (token checked), subscribe/unsubscribe acked
by id, JSON ``ping`` -> ``pong`` (clients silent for pingInterval + pingTimeout are dropped),
``/market/level2`` updates numbered by ``sequenceStart``/``sequenceEnd`` (every change carries
its own sequence; trades add a ``["0","0",seq]`` entry that only advances it) bridged by the REST
``level2_100`` snapshot's ``sequence``, ``/market/match`` trades (``trade.l3match``), and after
every step with trades (sent after its trades): ``/market/ticker`` (``trade.ticker``: last trade
and best bid/ask), ``/market/snapshot`` (``trade.snapshot``: 24 h stats as JSON numbers) and
``/market/candles:<symbol>_1min`` (``[start s, open, close, high, low, volume, turnover]``;
``trade.candles.add`` for a window's first push, ``trade.candles.update`` after that)."""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from typing import Any, ClassVar

import orjson
from aiohttp import web

from simulator.base import (
    Decimals,
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

WS_PATH = "/ws"
OK = "200000"
SNAPSHOT_DEPTH = 100
MAX_TOPICS = 100  # per connection; every symbol of a topic counts
CHANNELS = {
    "/market/level2": "level2",
    "/market/match": "match",
    "/market/ticker": "ticker",
    "/market/snapshot": "snapshot",
    "/market/candles": "candles",
}
CANDLE_TYPE = "1min"  # the simulator's klines are 1 minute (simulator/klines.py)
TOPICS = {channel: topic for topic, channel in CHANNELS.items()}


class KucoinDialect(Dialect):
    exchange = "kucoin"
    name = "kucoin"
    path = WS_PATH
    ping_interval_ms: ClassVar[int] = 18_000
    ping_timeout_ms: ClassVar[int] = 10_000

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.price, self.size = trimmed_texts(feed)
        # sequence = market update id + the sequence-only entries emitted so far (per symbol)
        self.extra: dict[str, int] = dict.fromkeys(feed.markets, 0)
        self.tokens: set[str] = set()
        self._token_numbers = itertools.count(1)
        self.quote = StatsTexts(feed).quote  # quote volumes (tick x lot units) as decimal text
        self.candle_sent: dict[str, int] = {}
        """symbol -> open time (ns) of the candle last pushed: the next window's first push is an add"""

    # -- handshake ----------------------------------------------------------------------------

    def issue_token(self) -> str:
        number = next(self._token_numbers)
        token = f"sim{number}.{zlib.crc32(f'kucoin-token-{number}-{time.time_ns()}'.encode()):08x}"
        self.tokens.add(token)
        return token

    def accept_query(self, session: Session, request: web.Request) -> None:
        connect_id = request.query.get("connectId") or session.conn_id
        if request.query.get("token") not in self.tokens:
            session.send({"id": connect_id, "type": "error", "code": 401, "data": "token is invalid"})
            # close once the error frame is out (abort drops whatever is still queued)
            asyncio.get_running_loop().call_later(0.2, session.abort, 1008, "token is invalid")
            return
        session.send({"id": connect_id, "type": "welcome"})

    # -- requests -----------------------------------------------------------------------------

    def on_text(self, session: Session, text: str) -> None:
        session.last_client_ping = time.monotonic()  # any client frame keeps the connection alive
        try:
            request = orjson.loads(text)
            kind, req_id = request["type"], str(request.get("id", ""))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            session.send({"id": "", "type": "error", "code": 400, "data": f"bad request: {text[:200]}"})
            return
        if kind == "ping":
            session.send({"id": req_id, "type": "pong", "timestamp": time.time_ns() // 1000})
        elif kind in ("subscribe", "unsubscribe"):
            self._subscription(session, kind, request, req_id)
        else:
            session.send({"id": req_id, "type": "error", "code": 400, "data": f"unsupported type {kind!r}"})

    def _subscription(self, session: Session, kind: str, request: dict[str, Any], req_id: str) -> None:
        topic = request.get("topic")
        prefix, _, names = topic.partition(":") if isinstance(topic, str) else ("", "", "")
        channel = CHANNELS.get(prefix)
        symbols = names.split(",") if names else []
        if channel == "candles":  # BTC-USDT_1min
            symbols = [
                name[: -len(CANDLE_TYPE) - 1] if name.endswith(f"_{CANDLE_TYPE}") else "" for name in symbols
            ]
        if channel is None or not symbols or any(s not in self.feed.markets for s in symbols):
            session.send({"id": req_id, "type": "error", "code": 404, "data": f"topic {topic} is not found"})
            return
        if kind == "subscribe":
            fresh = {(channel, s, 0) for s in symbols} - session.subs
            if len(session.subs) + len(fresh) > MAX_TOPICS:
                data = f"exceed max subscription count limitation of {MAX_TOPICS} per session"
                session.send({"id": req_id, "type": "error", "code": 509, "data": data})
                return
            for key in fresh:
                self.subscribe(session, key)
        else:
            for symbol in symbols:
                self.unsubscribe(session, (channel, symbol, 0))
        if request.get("response", False):
            session.send({"id": req_id, "type": "ack"})

    def on_timer(self, session: Session, now: float) -> None:
        limit_s = (self.ping_interval_ms + self.ping_timeout_ms) / 1000
        if now - session.last_client_ping > limit_s:
            session.abort(1000, f"no ping for {limit_s:.0f}s")

    # -- market data ----------------------------------------------------------------------------

    def sequence(self, market: SymbolMarket) -> int:
        return market.update_id + self.extra[market.spec.symbol]

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        book_key: SubKey = ("level2", symbol, 0)
        if book_key in self.subscribers and (step.book_changed or step.trades):
            self.fan_out(book_key, self._l2update(market, step, ts_ns))
        elif step.trades:
            self.extra[symbol] += 1  # keep the numbering the same whether or not anyone listens
        match_key: SubKey = ("match", symbol, 0)
        if step.trades and match_key in self.subscribers:
            for trade in step.trades:
                self.fan_out(match_key, Frame(self._match(symbol, trade, ts_ns), "trade", symbol))
        if step.trades:  # after the trades: a client has every trade a candle counts
            self._publish_stats(market, ts_ns)

    def _publish_stats(self, market: SymbolMarket, ts_ns: int) -> None:
        symbol = market.spec.symbol
        stats = self.feed.stats[symbol]
        # the 24 h snapshot first (real KuCoin sends it every 2 s): a ticker after it joins current stats
        if ("snapshot", symbol, 0) in self.subscribers:
            self.fan_out(("snapshot", symbol, 0), Frame(self._snapshot(market, ts_ns), "ticker", symbol))
        if ("ticker", symbol, 0) in self.subscribers:
            self.fan_out(("ticker", symbol, 0), Frame(self._ticker(market, ts_ns), "ticker", symbol))
        current = stats.current
        if current is None:
            return
        subject = "update" if self.candle_sent.get(symbol) == current.open_ns else "add"
        self.candle_sent[symbol] = current.open_ns
        if ("candles", symbol, 0) in self.subscribers:
            frame = Frame(self._candle(symbol, current, subject, ts_ns), "kline", symbol)
            self.fan_out(("candles", symbol, 0), frame)

    def _ticker(self, market: SymbolMarket, ts_ns: int) -> str:
        symbol = market.spec.symbol
        price, size = self.price[symbol], self.size[symbol]
        last = market.recent_trades[-1]
        (bid, bid_qty), (ask, ask_qty) = market.bids.top(1)[0], market.asks.top(1)[0]
        data = {
            "sequence": str(self.sequence(market)),
            "price": price(last.price),
            "size": size(last.qty),
            "bestAsk": price(ask),
            "bestAskSize": size(ask_qty),
            "bestBid": price(bid),
            "bestBidSize": size(bid_qty),
            "time": ts_ns // 1_000_000,
        }
        return _message(f"/market/ticker:{symbol}", "trade.ticker", dumps(data))

    def _snapshot(self, market: SymbolMarket, ts_ns: int) -> str:
        """24 h stats as KuCoin renders them: JSON numbers (the raw decimal text)."""
        symbol = market.spec.symbol
        price, size = self.price[symbol], self.size[symbol]
        day = self.feed.stats[symbol].ticker()
        assert day is not None, "published after a trade"
        (bid, _), (ask, _) = market.bids.top(1)[0], market.asks.top(1)[0]
        numbers = {
            "buy": price(bid),
            "sell": price(ask),
            "open": price(day.open),
            "high": price(day.high),
            "low": price(day.low),
            "close": price(day.last),
            "lastTradedPrice": price(day.last),
            "vol": size(day.volume_lots),
            "volValue": self.quote[symbol](day.quote_units),
        }
        fields = ",".join(f'"{name}":{value}' for name, value in numbers.items())
        data = (
            f'{{"sequence":"{self.sequence(market)}","data":{{"baseCurrency":"{market.spec.base}",{fields},'
            f'"datetime":{ts_ns // 1_000_000},"quoteCurrency":"{market.spec.quote}","symbol":"{symbol}",'
            f'"trading":true}}}}'
        )
        return _message(f"/market/snapshot:{symbol}", "trade.snapshot", data)

    def _candle(self, symbol: str, kline: Kline, subject: str, ts_ns: int) -> str:
        price = self.price[symbol]
        row = [
            str(kline.open_ns // 1_000_000_000),
            price(kline.open),
            price(kline.close),
            price(kline.high),
            price(kline.low),
            self.size[symbol](kline.volume_lots),
            self.quote[symbol](kline.quote_units),
        ]
        data = f'{{"symbol":"{symbol}","candles":{dumps(row)},"time":{ts_ns}}}'
        return _message(f"/market/candles:{symbol}_{CANDLE_TYPE}", f"trade.candles.{subject}", data)

    def _l2update(self, market: SymbolMarket, step: Step, ts_ns: int) -> Frame:
        symbol = market.spec.symbol
        price, size = self.price[symbol], self.size[symbol]
        start = step.first_update_id + self.extra[symbol]
        numbers = itertools.count(start)
        bids = [[price(p), size(q), str(next(numbers))] for p, q in step.bids]
        asks = [[price(p), size(q), str(next(numbers))] for p, q in step.asks]
        if step.trades:  # a matching event without a level2 change of its own
            asks.append(["0", "0", str(next(numbers))])
            self.extra[symbol] += 1
        end = self.sequence(market)
        text = (
            f'{{"topic":"{TOPICS["level2"]}:{symbol}","type":"message","subject":"trade.l2update",'
            f'"data":{{"changes":{{"asks":{dumps(asks)},"bids":{dumps(bids)}}},"sequenceEnd":{end},'
            f'"sequenceStart":{start},"symbol":"{symbol}","time":{ts_ns // 1_000_000}}}}}'
        )
        return Frame(text, "book", symbol)

    def _match(self, symbol: str, trade: Trade, ts_ns: int) -> str:
        data = {
            "makerOrderId": f"{trade.trade_id * 2:024x}",
            "price": self.price[symbol](trade.price),
            "sequence": str(trade.trade_id),
            "side": "buy" if trade.taker_buy else "sell",
            "size": self.size[symbol](trade.qty),
            "symbol": symbol,
            "takerOrderId": f"{trade.trade_id * 2 + 1:024x}",
            "time": str(ts_ns),
            "tradeId": str(trade.trade_id),
            "type": "match",
        }
        head = f'{{"topic":"{TOPICS["match"]}:{symbol}","type":"message","subject":"trade.l3match"'
        return f'{head},"data":{dumps(data)}}}'

    def snapshot_body(self, market: SymbolMarket) -> dict[str, Any]:
        symbol = market.spec.symbol
        price, size = self.price[symbol], self.size[symbol]
        return {
            "time": time.time_ns() // 1_000_000,
            "sequence": str(self.sequence(market)),
            "bids": [[price(p), size(q)] for p, q in market.bids.top(SNAPSHOT_DEPTH)],
            "asks": [[price(p), size(q)] for p, q in market.asks.top(SNAPSHOT_DEPTH)],
        }


def _message(topic: str, subject: str, data: str) -> str:
    return f'{{"type":"message","topic":"{topic}","subject":"{subject}","data":{data}}}'


# -- REST -------------------------------------------------------------------------------------


def _ok(data: Any) -> web.Response:
    return web.json_response({"code": OK, "data": data}, dumps=dumps)


def _error(code: str, msg: str, status: int = 400) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status, dumps=dumps)


def _symbol_info(dialect: KucoinDialect, symbol: str) -> dict[str, Any]:
    spec = dialect.feed.markets[symbol].spec
    tick = Decimals(spec.price_decimals, spec.price_decimals, True)(1)
    lot = Decimals(spec.qty_decimals, spec.qty_decimals, True)(1)
    return {
        "symbol": symbol,
        "name": symbol,
        "baseCurrency": spec.base,
        "quoteCurrency": spec.quote,
        "feeCurrency": spec.quote,
        "market": "USDS",
        "baseMinSize": lot,
        "quoteMinSize": "0.1",
        "baseMaxSize": "10000000000",
        "quoteMaxSize": "99999999",
        "baseIncrement": lot,
        "quoteIncrement": "0.000001",
        "priceIncrement": tick,
        "priceLimitRate": "0.1",
        "minFunds": "0.1",
        "isMarginEnabled": True,
        "enableTrading": True,
        "feeCategory": 1,
        "makerFeeCoefficient": "1.00",
        "takerFeeCoefficient": "1.00",
        "st": False,
        "callauctionIsEnabled": False,
    }


def _rest(dialect: KucoinDialect) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    async def bullet_public(request: web.Request) -> web.Response:
        server = {
            "endpoint": f"ws://{request.host}/{dialect.exchange}{WS_PATH}",
            "encrypt": False,
            "protocol": "websocket",
            "pingInterval": dialect.ping_interval_ms,
            "pingTimeout": dialect.ping_timeout_ms,
        }
        return _ok({"token": dialect.issue_token(), "instanceServers": [server]})

    async def symbols(request: web.Request) -> web.Response:
        return _ok([_symbol_info(dialect, s) for s in dialect.feed.markets])

    async def one_symbol(request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        if symbol not in dialect.feed.markets:
            return _error("400100", f"symbol {symbol} not exists")
        return _ok(_symbol_info(dialect, symbol))

    async def level2_100(request: web.Request) -> web.Response:
        market = dialect.feed.markets.get(request.query.get("symbol", ""))
        if market is None:
            return _error("400100", "symbol not exists")
        return _ok(dialect.snapshot_body(market))

    gets = [
        ("/api/v2/symbols", symbols),
        ("/api/v2/symbols/{symbol}", one_symbol),
        ("/api/v1/market/orderbook/level2_100", level2_100),
    ]
    return gets, [("/api/v1/bullet-public", bullet_public)]


def create(config: SimConfig) -> Venue:
    feed = Feed("kucoin", "spot", config.listed("kucoin"), config)
    dialect = KucoinDialect(feed)
    gets, posts = _rest(dialect)
    return Venue("kucoin", {"spot": feed}, [dialect], gets, posts)
