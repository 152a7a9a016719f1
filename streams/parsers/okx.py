"""OKX v5 public: ``{"arg":{"channel","instId"},"action","data":[...]}`` pushes, ``{"event"}``
replies, and the literal text ``pong``; typed wire structs per channel (``data`` decoded by channel).

Books: each update's ``prevSeqId`` must equal the previous ``seqId``, except the keep-alive
(``prevSeqId == seqId``, no levels) and the maintenance reset (``seqId < prevSeqId``).
A non-zero ``checksum`` (frames before the June 2026 deprecation) is verified: signed
CRC32 over the top 25 bid/ask levels interleaved, using the price/size strings as sent.

Trades: OKX pushes the latest trade of an instrument on every subscribe (hours old on a quiet
one); the feed's trade-id deduplication drops it when it was published already.

Instruments (``/api/v5/public/instruments``) and the wire structs: ``marketpipe/exchanges/okx.py``
(``parse_instruments`` is re-exported here). A spot ``instId`` no metadata named is read as
``BASE-QUOTE``; a derivative id no metadata named is dead-lettered (``unnamed_instrument``),
each under its own id.

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

import msgspec

from marketpipe.exchanges.okx import (
    BOOK_FRAMES,
    BOOK_PUSH_PREFIX,
    BOOKS,
    BOOKS_CHANNEL,
    CANDLE_PREFIX,
    CANDLES,
    FRAMES,
    FUNDING_CHANNEL,
    FUNDINGS,
    INDEX_CHANNEL,
    INDEXES,
    INSTRUMENTS_PATH,
    LIQUIDATIONS,
    LIQUIDATIONS_CHANNEL,
    MARK_CHANNEL,
    MARKS,
    OPEN_INTEREST_CHANNEL,
    OPEN_INTERESTS,
    SPOT_TYPES,
    TICKERS,
    TICKERS_CHANNEL,
    TRADES,
    TRADES_CHANNEL,
    Book,
    Frame,
    Funding,
    IndexTicker,
    Liquidations,
    Ticker,
    Trade,
    channel_data,
    parse_instruments,
)
from marketpipe.instruments import Instruments, dashed_pair
from marketpipe.raw import RawRecord
from marketpipe.records import InstrumentKind, Side
from streams.parsers.base import (
    BookSync,
    ConnectionState,
    FeedOutput,
    FeedProcessor,
    ParseError,
    TextRows,
    apply_text_levels,
    interval_name,
    interval_span_us,
    load_text_levels,
    ms_to_us,
    okx_checksum,
    okx_levels,
    opt_float,
    plain,
)

TAKER_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
# parse_instruments stays importable from here until every caller reads it from the wire module
__all__ = ["OkxProcessor", "okx_bar", "parse_instruments"]

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


LIQUIDATION_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}


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

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        if raw.data in ("pong", b"pong"):
            self.counters.heartbeats += 1
            return
        data = raw.data
        if isinstance(data, bytes) and data.startswith(BOOK_PUSH_PREFIX):
            try:
                push = BOOK_FRAMES.decode(data)
            except msgspec.ValidationError:
                pass  # the generic path below gives the reason
            else:
                for book in push.data:
                    self._book(conn, push.arg.instId, push.action, book, raw, out)
                return
        frame = self._decode(raw)
        if frame.event is not None:
            self._event(frame)
            return
        if frame.arg is None:
            raise ParseError("malformed okx frame: neither an event nor a push (no arg)")
        channel, inst_id = frame.arg.channel, frame.arg.instId
        if channel == BOOKS_CHANNEL:
            for book in channel_data(BOOKS, frame, channel):
                self._book(conn, inst_id, frame.action, book, raw, out)
        elif channel == TRADES_CHANNEL:
            self._trades(channel_data(TRADES, frame, channel), raw, out)
        elif channel == TICKERS_CHANNEL:
            for ticker in channel_data(TICKERS, frame, channel):
                self._ticker(ticker, raw, out)
        elif channel.startswith(CANDLE_PREFIX):
            self._candles(
                conn,
                channel.removeprefix(CANDLE_PREFIX),
                inst_id,
                channel_data(CANDLES, frame, channel),
                raw,
                out,
            )
        else:
            self._derivative_channel(channel, frame, raw, out)

    def _derivative_channel(self, channel: str, frame: Frame, raw: RawRecord, out: FeedOutput) -> None:
        if channel == FUNDING_CHANNEL:
            for funding in channel_data(FUNDINGS, frame, channel):
                self._funding(funding, raw, out)
        elif channel == MARK_CHANNEL:
            for mark in channel_data(MARKS, frame, channel):
                self.mark_price(raw, out, mark.instId, ms_to_us(mark.ts), mark_price=float(mark.markPx))
        elif channel == INDEX_CHANNEL:
            for index in channel_data(INDEXES, frame, channel):
                self._index(index, raw, out)
        elif channel == OPEN_INTEREST_CHANNEL:
            for found in channel_data(OPEN_INTERESTS, frame, channel):
                value = opt_float(found.oiUsd)
                self.open_interest(
                    raw, out, found.instId, ms_to_us(found.ts), open_interest=float(found.oi), value=value
                )
        elif channel == LIQUIDATIONS_CHANNEL:
            for group in channel_data(LIQUIDATIONS, frame, channel):
                self._liquidations(group, raw, out)
        else:
            raise ParseError(f"unsupported okx channel {channel!r}")

    @staticmethod
    def _decode(raw: RawRecord) -> Frame:
        if not raw.data:
            raise ParseError("empty frame")
        try:
            return FRAMES.decode(raw.data)
        except msgspec.ValidationError as exc:
            raise ParseError(f"malformed okx frame: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ParseError(f"invalid JSON: {exc}") from None

    def _event(self, frame: Frame) -> None:
        event = frame.event
        if event in ACK_EVENTS:
            self.counters.acks += 1
        elif event == "notice":
            self.counters.notices += 1  # 64008: service upgrade soon; the connector reconnects
        elif event == "error":
            raise ParseError(f"okx error {frame.code}: {frame.msg!r}")
        else:
            raise ParseError(f"unsupported okx event {event!r}")

    def _trades(self, data: list[Trade], raw: RawRecord, out: FeedOutput) -> None:
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

    def _ticker(self, item: Ticker, raw: RawRecord, out: FeedOutput) -> None:
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

    def _funding(self, item: Funding, raw: RawRecord, out: FeedOutput) -> None:
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

    def _index(self, item: IndexTicker, raw: RawRecord, out: FeedOutput) -> None:
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

    def _liquidations(self, group: Liquidations, raw: RawRecord, out: FeedOutput) -> None:
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
        self,
        conn: ConnectionState,
        bar: str,
        inst_id: str,
        rows: list[list[str]],
        raw: RawRecord,
        out: FeedOutput,
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
        conn: ConnectionState,
        inst_id: str,
        action: str,
        item: Book,
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
        state: BookSync,
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

    def _verify(self, state: BookSync, expected: int, raw: RawRecord, out: FeedOutput) -> bool:
        actual = okx_checksum(state.book)
        return self.checksum_result(state, actual == expected, expected, actual, raw, out)


def _bar_close(interval: str, open_time: int, offset_us: int) -> int:
    plain_interval = interval.removesuffix(HONG_KONG)
    return interval_span_us(plain_interval, open_time + offset_us) - offset_us


def _confirm(value: object) -> bool:
    if value not in ("0", "1"):
        raise ParseError(f"okx candle confirm is {value!r}, not '0' or '1'")
    return value == "1"
