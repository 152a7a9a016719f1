"""OKX v5 public: ``{"arg":{"channel","instId"},"action","data":[...]}`` pushes, ``{"event"}``
replies, and the literal text ``pong``.

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
``BTC-USD-20220527-INV``; their trades and books are published like spot ones, sizes in
contracts (``Instrument.contract_size``: ``ctVal`` x ``ctMult`` of ``ctValCcy``). A derivative id
no metadata named, OPTION and unknown instTypes are dead-lettered (``unnamed_instrument``), each
under its own id. Derivative tickers and candles are dead-lettered (``unsupported``) until their
contract-unit fields are mapped: their sizes and volumes mean other things than spot ones.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

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

    def instruments_from(self, body: bytes, path: str) -> Instruments:
        learned = parse_instruments(body, path)
        kinds = self.kinds()
        for exchange_symbol, record in learned.records.items():
            kinds[exchange_symbol] = record.kind
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

    def _spot_only(self, inst_id: str, what: str, inst_type: object = None) -> None:
        """Tickers and candles of derivatives are not mapped yet (contract units)."""
        kind = self.kinds().get(inst_id) or (None if inst_type in (None, *SPOT_TYPES) else inst_type)
        if kind not in (None, "spot"):
            raise ParseError(
                f"unsupported okx {kind} {what} of {inst_id!r}: derivative {what}s are not mapped yet "
                "(their sizes are contracts, their volumes other units than spot ones)",
                "unsupported",
            )

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        if raw.data in ("pong", b"pong"):
            self.counters.heartbeats += 1
            return
        msg = json_object(raw.data, "okx frame")
        event = msg.get("event")
        if event is not None:
            self._event(event, msg)
            return
        channel = msg["arg"]["channel"]
        if channel == "books":
            for item in msg["data"]:
                self._book(conn, msg["arg"]["instId"], msg["action"], item, raw, out)
        elif channel == "trades":
            self._trades(msg["data"], raw, out)
        elif channel == "tickers":
            for item in msg["data"]:
                self._ticker(item, raw, out)
        elif channel.startswith("candle"):
            self._candles(conn, channel[6:], msg["arg"]["instId"], msg["data"], raw, out)
        else:
            raise ParseError(f"unsupported okx channel {channel!r}")

    def _event(self, event: str, msg: dict[str, Any]) -> None:
        if event in ACK_EVENTS:
            self.counters.acks += 1
        elif event == "notice":
            self.counters.notices += 1  # 64008: service upgrade soon; the connector reconnects
        elif event == "error":
            raise ParseError(f"okx error {msg.get('code')}: {msg.get('msg')!r}")
        else:
            raise ParseError(f"unsupported okx event {event!r}")

    def _trades(self, data: list[dict[str, Any]], raw: RawRecord, out: FeedOutput) -> None:
        rows = [
            (
                item["instId"],
                item["tradeId"],
                float(item["px"]),
                float(item["sz"]),
                TAKER_SIDES.get(item["side"], "unknown"),
                ms_to_us(item["ts"]),
            )
            for item in data
        ]
        for symbol, trade_id, price, size, side, ts in rows:
            self.trade(raw, out, symbol, str(trade_id), price, size, side, ts)

    def _ticker(self, item: dict[str, Any], raw: RawRecord, out: FeedOutput) -> None:
        """Spot: ``vol24h`` is base and ``volCcy24h`` quote (derivatives differ: contracts and
        base, so they are dead-lettered for now). Best ask/bid may be empty."""
        self._spot_only(item["instId"], "ticker", item.get("instType"))
        self.ticker(
            raw,
            out,
            item["instId"],
            ms_to_us(item["ts"]),
            last_price=float(item["last"]),
            last_size=opt_float(item.get("lastSz")),
            bid_price=opt_float(item.get("bidPx")),
            bid_size=opt_float(item.get("bidSz")),
            ask_price=opt_float(item.get("askPx")),
            ask_size=opt_float(item.get("askSz")),
            open_24h=opt_float(item.get("open24h")),
            high_24h=opt_float(item.get("high24h")),
            low_24h=opt_float(item.get("low24h")),
            volume_24h=opt_float(item.get("vol24h")),
            quote_volume_24h=opt_float(item.get("volCcy24h")),
        )

    def _candles(
        self, conn: Connection, bar: str, inst_id: str, rows: list[Any], raw: RawRecord, out: FeedOutput
    ) -> None:
        """``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]``; the older 7-field form has no
        ``confirm`` (the base's later-window rule closes those)."""
        self._spot_only(inst_id, "candle")
        interval, offset_us = okx_bar(bar)
        for row in rows:
            if not isinstance(row, list) or len(row) < 7:
                raise ParseError(f"okx candle is not [ts, o, h, l, c, vol, volCcy, ...]: {str(row)[:100]}")
            open_time = ms_to_us(row[0])
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
                quote_volume=float(row[7] if len(row) >= 9 else row[6]),
                closed=_confirm(row[8]) if len(row) >= 9 else None,
            )

    def _book(
        self,
        conn: Connection,
        inst_id: str,
        action: str,
        item: dict[str, Any],
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        self.counters.book_messages += 1
        bids, asks = okx_levels(item["bids"]), okx_levels(item["asks"])
        seq_id, prev_id = item.get("seqId"), item.get("prevSeqId")
        checksum = int(item.get("checksum") or 0)
        ts = ms_to_us(item["ts"])
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
