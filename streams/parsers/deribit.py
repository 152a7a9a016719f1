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

Instruments (``/api/v2/public/get_instruments``, ``/api/v2/public/get_instrument``, the JSON-RPC
answer over HTTP): ``kind`` future with ``settlement_period`` ``perpetual`` is a perpetual,
otherwise a dated future; options carry ``strike`` and ``option_type``; spot is named
``BASE-QUOTE``; combos are skipped (``unnamed_instrument``). ``instrument_type`` ``reversed`` is
inverse, ``linear`` linear (older answers without it, as recorded in 2021, are coin-margined when
quoted in USD or in the base coin: Deribit's only inverse contracts). The name's quote is the price
currency (``quote_currency``), for options the strike's currency (``counter_currency``, else the
``price_index`` quote, else USD for coin-quoted options, all struck on the coin/USD index):
BTC-PERPETUAL is ``BTC-USD-PERP-INV``, BTC-25MAR22 ``BTC-USD-20220325-INV``, SOL_USDC-PERPETUAL
``SOL-USDC-PERP``, BTC-24JUN22-30000-C ``BTC-USD-20220624-30000-C-INV``. Contract size currency:
USD for inverse perpetuals and futures, the base coin otherwise. Lot size is ``min_trade_amount``
in contracts. Symbols no metadata named are dead-lettered (``unnamed_instrument``), never read
from the wire name.
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketpipe.raw import RawRecord
from marketpipe.records import ContractType, Instrument, InstrumentKind, Level, OptionType, Side
from streams.instruments import Instruments, named, read_entries
from streams.parsers.base import (
    BookState,
    Connection,
    FeedOutput,
    FeedProcessor,
    ParseError,
    interval_name,
    json_object,
    ms_to_us,
)

INSTRUMENTS_PATH = "/api/v2/public/get_instruments"
INSTRUMENTS_PATHS = (INSTRUMENTS_PATH, "/api/v2/public/get_instrument")
BOOK_SUMMARY_PATHS = (
    "/api/v2/public/get_book_summary_by_instrument",
    "/api/v2/public/get_book_summary_by_currency",
)
TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
OPPOSITE: dict[Side, Side] = {"buy": "sell", "sell": "buy", "unknown": "unknown"}
CONTRACT_TYPES: dict[str, ContractType] = {"reversed": "inverse", "linear": "linear"}
OPTION_TYPES: dict[str, OptionType] = {"call": "call", "put": "put"}
DELIVERY_WINDOW_US = 30 * 60 * 1_000_000
"""Deribit's delivery price is the index averaged over the last 30 minutes before expiry"""


# ----------------------------------------------------------------------------- wire structs


class _Error(msgspec.Struct):
    code: int = 0
    message: str = ""


class _Params(msgspec.Struct):
    channel: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")
    type: str = ""
    """heartbeat notifications: ``heartbeat`` or ``test_request``"""


_NO_RESULT = msgspec.Raw(b"")


class _Message(msgspec.Struct):
    jsonrpc: str = ""
    id: int | str | None = None
    method: str = ""
    params: _Params | None = None
    result: msgspec.Raw = _NO_RESULT
    """empty (length 0) when the frame has none"""
    error: _Error | None = None


class _Trade(msgspec.Struct):
    trade_id: str
    instrument_name: str
    timestamp: int
    price: float
    amount: float
    direction: str
    liquidation: str | None = None


class _Book(msgspec.Struct):
    type: str
    timestamp: int
    instrument_name: str
    change_id: int
    prev_change_id: int | None = None
    bids: list[tuple[str, float, float]] = []
    asks: list[tuple[str, float, float]] = []


class _Stats(msgspec.Struct):
    volume: float | None = None
    volume_usd: float | None = None
    high: float | None = None
    low: float | None = None


class _Ticker(msgspec.Struct):
    instrument_name: str
    timestamp: int
    last_price: float | None = None
    best_bid_price: float | None = None
    best_bid_amount: float | None = None
    best_ask_price: float | None = None
    best_ask_amount: float | None = None
    mark_price: float | None = None
    index_price: float | None = None
    estimated_delivery_price: float | None = None
    open_interest: float | None = None
    current_funding: float | None = None
    stats: _Stats | None = None


class _Summary(msgspec.Struct):
    """One ``public/get_book_summary_by_*`` row (open interest, mark and funding)."""

    instrument_name: str
    creation_timestamp: int
    mark_price: float | None = None
    estimated_delivery_price: float | None = None
    open_interest: float | None = None
    current_funding: float | None = None


class _Candle(msgspec.Struct):
    tick: int
    open: float
    high: float
    low: float
    close: float
    volume: float | None = None
    cost: float | None = None


_message = msgspec.json.Decoder(_Message)
_trades = msgspec.json.Decoder(list[_Trade])
_book = msgspec.json.Decoder(_Book)
_ticker = msgspec.json.Decoder(_Ticker)
_candle = msgspec.json.Decoder(_Candle)
_summaries = msgspec.json.Decoder(list[_Summary])
_any = msgspec.json.Decoder()


# ------------------------------------------------------------------------------ instruments


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """``public/get_instruments`` (a list) or ``public/get_instrument`` (one) -> names with the
    Instrument record of each; combos and unreadable entries are skipped with the reason."""
    answer = json_object(body, "deribit instruments answer")
    error = answer.get("error")
    if error is not None:
        detail = error if not isinstance(error, dict) else f"{error.get('code')}: {error.get('message')!r}"
        raise ParseError(f"deribit instruments error {detail}")
    result = answer.get("result")
    rows = [result] if isinstance(result, dict) else result
    if not isinstance(rows, list):
        raise ParseError(f"deribit instruments answer has no result list: {str(answer)[:200]}")
    return read_entries(rows, _instrument, "deribit instruments", ("instrument_name",))


def _instrument(row: dict[str, Any], found: Instruments) -> None:
    kind = row["kind"]
    if kind == "future":
        perpetual = row.get("settlement_period") == "perpetual"
        found.add_record(named(_derivative(row, "perpetual" if perpetual else "future")))
    elif kind == "option":
        found.add_record(named(_derivative(row, "option")))
    elif kind == "spot":
        found.add_record(named(_spot(row)))
    else:
        raise ParseError(f"{kind} instrument: deribit combos are not normalised", "unnamed_instrument")


def _spot(row: dict[str, Any]) -> Instrument:
    return Instrument(
        exchange="deribit",
        symbol="",
        exchange_symbol=row["instrument_name"],
        kind="spot",
        base=row["base_currency"],
        quote=row["quote_currency"],
        contract_size=1.0,
        contract_size_currency=row["base_currency"],
        tick_size=_positive(row, "tick_size"),
        lot_size=_positive(row, "min_trade_amount"),
        ts=0,
    )


def _derivative(row: dict[str, Any], kind: InstrumentKind) -> Instrument:
    base = row["base_currency"]
    contract_type = _contract_type(row)
    quote = _strike_currency(row) if kind == "option" else row["quote_currency"]
    contract_size = _positive(row, "contract_size")
    if contract_size is None:
        raise ParseError("no contract_size")
    min_amount = _positive(row, "min_trade_amount")
    option_type = OPTION_TYPES.get(row.get("option_type") or "") if kind == "option" else None
    if kind == "option" and option_type is None:
        raise ParseError(f"option_type {row.get('option_type')!r} is neither call nor put")
    return Instrument(
        exchange="deribit",
        symbol="",
        exchange_symbol=row["instrument_name"],
        kind=kind,
        contract_type=contract_type,
        base=base,
        quote=quote,
        settle_currency=row.get("settlement_currency") or (base if contract_type == "inverse" else quote),
        contract_size=contract_size,
        contract_size_currency=quote if contract_type == "inverse" and kind != "option" else base,
        expiry_ts=ms_to_us(row["expiration_timestamp"]) if kind != "perpetual" else None,
        strike=float(row["strike"]) if kind == "option" else None,
        option_type=option_type,
        tick_size=_positive(row, "tick_size"),
        lot_size=min_amount / contract_size if min_amount is not None else None,
        ts=0,
    )


def _contract_type(row: dict[str, Any]) -> ContractType:
    declared = row.get("instrument_type") or row.get("future_type")
    if declared is None:
        # answers older than ``instrument_type``: coin-margined (inverse) when quoted in USD or in
        # the base coin itself, Deribit's only inverse contracts; USDC-quoted ones are linear
        quote = row["quote_currency"]
        return "inverse" if quote in ("USD", row["base_currency"]) else "linear"
    found = CONTRACT_TYPES.get(declared)
    if found is None:
        raise ParseError(f"instrument_type {declared!r} is neither linear nor reversed")
    return found


def _strike_currency(row: dict[str, Any]) -> str:
    """The currency an option's strike is stated in: ``counter_currency``, else the quote of its
    ``price_index`` (``btc_usd``), else USD for an option quoted in its own coin (Deribit's coin
    options are all struck on the coin/USD index)."""
    counter = row.get("counter_currency")
    if isinstance(counter, str) and counter:
        return counter
    index = row.get("price_index")
    if isinstance(index, str) and "_" in index:
        return index.rsplit("_", 1)[1].upper()
    if row["quote_currency"] == row["base_currency"]:
        return "USD"
    raise ParseError("option without counter_currency or price_index: strike currency unknown")


def _positive(row: dict[str, Any], field: str) -> float | None:
    value = row.get(field)
    if value is None:
        return None
    number = float(value)
    if not 0.0 < number < float("inf"):
        raise ParseError(f"{field} {value!r} is not a positive number")
    return number


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

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
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

    def on_rest(self, conn: Connection, raw: RawRecord, path: str, out: FeedOutput) -> None:
        if not path.endswith(BOOK_SUMMARY_PATHS):
            super().on_rest(conn, raw, path, out)
            return
        msg = self._decode(raw)
        if msg.error is not None:
            raise ParseError(f"deribit error {msg.error.code}: {msg.error.message!r} ({raw.url})")
        if not len(msg.result):
            raise ParseError(f"deribit book summary {raw.url!r} has no result")
        self._summaries(_typed(_summaries, msg.result, "book summary"), raw, out)

    def _decode(self, raw: RawRecord) -> _Message:
        if not raw.payload:
            raise ParseError("empty frame")
        try:
            return _message.decode(raw.payload)
        except msgspec.ValidationError as exc:
            raise ParseError(f"unrecognised deribit frame: {exc}: {raw.text()[:200]}") from None
        except msgspec.DecodeError as exc:
            raise ParseError(f"invalid JSON: {exc}") from None

    def _result(self, result: msgspec.Raw, raw: RawRecord, out: FeedOutput) -> None:
        """Answers on the websocket: the subscribe result (the channels now subscribed), ``"ok"``
        of set_heartbeat, ``{"version"}`` of public/test, or book summaries (open interest)."""
        value = _any.decode(result)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            self.counters.acks += 1
        elif value == "ok" or (isinstance(value, dict) and "version" in value):
            self.counters.heartbeats += 1
        elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
            self._summaries(_typed(_summaries, result, "book summary"), raw, out)
        else:
            raise ParseError(f"unrecognised deribit result: {bytes(result)[:200]!r}")

    def _notification(self, conn: Connection, params: _Params, raw: RawRecord, out: FeedOutput) -> None:
        channel = params.channel
        kind = channel.partition(".")[0]
        if kind == "book":
            self._book(conn, _typed(_book, params.data, channel), raw, out)
        elif kind == "trades":
            self._trades(_typed(_trades, params.data, channel), raw, out)
        elif kind == "ticker":
            self._ticker(_typed(_ticker, params.data, channel), raw, out)
        elif channel.startswith("chart.trades."):
            self._candle(conn, channel, _typed(_candle, params.data, channel), raw, out)
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

    def _trades(self, trades: list[_Trade], raw: RawRecord, out: FeedOutput) -> None:
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
        self, item: _Trade, taker: Side, size: float, ts: int, raw: RawRecord, out: FeedOutput
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

    def _ticker(self, item: _Ticker, raw: RawRecord, out: FeedOutput) -> None:
        symbol = item.instrument_name
        record = self._record(symbol)
        per_contract = record.contract_size
        ts = ms_to_us(item.timestamp)
        bid, ask = _price(item.best_bid_price), _price(item.best_ask_price)
        stats = item.stats or _Stats()
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

    def _summaries(self, rows: list[_Summary], raw: RawRecord, out: FeedOutput) -> None:
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

    def _candle(self, conn: Connection, channel: str, item: _Candle, raw: RawRecord, out: FeedOutput) -> None:
        """``chart.trades.<instrument>.<resolution>``: minutes as a number, or ``1D``."""
        _, _, rest = channel.partition("chart.trades.")
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

    def _book(self, conn: Connection, data: _Book, raw: RawRecord, out: FeedOutput) -> None:
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
        self, state: BookState, data: _Book, per_contract: float, ts: int, raw: RawRecord, out: FeedOutput
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


def _typed(decoder: msgspec.json.Decoder[Any], data: msgspec.Raw | bytes, what: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ParseError(f"malformed deribit {what} data: {exc}") from None


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
