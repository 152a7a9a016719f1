"""HTX (Huobi) spot: every server frame is gzip-compressed JSON text sent as a binary frame.

``{"sub"|"unsub": topic, "id"}`` with ``subbed``/``unsubbed`` acks; ``{"req": "market.<sym>.mbp.<n>"}``
answered with the MBP snapshot ``{"id","rep","status","data":{"seqNum","bids","asks"}}``; a
server ``{"ping":ms}`` every ``heartbeat_interval_s`` that the client answers with ``{"pong":ms}``
(after ``MISSED_PINGS`` unanswered pings the connection is closed); ``market.<sym>.mbp.<n>``
incremental updates chained by ``prevSeqNum``/``seqNum`` (levels leaving the top ``n`` are sent
with size 0), ``market.<sym>.depth.step0`` full top-150 books, ``market.<sym>.trade.detail``, and
after every step with trades (sent after its trades) ``market.<sym>.ticker`` (24 h stats, best
bid/ask and last trade), ``market.<sym>.detail`` (24 h stats) and ``market.<sym>.kline.1min`` (with
the window's trade ``count``; no final flag). Prices and sizes are JSON numbers. Served on ``/ws``
and on ``/feed`` (where HTX serves MBP).
"""

from __future__ import annotations

import re
import time
import zlib
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
from simulator.market import Step, SymbolMarket

MBP_LEVELS = (5, 20, 150, 400)
STEP0_LEVELS = 150
MISSED_PINGS = 2
_TOPIC = re.compile(
    r"^market\.([a-z0-9]+)\.(mbp\.(\d+)|depth\.step0|trade\.detail|ticker|detail|kline\.1min)$"
)
STATS_TOPICS = ("ticker", "detail", "kline.1min")
"""published from the simulator's own klines and 24 h window (simulator/klines.py: 1 minute)"""
Levels = list[tuple[int, int]]


def gzip_text(text: str) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    return packer.compress(text.encode()) + packer.flush()


def _number(text: str) -> str:
    """Decimal text as HTX renders a JSON double (``716.0``, ``0.078924``)."""
    return text if "." in text else f"{text}.0"


class HtxDialect(Dialect):
    exchange = "htx"
    name = "htx"
    path = "/ws"

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.wire = {s: s.replace("-", "").lower() for s in feed.markets}
        self.native = {w: s for s, w in self.wire.items()}
        self.price, self.size = trimmed_texts(feed)
        self.seq_nums: dict[tuple[str, int], int] = {}  # (symbol, levels) -> last seqNum sent
        self.trade_ids = {s: 100_000_000_000 + i * 1_000_000_000 for i, s in enumerate(feed.markets)}
        self.quote = StatsTexts(feed).quote  # quote volumes (tick x lot units) as decimal text

    def encode(self, text: str) -> bytes:
        return gzip_text(text)

    # -- requests -------------------------------------------------------------------------

    def on_text(self, session: Session, text: str) -> None:
        try:
            request = orjson.loads(text)
            if not isinstance(request, dict):
                raise TypeError("not an object")
        except (orjson.JSONDecodeError, TypeError):
            session.send(_error(None, "bad-request", f"invalid request: {text[:100]}"))
            return
        if "pong" in request:
            session.extra["pings_unanswered"] = 0
            return
        req_id = request.get("id")
        for op in ("sub", "unsub", "req"):
            if op in request:
                self._request(session, op, request[op], req_id)
                return
        session.send(_error(req_id, "bad-request", f"invalid request: {text[:100]}"))

    def _request(self, session: Session, op: str, topic: Any, req_id: Any) -> None:
        key = self._key(topic)
        if key is None:
            session.send(_error(req_id, "bad-request", f"invalid topic {topic}"))
            return
        if op == "req":
            if key[0] != "mbp":
                session.send(_error(req_id, "bad-request", f"unsupported req {topic}"))
                return
            session.offer(self._snapshot_reply(key, req_id))
            return
        if op == "sub":
            self.subscribe(session, key)
            if key[0] == "mbp":
                self.seq_nums.setdefault((key[1], key[2]), self.feed.markets[key[1]].seq)
            session.send({"id": req_id, "status": "ok", "subbed": topic, "ts": _ms()})
        else:
            self.unsubscribe(session, key)
            session.send({"id": req_id, "status": "ok", "unsubbed": topic, "ts": _ms()})

    def _key(self, topic: Any) -> SubKey | None:
        match = _TOPIC.match(topic) if isinstance(topic, str) else None
        if match is None:
            return None
        symbol = self.native.get(match.group(1))
        if symbol is None:
            return None
        if match.group(3) is not None:
            levels = int(match.group(3))
            return ("mbp", symbol, levels) if levels in MBP_LEVELS else None
        return (match.group(2), symbol, 0)

    def on_timer(self, session: Session, now: float) -> None:
        if now - session.last_server_ping < self.config.heartbeat_interval_s:
            return
        session.last_server_ping = now
        unanswered = session.extra.get("pings_unanswered", 0)
        if unanswered >= MISSED_PINGS:
            session.abort(1008, f"no pong for {unanswered} pings")
            return
        session.extra["pings_unanswered"] = unanswered + 1
        session.offer(Frame(f'{{"ping":{_ms()}}}', "heartbeat"))

    # -- frames -------------------------------------------------------------------------------

    def _levels(self, symbol: str, levels: Levels) -> str:
        price, size = self.price[symbol], self.size[symbol]
        return "[" + ",".join(f"[{_number(price(p))},{_number(size(q))}]" for p, q in levels) + "]"

    def _topic(self, symbol: str, key: SubKey) -> str:
        suffix = f"mbp.{key[2]}" if key[0] == "mbp" else key[0]
        return f"market.{self.wire[symbol]}.{suffix}"

    def _snapshot_reply(self, key: SubKey, req_id: Any) -> Frame:
        symbol, depth = key[1], key[2]
        market = self.feed.markets[symbol]
        seq = self.seq_nums.get((symbol, depth), market.seq)
        bids, asks = (
            self._levels(symbol, market.bids.top(depth)),
            self._levels(symbol, market.asks.top(depth)),
        )
        text = (
            f'{{"id":{dumps(req_id)},"rep":"{self._topic(symbol, key)}","status":"ok",'
            f'"data":{{"seqNum":{seq},"bids":{bids},"asks":{asks}}}}}'
        )
        return Frame(text, "snapshot", symbol)

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        ms = ts_ns // 1_000_000
        for depth in MBP_LEVELS:
            key: SubKey = ("mbp", symbol, depth)
            if key in self.subscribers:
                self._publish_mbp(symbol, key, step, ms)
            else:
                self.seq_nums.pop((symbol, depth), None)
        step0: SubKey = ("depth.step0", symbol, 0)
        if step.book_changed and step0 in self.subscribers:
            self.fan_out(step0, self._full_book(market, step0, ms))
        trades: SubKey = ("trade.detail", symbol, 0)
        if step.trades and trades in self.subscribers:
            self.fan_out(trades, self._trades(market, step, trades, ms))
        for topic in STATS_TOPICS if step.trades else ():  # after the trades: a candle counts no unseen trade
            key = (topic, symbol, 0)
            if key in self.subscribers:
                self.fan_out(key, Frame(self._stats_push(market, key, ms), "kline", symbol))

    def _stats_push(self, market: SymbolMarket, key: SubKey, ms: int) -> str:
        symbol = key[1]
        if key[0] == "kline.1min":
            tick = self._kline_tick(symbol)
        elif key[0] == "ticker":
            tick = self._day_tick(symbol) + self._book_tick(market)
        else:  # detail
            tick = f'"id":{market.seq},{self._day_tick(symbol)},"version":{market.seq}'
        return f'{{"ch":"{self._topic(symbol, key)}","ts":{ms},"tick":{{{tick}}}}}'

    def _numbers(
        self, symbol: str, prices: dict[str, int], sizes: dict[str, int], quotes: dict[str, int]
    ) -> str:
        texts = [(name, self.price[symbol](units)) for name, units in prices.items()]
        texts += [(name, self.size[symbol](units)) for name, units in sizes.items()]
        texts += [(name, self.quote[symbol](units)) for name, units in quotes.items()]
        return ",".join(f'"{name}":{_number(text)}' for name, text in texts)

    def _kline_tick(self, symbol: str) -> str:
        kline = self.feed.stats[symbol].current
        assert kline is not None, "published after a trade"
        prices = {"open": kline.open, "close": kline.close, "low": kline.low, "high": kline.high}
        numbers = self._numbers(symbol, prices, {"amount": kline.volume_lots}, {"vol": kline.quote_units})
        return f'"id":{kline.open_ns // 1_000_000_000},{numbers},"count":{kline.trades}'

    def _day_tick(self, symbol: str) -> str:
        day = self.feed.stats[symbol].ticker()
        assert day is not None, "published after a trade"
        prices = {"open": day.open, "high": day.high, "low": day.low, "close": day.last}
        numbers = self._numbers(symbol, prices, {"amount": day.volume_lots}, {"vol": day.quote_units})
        return f'{numbers},"count":{day.trades}'

    def _book_tick(self, market: SymbolMarket) -> str:
        symbol = market.spec.symbol
        day = self.feed.stats[symbol].ticker()
        assert day is not None, "published after a trade"
        (bid, bid_qty), (ask, ask_qty) = market.bids.top(1)[0], market.asks.top(1)[0]
        prices = {"bid": bid, "ask": ask, "lastPrice": day.last}
        sizes = {"bidSize": bid_qty, "askSize": ask_qty, "lastSize": day.last_qty}
        return "," + self._numbers(symbol, prices, sizes, {})

    def _publish_mbp(self, symbol: str, key: SubKey, step: Step, ms: int) -> None:
        view = step.views.get(key[2])
        if view is None or view.empty(with_out=True):
            return
        bids = sorted(view.bids + [(p, 0) for p in view.bids_out], reverse=True)
        asks = sorted(view.asks + [(p, 0) for p in view.asks_out])
        prev = self.seq_nums[(symbol, key[2])]
        self.seq_nums[(symbol, key[2])] = step.seq
        text = (
            f'{{"ch":"{self._topic(symbol, key)}","ts":{ms},"tick":{{"seqNum":{step.seq},'
            f'"prevSeqNum":{prev},"bids":{self._levels(symbol, bids)},"asks":{self._levels(symbol, asks)}}}}}'
        )
        self.fan_out(key, Frame(text, "book", symbol))

    def _full_book(self, market: SymbolMarket, key: SubKey, ms: int) -> Frame:
        symbol = key[1]
        bids = self._levels(symbol, market.bids.top(STEP0_LEVELS))
        asks = self._levels(symbol, market.asks.top(STEP0_LEVELS))
        text = (
            f'{{"ch":"{self._topic(symbol, key)}","ts":{ms},"tick":{{"bids":{bids},"asks":{asks},'
            f'"version":{market.update_id},"ts":{ms}}}}}'
        )
        return Frame(text, "snapshot", symbol)

    def _trades(self, market: SymbolMarket, step: Step, key: SubKey, ms: int) -> Frame:
        symbol = key[1]
        price, size = self.price[symbol], self.size[symbol]
        rows = []
        for trade in step.trades:
            trade_id = self.trade_ids[symbol] + trade.trade_id
            rows.append(
                f'{{"id":{trade_id}{trade.trade_id:015d},"ts":{ms},"tradeId":{trade_id},'
                f'"amount":{_number(size(trade.qty))},"price":{_number(price(trade.price))},'
                f'"direction":"{"buy" if trade.taker_buy else "sell"}"}}'
            )
        text = (
            f'{{"ch":"{self._topic(symbol, key)}","ts":{ms},"tick":{{"id":{step.seq},"ts":{ms},'
            f'"data":[{",".join(rows)}]}}}}'
        )
        return Frame(text, "trade", symbol)


class HtxFeedDialect(HtxDialect):
    """``/feed``: the endpoint HTX documents for MBP incremental data."""

    name = "htx-feed"
    path = "/feed"


def _ms() -> int:
    return time.time_ns() // 1_000_000


def _error(req_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": req_id, "status": "error", "err-code": code, "err-msg": message, "ts": _ms()}


# -- REST ---------------------------------------------------------------------------------------


def _symbol_info(dialect: HtxDialect, symbol: str) -> dict[str, Any]:
    spec = dialect.feed.markets[symbol].spec
    return {
        "tags": "",
        "state": "online",
        "wr": "1.5",
        "sc": dialect.wire[symbol],
        "p": [{"id": 9, "name": "Grayscale", "weight": 91}],
        "bcdn": spec.base,
        "qcdn": spec.quote,
        "elr": None,
        "tpp": spec.price_decimals,
        "tap": spec.qty_decimals,
        "fp": 8,
        "smlr": None,
        "flr": None,
        "whe": False,
        "cd": False,
        "te": True,
        "sp": "main",
        "d": None,
        "bc": spec.base.lower(),
        "qc": spec.quote.lower(),
        "toa": 1514779200000,
        "ttp": 8,
        "w": 999400000,
        "lr": 5,
        "dn": f"{spec.base}/{spec.quote}",
    }


def _rest(dialect: HtxDialect) -> list[tuple[str, Any]]:
    async def symbols(request: web.Request) -> web.Response:
        wanted = request.query.get("symbols")
        names = wanted.split(",") if wanted else list(dialect.native)
        data = [_symbol_info(dialect, dialect.native[n]) for n in names if n in dialect.native]
        return web.json_response({"status": "ok", "data": data, "ts": str(_ms()), "full": 1}, dumps=dumps)

    return [("/v2/settings/common/symbols", symbols)]


def create(config: SimConfig) -> Venue:
    feed = Feed("htx", "spot", config.listed("htx"), config)
    ws, mbp = HtxDialect(feed), HtxFeedDialect(feed)
    return Venue("htx", {"spot": feed}, [ws, mbp], _rest(ws))
