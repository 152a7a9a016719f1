"""Kraken spot: WS v2 at /v2 (JSON-number books with a CRC32 over the top 10 levels, acks per
symbol) and the legacy WS v1 at the bare path (array frames, ``as``/``bs`` snapshots, ``c``
checksums on updates). Both share one set of books. Prices use the pair precision (BTC/USD 1
decimal, ETH/USD 2), quantities 8 decimals; checksums are computed from the exact wire text.

Tickers and 1-minute OHLC from the simulator's own klines (v2 ``ticker`` and ``ohlc`` with
``interval`` 1, v1 ``ticker`` and ``ohlc-1``): the current ticker and (v2) the recent candles
as a snapshot on subscribe, v1 the "last valid candle"; then the ticker and the open candle
after each step with trades. There is no final flag, as on Kraken: a candle is final once one
with a later window arrives.
"""

from __future__ import annotations

import time
import zlib
from typing import Any, ClassVar

import orjson
from aiohttp import web

from simulator.base import Decimals, Dialect, Feed, Frame, Session, SimConfig, SubKey, Venue, dumps, iso_us
from simulator.kline_frames import StatsTexts
from simulator.klines import Kline, Ticker24h
from simulator.market import Step, SymbolMarket, Trade, ViewDiff

DEPTHS = (10, 25, 100, 500, 1000)
CHANNELS = ("book", "trade", "ticker", "ohlc")
OHLC_INTERVAL = 1  # minutes: the simulator's klines
OHLC_SNAPSHOT = 30
_LEGACY_ASSETS = {
    "BTC": "XXBT",
    "ETH": "XETH",
    "LTC": "XLTC",
    "XRP": "XXRP",
    "DOGE": "XXDG",
    "USD": "ZUSD",
    "EUR": "ZEUR",
    "GBP": "ZGBP",
    "CAD": "ZCAD",
    "JPY": "ZJPY",
}
_ALIASES = {"BTC": "XBT", "DOGE": "XDG"}

Levels = list[tuple[int, int]]


def _alias(asset: str) -> str:
    return _ALIASES.get(asset, asset)


def checksum(asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> int:
    """Kraken book CRC32: top 10 asks then top 10 bids, '.' removed and leading zeros stripped."""
    parts = [
        text.replace(".", "").lstrip("0")
        for side in (asks[:10], bids[:10])
        for price, qty in side
        for text in (price, qty)
    ]
    return zlib.crc32("".join(parts).encode())


class KrakenBase(Dialect):
    """What v1 and v2 share: per-depth truncated views, checksum bookkeeping, heartbeats."""

    exchange = "kraken"
    faults = frozenset({"gap", "checksum", "disconnect", "silent", "malformed", "snapshot"})
    price_places: ClassVar[int] = 0  # minimum decimals of prices on the wire (v1 pads to 5)

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        specs = {s: m.spec for s, m in feed.markets.items()}
        self.price = {
            s: Decimals(sp.price_decimals, max(sp.price_decimals, self.price_places))
            for s, sp in specs.items()
        }
        self.qty = {s: Decimals(sp.qty_decimals, 8) for s, sp in specs.items()}
        self.last_checksum: dict[str, int] = {}
        self.stats_texts = StatsTexts(feed)

    def texts(self, symbol: str, levels: Levels) -> list[tuple[str, str]]:
        price, qty = self.price[symbol], self.qty[symbol]
        return [(price(p), qty(q)) for p, q in levels]

    def book_checksum(self, market: SymbolMarket) -> int:
        symbol = market.spec.symbol
        return checksum(self.texts(symbol, market.asks.top(10)), self.texts(symbol, market.bids.top(10)))

    def on_timer(self, session: Session, now: float) -> None:
        if session.subs and now - session.last_heartbeat >= self.config.heartbeat_interval_s:
            session.last_heartbeat = now
            session.offer(Frame(self.heartbeat_text, "heartbeat"))

    heartbeat_text: ClassVar[str] = ""

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        book_keys = self.keys_for("book", symbol)
        if step.book_changed and book_keys:
            crc = self.book_checksum(market)
            changed_top = crc != self.last_checksum.get(symbol)
            self.last_checksum[symbol] = crc
            for key in book_keys:
                view = step.views.get(key[2])
                if view is not None and (view.bids or view.asks):
                    self.fan_out(key, self.update_frame(symbol, key, view, crc, ts_ns, changed_top))
        trade_key = ("trade", symbol, 0)
        if step.trades and trade_key in self.subscribers:
            self.fan_out(trade_key, Frame(self.trade_text(symbol, step.trades, ts_ns), "trade", symbol))
        if step.trades:  # after the trades: a client has every trade the figures count
            self._publish_stats(market, ts_ns)

    def _publish_stats(self, market: SymbolMarket, ts_ns: int) -> None:
        symbol = market.spec.symbol
        stats = self.feed.stats[symbol]
        ticker_key: SubKey = ("ticker", symbol, 0)
        day = stats.ticker()
        if ticker_key in self.subscribers and day is not None:
            self.fan_out(ticker_key, Frame(self.ticker_text(market, day, "update"), "ticker", symbol))
        ohlc_key: SubKey = ("ohlc", symbol, 0)
        if ohlc_key in self.subscribers and stats.current is not None:
            text = self.ohlc_text(symbol, [stats.current], "update", ts_ns)
            self.fan_out(ohlc_key, Frame(text, "kline", symbol))

    def send_stats_snapshot(self, session: Session, channel: str, symbol: str) -> None:
        """On subscribe: the current ticker; the recent candles (v2) or the last one (v1)."""
        stats = self.feed.stats[symbol]
        day = stats.ticker()
        if channel == "ticker" and day is not None:
            text = self.ticker_text(self.feed.markets[symbol], day, "snapshot")
            session.offer(Frame(text, "ticker", symbol))
        elif channel == "ohlc" and stats.current is not None:
            klines = [*stats.closed, stats.current][-self.ohlc_snapshot :]
            session.offer(Frame(self.ohlc_text(symbol, klines, "snapshot", time.time_ns()), "kline", symbol))

    ohlc_snapshot: ClassVar[int] = OHLC_SNAPSHOT

    def ticker_text(self, market: SymbolMarket, day: Ticker24h, kind: str) -> str:
        raise NotImplementedError

    def ohlc_text(self, symbol: str, klines: list[Kline], kind: str, ts_ns: int) -> str:
        raise NotImplementedError

    def vwap(self, symbol: str, quote_units: int, lots: int) -> str:
        spec = self.feed.markets[symbol].spec
        return f"{quote_units / lots / 10**spec.price_decimals:.{spec.price_decimals + 3}f}"

    def resend_snapshots(self, session: Session, symbol: str | None) -> None:
        ts_ns = time.time_ns()
        for key in list(session.subs):
            if key[0] == "book" and symbol in (None, key[1]):
                session.offer(self.snapshot_frame(self.feed.markets[key[1]], key, ts_ns))

    def update_frame(
        self, symbol: str, key: SubKey, view: ViewDiff, crc: int, ts_ns: int, changed_top: bool
    ) -> Frame:
        raise NotImplementedError

    def snapshot_frame(self, market: SymbolMarket, key: SubKey, ts_ns: int) -> Frame:
        raise NotImplementedError

    def trade_text(self, symbol: str, trades: list[Trade], ts_ns: int) -> str:
        raise NotImplementedError


class KrakenV2(KrakenBase):
    name = "kraken-v2"
    path = "/v2"
    heartbeat_text = '{"channel":"heartbeat"}'

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.wire = {s: s.replace("-", "/") for s in feed.markets}
        self.native = {w: s for s, w in self.wire.items()}

    def on_open(self, session: Session) -> None:
        status = {
            "api_version": "v2",
            "connection_id": 15564437896659189083 - session.number,
            "system": "online",
            "version": "2.0.10",
        }
        session.send({"channel": "status", "data": [status], "type": "update"})

    def on_text(self, session: Session, text: str) -> None:
        time_in = iso_us(time.time_ns())
        try:
            request = orjson.loads(text)
            method = request["method"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            session.send(
                {
                    "error": "Malformed request",
                    "success": False,
                    "time_in": time_in,
                    "time_out": iso_us(time.time_ns()),
                }
            )
            return
        req_id = request.get("req_id")
        if method == "ping":
            reply: dict[str, Any] = {
                "method": "pong",
                **_opt("req_id", req_id),
                "time_in": time_in,
                "time_out": iso_us(time.time_ns()),
            }
            session.send(reply)
        elif method in ("subscribe", "unsubscribe"):
            self._subscription(session, method, request.get("params") or {}, req_id, time_in)
        else:
            session.send(
                {
                    "error": f"Method {method!r} not found",
                    "method": method,
                    "success": False,
                    **_opt("req_id", req_id),
                    "time_in": time_in,
                    "time_out": iso_us(time.time_ns()),
                }
            )

    def _subscription(
        self, session: Session, method: str, params: dict[str, Any], req_id: Any, time_in: str
    ) -> None:
        channel = params.get("channel")
        depth = int(params.get("depth", 10)) if channel == "book" else 0
        snapshot = bool(params.get("snapshot", channel != "trade"))
        for wire in params.get("symbol") or []:
            symbol = self.native.get(wire)
            error = None
            if channel not in CHANNELS:
                error = f"Channel {channel} not found"
            elif channel == "ohlc" and params.get("interval") != OHLC_INTERVAL:
                error = "Invalid interval"
            elif symbol is None:
                error = f"Currency pair not supported {wire}"
            elif channel == "book" and depth not in DEPTHS:
                error = "Invalid depth"
            if error is None and symbol is not None and isinstance(channel, str):
                key = (channel, symbol, depth)
                done = (
                    self.subscribe(session, key) if method == "subscribe" else self.unsubscribe(session, key)
                )
                if not done:
                    error = "Already subscribed" if method == "subscribe" else "Subscription Not Found"
            if error is not None or symbol is None or not isinstance(channel, str):
                session.send(
                    {
                        "error": error,
                        "method": method,
                        "success": False,
                        "symbol": wire,
                        **_opt("req_id", req_id),
                        "time_in": time_in,
                        "time_out": iso_us(time.time_ns()),
                    }
                )
                continue
            result: dict[str, Any] = {"channel": channel}
            if channel == "book":
                result["depth"] = depth
            elif channel == "ohlc":
                result["interval"] = OHLC_INTERVAL
            if method == "subscribe":
                result["snapshot"] = snapshot
            result["symbol"] = wire
            session.send(
                {
                    "method": method,
                    "result": result,
                    "success": True,
                    **_opt("req_id", req_id),
                    "time_in": time_in,
                    "time_out": iso_us(time.time_ns()),
                }
            )
            if method == "subscribe" and snapshot:
                self._send_snapshot(session, channel, symbol, depth)

    def _send_snapshot(self, session: Session, channel: str, symbol: str, depth: int) -> None:
        market = self.feed.markets[symbol]
        ts_ns = time.time_ns()
        if channel == "book":
            session.offer(self.snapshot_frame(market, (channel, symbol, depth), ts_ns))
        elif channel in ("ticker", "ohlc"):
            self.send_stats_snapshot(session, channel, symbol)
        elif market.recent_trades:
            text = self.trade_text(symbol, market.recent_trades[-50:], ts_ns, "snapshot")
            session.offer(Frame(text, "snapshot", symbol))

    # -- frames -------------------------------------------------------------------------------

    def _levels_json(self, symbol: str, levels: Levels) -> str:
        price, qty = self.price[symbol], self.qty[symbol]
        return ",".join(f'{{"price":{price(p)},"qty":{qty(q)}}}' for p, q in levels)

    def _book_text(self, kind: str, symbol: str, bids: Levels, asks: Levels, crc: int, ts_ns: int) -> str:
        return (
            f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{self.wire[symbol]}",'
            f'"bids":[{self._levels_json(symbol, bids)}],"asks":[{self._levels_json(symbol, asks)}],'
            f'"checksum":{crc},"timestamp":"{iso_us(ts_ns)}"}}]}}'
        )

    def snapshot_frame(self, market: SymbolMarket, key: SubKey, ts_ns: int) -> Frame:
        symbol, depth = key[1], key[2]
        crc = self.book_checksum(market)
        text = self._book_text("snapshot", symbol, market.bids.top(depth), market.asks.top(depth), crc, ts_ns)
        return Frame(text, "snapshot", symbol, checksum_token=f'"checksum":{crc}')

    def update_frame(
        self, symbol: str, key: SubKey, view: ViewDiff, crc: int, ts_ns: int, changed_top: bool
    ) -> Frame:
        text = self._book_text("update", symbol, view.bids, view.asks, crc, ts_ns)
        return Frame(text, "book", symbol, checksum_token=f'"checksum":{crc}', gap_ok=changed_top)

    def trade_text(self, symbol: str, trades: list[Trade], ts_ns: int, kind: str = "update") -> str:
        price, qty = self.price[symbol], self.qty[symbol]
        entries = ",".join(
            f'{{"symbol":"{self.wire[symbol]}","side":"{"buy" if t.taker_buy else "sell"}",'
            f'"price":{price(t.price)},"qty":{qty(t.qty)},"ord_type":"{_ord_type(t)}",'
            f'"trade_id":{t.trade_id},"timestamp":"{iso_us(t.ts_ns or ts_ns)}"}}'
            for t in trades
        )
        return f'{{"channel":"trade","type":"{kind}","data":[{entries}]}}'

    def ticker_text(self, market: SymbolMarket, day: Ticker24h, kind: str) -> str:
        symbol = market.spec.symbol
        price, qty = self.price[symbol], self.qty[symbol]
        (bid, bid_qty), (ask, ask_qty) = market.bids.top(1)[0], market.asks.top(1)[0]
        change = day.last - day.open
        change_text = ("-" if change < 0 else "") + price(abs(change))
        entry = (
            f'{{"symbol":"{self.wire[symbol]}","bid":{price(bid)},"bid_qty":{qty(bid_qty)},'
            f'"ask":{price(ask)},"ask_qty":{qty(ask_qty)},"last":{price(day.last)},'
            f'"volume":{qty(day.volume_lots)},"vwap":{self.vwap(symbol, day.quote_units, day.volume_lots)},'
            f'"low":{price(day.low)},"high":{price(day.high)},"change":{change_text},'
            f'"change_pct":{round(100 * change / day.open, 2)}}}'
        )
        return f'{{"channel":"ticker","type":"{kind}","data":[{entry}]}}'

    def ohlc_text(self, symbol: str, klines: list[Kline], kind: str, ts_ns: int) -> str:
        price, qty = self.price[symbol], self.qty[symbol]
        entries = ",".join(
            f'{{"symbol":"{self.wire[symbol]}","open":{price(k.open)},"high":{price(k.high)},'
            f'"low":{price(k.low)},"close":{price(k.close)},"trades":{k.trades},'
            f'"volume":{qty(k.volume_lots)},"vwap":{self.vwap(symbol, k.quote_units, k.volume_lots)},'
            f'"interval_begin":"{_iso_ns(k.open_ns)}","interval":{OHLC_INTERVAL},'
            f'"timestamp":"{iso_us(k.close_ns)}"}}'
            for k in klines
        )
        return f'{{"channel":"ohlc","type":"{kind}","timestamp":"{_iso_ns(ts_ns)}","data":[{entries}]}}'


class KrakenV1(KrakenBase):
    name = "kraken-v1"
    path = ""
    price_places = 5
    heartbeat_text = '{"event":"heartbeat"}'

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.wire = {s: "/".join(_alias(a) for a in s.split("-")) for s in feed.markets}
        self.native = {w: s for s, w in self.wire.items()}
        self.channel_ids: dict[SubKey, int] = {}

    def on_open(self, session: Session) -> None:
        session.send(
            {
                "connectionID": 18239578009413566319 - session.number,
                "event": "systemStatus",
                "status": "online",
                "version": "1.9.5",
            }
        )

    def _channel_id(self, key: SubKey) -> int:
        return self.channel_ids.setdefault(key, 100 + 37 * len(self.channel_ids))

    def on_text(self, session: Session, text: str) -> None:
        try:
            request = orjson.loads(text)
            event = request["event"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            session.send({"errorMessage": "Malformed request", "event": "error", "status": "error"})
            return
        reqid = request.get("reqid")
        if event == "ping":
            session.send({"event": "pong", **_opt("reqid", reqid)})
        elif event in ("subscribe", "unsubscribe"):
            self._subscription(session, event, request, reqid)
        else:
            session.send(
                {
                    "errorMessage": "Unsupported event",
                    "event": "error",
                    **_opt("reqid", reqid),
                    "status": "error",
                }
            )

    def _subscription(self, session: Session, event: str, request: dict[str, Any], reqid: Any) -> None:
        subscription = request.get("subscription") or {}
        name = subscription.get("name")
        depth = int(subscription.get("depth", 10)) if name == "book" else 0
        echo: dict[str, Any] = {"depth": depth, "name": name} if name == "book" else {"name": name}
        if name == "ohlc":
            echo = {"interval": subscription.get("interval", 1), "name": name}
        for wire in request.get("pair") or []:
            symbol = self.native.get(wire)
            error = None
            if name not in CHANNELS:
                error = "Subscription name invalid"
            elif name == "ohlc" and echo["interval"] != OHLC_INTERVAL:
                error = "Subscription ohlc interval not supported"
            elif symbol is None:
                error = "Currency pair not supported"
            elif name == "book" and depth not in DEPTHS:
                error = "Subscription depth not supported"
            elif event == "subscribe" and not self.subscribe(session, (name, symbol, depth)):
                error = "Already subscribed"
            elif event == "unsubscribe" and not self.unsubscribe(session, (name, symbol, depth)):
                error = "Subscription Not Found"
            if error is not None or symbol is None or not isinstance(name, str):
                session.send(
                    {
                        "errorMessage": error,
                        "event": "subscriptionStatus",
                        "pair": wire,
                        **_opt("reqid", reqid),
                        "status": "error",
                        "subscription": echo,
                    }
                )
                continue
            key = (name, symbol, depth)
            session.send(
                {
                    "channelID": self._channel_id(key),
                    "channelName": self._channel_name(key),
                    "event": "subscriptionStatus",
                    "pair": wire,
                    **_opt("reqid", reqid),
                    "status": "subscribed" if event == "subscribe" else "unsubscribed",
                    "subscription": echo,
                }
            )
            if event == "subscribe" and name == "book":
                session.offer(self.snapshot_frame(self.feed.markets[symbol], key, time.time_ns()))
            elif event == "subscribe" and name in ("ticker", "ohlc"):
                self.send_stats_snapshot(session, name, symbol)

    ohlc_snapshot = 1  # v1 sends the last valid candle on subscribe

    @staticmethod
    def _channel_name(key: SubKey) -> str:
        if key[0] == "ohlc":
            return f"ohlc-{OHLC_INTERVAL}"
        return f"book-{key[2]}" if key[0] == "book" else key[0]

    def _entries(self, symbol: str, levels: Levels, stamp: str) -> list[list[str]]:
        return [[p, q, stamp] for p, q in self.texts(symbol, levels)]

    def _wrap(self, key: SubKey, *payload: Any) -> str:
        parts = [
            str(self._channel_id(key)),
            *(dumps(p) for p in payload),
            f'"{self._channel_name(key)}"',
            f'"{self.wire[key[1]]}"',
        ]
        return f"[{','.join(parts)}]"

    def snapshot_frame(self, market: SymbolMarket, key: SubKey, ts_ns: int) -> Frame:
        symbol, depth, stamp = key[1], key[2], _v1_time(ts_ns)
        body = {
            "as": self._entries(symbol, market.asks.top(depth), stamp),
            "bs": self._entries(symbol, market.bids.top(depth), stamp),
        }
        return Frame(self._wrap(key, body), "snapshot", symbol)

    def update_frame(
        self, symbol: str, key: SubKey, view: ViewDiff, crc: int, ts_ns: int, changed_top: bool
    ) -> Frame:
        stamp = _v1_time(ts_ns)
        maps: list[dict[str, Any]] = []
        if view.asks:
            maps.append({"a": self._entries(symbol, view.asks, stamp)})
        if view.bids:
            maps.append({"b": self._entries(symbol, view.bids, stamp)})
        maps[-1]["c"] = str(crc)
        return Frame(
            self._wrap(key, *maps), "book", symbol, checksum_token=f'"c":"{crc}"', gap_ok=changed_top
        )

    def trade_text(self, symbol: str, trades: list[Trade], ts_ns: int) -> str:
        stamp = _v1_time(ts_ns)
        price, qty = self.price[symbol], self.qty[symbol]
        rows = [
            [price(t.price), qty(t.qty), stamp, "b" if t.taker_buy else "s", _ord_type(t)[0], ""]
            for t in trades
        ]
        return self._wrap(("trade", symbol, 0), rows)

    def ticker_text(self, market: SymbolMarket, day: Ticker24h, kind: str) -> str:
        """``{a,b,c,v,p,t,l,h,o}``, each [today, last 24 h] (the same here: the run is shorter)."""
        symbol = market.spec.symbol
        price, qty = self.price[symbol], self.qty[symbol]
        (bid, bid_qty), (ask, ask_qty) = market.bids.top(1)[0], market.asks.top(1)[0]
        lot = 10**market.spec.qty_decimals
        vwap = self.vwap(symbol, day.quote_units, day.volume_lots)
        body = {
            "a": [price(ask), ask_qty // lot, qty(ask_qty)],
            "b": [price(bid), bid_qty // lot, qty(bid_qty)],
            "c": [price(day.last), qty(day.last_qty)],
            "v": [qty(day.volume_lots)] * 2,
            "p": [vwap, vwap],
            "t": [day.trades, day.trades],
            "l": [price(day.low)] * 2,
            "h": [price(day.high)] * 2,
            "o": [price(day.open)] * 2,
        }
        return self._wrap(("ticker", symbol, 0), body)

    def ohlc_text(self, symbol: str, klines: list[Kline], kind: str, ts_ns: int) -> str:
        k = klines[-1]
        price, qty = self.price[symbol], self.qty[symbol]
        row = [
            _v1_time(k.last_trade_ns),
            _v1_time(k.close_ns),
            price(k.open),
            price(k.high),
            price(k.low),
            price(k.close),
            self.vwap(symbol, k.quote_units, k.volume_lots),
            qty(k.volume_lots),
            k.trades,
        ]
        return self._wrap(("ohlc", symbol, 0), row)


def _opt(name: str, value: Any) -> dict[str, Any]:
    return {} if value is None else {name: value}


def _ord_type(trade: Trade) -> str:
    return "limit" if trade.trade_id % 4 == 0 else "market"


def _iso_ns(ns: int) -> str:
    """RFC 3339 with nine fractional digits, as Kraken v2 sends ``interval_begin``."""
    return iso_us(ns)[:-1] + f"{ns % 1000:03d}Z"


def _v1_time(ts_ns: int) -> str:
    return f"{ts_ns // 1_000_000_000}.{ts_ns // 1000 % 1_000_000:06d}"


# -- REST ----------------------------------------------------------------------------------


def _pair_info(v2: KrakenV2, v1: KrakenV1, symbol: str) -> tuple[str, dict[str, Any]]:
    spec = v2.feed.markets[symbol].spec
    base, quote = _LEGACY_ASSETS.get(spec.base, spec.base), _LEGACY_ASSETS.get(spec.quote, spec.quote)
    altname = _alias(spec.base) + _alias(spec.quote)
    key = base + quote if spec.base in _LEGACY_ASSETS and spec.quote in _LEGACY_ASSETS else altname
    info = {
        "altname": altname,
        "wsname": v1.wire[symbol],
        "aclass_base": "currency",
        "base": base,
        "aclass_quote": "currency",
        "quote": quote,
        "lot": "unit",
        "cost_decimals": 5,
        "pair_decimals": spec.price_decimals,
        "lot_decimals": 8,
        "lot_multiplier": 1,
        "leverage_buy": [2, 3, 4, 5],
        "leverage_sell": [2, 3, 4, 5],
        "fees": [[0, 0.4], [10000, 0.35], [50000, 0.24]],
        "fees_maker": [[0, 0.25], [10000, 0.2], [50000, 0.14]],
        "fee_volume_currency": "ZUSD",
        "margin_call": 80,
        "margin_stop": 40,
        "ordermin": v2.qty[symbol](1).rstrip("0"),
        "costmin": "0.5",
        "tick_size": Decimals(spec.price_decimals, spec.price_decimals)(1),
        "status": "online",
    }
    return key, info


def _rest(v2: KrakenV2, v1: KrakenV1) -> list[tuple[str, Any]]:
    async def asset_pairs(request: web.Request) -> web.Response:
        pairs = dict(_pair_info(v2, v1, s) for s in v2.feed.markets)
        names: dict[str, str] = {}
        for key, info in pairs.items():
            for name in (key, info["altname"], info["wsname"], info["wsname"].replace("/", "")):
                names[name] = key
        for symbol, wire in v2.wire.items():
            names[wire] = names[wire.replace("/", "")] = names[v1.wire[symbol]]
        wanted = [p for p in request.query.get("pair", "").split(",") if p]
        if any(p not in names for p in wanted):
            return web.json_response({"error": ["EQuery:Unknown asset pair"]}, dumps=dumps)
        keys = [names[p] for p in wanted] or list(pairs)
        return web.json_response({"error": [], "result": {k: pairs[k] for k in keys}}, dumps=dumps)

    return [("/0/public/AssetPairs", asset_pairs)]


def create(config: SimConfig) -> Venue:
    feed = Feed("kraken", "spot", config.listed("kraken"), config)
    v2, v1 = KrakenV2(feed), KrakenV1(feed)
    return Venue("kraken", {"spot": feed}, [v2, v1], _rest(v2, v1))
