"""Bitfinex WS v2 public: ``info`` on connect, ``conf`` flags (SEQ_ALL 65536 appends a
per-connection sequence number to every channel frame, OB_CHECKSUM 131072 adds ``cs`` frames),
``subscribe``/``unsubscribe`` with a chanId per subscription, P0 ``book`` (len 1/25/100/250:
snapshot, then one frame per changed level, deletes first so the book never crosses), ``trades``
(snapshot of recent trades, then ``te`` + ``tu`` per trade), ``ticker`` (the current ticker on
subscribe, then one per step with trades; no quote volume, no time, the 24 h change instead of
the open), ``candles`` with key ``trade:1m:<symbol>`` (a newest-first snapshot of the recent
candles on subscribe, then the open candle ``[MTS, OPEN, CLOSE, HIGH, LOW, VOLUME]`` after every
step with trades; no final flag), ``hb`` heartbeats, app ``ping``; at most 30 channels per
connection (error 10305 beyond).
REST: ``/v2/conf/<keys>`` for ``pub:list:pair:exchange`` and ``pub:map:currency:sym``.
"""

from __future__ import annotations

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
    interleaved_crc32,
    trimmed_texts,
)
from simulator.klines import Kline
from simulator.market import Step, SymbolMarket

CHANNELS = ("book", "trades", "ticker", "candles")
MAX_CHANNELS = 30  # public channels per connection
SEQ_ALL = 65536
OB_CHECKSUM = 131072
BOOK_LENGTHS = (1, 25, 100, 250)
CURRENCY_NAMES = {"UST": "USDt", "DSH": "DASH", "EUT": "EURt"}
_CODES = {name.upper(): code for code, name in CURRENCY_NAMES.items()}
CANDLE_TIMEFRAME = "1m"  # the simulator's klines are 1 minute (simulator/klines.py)
CANDLE_SNAPSHOT = 30


def pair_of(symbol: str) -> str:
    base, quote = (_CODES.get(part, part) for part in symbol.split("-", 1))
    return base + quote if len(base) == 3 and len(quote) == 3 else f"{base}:{quote}"


class BitfinexDialect(Dialect):
    exchange = "bitfinex"
    name = "bitfinex"
    path = "/ws/2"
    faults = frozenset({"gap", "checksum", "disconnect", "silent", "malformed"})

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.price, self.size = trimmed_texts(feed)
        self.by_symbol = {f"t{pair_of(s)}": s for s in feed.markets}
        self.next_chan = 17_000 + zlib.crc32(str(feed.config.seed).encode()) % 100_000

    # -- requests ------------------------------------------------------------------------

    def on_open(self, session: Session) -> None:
        session.extra.update(flags=0, chans={}, beat_at=time.monotonic())
        session.send({"event": "info", "version": 2, "serverId": session.conn_id, "platform": {"status": 1}})

    def on_text(self, session: Session, text: str) -> None:
        try:
            request = orjson.loads(text)
            event = request["event"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            session.send({"event": "error", "msg": "invalid request", "code": 10000})
            return
        if event == "conf":
            session.extra["flags"] = int(request.get("flags", 0))
            session.send({"event": "conf", "status": "OK", "flags": session.extra["flags"]})
        elif event == "ping":
            session.send({"event": "pong", "ts": time.time_ns() // 1_000_000, "cid": request.get("cid")})
        elif event == "subscribe":
            self._subscribe(session, request)
        elif event == "unsubscribe":
            self._unsubscribe(session, request)
        else:
            session.send({"event": "error", "msg": "unknown event", "code": 10000})

    def _subscribe(self, session: Session, request: dict[str, Any]) -> None:
        channel, wire_symbol = request.get("channel"), request.get("symbol")
        if channel == "candles":
            wire_symbol = self._candle_symbol(request.get("key"))
        symbol = self.by_symbol.get(str(wire_symbol))
        length = int(request.get("len", 25))
        if channel not in CHANNELS or symbol is None or length not in BOOK_LENGTHS:
            session.send({"event": "error", "msg": "symbol: invalid", "code": 10300, **request})
            return
        key: SubKey = (channel, symbol, length if channel == "book" else 0)
        if key in session.subs or any(k[:2] == key[:2] for k in session.subs):
            session.send({"event": "error", "msg": "subscribe: dup", "code": 10301, **request})
            return
        if len(session.subs) >= MAX_CHANNELS:
            session.send({"event": "error", "msg": "subscribe: limit", "code": 10305, **request})
            return
        self.subscribe(session, key)
        chan = self.next_chan
        self.next_chan += 1
        session.extra["chans"][key] = chan
        if channel == "candles":
            session.send({"event": "subscribed", "channel": channel, "chanId": chan, "key": request["key"]})
        else:
            reply = {"event": "subscribed", "channel": channel, "chanId": chan, "symbol": wire_symbol}
            if channel == "book":
                reply.update(prec="P0", freq="F0", len=str(length))
            session.send({**reply, "pair": str(wire_symbol)[1:]})
        market = self.feed.markets[symbol]
        if channel == "book":
            self._send(session, key, self._book_snapshot(market, length), "snapshot", None)
        elif channel == "ticker":
            ticker = self._ticker(market)
            if ticker is not None:
                self._send(session, key, ticker, "ticker", None)
        elif channel == "candles":
            self._send(session, key, self._candle_snapshot(symbol), "kline", None)
        else:
            self._send(
                session,
                key,
                dumps([self._trade_row(market, t) for t in reversed(market.recent_trades[-30:])]),
                "trade",
                None,
            )

    @staticmethod
    def _candle_symbol(key: object) -> str | None:
        """``trade:1m:tBTCUSD`` -> ``tBTCUSD`` (only the simulator's 1m trade candles exist)."""
        parts = key.split(":", 2) if isinstance(key, str) else []
        ok = len(parts) == 3 and parts[0] == "trade" and parts[1] == CANDLE_TIMEFRAME
        return parts[2] if ok else None

    def _unsubscribe(self, session: Session, request: dict[str, Any]) -> None:
        chan = request.get("chanId")
        key = next((k for k, c in session.extra["chans"].items() if c == chan), None)
        if key is None:
            session.send({"event": "error", "msg": "unsubscribe: invalid", "code": 10400})
            return
        self.unsubscribe(session, key)
        del session.extra["chans"][key]
        session.send({"event": "unsubscribed", "status": "OK", "chanId": chan})

    def on_timer(self, session: Session, now: float) -> None:
        if now - session.extra["beat_at"] < self.config.heartbeat_interval_s:
            return
        session.extra["beat_at"] = now
        for key in list(session.extra["chans"]):
            self._send(session, key, '"hb"', "heartbeat", None)

    # -- frames --------------------------------------------------------------------------

    def _send(self, session: Session, key: SubKey, body: str, kind: str, symbol: str | None) -> Frame:
        """``[chanId,<body>]``, numbered when the session turned SEQ_ALL on."""
        chan = session.extra["chans"][key]
        if session.extra["flags"] & SEQ_ALL:
            frame = Frame("]", kind, symbol, head=f"[{chan},{body},")
        else:
            frame = Frame(f"[{chan},{body}]", kind, symbol)
        session.offer(frame)
        return frame

    def _entry(self, symbol: str, price: int, qty: int, is_bid: bool, count: int | None = None) -> str:
        amount = self.size[symbol](qty) if qty else "1"
        orders = (1 + qty % 5) if count is None else count
        return f"[{self.price[symbol](price)},{orders},{amount if is_bid else '-' + amount}]"

    def _book_snapshot(self, market: SymbolMarket, length: int) -> str:
        symbol = market.spec.symbol
        bids = [self._entry(symbol, p, q, True) for p, q in market.bids.top(length)]
        asks = [self._entry(symbol, p, q, False) for p, q in market.asks.top(length)]
        return f"[{','.join(bids + asks)}]"

    def _trade_row(self, market: SymbolMarket, trade: Any) -> list[Any]:
        symbol = market.spec.symbol
        amount = float(self.size[symbol](trade.qty))
        price = float(self.price[symbol](trade.price))
        stamp_ns = trade.ts_ns or time.time_ns()
        return [trade.trade_id, stamp_ns // 1_000_000, amount if trade.taker_buy else -amount, price]

    def _ticker(self, market: SymbolMarket) -> str | None:
        """``[BID, BID_SIZE, ASK, ASK_SIZE, DAILY_CHANGE, DAILY_CHANGE_RELATIVE, LAST_PRICE, VOLUME,
        HIGH, LOW]`` of the trades sent so far (None before the first trade)."""
        symbol = market.spec.symbol
        day = self.feed.stats[symbol].ticker()
        if day is None:
            return None
        price, size = self.price[symbol], self.size[symbol]
        bid, ask = market.bids.top(1), market.asks.top(1)
        change = day.last - day.open
        book = [
            price(bid[0][0]) if bid else "0",
            size(bid[0][1]) if bid else "0",
            price(ask[0][0]) if ask else "0",
            size(ask[0][1]) if ask else "0",
        ]
        signed_change = ("-" if change < 0 else "") + price(abs(change))
        relative = round(change / day.open, 4)
        rest = [
            signed_change,
            str(relative),
            price(day.last),
            size(day.volume_lots),
            price(day.high),
            price(day.low),
        ]
        return "[" + ",".join(book + rest) + "]"

    def _candle(self, symbol: str, kline: Kline) -> str:
        price = self.price[symbol]
        prices = (price(kline.open), price(kline.close), price(kline.high), price(kline.low))
        return f"[{kline.open_ns // 1_000_000},{','.join(prices)},{self.size[symbol](kline.volume_lots)}]"

    def _candle_snapshot(self, symbol: str) -> str:
        stats = self.feed.stats[symbol]
        klines = [*stats.closed, stats.current] if stats.current is not None else []
        rows = [self._candle(symbol, kline) for kline in reversed(klines[-CANDLE_SNAPSHOT:])]
        return f"[{','.join(rows)}]"

    def _checksum(self, market: SymbolMarket) -> int:
        symbol = market.spec.symbol
        price, size = self.price[symbol], self.size[symbol]
        bids = [(price(p), size(q)) for p, q in market.bids.top(25)]
        asks = [(price(p), "-" + size(q)) for p, q in market.asks.top(25)]
        return interleaved_crc32(bids, asks)

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        for key in self.keys_for("book", symbol):
            self._publish_book(market, step, key)
        trade_key = ("trades", symbol, 0)
        if step.trades and trade_key in self.subscribers:
            rows = [dumps(self._trade_row(market, t)) for t in step.trades]
            for session in list(self.subscribers.get(trade_key, ())):
                for row in rows:
                    self._send(session, trade_key, f'"te",{row}', "trade", symbol)
                    self._send(session, trade_key, f'"tu",{row}', "trade", symbol)
        if step.trades:  # after the trades: a client has every trade a candle counts
            self._publish_stats(market)

    def _publish_stats(self, market: SymbolMarket) -> None:
        """The ticker and the open candle after trades (the candle of a finished window was sent
        with its last trade: no final frame, as on Bitfinex)."""
        symbol = market.spec.symbol
        ticker_key: SubKey = ("ticker", symbol, 0)
        if ticker_key in self.subscribers and (ticker := self._ticker(market)) is not None:
            for session in list(self.subscribers.get(ticker_key, ())):
                self._send(session, ticker_key, ticker, "ticker", symbol)
        candle_key: SubKey = ("candles", symbol, 0)
        current = self.feed.stats[symbol].current
        if candle_key in self.subscribers and current is not None:
            row = self._candle(symbol, current)
            for session in list(self.subscribers.get(candle_key, ())):
                self._send(session, candle_key, row, "kline", symbol)

    def _publish_book(self, market: SymbolMarket, step: Step, key: SubKey) -> None:
        view = step.views.get(key[2])
        if view is None or view.empty(with_out=True):
            return
        symbol = key[1]
        deletes = [self._entry(symbol, p, 0, True, 0) for p in view.bids_out]
        deletes += [self._entry(symbol, p, 0, False, 0) for p in view.asks_out]
        changes: list[str] = []
        for levels, is_bid in ((view.bids, True), (view.asks, False)):
            for price, qty in levels:
                entry = self._entry(symbol, price, qty, is_bid, None if qty else 0)
                (changes if qty else deletes).append(entry)
        crc: int | None = None
        for session in list(self.subscribers.get(key, ())):
            for entry in deletes + changes:
                self._send(session, key, entry, "book", symbol)
            if session.extra["flags"] & OB_CHECKSUM:
                if crc is None:
                    crc = self._checksum(market)
                bad = session.take_fault("checksum", symbol)
                self._send(session, key, f'"cs",{crc ^ 1 if bad else crc}', "checksum", symbol)


def _rest(dialect: BitfinexDialect) -> list[tuple[str, Any]]:
    answers = {
        "pub:list:pair:exchange": lambda: [pair_of(s) for s in dialect.feed.markets],
        "pub:map:currency:sym": lambda: [[code, name] for code, name in CURRENCY_NAMES.items()],
    }

    async def conf(request: web.Request) -> web.Response:
        keys = request.match_info["keys"].split(",")
        unknown = [k for k in keys if k not in answers]
        if unknown:
            return web.json_response(
                ["error", 10020, f"unknown config {unknown[0]}"], status=500, dumps=dumps
            )
        return web.json_response([answers[k]() for k in keys], dumps=dumps)

    return [("/v2/conf/{keys}", conf)]


def create(config: SimConfig) -> Venue:
    feed = Feed("bitfinex", "spot", config.listed("bitfinex"), config)
    dialect = BitfinexDialect(feed)
    return Venue("bitfinex", {"spot": feed}, [dialect], _rest(dialect))
