"""Template connector: copy to ``producers/connectors/<module>.py``; the class name is the
registry row's ``connector``.

It declares the exchange's limits and endpoints and builds its subscribe frames; the base
class (``producers.base.Connector``) does the rest: instrument resolution, sharding,
connections, pacing, heartbeats, publishing raw frames. Required: the class attributes below,
``ws_url``, ``all_instruments_url``, ``instrument_urls``, ``subscribe_messages`` and
``resubscribe_book_messages``. Optional hooks: ``ping_message``, ``answer_frame``,
``on_subscribed``, ``planned_reconnect_reason``. Protocol facts come from the exchange's wire
module (``marketpipe.exchanges.<module>``), never from ``streams``.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from marketpipe.exchanges import _template as wire
from producers.base import Connector


class TemplateConnector(Connector):
    exchange = "template"  # the registry row's name
    default_ws_base = "wss://ws.template.invalid"
    default_rest_base = "https://api.template.invalid"
    max_symbols_per_connection = 50
    send_interval_s = 0.1  # the exchange's client message rate limit

    def ws_url(self) -> str:
        return f"{self.ws_base}{wire.WS_PATH}"

    def all_instruments_url(self) -> str:
        return f"{self.rest_base}{wire.INSTRUMENTS_PATH}"

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        return [self.all_instruments_url()]

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        return [self._message("subscribe", wire.TRADES_CHANNEL, symbols)]

    def resubscribe_book_messages(self, symbol: str) -> list[str]:
        return []  # this template subscribes no book; a real one unsubscribes and subscribes it

    def _message(self, op: str, channel: str, symbols: Sequence[str]) -> str:
        return orjson.dumps({"op": op, "channel": channel, "symbols": list(symbols)}).decode()
