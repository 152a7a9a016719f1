"""OKX v5 public: op subscribe/unsubscribe with one ack per arg, text ``ping`` -> ``pong``,
``books`` (400 levels) snapshot with prevSeqId -1 then updates chained by seqId/prevSeqId, the
25-level CRC32 checksum (or 0, as production sends since June 2026), periodic no-change
keep-alive updates, ``trades`` and ``tickers`` (the current ticker on subscribe, then one after
each step with trades); candles only on /ws/v5/business (``OkxBusinessDialect``): ``candle1m``
from the simulator's own klines, the open candle on subscribe and after trades, and the final
one once with confirm ``"1"`` when its window ends (9-field rows).

SWAP and FUTURES (``Contract``): for every listed ``BASE-USDT`` spot pair a linear
``BASE-USDT-SWAP`` (ctVal 0.01 BTC / 0.1 ETH / 1 base), an inverse ``BASE-USD-SWAP`` and an
inverse quarterly ``BASE-USD-YYMMDD`` future (ctVal 100 USD for BTC, else 10 USD), listed under
their instType by ``/api/v5/public/instruments``. Their books and trades are in whole
contracts; besides books, trades and tickers they serve ``mark-price`` (the contract's mid),
``open-interest`` (a random walk in contracts), ``funding-rate`` (SWAP: the running rate,
``fundingTime`` the next 8-hourly settlement, ``nextFundingRate`` ``""``), ``index-tickers`` per
index (``BASE-USDT``, ``BASE-USD``: the spot pair's mid) and ``liquidation-orders`` per instType
(a liquidation of one of its contracts every few seconds). Each is pushed on subscribe (not
liquidations) and then every few steps.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from simulator.klines import Kline, MarketStats
from simulator.market import Step, SymbolMarket, SymbolSpec

BOOK_DEPTH = 400
Levels = list[tuple[int, int]]
INSTRUMENT_CHANNELS = ("books", "trades", "tickers")
CONTRACT_CHANNELS = ("mark-price", "open-interest", "funding-rate")
MARK_EVERY = 5
"""steps between mark-price, index-tickers and open-interest pushes"""
FUNDING_EVERY = 30
LIQUIDATION_EVERY = 25
FUNDING_PERIOD_S = 8 * 3600
LINEAR_CONTRACT = {"BTC": "0.01", "ETH": "0.1"}
INVERSE_CONTRACT_USD = {"BTC": "100"}


@dataclass(frozen=True, slots=True)
class Contract:
    """One simulated SWAP or FUTURES instrument, as its instruments entry describes it."""

    inst_id: str
    inst_type: str  # SWAP | FUTURES
    uly: str  # the index it settles on, BASE-QUOTE
    ct_type: str  # linear | inverse
    ct_val: str
    ct_val_ccy: str
    settle_ccy: str
    exp_ms: int | None = None

    @property
    def base(self) -> str:
        return self.uly.split("-", 1)[0]


def futures_expiry(now_s: float | None = None) -> datetime:
    """The quarterly future's delivery: the last Friday of the quarter after the current one,
    08:00 UTC."""
    now = datetime.fromtimestamp(time.time() if now_s is None else now_s, UTC)
    quarter_end_month = (now.month - 1) // 3 * 3 + 6
    year = now.year + (quarter_end_month - 1) // 12
    month = (quarter_end_month - 1) % 12 + 1
    first_next = datetime(year + month // 12, month % 12 + 1, 1, 8, tzinfo=UTC)
    last_day = first_next - timedelta(days=1)
    return last_day - timedelta(days=(last_day.weekday() - 4) % 7)


def contracts_for(bases: list[str] | tuple[str, ...], expiry: datetime) -> list[Contract]:
    """The linear swap, inverse swap and inverse future of every base."""
    found: list[Contract] = []
    exp_ms = int(expiry.timestamp() * 1000)
    for base in bases:
        linear, inverse = LINEAR_CONTRACT.get(base, "1"), INVERSE_CONTRACT_USD.get(base, "10")
        found += [
            Contract(f"{base}-USDT-SWAP", "SWAP", f"{base}-USDT", "linear", linear, base, "USDT"),
            Contract(f"{base}-USD-SWAP", "SWAP", f"{base}-USD", "inverse", inverse, "USD", base),
            Contract(
                f"{base}-USD-{expiry:%y%m%d}",
                "FUTURES",
                f"{base}-USD",
                "inverse",
                inverse,
                "USD",
                base,
                exp_ms,
            ),
        ]
    return found


class OkxDialect(Dialect):
    exchange = "okx"
    name = "okx"
    path = "/ws/v5/public"
    faults = frozenset({"gap", "checksum", "disconnect", "silent", "malformed", "snapshot"})
    channels: tuple[str, ...] = (
        *INSTRUMENT_CHANNELS,
        *CONTRACT_CHANNELS,
        "index-tickers",
        "liquidation-orders",
    )

    def __init__(self, feed: Feed, contracts: list[Contract] | None = None) -> None:
        super().__init__(feed)
        self.price, self.size = trimmed_texts(feed)
        self.seq_ids: dict[str, int] = {}
        self.last_keepalive: dict[str, float] = {}
        self.texts = StatsTexts(feed)
        self.contracts = {c.inst_id: c for c in contracts or []}
        self.index_sources = {c.uly: _index_source(feed, c) for c in self.contracts.values()}
        """index instId -> the market whose mid is the index (the spot pair, else the linear swap)"""
        rng = random.Random(feed.config.seed)
        self.open_interest = {inst: 50_000 + rng.randrange(50_000) for inst in self.contracts}
        self.funding_bp = {inst: 1.0 for inst in self.contracts}
        self.rng = rng

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

    def _valid(self, channel: object, inst: object) -> bool:
        """A channel this dialect serves for that instId (instType for liquidation-orders)."""
        if channel not in self.channels:
            return False
        if channel == "index-tickers":
            return inst in self.index_sources
        if channel == "liquidation-orders":
            return any(c.inst_type == inst for c in self.contracts.values())
        if channel in CONTRACT_CHANNELS:
            contract = self.contracts.get(str(inst))
            return contract is not None and (channel != "funding-rate" or contract.inst_type == "SWAP")
        return inst in self.feed.markets

    def _one(self, session: Session, op: str, arg: Any, req_id: Any) -> None:
        channel = arg.get("channel") if isinstance(arg, dict) else None
        inst_field = "instType" if channel == "liquidation-orders" else "instId"
        inst = arg.get(inst_field) if isinstance(arg, dict) else None
        if not self._valid(channel, inst):
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
                "arg": {"channel": channel, inst_field: inst},
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
        elif key[0] != "liquidation-orders":
            frame = self._contract_frame(key[0], key[1], time.time_ns())
            if frame is not None:
                session.offer(frame)

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
        if symbol in self.contracts:
            self._publish_contract(market, ts_ns)
        if market.steps % MARK_EVERY == 0:
            for index, source in self.index_sources.items():
                if source == symbol:
                    self._push("index-tickers", index, ts_ns)

    # -- SWAP and FUTURES channels ----------------------------------------------------------

    def _publish_contract(self, market: SymbolMarket, ts_ns: int) -> None:
        inst_id, number = market.spec.symbol, market.steps
        contract = self.contracts[inst_id]
        if number % MARK_EVERY == 0:
            self.open_interest[inst_id] = max(1, self.open_interest[inst_id] + self.rng.randint(-50, 50))
            self._push("mark-price", inst_id, ts_ns)
            self._push("open-interest", inst_id, ts_ns)
        if number % FUNDING_EVERY == 0 and contract.inst_type == "SWAP":
            self.funding_bp[inst_id] = round(self.funding_bp[inst_id] + self.rng.uniform(-0.2, 0.2), 4)
            self._push("funding-rate", inst_id, ts_ns)
        if number % LIQUIDATION_EVERY == 0:
            key = ("liquidation-orders", contract.inst_type, 0)
            if key in self.subscribers:
                self.fan_out(key, Frame(self._liquidation(market, contract, ts_ns), "liquidation", inst_id))

    def _push(self, channel: str, inst: str, ts_ns: int) -> None:
        key = (channel, inst, 0)
        if key in self.subscribers:
            frame = self._contract_frame(channel, inst, ts_ns)
            if frame is not None:
                self.fan_out(key, frame)

    def _contract_frame(self, channel: str, inst: str, ts_ns: int) -> Frame | None:
        """The current mark-price / open-interest / funding-rate of a contract, or index-tickers
        of an index."""
        ms = str(ts_ns // 1_000_000)
        if channel == "index-tickers":
            source = self.feed.markets[self.index_sources[inst]]
            data: dict[str, str] = {"instId": inst, "idxPx": self._mid(source)}
            price = data["idxPx"]
            data.update(open24h=price, high24h=price, low24h=price, sodUtc0=price, sodUtc8=price, ts=ms)
        elif channel == "mark-price":
            contract = self.contracts[inst]
            data = {
                "instId": inst,
                "instType": contract.inst_type,
                "markPx": self._mid(self.feed.markets[inst]),
                "ts": ms,
            }
        elif channel == "open-interest":
            data = self._open_interest(self.contracts[inst], ms)
        elif channel == "funding-rate":
            data = self._funding(self.contracts[inst], ts_ns)
        else:
            return None
        text = f'{{"arg":{{"channel":"{channel}","instId":"{inst}"}},"data":[{dumps(data)}]}}'
        return Frame(text, channel, inst)

    def _mid(self, market: SymbolMarket) -> str:
        (bid, _), (ask, _) = market.bids.top(1)[0], market.asks.top(1)[0]
        return self.price[market.spec.symbol]((bid + ask) // 2)

    def _open_interest(self, contract: Contract, ms: str) -> dict[str, str]:
        contracts = self.open_interest[contract.inst_id]
        coin = contracts * float(contract.ct_val)
        if contract.ct_type == "inverse":
            coin /= float(self._mid(self.feed.markets[contract.inst_id]))
        return {
            "instId": contract.inst_id,
            "instType": contract.inst_type,
            "oi": str(contracts),
            "oiCcy": _plain(coin),
            "ts": ms,
        }

    def _funding(self, contract: Contract, ts_ns: int) -> dict[str, str]:
        """The 2026 field set: ``fundingTime`` the next settlement, ``nextFundingRate`` empty."""
        period_ms = FUNDING_PERIOD_S * 1000
        settle = (ts_ns // 1_000_000 // period_ms + 1) * period_ms
        rate = _plain(self.funding_bp[contract.inst_id] / 10_000)
        return {
            "formulaType": "withRate",
            "fundingRate": rate,
            "fundingTime": str(settle),
            "impactValue": "10000",
            "instId": contract.inst_id,
            "instType": contract.inst_type,
            "interestRate": "0.0001",
            "maxFundingRate": "0.00375",
            "method": "current_period",
            "minFundingRate": "-0.00375",
            "nextFundingRate": "",
            "nextFundingTime": str(settle + period_ms),
            "premium": rate,
            "prevFundingTime": str(settle - period_ms),
            "settFundingRate": rate,
            "settState": "settled",
            "ts": str(ts_ns // 1_000_000),
        }

    def _liquidation(self, market: SymbolMarket, contract: Contract, ts_ns: int) -> str:
        short = self.rng.random() < 0.5  # a short position is liquidated by a buy order
        (bid, _), (ask, _) = market.bids.top(1)[0], market.asks.top(1)[0]
        detail = {
            "bkLoss": "0",
            "bkPx": self.price[contract.inst_id](ask + 5 if short else bid - 5),
            "ccy": "",
            "posSide": "short" if short else "long",
            "side": "buy" if short else "sell",
            "sz": str(1 + self.rng.randrange(20)),
            "ts": str(ts_ns // 1_000_000),
        }
        data = {
            "details": [detail],
            "instFamily": contract.uly,
            "instId": contract.inst_id,
            "instType": contract.inst_type,
            "uly": contract.uly,
        }
        arg = f'{{"channel":"liquidation-orders","instType":"{contract.inst_type}"}}'
        return f'{{"arg":{arg},"data":[{dumps(data)}]}}'

    def volume_texts(self, symbol: str, lots: int, quote_units: int) -> tuple[str, str]:
        """(base, quote) volume texts of ``lots`` traded for ``quote_units`` (price ticks x lots):
        spot lots are base; a contract's are contracts of ``ctVal`` ``ctValCcy``."""
        contract = self.contracts.get(symbol)
        quote_text = self.texts.quote[symbol](quote_units)
        if contract is None:
            return quote_text, quote_text
        tick = self.feed.markets[symbol].spec.tick
        value = lots * float(contract.ct_val)
        if contract.ct_type == "linear":
            return _plain(value), _plain(quote_units * tick * float(contract.ct_val))
        return _plain(value * lots / (quote_units * tick)) if quote_units else "0", _plain(value)

    def _ticker(self, market: SymbolMarket, ts_ns: int) -> str | None:
        symbol = market.spec.symbol
        day = self.feed.stats[symbol].ticker()
        if day is None:
            return None
        price, size = self.texts.price[symbol], self.texts.qty[symbol]
        (bid, bid_qty), (ask, ask_qty) = market.bids.top(1)[0], market.asks.top(1)[0]
        contract = self.contracts.get(symbol)
        base_volume, _ = self.volume_texts(symbol, day.volume_lots, day.quote_units)
        data = {
            "instType": "SPOT" if contract is None else contract.inst_type,
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
            "volCcy24h": base_volume if contract is not None else self.texts.quote[symbol](day.quote_units),
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

    def __init__(self, feed: Feed, contracts: list[Contract] | None = None) -> None:
        super().__init__(feed, contracts)
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
        price = texts.price[symbol]
        volume_ccy, volume_quote = self.volume_texts(symbol, kline.volume_lots, kline.quote_units)
        row = [
            str(kline.open_ns // 1_000_000),
            price(kline.open),
            price(kline.high),
            price(kline.low),
            price(kline.close),
            texts.qty[symbol](kline.volume_lots),
            volume_ccy,
            volume_quote,
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


def _contract_instrument(dialect: OkxDialect, contract: Contract) -> dict[str, Any]:
    """A SWAP/FUTURES entry in the captured shape (``instrument`` in the OKX derivatives sample)."""
    spec = dialect.feed.markets[contract.inst_id].spec
    return {
        **_instrument(dialect, contract.inst_id),
        "instType": contract.inst_type,
        "uly": contract.uly,
        "instFamily": contract.uly,
        "baseCcy": "",
        "quoteCcy": "",
        "settleCcy": contract.settle_ccy,
        "ctVal": contract.ct_val,
        "ctMult": "1",
        "ctValCcy": contract.ct_val_ccy,
        "ctType": contract.ct_type,
        "expTime": "" if contract.exp_ms is None else str(contract.exp_ms),
        "alias": "" if contract.exp_ms is None else "quarter",
        "lever": "100",
        "lotSz": "1",
        "minSz": "1",
        "tickSz": Decimals(spec.price_decimals, spec.price_decimals, True)(1),
    }


def _listed(dialect: OkxDialect, inst_type: str) -> dict[str, dict[str, Any]]:
    """instId -> its instruments entry, of one instType."""
    if inst_type == "SPOT":
        spot = [s for s in dialect.feed.markets if s not in dialect.contracts]
        return {symbol: _instrument(dialect, symbol) for symbol in spot}
    contracts = [c for c in dialect.contracts.values() if c.inst_type == inst_type]
    return {c.inst_id: _contract_instrument(dialect, c) for c in contracts}


def _rest(dialect: OkxDialect) -> list[tuple[str, Any]]:
    async def instruments(request: web.Request) -> web.Response:
        inst_type = request.query.get("instType")
        if inst_type not in ("SPOT", "SWAP", "FUTURES"):
            return web.json_response(
                {"code": "51000", "msg": "Parameter instType error", "data": []}, dumps=dumps
            )
        listed = _listed(dialect, inst_type)
        wanted = request.query.get("instId")
        if wanted is not None and wanted not in listed:
            return web.json_response(
                {"code": "51001", "msg": "Instrument ID does not exist", "data": []}, dumps=dumps
            )
        rows = [listed[wanted]] if wanted else list(listed.values())
        return web.json_response({"code": "0", "msg": "", "data": rows}, dumps=dumps)

    return [("/api/v5/public/instruments", instruments)]


def _contract_market(feed: Feed, contract: Contract) -> SymbolMarket:
    """A contract's market: the base's price and tick, sizes in whole contracts."""
    spec = SymbolSpec.for_symbol(f"{contract.base}-USDT")
    spec = dataclasses.replace(spec, symbol=contract.inst_id, qty_decimals=0)
    return SymbolMarket(spec, feed.config.market_params(), feed.config.seed, "okx")


def create(config: SimConfig) -> Venue:
    """Spot: the listed ``BASE-QUOTE`` pairs. Contracts: for every base of a listed ``BASE-USDT``
    pair or of a configured derivative name (``BTC-USDT-PERP``, ``BTC-USD-PERP-INV``, ...)."""
    listed = config.listed("okx")
    spot = tuple(s for s in listed if s.count("-") == 1)
    usdt = [s.split("-")[0] for s in spot if s.endswith("-USDT")]
    derivatives = [
        s.split("-")[0] for s in config.symbols if s.count("-") > 1 and s.split("-")[1] in ("USDT", "USD")
    ]
    feed = Feed("okx", "spot", spot, config)
    contracts = contracts_for(tuple(dict.fromkeys(usdt + derivatives)), futures_expiry())
    for contract in contracts:
        market = feed.markets[contract.inst_id] = _contract_market(feed, contract)
        feed.stats[contract.inst_id] = MarketStats(market.spec)
    dialect = OkxDialect(feed, contracts)
    business = OkxBusinessDialect(feed, contracts)
    return Venue("okx", {"spot": feed}, [dialect, business], _rest(dialect))


def _index_source(feed: Feed, contract: Contract) -> str:
    spot = f"{contract.base}-USDT"
    return spot if spot in feed.markets else f"{contract.base}-USDT-SWAP"


def _plain(value: float) -> str:
    """A decimal text without exponent or trailing zeros (8 places at most)."""
    return f"{value:.8f}".rstrip("0").rstrip(".") or "0"
