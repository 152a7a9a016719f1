"""Template parser: copy to ``streams/parsers/<module>.py``; the class name is the registry
row's ``processor``.

``FeedProcessor`` owns what every exchange shares (connection lifecycle, instruments, trade
deduplication, value checks, the book-sync rules); a processor declares where the instrument
list is and reads frames in ``on_frame``: decode into the wire module's structs with its reused
decoder, then hand each fact to the base (``self.trade``, ``self.ticker``,
``self.exchange_candle``; books through the book-sync helpers, see ``streams/bridge.py``).
Anything unreadable raises (``ParseError`` with the reason, or a decode error): the base turns it
into a dead letter, never a crash.
"""

from __future__ import annotations

from marketpipe.exchanges import _template as wire
from marketpipe.raw import RawRecord
from streams.feed import ConnectionState, FeedOutput, FeedProcessor


class TemplateProcessor(FeedProcessor):
    exchange = "template"  # the registry row's name
    instruments_path = wire.INSTRUMENTS_PATH
    instruments_parser = staticmethod(wire.parse_instruments)

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        message = wire.MESSAGES.decode(raw.data or b"")
        if isinstance(message, wire.TradeMessage):
            self.trade(
                raw,
                out,
                message.symbol,
                message.id,
                float(message.price),
                float(message.size),
                message.side,
                message.ts_ms * 1000,
            )
