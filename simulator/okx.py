"""OKX v5 public: op subscribe/unsubscribe with one ack per arg, text ``ping`` -> ``pong``,
``books`` (400 levels) snapshot with prevSeqId -1 then updates chained by seqId/prevSeqId, the
25-level CRC32 checksum (or 0, as production sends since June 2026), periodic no-change
keep-alive updates, ``trades`` and ``tickers`` (the current ticker on subscribe, then one after
each step with trades); candles only on /ws/v5/business (``OkxBusinessDialect``): ``candle1m``
from the simulator's own klines, the open candle on subscribe and after trades, and the final
one once with confirm ``"1"`` when its window ends (9-field rows)."""

from __future__ import annotations

import time
from typing import Any

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
    interleaved_crc32,
    trimmed_texts,
)
from simulator.kline_frames import FinalCandles, StatsTexts
from simulator.klines import Kline
from simulator.market import Step, SymbolMarket

BOOK_DEPTH = 400
Levels = list[tuple[int, int]]


class OkxDialect(Dialect):
    exchange = "okx"
    name = "okx"
    path = "/ws/v5/public"
    faults = frozenset({"gap", "checksum", "disconnect", "silent", "malformed", "snapshot"})
    channels: tuple[str, ...] = ("books", "trades", "tickers")

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.price, self.size = trimmed_texts(feed)
        self.seq_ids: dict[str, int] = {}
        self.last_keepalive: dict[str, float] = {}
        self.texts = StatsTexts(feed)

    # -- requests -------------------------------------------------------------------------

    def on_text(self, session: Session, text: str) -> None:
        if text == "ping":
            session.offer(Frame("pong"))
            return
        try:
            request = orjson.loads(text)
            op, args = request["op"], request["args"]
            if not isinstance(args, list):
                raise TypeError("args must be a list")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            session.send(
                {
                    "event": "error",
                    "code": "60012",
                    "msg": f"Invalid request: {text[:200]}",
                    "connId": session.conn_id,
                }
            )
            return
        req_id = request.get("id")
        if op not in ("subscribe", "unsubscribe"):
            session.send(
                {
                    **_id(req_id),
                    "event": "error",
                    "code": "60012",
                    "msg": f"Invalid request: {text[:200]}",
                    "connId": session.conn_id,
                }
            )
            return
        for arg in args:
            self._one(session, op, arg, req_id)
        if not session.subs:
            session.opened_at = time.monotonic()

    def _one(self, session: Session, op: str, arg: Any, req_id: Any) -> None:
        channel = arg.get("channel") if isinstance(arg, dict) else None
        inst = arg.get("instId") if isinstance(arg, dict) else None
        if channel not in self.channels or inst not in self.feed.markets:
            session.send(
                {
                    **_id(req_id),
                    "event": "error",
                    "code": "60018",
                    "msg": f"Wrong URL or channel:{channel},instId:{inst} doesn't exist",
                    "connId": session.conn_id,
                }
            )
            return
        key: SubKey = (str(channel), str(inst), BOOK_DEPTH if channel == "books" else 0)
        (self.subscribe if op == "subscribe" else self.unsubscribe)(session, key)
        session.send(
            {
                **_id(req_id),
                "event": op,
                "arg": {"channel": channel, "instId": inst},
                "connId": session.conn_id,
            }
        )
        if op == "subscribe":
            self.on_subscribed(session, key)

    def on_subscribed(self, session: Session, key: SubKey) -> None:
        """What OKX pushes right after the ack: the book snapshot, the current ticker."""
        if key[0] == "books":
            session.offer(self._snapshot(key[1], time.time_ns()))
        elif key[0] == "tickers":
            ticker = self._ticker(self.feed.markets[key[1]], time.time_ns())
            if ticker is not None:
                session.offer(Frame(ticker, "ticker", key[1]))

    def on_timer(self, session: Session, now: float) -> None:
        if not session.subs and now - session.opened_at > self.config.okx_idle_timeout_s:
            session.abort(4004, "No data received in 30s.")

    # -- frames -------------------------------------------------------------------------------

    def _texts(self, symbol: str, levels: Levels) -> list[tuple[str, str]]:
        price, size = self.price[symbol], self.size[symbol]
        return [(price(p), size(q)) for p, q in levels]

    def _checksum(self, market: SymbolMarket) -> int:
        if self.config.okx_checksum == "zero":
            return 0
        symbol = market.spec.symbol
        return interleaved_crc32(
            self._texts(symbol, market.bids.top(25)), self._texts(symbol, market.asks.top(25))
        )

    def _levels(self, symbol: str, levels: Levels) -> str:
        return dumps(
            [
                [p, q, "0", str(_orders(qty)) if qty else "0"]
                for (p, q), (_, qty) in zip(self._texts(symbol, levels), levels, strict=True)
            ]
        )

    def _book_frame(
        self,
        symbol: str,
        action: str,
        bids: Levels,
        asks: Levels,
        prev: int,
        seq: int,
        market: SymbolMarket,
        ts_ns: int,
    ) -> Frame:
        crc = self._checksum(market)
        text = (
            f'{{"arg":{{"channel":"books","instId":"{symbol}"}},"action":"{action}","data":[{{'
            f'"asks":{self._levels(symbol, asks)},"bids":{self._levels(symbol, bids)},'
            f'"ts":"{ts_ns // 1_000_000}","checksum":{crc},"prevSeqId":{prev},"seqId":{seq}}}]}}'
        )
        kind = "book" if action == "update" else "snapshot"
        return Frame(text, kind, symbol, checksum_token=f'"checksum":{crc}')

    def _snapshot(self, symbol: str, ts_ns: int) -> Frame:
        market = self.feed.markets[symbol]
        seq = self.seq_ids.setdefault(symbol, market.seq)
        bids, asks = market.bids.top(BOOK_DEPTH), market.asks.top(BOOK_DEPTH)
        return self._book_frame(symbol, "snapshot", bids, asks, -1, seq, market, ts_ns)

    def resend_snapshots(self, session: Session, symbol: str | None) -> None:
        ts_ns = time.time_ns()
        for key in list(session.subs):
            if key[0] == "books" and symbol in (None, key[1]):
                session.offer(self._snapshot(key[1], ts_ns))

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        book_key = ("books", symbol, BOOK_DEPTH)
        if book_key in self.subscribers:
            self._publish_book(market, step, book_key, ts_ns)
        else:
            self.seq_ids.pop(symbol, None)
        trade_key = ("trades", symbol, 0)
        if step.trades and trade_key in self.subscribers:
            price, size, ms = self.price[symbol], self.size[symbol], str(ts_ns // 1_000_000)
            data = [
                {
                    "instId": symbol,
                    "tradeId": str(t.trade_id),
                    "px": price(t.price),
                    "sz": size(t.qty),
                    "side": "buy" if t.taker_buy else "sell",
                    "ts": ms,
                }
                for t in step.trades
            ]
            text = f'{{"arg":{{"channel":"trades","instId":"{symbol}"}},"data":{dumps(data)}}}'
            self.fan_out(trade_key, Frame(text, "trade", symbol))
        ticker_key = ("tickers", symbol, 0)
        if step.trades and ticker_key in self.subscribers:
            ticker = self._ticker(market, ts_ns)
            if ticker is not None:
                self.fan_out(ticker_key, Frame(ticker, "ticker", symbol))

    def _ticker(self, market: SymbolMarket, ts_ns: int) -> str | None:
        symbol = market.spec.symbol
        day = self.feed.stats[symbol].ticker()
        if day is None:
            return None
        price, size = self.texts.price[symbol], self.texts.qty[symbol]
        (bid, bid_qty), (ask, ask_qty) = market.bids.top(1)[0], market.asks.top(1)[0]
        data = {
            "instType": "SPOT",
            "instId": symbol,
            "last": price(day.last),
            "lastSz": size(day.last_qty),
            "askPx": price(ask),
            "askSz": size(ask_qty),
            "bidPx": price(bid),
            "bidSz": size(bid_qty),
            "open24h": price(day.open),
            "high24h": price(day.high),
            "low24h": price(day.low),
            "volCcy24h": self.texts.quote[symbol](day.quote_units),
            "vol24h": size(day.volume_lots),
            "ts": str(ts_ns // 1_000_000),
            "sodUtc0": price(day.open),
            "sodUtc8": price(day.open),
        }
        return f'{{"arg":{{"channel":"tickers","instId":"{symbol}"}},"data":[{dumps(data)}]}}'

    def _publish_book(self, market: SymbolMarket, step: Step, key: SubKey, ts_ns: int) -> None:
        symbol = key[1]
        prev = self.seq_ids.setdefault(symbol, market.seq)
        view = step.views.get(BOOK_DEPTH)
        if view is not None and not view.empty(with_out=True):
            bids = sorted(view.bids + [(p, 0) for p in view.bids_out], reverse=True)
            asks = sorted(view.asks + [(p, 0) for p in view.asks_out])
            self.seq_ids[symbol] = step.seq
            self.fan_out(key, self._book_frame(symbol, "update", bids, asks, prev, step.seq, market, ts_ns))
        keepalive = self.config.okx_keepalive_s
        now = time.monotonic()
        if keepalive > 0 and now - self.last_keepalive.setdefault(symbol, now) >= keepalive:
            self.last_keepalive[symbol] = now
            seq = self.seq_ids[symbol]
            frame = self._book_frame(symbol, "update", [], [], seq, seq, market, ts_ns)
            frame.gap_ok = False  # dropping a no-change update is not observable
            self.fan_out(key, frame)


class OkxBusinessDialect(OkxDialect):
    """/ws/v5/business: the candle channels (only ``candle1m``: the simulator's klines)."""

    name = "okx-business"
    path = "/ws/v5/business"
    faults = frozenset({"disconnect", "silent", "malformed"})
    channels = ("candle1m",)

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.finals = FinalCandles()

    def on_subscribed(self, session: Session, key: SubKey) -> None:
        current = self.feed.stats[key[1]].current
        if current is not None:
            session.offer(self._candle_frame(key[1], current, closed=False))

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        stats = self.feed.stats[symbol]
        final = self.finals.due(symbol, stats, ts_ns)
        key = ("candle1m", symbol, 0)
        if key not in self.subscribers:
            return
        if final is not None:
            self.fan_out(key, self._candle_frame(symbol, final, closed=True))
        if step.trades and stats.current is not None and stats.current is not final:
            self.fan_out(key, self._candle_frame(symbol, stats.current, closed=False))

    def _candle_frame(self, symbol: str, kline: Kline, closed: bool) -> Frame:
        texts = self.texts
        price, quote = texts.price[symbol], texts.quote[symbol](kline.quote_units)
        row = [
            str(kline.open_ns // 1_000_000),
            price(kline.open),
            price(kline.high),
            price(kline.low),
            price(kline.close),
            texts.qty[symbol](kline.volume_lots),
            quote,
            quote,
            "1" if closed else "0",
        ]
        text = f'{{"arg":{{"channel":"candle1m","instId":"{symbol}"}},"data":[{dumps(row)}]}}'
        return Frame(text, "kline", symbol)


def _orders(qty: int) -> int:
    return 1 + qty % 5


def _id(req_id: Any) -> dict[str, Any]:
    return {} if req_id is None else {"id": req_id}


def _instrument(dialect: OkxDialect, symbol: str) -> dict[str, Any]:
    spec = dialect.feed.markets[symbol].spec
    tick = Decimals(spec.price_decimals, spec.price_decimals, True)(1)
    lot = Decimals(spec.qty_decimals, spec.qty_decimals, True)(1)
    return {
        "instType": "SPOT",
        "instId": symbol,
        "uly": "",
        "instFamily": "",
        "baseCcy": spec.base,
        "quoteCcy": spec.quote,
        "settleCcy": "",
        "ctVal": "",
        "ctMult": "",
        "ctValCcy": "",
        "optType": "",
        "stk": "",
        "listTime": "1548133413000",
        "expTime": "",
        "lever": "10",
        "tickSz": tick,
        "lotSz": lot,
        "minSz": lot,
        "ctType": "",
        "alias": "",
        "state": "live",
        "maxLmtSz": "9999999999",
        "maxMktSz": "1000000",
        "maxLmtAmt": "20000000",
        "maxMktAmt": "1000000",
        "maxTwapSz": "9999999999",
        "maxIcebergSz": "9999999999",
        "maxTriggerSz": "9999999999",
        "maxStopSz": "1000000",
        "ruleType": "normal",
    }


def _rest(dialect: OkxDialect) -> list[tuple[str, Any]]:
    async def instruments(request: web.Request) -> web.Response:
        if request.query.get("instType") != "SPOT":
            return web.json_response(
                {"code": "51000", "msg": "Parameter instType error", "data": []}, dumps=dumps
            )
        wanted = request.query.get("instId")
        if wanted is not None and wanted not in dialect.feed.markets:
            return web.json_response(
                {"code": "51001", "msg": "Instrument ID does not exist", "data": []}, dumps=dumps
            )
        symbols = [wanted] if wanted else list(dialect.feed.markets)
        return web.json_response(
            {"code": "0", "msg": "", "data": [_instrument(dialect, s) for s in symbols]}, dumps=dumps
        )

    return [("/api/v5/public/instruments", instruments)]


def create(config: SimConfig) -> Venue:
    feed = Feed("okx", "spot", config.listed("okx"), config)
    dialect = OkxDialect(feed)
    business = OkxBusinessDialect(feed)
    return Venue("okx", {"spot": feed}, [dialect, business], _rest(dialect))
