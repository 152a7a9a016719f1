"""OKX v5 public: ``{"arg":{"channel","instId"},"action","data":[...]}`` pushes, ``{"event"}``
replies, and the literal text ``pong``; typed wire structs per channel (``data`` decoded by channel).

Books: each update's ``prevSeqId`` must equal the previous ``seqId``, except the keep-alive
(``prevSeqId == seqId``, no levels) and the maintenance reset (``seqId < prevSeqId``).
A non-zero ``checksum`` (frames before the June 2026 deprecation) is verified: signed
CRC32 over the top 25 bid/ask levels interleaved, using the price/size strings as sent.

Trades: OKX pushes the latest trade of an instrument on every subscribe (hours old on a quiet
one); the feed's trade-id deduplication drops it when it was published already.

Instruments (``/api/v5/public/instruments``): spot (and margin) ``instId``s are named from
``baseCcy``/``quoteCcy`` or, without metadata, read as ``BASE-QUOTE``. SWAP and FUTURES are named
from their metadata only (``streams/instruments.py``): base/quote from ``uly`` (else
``instFamily``), ``ctType`` linear/inverse, ``expTime`` for the date, so ``BTC-USDT-SWAP`` is
``BTC-USDT-PERP``, ``UNI-USD-SWAP`` (inverse) ``UNI-USD-PERP-INV`` and ``BTC-USD-220527``
``BTC-USD-20220527-INV``. A derivative id no metadata named, OPTION and unknown instTypes are
dead-lettered (``unnamed_instrument``), each under its own id.

Units. SWAP/FUTURES sizes stay in **contracts**, as OKX sends them (``Instrument.contract_size``:
``ctVal`` x ``ctMult`` of ``ctValCcy``; 0.01 BTC for BTC-USDT-SWAP, 100 USD for BTC-USD-SWAP):
trades ``sz``, book levels, ticker ``lastSz``/``bidSz``/``askSz``/``vol24h``, candle ``vol``,
open interest ``oi`` and liquidation ``sz``. A derivative ticker's ``volCcy24h`` is base coin, not
quote, so its ``quote_volume_24h`` is None; candles take ``volCcyQuote`` (quote on both kinds).

Derivative channels:
- ``funding-rate`` -> ``funding()``: ``fundingRate`` is the running period's rate, settled at
  ``fundingTime`` (``next_funding_ts``); ``interval_s`` = ``nextFundingTime - fundingTime``;
  ``nextFundingRate`` is ``""`` today (no forecast: None), older frames carried the forecast.
- ``mark-price`` -> ``mark_price(mark_price=markPx)``.
- ``index-tickers`` is keyed by the index (``BTC-USDT``): its ``idxPx`` becomes
  ``mark_price(index_price=...)`` of every contract whose metadata ``uly`` is that index.
- ``open-interest`` -> ``open_interest()``: ``oi`` contracts; ``value`` only from ``oiUsd`` (the
  REST form), the websocket sends none.
- ``liquidation-orders`` (subscribed per instType) -> one ``liquidation()`` per ``details[]``:
  ``side`` the liquidation order's side (``buy``: a short position was liquidated), ``price``
  the bankruptcy price ``bkPx``, ``size`` contracts. The channel reports every contract of the
  type: those no metadata answer named (not subscribed) are only counted
  (``liquidations_unfollowed``).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from marketpipe.raw import RawRecord
from marketpipe.records import ContractType, Instrument, InstrumentKind, Side
from streams.instruments import Instruments, dashed_pair, decimal_field, named, read_entries
from streams.parsers.base import (
    BookState,
    Connection,
    FeedOutput,
    FeedProcessor,
    ParseError,
    TextRows,
    apply_text_levels,
    interval_name,
    interval_span_us,
    json_object,
    load_text_levels,
    ms_to_us,
    okx_checksum,
    okx_levels,
    opt_float,
    plain,
)

INSTRUMENTS_PATH = "/api/v5/public/instruments"
TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
ACK_EVENTS = frozenset({"subscribe", "unsubscribe", "channel-conn-count"})


BAR_SECONDS = {
    "1s": 1,
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1H": 3600,
    "2H": 7200,
    "4H": 14400,
    "6H": 21600,
    "12H": 43200,
    "1D": 86400,
    "2D": 172800,
    "3D": 259200,
    "5D": 432000,
    "1W": 604800,
}
MONTH_BARS = {"1M": 1, "3M": 3}
HONG_KONG = "+08:00"
HK_OFFSET_US = 8 * 3600 * 1_000_000
UTC_ALIGNED_BELOW_S = 21600
"""bars shorter than 6H start on UTC boundaries anyway; longer ones are Hong Kong aligned
unless they end in ``utc``"""


def okx_bar(bar: str) -> tuple[str, int]:
    """``candle<bar>`` suffix -> (marketpipe interval, offset of its boundaries from UTC in µs):
    ``1m`` -> ``1m``, ``1H`` -> ``1h``, ``1Dutc`` -> ``1d``, ``1D`` (Hong Kong aligned) ->
    ``1d+08:00``."""
    utc = bar.endswith("utc")
    base = bar[:-3] if utc else bar
    months = MONTH_BARS.get(base)
    seconds = BAR_SECONDS.get(base)
    if months is None and seconds is None:
        raise ParseError(f"unsupported okx candle bar {bar!r}")
    name = f"{months}M" if months is not None else interval_name(seconds or 0)
    if utc or (seconds is not None and seconds < UTC_ALIGNED_BELOW_S):
        return name, 0
    return name + HONG_KONG, HK_OFFSET_US


SPOT_TYPES = frozenset({"SPOT", "MARGIN"})
DERIVATIVE_KINDS: dict[str, InstrumentKind] = {"SWAP": "perpetual", "FUTURES": "future"}
CONTRACT_TYPES: dict[str, ContractType] = {"linear": "linear", "inverse": "inverse"}
NOT_YET = {"OPTION": "okx options are not normalised yet"}


def parse_instruments(body: bytes, path: str = INSTRUMENTS_PATH) -> Instruments:
    """instruments -> {"BTC-USDT": "BTC-USDT", "BTC-USDT-SWAP": "BTC-USDT-PERP", ...} with the
    Instrument record of each. OPTION and unknown instTypes are skipped, never named ``-``."""
    info = json_object(body, "okx instruments response")
    if info.get("code") != "0" or not isinstance(info.get("data"), list):
        raise ParseError(f"okx instruments error {info.get('code')}: {info.get('msg')!r}")
    return read_entries(info["data"], _instrument, "okx instruments", ("instId",))


def _instrument(row: dict[str, Any], found: Instruments) -> None:
    inst_type = row.get("instType") or "SPOT"
    if inst_type in SPOT_TYPES:
        found.add_record(named(_spot(row)))
    elif inst_type in DERIVATIVE_KINDS:
        found.add_record(named(_derivative(row, DERIVATIVE_KINDS[inst_type])))
    else:
        why = NOT_YET.get(inst_type, f"unknown okx instType {inst_type!r}")
        raise ParseError(f"{inst_type} instrument: {why}", "unnamed_instrument")


def _spot(row: dict[str, Any]) -> Instrument:
    return Instrument(
        exchange="okx",
        symbol="",
        exchange_symbol=row["instId"],
        kind="spot",
        base=row["baseCcy"],
        quote=row["quoteCcy"],
        contract_size=1.0,
        contract_size_currency=row["baseCcy"],
        tick_size=decimal_field(row, "tickSz"),
        lot_size=decimal_field(row, "lotSz"),
        ts=0,
    )


def _derivative(row: dict[str, Any], kind: InstrumentKind) -> Instrument:
    base, quote = _underlying(row)
    contract_type = CONTRACT_TYPES.get(row["ctType"])
    if contract_type is None:
        raise ParseError(f"ctType {row['ctType']!r} is neither linear nor inverse")
    expiry = row.get("expTime")
    if kind == "future" and not expiry:
        raise ParseError("FUTURES instrument without expTime")
    return Instrument(
        exchange="okx",
        symbol="",
        exchange_symbol=row["instId"],
        kind=kind,
        contract_type=contract_type,
        base=base,
        quote=quote,
        settle_currency=_currency(row, "settleCcy"),
        contract_size=_contract_size(row),
        contract_size_currency=_currency(row, "ctValCcy"),
        expiry_ts=ms_to_us(expiry) if kind == "future" and expiry else None,
        tick_size=decimal_field(row, "tickSz"),
        lot_size=decimal_field(row, "lotSz"),
        ts=0,
    )


def _underlying(row: dict[str, Any]) -> tuple[str, str]:
    """(base, quote) of the contract's underlying index ``uly`` (``BTC-USD``), else its
    ``instFamily``; a derivative's ``baseCcy``/``quoteCcy`` are empty."""
    underlying = row.get("uly") or row.get("instFamily") or ""
    base, sep, quote = underlying.partition("-")
    if not (sep and base.isalnum() and quote.isalnum()):
        raise ParseError(f"underlying (uly/instFamily) {underlying!r} is not BASE-QUOTE")
    return base, quote


def _contract_size(row: dict[str, Any]) -> float:
    """``ctVal`` x ``ctMult`` (the multiplier is 1 on swaps and futures; options use it)."""
    try:
        size = Decimal(row["ctVal"]) * Decimal(row.get("ctMult") or "1")
    except InvalidOperation:
        raise ParseError(f"ctVal {row['ctVal']!r} / ctMult {row.get('ctMult')!r} not decimal") from None
    if not size.is_finite() or size <= 0:
        raise ParseError(f"contract size {size} is not positive")
    return float(size)


def _currency(row: dict[str, Any], field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value:
        raise ParseError(f"no {field}")
    return value


# -- wire structs (the fields read; OKX sends every number as a string) --------------------


class _Arg(msgspec.Struct):
    channel: str
    instId: str = ""
    instType: str = ""


class _Frame(msgspec.Struct):
    """A push (``arg`` + ``data``) or an event reply (``event``); ``data`` is decoded by channel."""

    arg: _Arg | None = None
    event: str | None = None
    code: str | int = ""
    msg: str = ""
    action: str = ""
    data: msgspec.Raw = msgspec.Raw(b"[]")


class _Book(msgspec.Struct):
    asks: list[list[str]]
    bids: list[list[str]]
    ts: str
    checksum: int = 0
    seqId: int | None = None
    prevSeqId: int | None = None


class _Trade(msgspec.Struct):
    instId: str
    tradeId: str
    px: str
    sz: str
    side: str
    ts: str


class _Ticker(msgspec.Struct):
    instId: str
    last: str
    ts: str
    instType: str = ""
    lastSz: str = ""
    bidPx: str = ""
    bidSz: str = ""
    askPx: str = ""
    askSz: str = ""
    open24h: str = ""
    high24h: str = ""
    low24h: str = ""
    vol24h: str = ""
    volCcy24h: str = ""


class _Funding(msgspec.Struct):
    instId: str
    fundingRate: str
    fundingTime: str
    nextFundingTime: str = ""
    nextFundingRate: str = ""
    ts: str = ""


class _MarkPrice(msgspec.Struct):
    instId: str
    markPx: str
    ts: str


class _IndexTicker(msgspec.Struct):
    instId: str
    idxPx: str
    ts: str


class _OpenInterest(msgspec.Struct):
    instId: str
    oi: str
    ts: str
    oiUsd: str = ""


class _LiquidationDetail(msgspec.Struct):
    side: str
    bkPx: str
    sz: str
    ts: str


class _Liquidations(msgspec.Struct):
    instId: str
    details: list[_LiquidationDetail]


_frames = msgspec.json.Decoder(_Frame)
_books = msgspec.json.Decoder(list[_Book])
_trades = msgspec.json.Decoder(list[_Trade])
_tickers = msgspec.json.Decoder(list[_Ticker])
_candles = msgspec.json.Decoder(list[list[str]])
_fundings = msgspec.json.Decoder(list[_Funding])
_marks = msgspec.json.Decoder(list[_MarkPrice])
_indexes = msgspec.json.Decoder(list[_IndexTicker])
_open_interests = msgspec.json.Decoder(list[_OpenInterest])
_liquidations = msgspec.json.Decoder(list[_Liquidations])
LIQUIDATION_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}


def _data(decoder: msgspec.json.Decoder[list[Any]], frame: _Frame, channel: str) -> list[Any]:
    try:
        return decoder.decode(frame.data)
    except msgspec.ValidationError as exc:
        raise ParseError(f"malformed okx {channel} data: {exc}") from None


class OkxProcessor(FeedProcessor):
    exchange = "okx"
    instruments_path = INSTRUMENTS_PATH
    instruments_parser = staticmethod(parse_instruments)
    keep_text = True

    def kinds(self) -> dict[str, InstrumentKind]:
        """Exchange symbol -> its kind, from the metadata answers seen (created on first use: a
        processor restored from a checkpoint of an older version has none)."""
        found: dict[str, InstrumentKind] = self.__dict__.setdefault("_kinds", {})
        return found

    def indexes(self) -> dict[str, set[str]]:
        """Index instId (``BTC-USDT``, the contracts' ``uly``) -> the SWAP/FUTURES instIds on it,
        from the metadata answers seen (the connections' own symbols: those subscribed)."""
        found: dict[str, set[str]] = self.__dict__.setdefault("_indexes", {})
        return found

    @property
    def liquidations_unfollowed(self) -> int:
        """Liquidations of instruments no metadata answer named (``liquidation-orders`` is per
        instType: it reports every contract of the type, not only the subscribed ones)."""
        found: int = self.__dict__.get("_liquidations_unfollowed", 0)
        return found

    def instruments_from(self, body: bytes, path: str) -> Instruments:
        learned = parse_instruments(body, path)
        kinds, indexes = self.kinds(), self.indexes()
        for exchange_symbol, record in learned.records.items():
            kinds[exchange_symbol] = record.kind
            if record.kind != "spot":
                indexes.setdefault(f"{record.base}-{record.quote}", set()).add(exchange_symbol)
        return learned

    def fallback_instrument(self, exchange_symbol: str) -> tuple[str, str] | None:
        """Spot instIds are BASE-QUOTE already; swaps (``UNI-USD-SWAP``) and futures
        (``BTC-USD-220527``) are named from metadata only: without it they are dead-lettered,
        each under its own id."""
        name = dashed_pair(exchange_symbol)
        if name is None:
            raise ParseError(
                f"okx instrument {exchange_symbol!r} is not a spot BASE-QUOTE id and no instrument "
                "metadata (rest record) names it: derivatives are named from their metadata only",
                "unnamed_instrument",
            )
        return name, exchange_symbol

    def _is_derivative(self, inst_id: str, inst_type: str = "") -> bool:
        kind = self.kinds().get(inst_id)
        if kind is not None:
            return kind != "spot"
        return inst_type not in ("", *SPOT_TYPES)

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        if raw.data in ("pong", b"pong"):
            self.counters.heartbeats += 1
            return
        frame = self._decode(raw)
        if frame.event is not None:
            self._event(frame)
            return
        if frame.arg is None:
            raise ParseError("malformed okx frame: neither an event nor a push (no arg)")
        channel, inst_id = frame.arg.channel, frame.arg.instId
        if channel == "books":
            for book in _data(_books, frame, channel):
                self._book(conn, inst_id, frame.action, book, raw, out)
        elif channel == "trades":
            self._trades(_data(_trades, frame, channel), raw, out)
        elif channel == "tickers":
            for ticker in _data(_tickers, frame, channel):
                self._ticker(ticker, raw, out)
        elif channel.startswith("candle"):
            self._candles(conn, channel[6:], inst_id, _data(_candles, frame, channel), raw, out)
        else:
            self._derivative_channel(channel, frame, raw, out)

    def _derivative_channel(self, channel: str, frame: _Frame, raw: RawRecord, out: FeedOutput) -> None:
        if channel == "funding-rate":
            for funding in _data(_fundings, frame, channel):
                self._funding(funding, raw, out)
        elif channel == "mark-price":
            for mark in _data(_marks, frame, channel):
                self.mark_price(raw, out, mark.instId, ms_to_us(mark.ts), mark_price=float(mark.markPx))
        elif channel == "index-tickers":
            for index in _data(_indexes, frame, channel):
                self._index(index, raw, out)
        elif channel == "open-interest":
            for found in _data(_open_interests, frame, channel):
                value = opt_float(found.oiUsd)
                self.open_interest(
                    raw, out, found.instId, ms_to_us(found.ts), open_interest=float(found.oi), value=value
                )
        elif channel == "liquidation-orders":
            for group in _data(_liquidations, frame, channel):
                self._liquidations(group, raw, out)
        else:
            raise ParseError(f"unsupported okx channel {channel!r}")

    @staticmethod
    def _decode(raw: RawRecord) -> _Frame:
        if not raw.data:
            raise ParseError("empty frame")
        try:
            return _frames.decode(raw.data)
        except msgspec.ValidationError as exc:
            raise ParseError(f"malformed okx frame: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ParseError(f"invalid JSON: {exc}") from None

    def _event(self, frame: _Frame) -> None:
        event = frame.event
        if event in ACK_EVENTS:
            self.counters.acks += 1
        elif event == "notice":
            self.counters.notices += 1  # 64008: service upgrade soon; the connector reconnects
        elif event == "error":
            raise ParseError(f"okx error {frame.code}: {frame.msg!r}")
        else:
            raise ParseError(f"unsupported okx event {event!r}")

    def _trades(self, data: list[_Trade], raw: RawRecord, out: FeedOutput) -> None:
        rows = [
            (
                t.instId,
                t.tradeId,
                float(t.px),
                float(t.sz),
                TAKER_SIDES.get(t.side, "unknown"),
                ms_to_us(t.ts),
            )
            for t in data
        ]
        for symbol, trade_id, price, size, side, ts in rows:
            self.trade(raw, out, symbol, trade_id, price, size, side, ts)

    def _ticker(self, item: _Ticker, raw: RawRecord, out: FeedOutput) -> None:
        """Spot: ``vol24h`` is base and ``volCcy24h`` quote. SWAP/FUTURES: sizes and ``vol24h``
        are contracts, ``volCcy24h`` base coin (no quote volume: None). Best ask/bid may be empty."""
        derivative = self._is_derivative(item.instId, item.instType)
        self.ticker(
            raw,
            out,
            item.instId,
            ms_to_us(item.ts),
            last_price=float(item.last),
            last_size=opt_float(item.lastSz),
            bid_price=opt_float(item.bidPx),
            bid_size=opt_float(item.bidSz),
            ask_price=opt_float(item.askPx),
            ask_size=opt_float(item.askSz),
            open_24h=opt_float(item.open24h),
            high_24h=opt_float(item.high24h),
            low_24h=opt_float(item.low24h),
            volume_24h=opt_float(item.vol24h),
            quote_volume_24h=None if derivative else opt_float(item.volCcy24h),
        )

    def _funding(self, item: _Funding, raw: RawRecord, out: FeedOutput) -> None:
        """``fundingTime`` is the upcoming settlement; the interval is the distance to the one
        after (``nextFundingTime``). ``nextFundingRate`` is ``""`` since OKX dropped the
        next-period method; older frames carry the forecast it then was."""
        settle = int(item.fundingTime)
        after = int(item.nextFundingTime) if item.nextFundingTime else None
        self.funding(
            raw,
            out,
            item.instId,
            ms_to_us(item.ts) if item.ts else None,
            rate=float(item.fundingRate),
            predicted_rate=opt_float(item.nextFundingRate),
            next_funding_ts=settle * 1000,
            interval_s=(after - settle) // 1000 if after is not None else None,
        )

    def _index(self, item: _IndexTicker, raw: RawRecord, out: FeedOutput) -> None:
        """An index (``BTC-USDT``) price becomes the index price of every contract on it."""
        contracts = self.indexes().get(item.instId)
        if not contracts:
            raise ParseError(
                f"okx index-tickers of {item.instId!r}: no contract's metadata (uly/instFamily) is on "
                "this index",
                "unknown_symbol",
            )
        price, ts = float(item.idxPx), ms_to_us(item.ts)
        for inst_id in sorted(contracts):
            self.mark_price(raw, out, inst_id, ts, index_price=price)

    def _liquidations(self, group: _Liquidations, raw: RawRecord, out: FeedOutput) -> None:
        """``details[].side`` is the liquidation order's side (``buy``: a short was liquidated),
        ``bkPx`` the bankruptcy price, ``sz`` contracts. Contracts no metadata answer named are
        counted (``liquidations_unfollowed``), not dead-lettered: the channel is per instType."""
        if group.instId not in self.kinds():
            self.__dict__["_liquidations_unfollowed"] = self.liquidations_unfollowed + len(group.details)
            return
        for detail in group.details:
            side = LIQUIDATION_SIDES.get(detail.side)
            if side is None:
                raise ParseError(f"okx liquidation of {group.instId} with side {detail.side!r}")
            self.liquidation(
                raw,
                out,
                group.instId,
                ms_to_us(detail.ts),
                side=side,
                price=float(detail.bkPx),
                size=float(detail.sz),
            )

    def _candles(
        self, conn: Connection, bar: str, inst_id: str, rows: list[list[str]], raw: RawRecord, out: FeedOutput
    ) -> None:
        """``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]``; the older 7-field form has no
        ``confirm`` (the base's later-window rule closes those). ``vol`` is base on spot and
        contracts on SWAP/FUTURES; ``volCcyQuote`` is quote on both, ``volCcy`` quote on spot
        but base coin on derivatives (so a derivative's 7-field row has no quote volume)."""
        interval, offset_us = okx_bar(bar)
        derivative = self._is_derivative(inst_id)
        for row in rows:
            if len(row) < 7:
                raise ParseError(f"okx candle is not [ts, o, h, l, c, vol, volCcy, ...]: {str(row)[:100]}")
            open_time = ms_to_us(row[0])
            full = len(row) >= 9
            quote_volume = float(row[7]) if full else None if derivative else float(row[6])
            self.exchange_candle(
                conn,
                raw,
                out,
                inst_id,
                interval,
                open_time,
                _bar_close(interval, open_time, offset_us),
                float(row[1]),
                float(row[2]),
                float(row[3]),
                float(row[4]),
                volume=float(row[5]),
                quote_volume=quote_volume,
                closed=_confirm(row[8]) if full else None,
            )

    def _book(
        self,
        conn: Connection,
        inst_id: str,
        action: str,
        item: _Book,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        self.counters.book_messages += 1
        bids, asks = okx_levels(item.bids), okx_levels(item.asks)
        seq_id, prev_id, checksum = item.seqId, item.prevSeqId, item.checksum
        ts = ms_to_us(item.ts)
        state = self.book_state(conn, inst_id)
        if action == "snapshot":
            book = state.book
            load_text_levels(book.bids, bids)
            load_text_levels(book.asks, asks)
            if checksum and not self._verify(state, checksum, raw, out):
                return
            self.accept_snapshot(state, raw, out, ts, last_id=seq_id, checksum=checksum or None)
        elif action == "update":
            self._update(state, bids, asks, seq_id, prev_id, checksum, ts, raw, out)
        else:
            raise ParseError(f"okx books action {action!r}")

    def _update(
        self,
        state: BookState,
        bids: TextRows,
        asks: TextRows,
        seq_id: int | None,
        prev_id: int | None,
        checksum: int,
        ts: int,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        if not state.synced:
            self.skip_unsynced(state, raw, out)
            return
        if seq_id is not None and prev_id is not None:
            if prev_id == seq_id and not bids and not asks and seq_id == state.last_id:
                self.counters.heartbeats += 1  # keep-alive: no depth change for ~60 s
                return
            # seqId < prevSeqId: the documented maintenance reset, accepted as is
            if seq_id >= prev_id and prev_id != state.last_id:
                self.unsync(state, "gap", f"prevSeqId {prev_id} after seqId {state.last_id}", raw, out)
                return
        book = state.book
        apply_text_levels(book.bids, bids)
        apply_text_levels(book.asks, asks)
        if checksum and not self._verify(state, checksum, raw, out):
            return
        self.accept_update(
            state,
            raw,
            out,
            ts,
            plain(bids),
            plain(asks),
            first_id=prev_id,
            last_id=seq_id,
            checksum=checksum or None,
        )

    def _verify(self, state: BookState, expected: int, raw: RawRecord, out: FeedOutput) -> bool:
        actual = okx_checksum(state.book)
        return self.checksum_result(state, actual == expected, expected, actual, raw, out)


def _bar_close(interval: str, open_time: int, offset_us: int) -> int:
    plain_interval = interval.removesuffix(HONG_KONG)
    return interval_span_us(plain_interval, open_time + offset_us) - offset_us


def _confirm(value: object) -> bool:
    if value not in ("0", "1"):
        raise ParseError(f"okx candle confirm is {value!r}, not '0' or '1'")
    return value == "1"
