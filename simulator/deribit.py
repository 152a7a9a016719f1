"""Deribit API v2: JSON-RPC 2.0 on ``/ws/api/v2`` and the same methods over HTTP GET.

Websocket methods: ``public/subscribe`` / ``public/unsubscribe`` (the result lists the channels),
``public/set_heartbeat`` (then a ``test_request`` every interval; one left unanswered by
``public/test`` until the next is due closes the connection, as Deribit does) and
``public/test``. Channels ``book``, ``trades`` and ``ticker`` of an instrument at ``100ms`` or
``agg2`` (``raw`` is refused: it needs an authorised connection). The book's first notification
is the whole book (``type`` snapshot), then ``change`` notifications chained by
``prev_change_id`` / ``change_id`` with ``new`` / ``change`` / ``delete`` levels; the ``gap``
fault drops one. Some trades carry ``liquidation`` (``T``, ``M``, ``MT``). Tickers carry mark,
index, open interest and (perpetuals) ``current_funding`` / ``funding_8h``.

HTTP: ``/api/v2/public/get_instruments?currency=&kind=&expired=false``.

Instruments, from the configured names (the simulator names its own listings): ``X-USD-PERP-INV``
is ``X-PERPETUAL`` (inverse, amounts in USD, 10 USD contracts for BTC, 1 USD otherwise),
``X-USD-YYYYMMDD-INV`` the inverse future ``X-DMMMYY``, ``X-USDC-PERP`` ``X_USDC-PERPETUAL`` and
``X-USDC-YYYYMMDD`` ``X_USDC-DMMMYY`` (linear, amounts in the base coin, one lot a contract).
Without such names in the configuration it lists BTC and ETH perpetuals and the next quarterly
BTC future. Options are not simulated (their premiums are not a random walk around the coin's
price). One simulated lot is one contract, so inverse amounts are lots x contract size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from simulator.base import Decimals, Dialect, Feed, Frame, Session, SimConfig, SubKey, Venue, dumps
from simulator.market import Step, SymbolMarket, Trade

CHANNELS = ("book", "trades", "ticker")
INTERVALS = ("100ms", "agg2")
PERPETUAL_EXPIRY_MS = 32503708800000  # what Deribit states for perpetuals (year 3000)
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
MIN_HEARTBEAT_S = 10
OPEN_INTEREST_LOTS = 5_000_000
TICKER_EVERY_STEPS = 10


@dataclass(frozen=True, slots=True)
class Listing:
    """One simulated instrument: its normalised name and what get_instruments says of it."""

    symbol: str
    name: str
    base: str
    quote: str
    linear: bool
    expiry_ms: int | None  # None: perpetual
    contract_size: str  # wire text: USD for inverse, base coin for linear

    @property
    def currency(self) -> str:
        """The get_instruments ``currency`` that lists it: the coin, or the linear settle currency."""
        return self.quote if self.linear else self.base


def listing_for(symbol: str, qty_decimals: int) -> Listing | None:
    """The Deribit instrument of a normalised name, or None when Deribit-style names cannot say it."""
    parts = symbol.split("-")
    inverse = parts[-1] == "INV"
    if inverse:
        parts = parts[:-1]
    if len(parts) != 3 or (parts[1] == "USD") != inverse or parts[1] not in ("USD", "USDC"):
        return None
    base, quote, term = parts
    lot = Decimals(qty_decimals, qty_decimals, True)(1)
    size = ("10" if base == "BTC" else "1") if inverse else lot
    prefix = base if inverse else f"{base}_{quote}"
    if term == "PERP":
        return Listing(symbol, f"{prefix}-PERPETUAL", base, quote, not inverse, None, size)
    try:
        day = datetime.strptime(term, "%Y%m%d").replace(hour=8, tzinfo=UTC)
    except ValueError:
        return None
    name = f"{prefix}-{day.day}{MONTHS[day.month - 1]}{day.year % 100:02d}"
    return Listing(symbol, name, base, quote, not inverse, int(day.timestamp() * 1000), size)


def next_quarterly(now: datetime) -> str:
    """``YYYYMMDD`` of the last Friday of the next quarter month at least a week away."""
    year, month = now.year, now.month
    while True:
        if month % 3 == 0:
            last = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC) - timedelta(days=1)
            friday = last - timedelta(days=(last.weekday() - 4) % 7)
            if friday - now > timedelta(days=7):
                return friday.strftime("%Y%m%d")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def deribit_symbols(config: SimConfig) -> tuple[str, ...]:
    if "deribit" in config.listings:
        return config.listings["deribit"]
    named = tuple(s for s in config.symbols if listing_for(s, 0) is not None)
    if named:
        return named
    return ("BTC-USD-PERP-INV", "ETH-USD-PERP-INV", f"BTC-USD-{next_quarterly(datetime.now(UTC))}-INV")


class DeribitDialect(Dialect):
    exchange = "deribit"
    name = "deribit"
    path = "/ws/api/v2"
    faults = frozenset({"gap", "disconnect", "silent", "malformed", "snapshot"})

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.listings: dict[str, Listing] = {}
        for symbol, market in feed.markets.items():
            found = listing_for(symbol, market.spec.qty_decimals)
            if found is None:
                raise ValueError(f"deribit cannot list {symbol!r}")
            self.listings[symbol] = found
        self.by_name = {listing.name: symbol for symbol, listing in self.listings.items()}
        self.price = {
            s: Decimals(m.spec.price_decimals, m.spec.price_decimals, True) for s, m in feed.markets.items()
        }
        self.change_ids: dict[str, int] = {}
        self.resting: dict[str, tuple[set[int], set[int]]] = {}
        self.open_interest = dict.fromkeys(feed.markets, OPEN_INTEREST_LOTS)

    # -- requests ----------------------------------------------------------------------------

    def on_text(self, session: Session, text: str) -> None:
        try:
            request = orjson.loads(text)
            method, params, req_id = request["method"], request.get("params") or {}, request.get("id")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            session.send(_error(None, -32700, "Parse error"))
            return
        if method in ("public/subscribe", "public/unsubscribe"):
            self._subscriptions(session, method == "public/subscribe", params.get("channels"), req_id)
        elif method == "public/set_heartbeat":
            self._set_heartbeat(session, params.get("interval"), req_id)
        elif method == "public/test":
            session.extra["awaiting_test"] = False
            session.send({"jsonrpc": "2.0", "id": req_id, "result": {"version": "1.2.26"}})
        else:
            session.send(_error(req_id, -32601, "Method not found"))

    def _subscriptions(self, session: Session, subscribe: bool, channels: Any, req_id: Any) -> None:
        if not isinstance(channels, list):
            session.send(_error(req_id, -32602, "Invalid params"))
            return
        keys: list[tuple[str, SubKey]] = []
        for channel in channels:
            kind, _, rest = str(channel).partition(".")
            name, _, interval = rest.rpartition(".")
            symbol = self.by_name.get(name)
            if interval == "raw":
                session.send(_error(req_id, 13778, "raw_subscriptions_not_available_for_unauthorized"))
                return
            if kind not in CHANNELS or interval not in INTERVALS or symbol is None:
                session.send(_error(req_id, 11050, f"bad_request: {channel}"))
                return
            keys.append((str(channel), (kind, symbol, 0)))
        for _, key in keys:
            (self.subscribe if subscribe else self.unsubscribe)(session, key)
        session.send({"jsonrpc": "2.0", "id": req_id, "result": [channel for channel, _ in keys]})
        if subscribe:
            for _, key in keys:
                self._on_subscribed(session, key)

    def _on_subscribed(self, session: Session, key: SubKey) -> None:
        market = self.feed.markets[key[1]]
        if key[0] == "book":
            session.offer(self._snapshot(market, time.time_ns()))
        elif key[0] == "ticker":
            session.offer(self._ticker(market, time.time_ns()))

    def _set_heartbeat(self, session: Session, interval: Any, req_id: Any) -> None:
        if not isinstance(interval, int | float) or interval < MIN_HEARTBEAT_S:
            session.send(_error(req_id, -32602, "Invalid params"))
            return
        session.extra.update(heartbeat_s=float(interval), test_due=time.monotonic() + interval)
        session.extra["awaiting_test"] = False
        session.send({"jsonrpc": "2.0", "id": req_id, "result": "ok"})

    def on_timer(self, session: Session, now: float) -> None:
        every = session.extra.get("heartbeat_s")
        if every is None or now < session.extra["test_due"]:
            return
        if session.extra["awaiting_test"]:
            session.abort(1000, "heartbeat: test_request not answered with public/test")
            return
        session.extra.update(test_due=now + every, awaiting_test=True)
        session.send({"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}})

    # -- frames -------------------------------------------------------------------------------

    def _notification(self, channel: str, data: str) -> str:
        return f'{{"jsonrpc":"2.0","method":"subscription","params":{{"channel":"{channel}","data":{data}}}}}'

    def _amount(self, symbol: str, lots: int) -> str:
        listing = self.listings[symbol]
        if listing.linear:
            spec = self.feed.markets[symbol].spec
            return Decimals(spec.qty_decimals, spec.qty_decimals, True)(lots)
        return str(lots * int(listing.contract_size))

    def _levels(self, symbol: str, levels: list[tuple[str, int, int]]) -> str:
        price = self.price[symbol]
        return "[" + ",".join(f'["{a}",{price(p)},{self._amount(symbol, q)}]' for a, p, q in levels) + "]"

    def _snapshot(self, market: SymbolMarket, ts_ns: int) -> Frame:
        symbol = market.spec.symbol
        change_id = self.change_ids.setdefault(symbol, market.seq)
        bids, asks = market.bids.top(), market.asks.top()
        self.resting[symbol] = ({p for p, _ in bids}, {p for p, _ in asks})
        name = self.listings[symbol].name
        data = (
            f'{{"type":"snapshot","timestamp":{ts_ns // 1_000_000},"instrument_name":"{name}",'
            f'"change_id":{change_id},"bids":{self._levels(symbol, [("new", p, q) for p, q in bids])},'
            f'"asks":{self._levels(symbol, [("new", p, q) for p, q in asks])}}}'
        )
        return Frame(self._notification(f"book.{name}.100ms", data), "snapshot", symbol)

    def resend_snapshots(self, session: Session, symbol: str | None) -> None:
        ts_ns = time.time_ns()
        for key in list(session.subs):
            if key[0] == "book" and symbol in (None, key[1]):
                session.offer(self._snapshot(self.feed.markets[key[1]], ts_ns))

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        book_key: SubKey = ("book", symbol, 0)
        if book_key in self.subscribers:
            self._publish_book(market, step, ts_ns)
        else:
            self.change_ids.pop(symbol, None)
        self._move_open_interest(symbol, step.trades)
        trade_key: SubKey = ("trades", symbol, 0)
        if step.trades and trade_key in self.subscribers:
            self.fan_out(trade_key, self._trades(market, step.trades, ts_ns))
        ticker_key: SubKey = ("ticker", symbol, 0)
        if ticker_key in self.subscribers and (step.trades or step.number % TICKER_EVERY_STEPS == 0):
            self.fan_out(ticker_key, self._ticker(market, ts_ns))

    def _publish_book(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        if not step.book_changed or symbol not in self.change_ids:
            return
        prev = self.change_ids[symbol]
        self.change_ids[symbol] = step.seq
        bids, asks = self.resting[symbol]
        name = self.listings[symbol].name
        data = (
            f'{{"type":"change","timestamp":{ts_ns // 1_000_000},"prev_change_id":{prev},'
            f'"instrument_name":"{name}","change_id":{step.seq},'
            f'"bids":{self._levels(symbol, _actions(bids, step.bids))},'
            f'"asks":{self._levels(symbol, _actions(asks, step.asks))}}}'
        )
        self.fan_out(
            ("book", symbol, 0), Frame(self._notification(f"book.{name}.100ms", data), "book", symbol)
        )

    def _trades(self, market: SymbolMarket, trades: list[Trade], ts_ns: int) -> Frame:
        symbol = market.spec.symbol
        name, price = self.listings[symbol].name, self.price[symbol]
        mark, index = self._mark_index(market)
        rows = []
        for trade in trades:
            flag = _liquidation(trade.trade_id)
            rows.append(
                f'{{"trade_seq":{trade.trade_id - 100_000},"trade_id":"{trade.trade_id}",'
                f'"timestamp":{ts_ns // 1_000_000},"tick_direction":{trade.trade_id % 4},'
                f'"price":{price(trade.price)},"mark_price":{price(mark)},"instrument_name":"{name}",'
                f'"index_price":{price(index)},"direction":"{"buy" if trade.taker_buy else "sell"}",'
                f'"amount":{self._amount(symbol, trade.qty)}'
                + (f',"liquidation":"{flag}"' if flag else "")
                + "}"
            )
        return Frame(self._notification(f"trades.{name}.100ms", "[" + ",".join(rows) + "]"), "trade", symbol)

    def _ticker(self, market: SymbolMarket, ts_ns: int) -> Frame:
        symbol = market.spec.symbol
        listing, price = self.listings[symbol], self.price[symbol]
        (bid, bid_lots), (ask, ask_lots) = market.bids.top(1)[0], market.asks.top(1)[0]
        mark, index = self._mark_index(market)
        day = self.feed.stats[symbol].ticker()
        last = day.last if day is not None else mark
        fields: dict[str, Any] = {
            "timestamp": ts_ns // 1_000_000,
            "stats": self._stats(symbol, day),
            "state": "open",
            "settlement_price": orjson.Fragment(price(index)),
            "open_interest": orjson.Fragment(self._amount(symbol, self.open_interest[symbol])),
            "min_price": orjson.Fragment(price(mark - mark // 100)),
            "max_price": orjson.Fragment(price(mark + mark // 100)),
            "mark_price": orjson.Fragment(price(mark)),
            "last_price": orjson.Fragment(price(last)),
            "instrument_name": listing.name,
            "index_price": orjson.Fragment(price(index)),
            "estimated_delivery_price": orjson.Fragment(price(index)),
            "best_bid_price": orjson.Fragment(price(bid)),
            "best_bid_amount": orjson.Fragment(self._amount(symbol, bid_lots)),
            "best_ask_price": orjson.Fragment(price(ask)),
            "best_ask_amount": orjson.Fragment(self._amount(symbol, ask_lots)),
        }
        if listing.expiry_ms is None:
            funding = _funding(market.steps)
            fields["current_funding"] = funding
            fields["funding_8h"] = round(funding * 8, 8)
        name = listing.name
        return Frame(self._notification(f"ticker.{name}.100ms", dumps(fields)), "ticker", symbol)

    def _stats(self, symbol: str, day: Any) -> dict[str, Any]:
        if day is None:
            return {"volume": None, "price_change": None, "low": None, "high": None}
        stats = self.feed.stats[symbol]
        quote = stats.quote_volume(day.quote_units)
        listing = self.listings[symbol]
        volume = float(self._amount(symbol, day.volume_lots))
        usd = quote if listing.linear else volume
        base = volume if listing.linear else quote / day.last
        return {
            "volume_usd": round(usd, 2),
            "volume": round(base, 8),
            "price_change": round((day.last - day.open) / day.open * 100, 4),
            "low": orjson.Fragment(self.price[symbol](day.low)),
            "high": orjson.Fragment(self.price[symbol](day.high)),
        }

    @staticmethod
    def _mark_index(market: SymbolMarket) -> tuple[int, int]:
        """(mark, index) in ticks: the mid, and the mid a little lower (the contract's basis)."""
        mid = (market.bids.top(1)[0][0] + market.asks.top(1)[0][0]) // 2
        return mid, mid - max(1, mid // 5000)

    def _move_open_interest(self, symbol: str, trades: list[Trade]) -> None:
        for trade in trades:
            change = trade.qty if trade.trade_id % 3 else -trade.qty
            self.open_interest[symbol] = max(OPEN_INTEREST_LOTS // 2, self.open_interest[symbol] + change)


def _actions(resting: set[int], changes: list[tuple[int, int]]) -> list[tuple[str, int, int]]:
    """Step changes (qty 0 = removed) as Deribit actions; ``resting`` follows the book."""
    found = []
    for price, qty in changes:
        if not qty:
            resting.discard(price)
            found.append(("delete", price, 0))
        elif price in resting:
            found.append(("change", price, qty))
        else:
            resting.add(price)
            found.append(("new", price, qty))
    return found


def _liquidation(trade_id: int) -> str | None:
    if trade_id % 10 == 3:
        return "T"
    if trade_id % 10 == 7:
        return "M"
    return "MT" if trade_id % 50 == 11 else None


def _funding(steps: int) -> float:
    """A small rate that changes every 50 steps (5 s at the default rate)."""
    return ((steps // 50) % 5 - 2) * 0.00001 + 0.0000025


def _error(req_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}}


def _instrument(dialect: DeribitDialect, symbol: str) -> dict[str, Any]:
    listing, spec = dialect.listings[symbol], dialect.feed.markets[symbol].spec
    size = orjson.Fragment(listing.contract_size)
    return {
        "tick_size": orjson.Fragment(Decimals(spec.price_decimals, spec.price_decimals, True)(1)),
        "taker_commission": 0.0005,
        "settlement_period": "perpetual" if listing.expiry_ms is None else "month",
        "settlement_currency": listing.quote if listing.linear else listing.base,
        "quote_currency": listing.quote,
        "price_index": f"{listing.base.lower()}_{listing.quote.lower()}",
        "min_trade_amount": size,
        "max_leverage": 50,
        "maker_commission": 0.0,
        "kind": "future",
        "is_active": True,
        "instrument_type": "linear" if listing.linear else "reversed",
        "instrument_name": listing.name,
        "instrument_id": 100_000 + sorted(dialect.listings).index(symbol),
        "expiration_timestamp": listing.expiry_ms or PERPETUAL_EXPIRY_MS,
        "creation_timestamp": 1534242287000,
        "counter_currency": listing.quote,
        "contract_size": size,
        "base_currency": listing.base,
    }


def _rest(dialect: DeribitDialect) -> list[tuple[str, Any]]:
    currencies = {listing.currency for listing in dialect.listings.values()} | {"BTC", "ETH", "USDC", "USDT"}

    async def instruments(request: web.Request) -> web.Response:
        currency, kind = request.query.get("currency"), request.query.get("kind")
        if currency not in currencies or kind not in (None, "future", "option", "spot"):
            return web.json_response(_error(None, -32602, "Invalid params"), status=400, dumps=dumps)
        rows = [
            _instrument(dialect, symbol)
            for symbol, listing in dialect.listings.items()
            if listing.currency == currency and kind in (None, "future")
        ]
        now_us = time.time_ns() // 1000
        body = {
            "jsonrpc": "2.0",
            "result": rows,
            "usIn": now_us,
            "usOut": now_us + 150,
            "usDiff": 150,
            "testnet": False,
        }
        return web.json_response(body, dumps=dumps)

    return [("/api/v2/public/get_instruments", instruments)]


def create(config: SimConfig) -> Venue:
    feed = Feed("deribit", "future", deribit_symbols(config), config)
    dialect = DeribitDialect(feed)
    return Venue("deribit", {"future": feed}, [dialect], _rest(dialect))
