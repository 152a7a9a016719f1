"""Coinbase Advanced Trade: one channel per subscribe, envelope with a per-connection
``sequence_num`` across all channels, level2 as ``l2_data`` snapshot/update, market_trades,
heartbeats with ``heartbeat_counter``, ``ticker`` (a snapshot on subscribe, then an update after
each step with trades; no open, no quote volume) and five-minute ``candles`` (the only
granularity: the feed's klines are five minutes here) from the simulator's own klines: the
recent candles as a snapshot on subscribe, then the open candle after trades; no final flag,
as on Coinbase: a candle is final once one with a later start arrives."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from simulator.base import Dialect, Feed, Frame, Session, SimConfig, Venue, dumps, iso_trimmed, trimmed_texts
from simulator.kline_frames import StatsTexts
from simulator.klines import Kline, MarketStats
from simulator.market import Step, SymbolMarket, Trade

_CHANNELS = ("level2", "market_trades", "heartbeats", "ticker", "candles")
CANDLE_S = 300
_START = time.monotonic()


def _go_time(ns: int) -> str:
    """Go's time.String(): '2026-08-09 21:05:48.854840045 +0000 UTC m=+41691.260485341'."""
    base = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns // 1_000_000_000))
    return f"{base}.{ns % 1_000_000_000:09d} +0000 UTC m=+{time.monotonic() - _START:.9f}"


class CoinbaseDialect(Dialect):
    exchange = "coinbase"
    name = "coinbase"
    path = ""
    faults = frozenset({"gap", "disconnect", "silent", "malformed", "snapshot"})

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.price, self.size = trimmed_texts(feed)
        # this feed serves only this dialect: its klines are the candles channel's five minutes
        feed.stats = {symbol: MarketStats(market.spec, CANDLE_S) for symbol, market in feed.markets.items()}
        self.texts = StatsTexts(feed)

    # -- requests -------------------------------------------------------------------------

    def on_text(self, session: Session, text: str) -> None:
        try:
            request = orjson.loads(text)
            kind, channel = request["type"], request["channel"]
            products = request.get("product_ids") or []
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._error(session, "failure to parse request: expected type, channel and product_ids")
            return
        if kind not in ("subscribe", "unsubscribe") or channel not in _CHANNELS:
            self._error(session, f"unsupported request {kind!r} for channel {channel!r}")
            return
        unknown = [p for p in products if p not in self.feed.markets]
        if unknown or (channel != "heartbeats" and not products):
            self._error(session, f"Failure to subscribe: unknown product_ids {unknown or products}")
            return
        if channel == "heartbeats":
            products = [""]
        now_ns = time.time_ns()
        for product in products:
            key = (channel, product, 0)
            if kind == "unsubscribe":
                self.unsubscribe(session, key)
            elif self.subscribe(session, key):
                self._on_subscribed(session, channel, product, now_ns)
        self._envelope(session, "subscriptions", [{"subscriptions": self._subscriptions(session)}], now_ns)

    def _on_subscribed(self, session: Session, channel: str, product: str, now_ns: int) -> None:
        if channel == "level2":
            self._send_book_snapshot(session, product, now_ns)
        elif channel == "market_trades":
            trades = list(reversed(self.feed.markets[product].recent_trades))
            event = {
                "type": "snapshot",
                "trades": [self._trade(product, t, t.ts_ns or now_ns) for t in trades],
            }
            self._envelope(session, "market_trades", [event], now_ns)
        elif channel == "ticker":
            ticker = self._ticker(self.feed.markets[product], "snapshot")
            if ticker is not None:
                self._envelope(session, "ticker", [ticker], now_ns, "ticker", product)
        elif channel == "candles":
            stats = self.feed.stats[product]
            klines = [*stats.closed, stats.current] if stats.current is not None else []
            event = {"type": "snapshot", "candles": [self._candle(product, k) for k in klines]}
            self._envelope(session, "candles", [event], now_ns, "kline", product)
        else:
            session.heartbeat_counter = int(time.monotonic() - _START)
            session.last_heartbeat = 0.0

    def _subscriptions(self, session: Session) -> dict[str, list[str]]:
        subs: dict[str, list[str]] = {}
        for channel, product, _ in sorted(session.subs):
            subs.setdefault(channel, []).append(product or channel)
        return subs

    def _error(self, session: Session, message: str) -> None:
        session.send({"type": "error", "message": message})

    def _envelope(
        self,
        session: Session,
        channel: str,
        events: list[Any],
        ts_ns: int,
        kind: str = "control",
        symbol: str | None = None,
    ) -> None:
        session.offer(self._frame(channel, events, ts_ns, kind, symbol))

    def _frame(self, channel: str, events: Any, ts_ns: int, kind: str, symbol: str | None) -> Frame:
        head = f'{{"channel":"{channel}","timestamp":"{iso_trimmed(ts_ns, 9)}","sequence_num":'
        return Frame(f',"events":{dumps(events)}}}', kind, symbol, head=head)

    def on_timer(self, session: Session, now: float) -> None:
        if ("heartbeats", "", 0) not in session.subs:
            return
        if now - session.last_heartbeat >= self.config.heartbeat_interval_s:
            session.last_heartbeat = now
            session.heartbeat_counter += 1
            ts_ns = time.time_ns()
            event = {"current_time": _go_time(ts_ns), "heartbeat_counter": session.heartbeat_counter}
            self._envelope(session, "heartbeats", [event], ts_ns, "heartbeat")

    # -- market data ------------------------------------------------------------------------

    def _updates(
        self, product: str, bids: list[tuple[int, int]], asks: list[tuple[int, int]], ts_ns: int
    ) -> list[dict[str, str]]:
        event_time = iso_trimmed(ts_ns, 6)
        price, size = self.price[product], self.size[product]
        return [
            {"side": side, "event_time": event_time, "price_level": price(p), "new_quantity": size(q)}
            for side, levels in (("bid", bids), ("offer", asks))
            for p, q in levels
        ]

    def _send_book_snapshot(self, session: Session, product: str, ts_ns: int) -> None:
        market = self.feed.markets[product]
        updates = self._updates(product, market.bids.top(), market.asks.top(), ts_ns)
        event = {"type": "snapshot", "product_id": product, "updates": updates}
        self._envelope(session, "l2_data", [event], ts_ns, "snapshot", product)

    def resend_snapshots(self, session: Session, symbol: str | None) -> None:
        now_ns = time.time_ns()
        for channel, product, _ in list(session.subs):
            if channel == "level2" and symbol in (None, product):
                self._send_book_snapshot(session, product, now_ns)

    def _trade(self, product: str, trade: Trade, ts_ns: int) -> dict[str, str]:
        return {
            "product_id": product,
            "trade_id": str(trade.trade_id),
            "price": self.price[product](trade.price),
            "size": self.size[product](trade.qty),
            "time": iso_trimmed(ts_ns, 6),
            # like the real feed, market_trades carries the MAKER's side (a trade that lifts
            # the ask is reported as SELL): see streams/parsers/coinbase.py
            "side": "SELL" if trade.taker_buy else "BUY",
        }

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        product = market.spec.symbol
        book_key = ("level2", product, 0)
        if step.book_changed and book_key in self.subscribers:
            updates = self._updates(product, step.bids, step.asks, ts_ns)
            event = {"type": "update", "product_id": product, "updates": updates}
            self.fan_out(book_key, self._frame("l2_data", [event], ts_ns, "book", product))
        trades_key = ("market_trades", product, 0)
        if step.trades and trades_key in self.subscribers:
            trades = [self._trade(product, t, ts_ns) for t in reversed(step.trades)]
            frame = self._frame(
                "market_trades", [{"type": "update", "trades": trades}], ts_ns, "trade", product
            )
            self.fan_out(trades_key, frame)
        if step.trades:  # after the trades: a client has every trade the figures count
            self._publish_stats(market, ts_ns)

    # -- ticker and candles -------------------------------------------------------------------

    def _publish_stats(self, market: SymbolMarket, ts_ns: int) -> None:
        product = market.spec.symbol
        ticker_key = ("ticker", product, 0)
        if ticker_key in self.subscribers:
            ticker = self._ticker(market, "update")
            if ticker is not None:
                self.fan_out(ticker_key, self._frame("ticker", [ticker], ts_ns, "ticker", product))
        candle_key = ("candles", product, 0)
        current = self.feed.stats[product].current
        if candle_key in self.subscribers and current is not None:
            event = {"type": "update", "candles": [self._candle(product, current)]}
            self.fan_out(candle_key, self._frame("candles", [event], ts_ns, "kline", product))

    def _ticker(self, market: SymbolMarket, kind: str) -> dict[str, Any] | None:
        product = market.spec.symbol
        day = self.feed.stats[product].ticker()
        if day is None:
            return None
        price, size = self.price[product], self.size[product]
        (bid, bid_qty), (ask, ask_qty) = market.bids.top(1)[0], market.asks.top(1)[0]
        ticker = {
            "type": "ticker",
            "product_id": product,
            "price": price(day.last),
            "volume_24_h": size(day.volume_lots),
            "low_24_h": price(day.low),
            "high_24_h": price(day.high),
            "low_52_w": price(day.low),
            "high_52_w": price(day.high),
            "price_percent_chg_24_h": f"{100 * (day.last - day.open) / day.open:.14f}",
            "best_bid": price(bid),
            "best_ask": price(ask),
            "best_bid_quantity": size(bid_qty),
            "best_ask_quantity": size(ask_qty),
        }
        return {"type": kind, "tickers": [ticker]}

    def _candle(self, product: str, kline: Kline) -> dict[str, str]:
        price = self.price[product]
        return {
            "start": str(kline.open_ns // 1_000_000_000),
            "high": price(kline.high),
            "low": price(kline.low),
            "open": price(kline.open),
            "close": price(kline.close),
            "volume": self.size[product](kline.volume_lots),
            "product_id": product,
        }


def _rest(dialect: CoinbaseDialect) -> list[tuple[str, Any]]:
    async def products(request: web.Request) -> web.Response:
        wanted = request.query.getall("product_ids", []) or list(dialect.feed.markets)
        listed = [p for p in wanted if p in dialect.feed.markets]
        body = {"products": [_product(dialect, p) for p in listed], "num_products": len(listed)}
        return web.json_response(body, dumps=dumps)

    return [("/api/v3/brokerage/market/products", products)]


def _product(dialect: CoinbaseDialect, product: str) -> dict[str, Any]:
    market = dialect.feed.markets[product]
    spec = market.spec
    price, size = dialect.price[product], dialect.size[product]
    mid = (market.bids.top(1)[0][0] + market.asks.top(1)[0][0]) // 2
    return {
        "product_id": product,
        "price": price(mid),
        "price_percentage_change_24h": "0",
        "volume_24h": "0",
        "volume_percentage_change_24h": "0",
        "base_increment": size(1),
        "quote_increment": price(1),
        "quote_min_size": "1",
        "quote_max_size": "150000000",
        "base_min_size": size(1),
        "base_max_size": "3400",
        "base_name": spec.base,
        "quote_name": spec.quote,
        "watched": False,
        "is_disabled": False,
        "new": False,
        "status": "online",
        "cancel_only": False,
        "limit_only": False,
        "post_only": False,
        "trading_disabled": False,
        "auction_mode": False,
        "product_type": "SPOT",
        "quote_currency_id": spec.quote,
        "base_currency_id": spec.base,
        "fcm_trading_session_details": None,
        "mid_market_price": "",
        "alias": "",
        "alias_to": [],
        "base_display_symbol": spec.base,
        "quote_display_symbol": spec.quote,
        "view_only": False,
        "price_increment": price(1),
        "display_name": f"{spec.base}-{spec.quote}",
        "product_venue": "CBE",
        "approximate_quote_24h_volume": "0",
    }


def create(config: SimConfig) -> Venue:
    feed = Feed("coinbase", "spot", config.listed("coinbase"), config)
    dialect = CoinbaseDialect(feed)
    return Venue("coinbase", {"spot": feed}, [dialect], _rest(dialect))
