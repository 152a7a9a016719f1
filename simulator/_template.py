"""Template simulated exchange: copy to ``simulator/<module>.py``.

Defines ``create(config) -> Venue``: the exchange's feeds (the books ``simulator.market`` steps),
its websocket dialects (``simulator.base.Dialect``: the subscribe grammar in ``on_text``, the
frames of each market step in ``publish``) and its REST routes (the instrument list the
connector resolves symbols with). It writes the exchange's frames from its documentation,
independently of the parser (an independent oracle), importing from ``marketpipe.exchanges``
at most wire structs or generated protobuf classes for encoding.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from marketpipe.exchanges import _template as wire
from simulator.base import Dialect, Feed, Frame, Session, SimConfig, SubKey, Venue, dumps, trimmed_texts
from simulator.market import Step, SymbolMarket


class TemplateDialect(Dialect):
    exchange = "template"
    name = "template"
    path = wire.WS_PATH

    def __init__(self, feed: Feed) -> None:
        super().__init__(feed)
        self.price, self.size = trimmed_texts(feed)  # each market's decimal texts

    def on_text(self, session: Session, text: str) -> None:
        request = orjson.loads(text)
        for wire_symbol in request.get("symbols", ()):
            symbol = _symbol(wire_symbol)
            if request.get("op") == "subscribe" and self.market(symbol) is not None:
                self.subscribe(session, (wire.TRADES_CHANNEL, symbol, 0))
        session.send({"type": "subscribed", "channel": wire.TRADES_CHANNEL})

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        symbol = market.spec.symbol
        key: SubKey = (wire.TRADES_CHANNEL, symbol, 0)
        if not step.trades or key not in self.subscribers:
            return
        price, size = self.price[symbol], self.size[symbol]
        for trade in step.trades:
            message = {
                "type": "trade",
                "symbol": _wire_symbol(symbol),
                "id": str(trade.trade_id),
                "price": price(trade.price),
                "size": size(trade.qty),
                "side": "buy" if trade.taker_buy else "sell",
                "ts_ms": ts_ns // 1_000_000,
            }
            self.fan_out(key, Frame(dumps(message), "trade", symbol))


def _wire_symbol(symbol: str) -> str:
    return symbol.replace("-", "/")  # BTC-USDT is BTC/USDT on the wire


def _symbol(wire_symbol: str) -> str:
    return wire_symbol.replace("/", "-")


def create(config: SimConfig) -> Venue:
    feed = Feed("template", "spot", config.listed("template"), config)
    dialect = TemplateDialect(feed)

    async def symbols(request: web.Request) -> web.Response:
        rows = [
            {"symbol": _wire_symbol(s), "base": m.spec.base, "quote": m.spec.quote}
            for s, m in feed.markets.items()
        ]
        return web.json_response({"symbols": rows}, dumps=dumps)

    return Venue("template", {"spot": feed}, [dialect], [(wire.INSTRUMENTS_PATH, symbols)])
