"""Deribit API v2: JSON-RPC 2.0 over one websocket.

Frames: ``{"jsonrpc","id","result"}`` answers (the subscribe result is the list of channels now
subscribed; ``public/set_heartbeat`` and ``public/test`` answer ``"ok"`` / ``{"version"}``),
``{"id","error":{"code","message"}}`` errors (dead-lettered with the exchange's reason) and
``{"method":"subscription","params":{"channel","data"}}`` notifications; ``{"method":"heartbeat",
"params":{"type":"heartbeat"|"test_request"}}`` are keep-alives (the connector answers a
``test_request`` with ``public/test``).

Channels (``<name>.<instrument>.100ms``; ``raw`` needs an authorised connection):

- ``book``: the first notification is the whole book (``data.type == "snapshot"``: a snapshot is
  told by its type, never by a missing ``prev_change_id``, which some snapshots carry); each later
  one (``"change"``) must have ``prev_change_id`` equal to the previous ``change_id``, else the
  book is unsynced and the connector resubscribes (a fresh snapshot follows). Levels are
  ``[action, price, amount]``: ``new`` and ``change`` set the level's amount, ``delete`` removes it.
- ``trades``: a list of trades; ``direction`` is the taker side, ``trade_id`` the identity. A trade
  with ``liquidation`` (``"T"``: the taker was liquidated, ``"M"``: the maker, ``"MT"``: both)
  is also published as a ``Liquidation`` (the tardis rule): ``T`` -> the liquidation order is the
  taker's, side = ``direction``; ``M`` and ``MT`` -> the opposite side (for ``MT`` one record, as
  tardis does, although both sides were forced). Its price is the trade price and its id the
  trade id. Only a trade published for the first time gives a liquidation (repeats are dropped).
- ``ticker``: a ``Ticker`` (last, best bid/ask, 24 h high/low; ``volume_24h`` is ``stats.volume``,
  in the base coin, ``quote_volume_24h`` ``stats.volume_usd``, in USD; a best price of 0 means an
  empty side: None), a ``MarkPrice`` (``mark_price``; ``index_price`` of the underlying index;
  ``settle_price`` = ``estimated_delivery_price`` of a dated future only within the last 30
  minutes before its expiry, where Deribit averages the index into the delivery price: before that
  window the field merely repeats the index), an ``OpenInterest`` and, for perpetuals, a
  ``FundingRate``: ``rate`` = ``current_funding``, the rate accruing now. Deribit funds
  continuously, so there is no next funding time, no period and no forecast
  (``funding_8h``, the same rate scaled to 8 hours, is not carried: it adds nothing).
  Options' tickers give the Ticker and the OpenInterest only: their mark price is a premium
  in the coin while the index is in USD, a pair the mark/index views would misread.
- ``chart.trades.<instrument>.<resolution>`` (not subscribed by the connector; read when present):
  exchange candles, ``volume`` in the base coin, ``cost`` in USD; no final flag (the later-window
  rule closes them).
- ``quote``, ``perpetual``, ``deribit_price_index`` and other channels are dead-lettered
  (``unsupported``): BBO comes from the book, index prices from the tickers.

Units (marketpipe states sizes in contracts of the instrument): Deribit's ``amount`` (trades,
book levels, best bid/ask amounts) and ``open_interest`` are USD for perpetuals and inverse
futures, and the base coin for options and linear (USDC) perpetuals and futures (spot: the base
coin). Both are divided by the instrument's ``contract_size`` from its metadata (BTC-PERPETUAL:
10 USD, so 5580 USD = 558 contracts; a USDC-margined perpetual: e.g. 0.001 SOL, so an amount of
0.5 SOL = 500 contracts; options: 1 coin). ``OpenInterest.value`` is the USD open interest as
sent for inverse contracts and None for linear ones and options (Deribit states no notional).

Instruments and the wire structs: ``marketpipe/exchanges/deribit.py`` (``parse_instruments`` is
re-exported here). Symbols no metadata named are dead-lettered (``unnamed_instrument``), never
read from the wire name.
"""

from __future__ import annotations

import msgspec

from marketpipe.exchanges.deribit import (
    ANY,
    BOOK,
    BOOK_CHANNEL,
    BOOK_SUMMARY_PATHS,
    CANDLE,
    CHART_PREFIX,
    INSTRUMENTS_PATH,
    INSTRUMENTS_PATHS,
    MESSAGE,
    SUMMARIES,
    TICKER,
    TICKER_CHANNEL,
    TRADES,
    TRADES_CHANNEL,
    Book,
    Candle,
    Message,
    Params,
    Stats,
    Summary,
    Ticker,
    Trade,
    parse_instruments,
    typed,
)
from marketpipe.raw import RawRecord
from marketpipe.records import Instrument, Level, Side
from streams.parsers.base import (
    BookSync,
    ConnectionState,
    FeedOutput,
    FeedProcessor,
    ParseError,
    interval_name,
    ms_to_us,
)

# parse_instruments stays importable from here until every caller reads it from the wire module
__all__ = ["DeribitProcessor", "parse_instruments"]

TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
OPPOSITE: dict[Side, Side] = {"buy": "sell", "sell": "buy", "unknown": "unknown"}
DELIVERY_WINDOW_US = 30 * 60 * 1_000_000
"""Deribit's delivery price is the index averaged over the last 30 minutes before expiry"""


# -------------------------------------------------------------------------------- processor


class DeribitProcessor(FeedProcessor):
    exchange = "deribit"
    instruments_path = INSTRUMENTS_PATH
    instruments_paths = INSTRUMENTS_PATHS
    instruments_parser = staticmethod(parse_instruments)

    def fallback_instrument(self, exchange_symbol: str) -> tuple[str, str] | None:
        raise ParseError(
            f"deribit instrument {exchange_symbol!r}: no instrument metadata (rest record) names it; "
            "deribit instruments are named from their metadata only",
            "unnamed_instrument",
        )

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        msg = self._decode(raw)
        if msg.method == "subscription" and msg.params is not None:
            self._notification(conn, msg.params, raw, out)
        elif msg.method == "heartbeat":
            self.counters.heartbeats += 1
        elif msg.error is not None:
            raise ParseError(f"deribit error {msg.error.code}: {msg.error.message!r} (request id {msg.id})")
        elif len(msg.result):
            self._result(msg.result, raw, out)
        else:
            raise ParseError(f"unrecognised deribit frame: {raw.text()[:200]}")

    def on_rest(self, conn: ConnectionState, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if not path.endswith(BOOK_SUMMARY_PATHS):
            super().on_rest(conn, raw, path, out)
            return
        msg = self._decode(raw)
        if msg.error is not None:
            raise ParseError(f"deribit error {msg.error.code}: {msg.error.message!r} ({raw.url})")
        if not len(msg.result):
            raise ParseError(f"deribit book summary {raw.url!r} has no result")
        self._summaries(typed(SUMMARIES, msg.result, "book summary"), raw, out)

    def _decode(self, raw: RawRecord) -> Message:
        if not raw.payload:
            raise ParseError("empty frame")
        try:
            return MESSAGE.decode(raw.payload)
        except msgspec.ValidationError as exc:
            raise ParseError(f"unrecognised deribit frame: {exc}: {raw.text()[:200]}") from None
        except msgspec.DecodeError as exc:
            raise ParseError(f"invalid JSON: {exc}") from None

    def _result(self, result: msgspec.Raw, raw: RawRecord, out: FeedOutput) -> None:
        """Answers on the websocket: the subscribe result (the channels now subscribed), ``"ok"``
        of set_heartbeat, ``{"version"}`` of public/test, or book summaries (open interest)."""
        value = ANY.decode(result)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            self.counters.acks += 1
        elif value == "ok" or (isinstance(value, dict) and "version" in value):
            self.counters.heartbeats += 1
        elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
            self._summaries(typed(SUMMARIES, result, "book summary"), raw, out)
        else:
            raise ParseError(f"unrecognised deribit result: {bytes(result)[:200]!r}")

    def _notification(self, conn: ConnectionState, params: Params, raw: RawRecord, out: FeedOutput) -> None:
        channel = params.channel
        kind = channel.partition(".")[0]
        if kind == BOOK_CHANNEL:
            self._book(conn, typed(BOOK, params.data, channel), raw, out)
        elif kind == TRADES_CHANNEL:
            self._trades(typed(TRADES, params.data, channel), raw, out)
        elif kind == TICKER_CHANNEL:
            self._ticker(typed(TICKER, params.data, channel), raw, out)
        elif channel.startswith(CHART_PREFIX):
            self._candle(conn, channel, typed(CANDLE, params.data, channel), raw, out)
        else:
            raise ParseError(f"unsupported deribit channel {channel!r}", "unsupported")

    # -- units -------------------------------------------------------------------------

    def _record(self, exchange_symbol: str) -> Instrument:
        found = self.instrument_record(exchange_symbol)
        if found is None:
            raise ParseError(
                f"deribit instrument {exchange_symbol!r}: no instrument metadata (rest record) gives its "
                "contract size",
                "unnamed_instrument",
            )
        return found

    # -- trades and liquidations ---------------------------------------------------------

    def _trades(self, trades: list[Trade], raw: RawRecord, out: FeedOutput) -> None:
        for item in trades:
            symbol = item.instrument_name
            size = _in_contracts(item.amount, self._record(symbol).contract_size)
            side = TAKER_SIDES.get(item.direction, "unknown")
            ts = ms_to_us(item.timestamp)
            published = len(out.trades)
            self.trade(raw, out, symbol, item.trade_id, item.price, size, side, ts)
            if item.liquidation and len(out.trades) > published:
                self._liquidation(item, side, size, ts, raw, out)

    def _liquidation(
        self, item: Trade, taker: Side, size: float, ts: int, raw: RawRecord, out: FeedOutput
    ) -> None:
        flag = item.liquidation
        if flag == "T":
            side = taker  # the taker's order was the liquidation
        elif flag in ("M", "MT"):
            side = OPPOSITE[taker]  # the maker's position was forced (MT: both; one record, as tardis)
        else:
            raise ParseError(f"deribit trade {item.trade_id} liquidation flag {flag!r} is not T, M or MT")
        self.liquidation(
            raw,
            out,
            item.instrument_name,
            ts,
            side=side,
            price=item.price,
            size=size,
            liquidation_id=item.trade_id,
        )

    # -- tickers: ticker, mark/index, funding, open interest ---------------------------------

    def _ticker(self, item: Ticker, raw: RawRecord, out: FeedOutput) -> None:
        symbol = item.instrument_name
        record = self._record(symbol)
        per_contract = record.contract_size
        ts = ms_to_us(item.timestamp)
        bid, ask = _price(item.best_bid_price), _price(item.best_ask_price)
        stats = item.stats or Stats()
        self.ticker(
            raw,
            out,
            symbol,
            ts,
            last_price=item.last_price,
            bid_price=bid,
            bid_size=_contracts(item.best_bid_amount, per_contract) if bid is not None else None,
            ask_price=ask,
            ask_size=_contracts(item.best_ask_amount, per_contract) if ask is not None else None,
            high_24h=stats.high,
            low_24h=stats.low,
            volume_24h=stats.volume,
            quote_volume_24h=stats.volume_usd,
        )
        self._derivative(
            record, ts, item.mark_price, item.index_price, item.estimated_delivery_price,
            item.open_interest, item.current_funding, raw, out,
        )  # fmt: skip

    def _summaries(self, rows: list[Summary], raw: RawRecord, out: FeedOutput) -> None:
        """Book summaries (REST or websocket answers): open interest, mark price and funding."""
        for row in rows:
            record = self._record(row.instrument_name)
            ts = ms_to_us(row.creation_timestamp)
            self._derivative(
                record, ts, row.mark_price, None, row.estimated_delivery_price,
                row.open_interest, row.current_funding, raw, out,
            )  # fmt: skip

    def _derivative(
        self,
        record: Instrument,
        ts: int,
        mark: float | None,
        index: float | None,
        delivery: float | None,
        open_interest: float | None,
        funding: float | None,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        symbol = record.exchange_symbol
        if record.kind in ("perpetual", "future") and (mark is not None or index is not None):
            settle = delivery if record.kind == "future" and _in_delivery_window(record, ts) else None
            self.mark_price(raw, out, symbol, ts, mark_price=mark, index_price=index, settle_price=settle)
        if record.kind == "perpetual" and funding is not None:
            self.funding(raw, out, symbol, ts, rate=funding)
        if open_interest is not None and record.kind != "spot":
            usd = record.contract_type == "inverse" and record.kind != "option"
            self.open_interest(
                raw,
                out,
                symbol,
                ts,
                open_interest=_in_contracts(open_interest, record.contract_size),
                value=open_interest if usd else None,
            )

    # -- exchange candles -------------------------------------------------------------------

    def _candle(
        self, conn: ConnectionState, channel: str, item: Candle, raw: RawRecord, out: FeedOutput
    ) -> None:
        """``chart.trades.<instrument>.<resolution>``: minutes as a number, or ``1D``."""
        _, _, rest = channel.partition(CHART_PREFIX)
        symbol, _, resolution = rest.rpartition(".")
        if resolution == "1D":
            seconds = 86_400
        elif resolution.isdigit():
            seconds = int(resolution) * 60
        else:
            raise ParseError(f"deribit chart resolution {resolution!r} is not minutes or 1D")
        open_time = ms_to_us(item.tick)
        self.exchange_candle(
            conn,
            raw,
            out,
            symbol,
            interval_name(seconds),
            open_time,
            open_time + seconds * 1_000_000,
            item.open,
            item.high,
            item.low,
            item.close,
            volume=item.volume,
            quote_volume=item.cost,
        )

    # -- books ------------------------------------------------------------------------------

    def _book(self, conn: ConnectionState, data: Book, raw: RawRecord, out: FeedOutput) -> None:
        self.counters.book_messages += 1
        symbol = data.instrument_name
        per_contract = self._record(symbol).contract_size
        state = self.book_state(conn, symbol)
        ts = ms_to_us(data.timestamp)
        if data.type == "snapshot":
            book = state.book
            book.bids.load((level.price, level.size) for level in _levels(data.bids, per_contract))
            book.asks.load((level.price, level.size) for level in _levels(data.asks, per_contract))
            self.accept_snapshot(state, raw, out, ts, last_id=data.change_id)
        elif data.type == "change":
            self._change(state, data, per_contract, ts, raw, out)
        else:
            raise ParseError(f"deribit book notification type {data.type!r} is not snapshot or change")

    def _change(
        self, state: BookSync, data: Book, per_contract: float, ts: int, raw: RawRecord, out: FeedOutput
    ) -> None:
        if not state.synced:
            self.skip_unsynced(state, raw, out)
            return
        if data.prev_change_id != state.last_id:
            detail = f"prev_change_id {data.prev_change_id} after change_id {state.last_id}"
            self.unsync(state, "gap", detail, raw, out)
            return
        bids, asks = _levels(data.bids, per_contract), _levels(data.asks, per_contract)
        state.book.bids.apply(bids)
        state.book.asks.apply(asks)
        self.accept_update(
            state, raw, out, ts, bids, asks, first_id=data.prev_change_id, last_id=data.change_id
        )


def _levels(rows: list[tuple[str, float, float]], per_contract: float) -> list[Level]:
    found = []
    for action, price, amount in rows:
        if action == "delete":
            found.append(Level(price, 0.0))
        elif action in ("new", "change"):
            found.append(Level(price, _in_contracts(amount, per_contract)))
        else:
            raise ParseError(f"deribit book level action {action!r} is not new, change or delete")
    return found


def _price(value: float | None) -> float | None:
    """A best bid/ask price; Deribit sends 0 (or null) for an empty side."""
    return value if value else None


def _contracts(amount: float | None, per_contract: float) -> float | None:
    return None if amount is None else _in_contracts(amount, per_contract)


def _in_contracts(amount: float, per_contract: float) -> float:
    """Deribit's amount (USD or coin) in contracts; rounded to 1e-8 so that 0.0123 coin of
    0.0001-coin contracts is 123, not 122.99999999999999 (no contract is that small)."""
    return round(amount / per_contract, 8)


def _in_delivery_window(record: Instrument, ts: int) -> bool:
    expiry = record.expiry_ts
    return expiry is not None and expiry - DELIVERY_WINDOW_US <= ts <= expiry
