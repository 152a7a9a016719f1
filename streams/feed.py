"""The exchange-agnostic part of normalisation: raw records in, normalised records out.

``FeedProcessor`` owns the connection lifecycle (open/rest/sent/recv/close, a
``ConnectionState`` per connection), the instrument map, trades, tickers, candles and the
derivatives' records; it inherits the validated-book rules every exchange shares from
``streams/book_sync.py`` (``BookSyncRules``: sync/unsync, one published book per symbol,
price buckets, BBO and status). Exchange modules in ``streams/parsers/`` subclass it and
declare only how their frames are read.

Values are validated here, once for every exchange, before anything is published: a trade
with a non-finite or non-positive price or size, a book level with a non-finite or
non-positive price or a negative size (``streams/book.py`` flags it as it is applied), and any
trade or book timestamp further than ``ClockWindow`` from the receive time are dead-lettered
with the reason (a book is also unsynced: it held the bad level). So no such value reaches a
book, trade, candle or watermark. The exchanges' own tickers and candles (``ticker``,
``exchange_candle``) are checked the same way (and a candle's low/high must bound its
open/close); a candle without the exchange's final flag becomes final when a later window of it
arrives on the same connection.

Trades are deduplicated by (symbol, exchange trade id) with a bounded memory per symbol
(``TradeMemory``: the ids of the last ``trade_memory`` exchange timestamps): the same trade
delivered again (a subscribe snapshot, a second connection, a make-before-break handover)
carries its original time and id and is dropped and counted; one not seen yet is published.
A trade older than everything the memory still holds (``ts`` at or before the newest
forgotten one) cannot be told apart and is dead-lettered rather than risk a duplicate.

Symbol resolution is injective: an exchange symbol resolves through the names every metadata
answer agrees on, else its connection's own metadata, else the exchange's documented fallback
rule; a normalised name is owned by the first instrument that claims it, and a second
instrument claiming it is dead-lettered (``ambiguous_symbol``), never merged.

Everything a processor holds is plain data (dicts, deques, slotted objects), so a processor
pickles as checkpoint state and, restored, produces the same output.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

import msgspec

from marketpipe.raw import RawRecord
from marketpipe.records import (
    BBO,
    BookBuckets,
    BookChange,
    ControlRequest,
    ExchangeCandle,
    FundingRate,
    Instrument,
    Liquidation,
    MarkPrice,
    OpenInterest,
    Record,
    Side,
    StatusEvent,
    Ticker,
    Trade,
)
from marketpipe.wire import ParseError
from streams.book_sync import (
    MAX_FILLED_BOUNDARIES,
    BookSync,
    BookSyncRules,
    SymbolHealth,
    UnsyncReason,
)
from streams.buckets import Bucketer

if TYPE_CHECKING:
    from marketpipe.config import StreamSettings
    from marketpipe.instruments import Instruments

_INF = float("inf")
US_PER_S = 1_000_000
LIQUIDATION_MEMORY = 256
"""liquidations remembered per symbol to drop the same one delivered again"""
VANISHED_AFTER_NS = 3600 * 1_000_000_000
"""a connection silent this long ended without a close record"""


@dataclass(frozen=True, slots=True)
class ClockWindow:
    """How far an exchange timestamp may be from the receive time before it is dead-lettered:
    ahead of it (clock skew is seconds; a future timestamp would move watermarks) and behind it
    (OKX re-sends the latest trade on subscribe, hours old on a quiet instrument; a week
    behind is a unit mistake such as seconds read as milliseconds)."""

    ahead_s: float = 300.0
    behind_s: float = 7 * 86_400.0

    @classmethod
    def from_settings(cls, streams: StreamSettings) -> ClockWindow:
        """``streams.max_ts_ahead_s`` / ``max_ts_behind_s`` (marketpipe/config.py)."""
        return cls(streams.max_ts_ahead_s, streams.max_ts_behind_s)


@dataclass(slots=True)
class FeedCounters:
    """Running totals of one processor.

    ``frames`` counts websocket frames (kind ``recv``); ``resyncs`` counts resync requests
    (one per unsynced episode); ``books_synced`` holds every symbol whose book has been
    synced at least once (its current state is in the StatusEvents).
    """

    frames: int = 0
    trades: int = 0
    book_messages: int = 0
    checksums_verified: int = 0
    checksum_failures: int = 0
    sequence_gaps: int = 0
    resyncs: int = 0
    parse_errors: int = 0
    acks: int = 0
    heartbeats: int = 0
    books_synced: set[str] = field(default_factory=set)
    crossed_books: int = 0
    rest_responses: int = 0
    connections: int = 0
    sent: int = 0
    notices: int = 0
    tickers: int = 0
    derivatives: int = 0
    """funding, open-interest, mark-price and liquidation records published"""
    repeats_dropped: int = 0
    """funding/open-interest/mark-price values identical to the last published, and
    liquidations already published (a second connection, a re-sent snapshot)"""
    stale_updates: int = 0
    dropped_unsynced: int = 0
    duplicates_dropped: int = 0
    instruments_skipped: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    """dead letters (``parse_errors``) by category, see ``DEAD_LETTER_CATEGORIES``"""

    def report(self) -> dict[str, object]:
        """The JSON-friendly summary used by ``marketpipe normalize --report``."""
        return {
            "frames": self.frames,
            "trades": self.trades,
            "duplicates_dropped": self.duplicates_dropped,
            "book_messages": self.book_messages,
            "checksums_verified": self.checksums_verified,
            "checksum_failures": self.checksum_failures,
            "sequence_gaps": self.sequence_gaps,
            "resyncs": self.resyncs,
            "parse_errors": self.parse_errors,
            "derivatives": self.derivatives,
            "repeats_dropped": self.repeats_dropped,
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "instruments_skipped": self.instruments_skipped,
            "books_synced": sorted(self.books_synced),
        }


class FeedOutput:
    """What processing produced; the caller drains and clears it between batches."""

    __slots__ = (
        "bbos",
        "books",
        "buckets",
        "control",
        "errors",
        "exchange_candles",
        "funding",
        "instruments",
        "liquidations",
        "mark_prices",
        "open_interest",
        "status",
        "tickers",
        "trades",
    )

    def __init__(self) -> None:
        self.trades: list[Trade] = []
        self.buckets: list[BookBuckets] = []
        self.books: list[BookChange] = []
        self.bbos: list[BBO] = []
        self.status: list[StatusEvent] = []
        self.control: list[ControlRequest] = []
        self.tickers: list[Ticker] = []
        self.exchange_candles: list[ExchangeCandle] = []
        self.instruments: list[Instrument] = []
        self.funding: list[FundingRate] = []
        self.open_interest: list[OpenInterest] = []
        self.mark_prices: list[MarkPrice] = []
        self.liquidations: list[Liquidation] = []
        self.errors: list[tuple[RawRecord, str]] = []

    def records(self) -> tuple[list[Any], ...]:
        """Every list of md records, in publishing order (each list holds one record type,
        published to that type's md topic: marketpipe/topics.py ``MD_STREAMS``)."""
        return (
            self.trades,
            self.books,
            self.bbos,
            self.tickers,
            self.exchange_candles,
            self.instruments,
            self.funding,
            self.open_interest,
            self.mark_prices,
            self.liquidations,
            self.status,
            self.control,
        )

    def clear(self) -> None:
        for records in self.records():
            records.clear()
        self.buckets.clear()
        self.errors.clear()


class ConnectionState:
    """State of one websocket connection; exchange modules may subclass it."""

    def __init__(self, conn: str, url: str | None) -> None:
        self.conn = conn
        self.url = url
        self.books: dict[str, BookSync] = {}
        self.instruments: dict[str, str] = {}
        """exchange symbol -> name, from this connection's own metadata answers"""
        self.unresolved: dict[str, tuple[str, str]] = {}
        """exchange symbols this connection's metadata named without a usable name: (category, reason)"""
        self.last_ns = 0
        """receive time of its latest record"""
        self.candles: dict[tuple[str, str], ExchangeCandle] = {}
        """(exchange symbol, interval) -> the latest exchange candle without a final flag"""


# The names checkpoints of earlier versions pickled these classes under (and parsers import).
Connection = ConnectionState
BookState = BookSync

__all__ = [
    "MAX_FILLED_BOUNDARIES",
    "BookState",
    "BookSync",
    "ClockWindow",
    "Connection",
    "ConnectionState",
    "FeedCounters",
    "FeedOutput",
    "FeedProcessor",
    "ParseError",
    "SymbolHealth",
    "TradeMemory",
    "UnsyncReason",
]


class TradeMemory:
    """The trades of one symbol published last, by exchange time: ts -> trade id (or ids, when
    several trades share a timestamp). A trade delivered again carries its original ts, so a
    lookup hashes an int, not the id string. Holds between ``limit`` and ``2 * limit``
    timestamps: at twice the limit it keeps the newest ``limit`` in one C-level copy."""

    __slots__ = ("horizon", "times")

    def __init__(self) -> None:
        self.times: dict[int, str | list[str]] = {}
        """ts -> trade id(s), in the order first seen"""
        self.horizon = -1
        """the newest forgotten ts: an unknown trade at or before it may be a duplicate"""

    def forget_oldest(self, keep: int) -> None:
        times = self.times
        drop = len(times) - keep
        newest_forgotten = max(islice(times, drop))
        if newest_forgotten > self.horizon:
            self.horizon = newest_forgotten
        self.times = dict(islice(times.items(), drop, None))


class FeedProcessor(BookSyncRules):
    """Base processor. Subclasses set the class attributes and implement ``on_frame``."""

    exchange: ClassVar[str]
    instruments_path: ClassVar[str]
    """REST path (suffix) of the instrument-metadata request, e.g. ``/api/v3/exchangeInfo``."""
    instruments_paths: ClassVar[tuple[str, ...]] = ()
    """Every public form of the exchange's instrument list (paths; one resource below each, such
    as KuCoin's ``/api/v2/symbols/{symbol}``, counts too); ``instruments_path`` when empty."""
    instruments_parser: ClassVar[staticmethod[[bytes, str], Instruments]]
    """The exchange module's ``parse_instruments(body, path)`` (its connector uses the same function)."""
    keep_text: ClassVar[bool] = False
    """Keep the wire text of book levels (for checksums over the original strings)."""
    connection_type: ClassVar[type[ConnectionState]] = ConnectionState
    trade_memory: ClassVar[int] = 4096
    """trade timestamps remembered per symbol for deduplication (up to twice as many are held:
    about 1 MB for a busy symbol)"""
    bucketer: Bucketer | None = None
    """set to publish price-bucket snapshots (the stream app does; offline normalize does not)"""

    def __init__(self, clock: ClockWindow | None = None) -> None:
        self.counters = FeedCounters()
        self._start_book_sync()
        self.instruments: dict[str, str] = {}
        """exchange symbol -> name from every metadata answer seen (for connections without their own)"""
        self._unresolved: dict[str, tuple[str, str]] = {}
        self._claims: dict[str, tuple[str, bool]] = {}
        """normalised name -> (the instrument owning it, claimed by metadata rather than a fallback rule)"""
        self._by_rule: dict[str, str] = {}
        """exchange symbol -> name the fallback rule gave (while its claim stands and no
        metadata answer mentions the symbol)"""
        self._memory_limit = self.trade_memory
        self._memory_cap = 2 * self.trade_memory - 1
        self._connections: dict[str, ConnectionState] = {}
        self._trade_memories: dict[str, TradeMemory] = {}
        self._instrument_records: dict[str, Instrument] = {}
        self._last_published: dict[tuple[str, str], tuple[object, ...]] = {}
        """(record kind, symbol) -> the values last published (funding, open interest, mark)"""
        self._liquidations_seen: dict[str, deque[tuple[object, ...]]] = {}
        self.set_clock(clock or ClockWindow())

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        for name in ("_book_owners", "_instrument_records", "_last_published", "_liquidations_seen"):
            self.__dict__.setdefault(name, {})  # absent in checkpoints of older versions

    def set_clock(self, clock: ClockWindow) -> None:
        """The timestamp window (a restored processor takes the current configuration's)."""
        self._ahead_us = int(clock.ahead_s * US_PER_S)
        self._behind_us = int(clock.behind_s * US_PER_S)

    # ----------------------------------------------------------------- entry point

    def process(self, raw: RawRecord, out: FeedOutput) -> None:
        """Normalise one raw record into ``out``. Never raises on bad input."""
        try:
            kind = raw.kind
            if kind == "recv":
                self.counters.frames += 1
                self.on_frame(self._connection(raw), raw, out)
            elif kind == "rest":
                self.counters.rest_responses += 1
                self._on_rest(self._connection(raw), raw, out)
            elif kind == "sent":
                self.counters.sent += 1
                self.on_sent(self._connection(raw), raw)
            elif kind == "open":
                self._on_open(raw)
            elif kind == "close":
                self._on_close(raw, out)
            else:
                raise ParseError(f"unknown raw record kind {kind!r}")
        except ParseError as exc:
            self.reject(raw, str(exc), out, exc.category)
        except KeyError as exc:
            self.reject(raw, f"malformed {self.exchange} {raw.kind} record: missing field {exc}", out)
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            self.reject(raw, f"malformed {self.exchange} {raw.kind} record: {type(exc).__name__}: {exc}", out)
        except Exception as exc:  # the contract: bad input never escapes process()
            self.reject(
                raw, f"unexpected {type(exc).__name__} normalising {raw.kind} record: {exc}", out, "internal"
            )

    def reject(self, raw: RawRecord, reason: str, out: FeedOutput, category: str = "malformed") -> None:
        counters = self.counters
        counters.parse_errors += 1
        counters.dead_letters[category] = counters.dead_letters.get(category, 0) + 1
        out.errors.append((raw, reason))

    # ----------------------------------------------------------- exchange hooks

    def on_frame(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        raise NotImplementedError

    def instruments_from(self, body: bytes, path: str) -> Instruments:
        """Exchange symbol -> BASE-QUOTE from an instrument-list answer fetched from ``path``."""
        return self.instruments_parser(body, path)

    def is_instruments_path(self, path: str) -> bool:
        """The listing, or one instrument's resource right below it (KuCoin, Gate.io per-symbol requests)."""
        for listing in self.instruments_paths or (self.instruments_path,):
            if path.endswith(listing):
                return True
            start = path.find(listing + "/")
            if start >= 0 and "/" not in path[start + len(listing) + 1 :]:
                return True
        return False

    def on_sent(self, conn: ConnectionState, raw: RawRecord) -> None:
        """A frame the client sent (subscribe requests); recognised, nothing to emit."""

    def on_rest(self, conn: ConnectionState, raw: RawRecord, path: str, out: FeedOutput) -> None:
        """A REST response other than instrument metadata (e.g. Binance depth snapshots)."""
        raise ParseError(f"unrecognised {self.exchange} REST response for {raw.url!r}")

    def fallback_instrument(self, exchange_symbol: str) -> tuple[str, str] | None:
        """(name, instrument id) of a symbol no metadata named, by the exchange's documented rule
        where its wire name is unambiguous (``BASE-QUOTE`` ids); None where it is not. May raise
        ParseError to give a more precise reason (a derivative id, say)."""
        return None

    # -------------------------------------------------------------- connections

    def _connection(self, raw: RawRecord) -> ConnectionState:
        conn = self._connections.get(raw.conn)
        if conn is None:
            # started mid-connection (no `open` seen): still process its frames
            conn = self._connections[raw.conn] = self.connection_type(raw.conn, None)
        conn.last_ns = raw.recv_ns
        return conn

    def _on_open(self, raw: RawRecord) -> None:
        self.counters.connections += 1
        conn = self._connections[raw.conn] = self.connection_type(raw.conn, raw.url)
        conn.last_ns = raw.recv_ns
        self._forget_vanished(raw.recv_ns)

    def _forget_vanished(self, now_ns: int) -> None:
        """Connections silent for ``VANISHED_AFTER_NS`` ended without a ``close`` (a producer
        killed): their state goes, so the processor (checkpointed) does not grow forever."""
        vanished = [c for c, conn in self._connections.items() if now_ns - conn.last_ns > VANISHED_AFTER_NS]
        for conn_id in vanished:
            del self._connections[conn_id]

    def _on_close(self, raw: RawRecord, out: FeedOutput) -> None:
        conn = self._connections.pop(raw.conn, None)
        if conn is None:
            return
        detail = raw.text()[:200]
        for state in conn.books.values():
            self.unsync(state, "close", f"connection closed {detail}".strip(), raw, out)

    def _on_rest(self, conn: ConnectionState, raw: RawRecord, out: FeedOutput) -> None:
        path = unquote(urlsplit(raw.url or "").path)
        if not self.is_instruments_path(path):
            self.on_rest(conn, raw, path, out)
            return
        try:
            learned = self.instruments_from(raw.payload, path)
        except ParseError as exc:
            raise ParseError(str(exc), exc.explicit_category or "instruments_unreadable") from None
        except Exception as exc:
            raise ParseError(
                f"{self.exchange} instrument metadata from {raw.url!r} unreadable: "
                f"{type(exc).__name__}: {exc}",
                "instruments_unreadable",
            ) from exc
        self._learn(conn, learned)
        # the metadata of every symbol this answer named (not those it lost to another instrument)
        named = conn.instruments
        for record in learned.stamped(raw.recv_ns // 1000):
            if named.get(record.exchange_symbol) == record.symbol:
                self._instrument_records[record.exchange_symbol] = record
                out.instruments.append(record)

    # ------------------------------------------------------------------ symbols

    def _learn(self, conn: ConnectionState, learned: Instruments) -> None:
        """Take in one metadata answer: names the connection and the processor resolve from."""
        self.counters.instruments_skipped += len(learned.skipped)
        for entry, reason in learned.skipped.items():
            unresolved = ("unnamed_instrument", f"{self.exchange} {entry!r}: {reason}")
            conn.unresolved[entry] = unresolved
            self._by_rule.pop(entry, None)
            self._disagree(entry, unresolved)
        claims = self._claims
        for exchange_symbol, name in learned.items():
            self._by_rule.pop(exchange_symbol, None)  # metadata mentions it: no rule applies
            instrument = learned.instrument(exchange_symbol)
            claim = claims.get(name)
            if claim is not None and claim[1] and claim[0] != instrument:
                conflict = (
                    "ambiguous_symbol",
                    f"{self.exchange} {exchange_symbol!r} ({instrument}) would be named {name!r}, "
                    f"which already names {claim[0]}",
                )
                self.counters.instruments_skipped += 1
                conn.unresolved[exchange_symbol] = conflict
                self._disagree(exchange_symbol, conflict)
                continue
            if claim is not None and not claim[1]:
                self._drop_rule_names(name)
            claims[name] = (instrument, True)
            conn.instruments[exchange_symbol] = name
            conn.unresolved.pop(exchange_symbol, None)
            self._learn_shared(exchange_symbol, name)

    def _disagree(self, exchange_symbol: str, unresolved: tuple[str, str]) -> None:
        """An answer gives ``exchange_symbol`` no name: where another answer named it, the
        processor-wide map drops it (it keeps only names every answer agrees on)."""
        known = self.instruments.get(exchange_symbol)
        if known is None:
            self._unresolved.setdefault(exchange_symbol, unresolved)
        else:
            self._ambiguous(exchange_symbol, known, None)

    def _learn_shared(self, exchange_symbol: str, name: str) -> None:
        known = self.instruments.get(exchange_symbol)
        if known == name:
            return
        if known is None and exchange_symbol not in self._unresolved:
            self.instruments[exchange_symbol] = name
        else:
            self._ambiguous(exchange_symbol, known, name)

    def _ambiguous(self, exchange_symbol: str, one: str | None, other: str | None) -> None:
        """Answers disagree on a symbol's name (two market categories, say): only a connection's
        own metadata resolves it from now on."""
        self.instruments.pop(exchange_symbol, None)
        self._unresolved[exchange_symbol] = (
            "ambiguous_symbol",
            f"{self.exchange} {exchange_symbol!r}: metadata answers disagree on its name "
            f"({one or 'none'} / {other or 'none'}); only a connection's own metadata resolves it",
        )

    def symbol_of(self, exchange_symbol: str, conn: ConnectionState | None = None) -> str:
        """The normalised name; raises ParseError (with its category) when there is none."""
        if conn is not None:
            found = conn.instruments.get(exchange_symbol)
            if found is not None:
                return found
            unresolved = conn.unresolved.get(exchange_symbol)
            if unresolved is not None:
                raise ParseError(unresolved[1], unresolved[0])
        found = self.instruments.get(exchange_symbol) or self._by_rule.get(exchange_symbol)
        if found is not None:
            return found
        return self._resolve_unlisted(exchange_symbol)

    def _drop_rule_names(self, name: str) -> None:
        """Metadata claims ``name``: symbols the fallback rule named so are resolved again."""
        for exchange_symbol in [s for s, n in self._by_rule.items() if n == name]:
            del self._by_rule[exchange_symbol]

    def _resolve_unlisted(self, exchange_symbol: str) -> str:
        unresolved = self._unresolved.get(exchange_symbol)
        if unresolved is not None:
            raise ParseError(unresolved[1], unresolved[0])
        found = self.fallback_instrument(exchange_symbol)
        if found is None:
            raise ParseError(
                f"unknown {self.exchange} symbol {exchange_symbol!r}: no instrument metadata (rest record) "
                "names it and its wire name cannot be read without",
                "unknown_symbol",
            )
        name, instrument = found
        claim = self._claims.get(name)
        if claim is None:
            self._claims[name] = (instrument, False)
            self._by_rule[exchange_symbol] = name
        elif claim[0] == instrument:
            self._by_rule[exchange_symbol] = name
        else:
            raise ParseError(
                f"{self.exchange} {exchange_symbol!r} would be named {name!r}, "
                f"which already names {claim[0]}",
                "ambiguous_symbol",
            )
        return name

    # -------------------------------------------------------------------- trades

    def trade(
        self,
        raw: RawRecord,
        out: FeedOutput,
        exchange_symbol: str,
        trade_id: str,
        price: float,
        size: float,
        side: Literal["buy", "sell", "unknown"],
        ts: int,
        id_space: str = "",
    ) -> None:
        """Publish one trade unless it is invalid (dead-lettered) or already published (dropped).

        ``id_space`` keeps trade-id sequences of one symbol apart that may reuse numbers
        (Binance ``trade`` and ``aggTrade`` ids)."""
        # names every metadata answer agrees on, or the rule gave to symbols no answer mentions
        symbol = self.instruments.get(exchange_symbol) or self._by_rule.get(exchange_symbol)
        if symbol is None:
            try:
                symbol = self.symbol_of(exchange_symbol, self._connections.get(raw.conn))
            except ParseError as exc:
                self.reject(raw, str(exc), out, exc.category)
                return
        recv_us = raw.recv_ns // 1000
        if not (
            0.0 < price < _INF
            and 0.0 < size < _INF
            and recv_us - self._behind_us <= ts <= recv_us + self._ahead_us
        ):
            self._reject_trade(raw, out, exchange_symbol, trade_id, price, size, ts)
            return
        memory = self._trade_memories.get(symbol + id_space if id_space else symbol)
        if memory is None:
            memory = self._trade_memories[symbol + id_space] = TradeMemory()
        times = memory.times
        seen = times.get(ts)
        if seen is None:
            if ts <= memory.horizon:
                self._reject_forgotten(raw, out, exchange_symbol, trade_id, ts, memory.horizon)
                return
            times[ts] = trade_id
            if len(times) > self._memory_cap:
                memory.forget_oldest(self._memory_limit)
        elif seen == trade_id or (isinstance(seen, list) and trade_id in seen):
            self.counters.duplicates_dropped += 1
            return
        elif isinstance(seen, list):
            seen.append(trade_id)
        else:
            times[ts] = [seen, trade_id]
        self.counters.trades += 1
        out.trades.append(
            Trade(
                exchange=self.exchange,
                symbol=symbol,
                exchange_symbol=exchange_symbol,
                trade_id=trade_id,
                price=price,
                size=size,
                side=side,
                ts=ts,
                recv_ts=recv_us,
                conn=raw.conn,
                seq=raw.seq,
            )
        )

    def _reject_forgotten(
        self, raw: RawRecord, out: FeedOutput, exchange_symbol: str, trade_id: str, ts: int, horizon: int
    ) -> None:
        self.reject(
            raw,
            f"{self.exchange} trade {trade_id} of {exchange_symbol} at {ts} is older than the dedup "
            f"memory ({self.trade_memory} timestamps, forgotten up to {horizon}): "
            "it may have been published",
            out,
            "dedup_horizon",
        )

    def _reject_trade(
        self,
        raw: RawRecord,
        out: FeedOutput,
        exchange_symbol: str,
        trade_id: str,
        price: float,
        size: float,
        ts: int,
    ) -> None:
        what = f"{self.exchange} trade {trade_id} of {exchange_symbol}"
        if not 0.0 < price < _INF:
            self.reject(raw, f"{what}: price {price} is not a positive finite number", out, "invalid_value")
        elif not 0.0 < size < _INF:
            self.reject(raw, f"{what}: size {size} is not a positive finite number", out, "invalid_value")
        else:
            self.reject(raw, f"{what}: {self._clock_detail(ts, raw)}", out, "ts_out_of_range")

    def _clock_detail(self, ts: int, raw: RawRecord) -> str:
        offset_s = (ts - raw.recv_ns // 1000) / US_PER_S
        direction = "ahead of" if offset_s > 0 else "behind"
        limit_s = (self._ahead_us if offset_s > 0 else self._behind_us) / US_PER_S
        return f"timestamp {ts} is {abs(offset_s):.0f} s {direction} the receive time (limit {limit_s:.0f} s)"

    # ------------------------------------------------------- tickers and klines

    def ticker(
        self,
        raw: RawRecord,
        out: FeedOutput,
        exchange_symbol: str,
        ts: int | None,
        *,
        last_price: float | None = None,
        last_size: float | None = None,
        bid_price: float | None = None,
        bid_size: float | None = None,
        ask_price: float | None = None,
        ask_size: float | None = None,
        open_24h: float | None = None,
        high_24h: float | None = None,
        low_24h: float | None = None,
        volume_24h: float | None = None,
        quote_volume_24h: float | None = None,
        trades_24h: int | None = None,
    ) -> bool:
        """Publish the exchange's ticker of one symbol; a field it does not send stays None.

        ``ts`` None: the exchange sends no time, the receive time stands in. Dead-lettered
        (False) when the symbol does not resolve, a price is not positive and finite, a size,
        volume or count is negative or not finite, or ``ts`` is outside the clock window."""
        symbol = self._symbol_or_reject(raw, out, exchange_symbol)
        if symbol is None:
            return False
        recv_us = raw.recv_ns // 1000
        prices = (last_price, bid_price, ask_price, open_24h, high_24h, low_24h)
        amounts = (last_size, bid_size, ask_size, volume_24h, quote_volume_24h, trades_24h)
        problem = _bad_values(prices, amounts) or self._out_of_window(ts, raw)
        if problem:
            what = f"{self.exchange} ticker of {exchange_symbol}: {problem[1]}"
            self.reject(raw, what, out, problem[0])
            return False
        self.counters.tickers += 1
        out.tickers.append(
            Ticker(
                exchange=self.exchange,
                symbol=symbol,
                exchange_symbol=exchange_symbol,
                last_price=last_price,
                last_size=last_size,
                bid_price=bid_price,
                bid_size=bid_size,
                ask_price=ask_price,
                ask_size=ask_size,
                open_24h=open_24h,
                high_24h=high_24h,
                low_24h=low_24h,
                volume_24h=volume_24h,
                quote_volume_24h=quote_volume_24h,
                trades_24h=trades_24h,
                ts=recv_us if ts is None else ts,
                recv_ts=recv_us,
                conn=raw.conn,
                seq=raw.seq,
            )
        )
        return True

    def exchange_candle(
        self,
        conn: ConnectionState,
        raw: RawRecord,
        out: FeedOutput,
        exchange_symbol: str,
        interval: str,
        open_time: int,
        close_time: int,
        open_: float,
        high: float,
        low: float,
        close: float,
        *,
        volume: float | None = None,
        quote_volume: float | None = None,
        trades: int | None = None,
        first_trade_id: str | None = None,
        last_trade_id: str | None = None,
        closed: bool | None = None,
        ts: int | None = None,
    ) -> bool:
        """Publish one exchange-built candle (times in µs, ``close_time`` exclusive, ``interval``
        in marketpipe spelling: ``interval_name``).

        ``closed`` is the exchange's final flag; None where it has none: then the candle is
        final once a later window of the same symbol and interval arrives on the connection,
        and that later candle re-publishes this one's last state with ``closed=True`` (the
        connection remembers one candle per symbol and interval; within one batch the open
        version is replaced rather than published twice). A candle older than the
        remembered one is final at once; a candle the exchange flags final ends the memory of
        its window (the flag may be optional). ``ts`` None: the receive time stands in.
        Dead-lettered (False) like tickers, and also when low/high do not bound open/close
        or the window is empty."""
        symbol = self._symbol_or_reject(raw, out, exchange_symbol)
        if symbol is None:
            return False
        problem = (
            _bad_values((open_, high, low, close), (volume, quote_volume, trades))
            or _bad_candle(open_time, close_time, open_, high, low, close)
            or self._out_of_window(ts, raw)
            or self._out_of_window(open_time, raw, ahead_only=True)
            or self._out_of_window(close_time, raw, behind_only=True)
        )
        if problem:
            what = f"{self.exchange} {interval} candle of {exchange_symbol} at {open_time}: {problem[1]}"
            self.reject(raw, what, out, problem[0])
            return False
        recv_us = raw.recv_ns // 1000
        candle = ExchangeCandle(
            exchange=self.exchange,
            symbol=symbol,
            exchange_symbol=exchange_symbol,
            interval=interval,
            open_time=open_time,
            close_time=close_time,
            open=open_,
            high=high,
            low=low,
            close=close,
            volume=volume,
            quote_volume=quote_volume,
            trades=trades,
            first_trade_id=first_trade_id,
            last_trade_id=last_trade_id,
            closed=bool(closed),
            ts=recv_us if ts is None else ts,
            recv_ts=recv_us,
            conn=raw.conn,
            seq=raw.seq,
        )
        if closed is None:
            candle = self._close_by_later_window(conn, candle, raw, out)
        elif closed:
            self._forget_closed(conn, candle)
        out.exchange_candles.append(candle)
        return True

    def _close_by_later_window(
        self, conn: ConnectionState, candle: ExchangeCandle, raw: RawRecord, out: FeedOutput
    ) -> ExchangeCandle:
        """The later-window rule for exchanges without a final flag (see ``exchange_candle``)."""
        memory = conn.__dict__.setdefault("candles", {})  # absent on connections from old checkpoints
        key = (candle.exchange_symbol, candle.interval)
        latest: ExchangeCandle | None = memory.get(key)
        if latest is not None and candle.open_time < latest.open_time:
            return msgspec.structs.replace(candle, closed=True)
        if latest is not None and candle.open_time > latest.open_time:
            final = msgspec.structs.replace(latest, closed=True, recv_ts=raw.recv_ns // 1000, seq=raw.seq)
            published = out.exchange_candles
            if published and published[-1] is latest:  # earlier in this batch (a snapshot's list)
                published[-1] = final
            else:
                published.append(final)
        memory[key] = candle
        return candle

    @staticmethod
    def _forget_closed(conn: ConnectionState, candle: ExchangeCandle) -> None:
        """An exchange whose final flag is optional (Gate.io ``w``) finalised a window itself:
        a remembered state of that window (or an older one) must not be re-published as final."""
        memory: dict[tuple[str, str], ExchangeCandle] = conn.__dict__.get("candles") or {}
        key = (candle.exchange_symbol, candle.interval)
        latest = memory.get(key)
        if latest is not None and latest.open_time <= candle.open_time:
            del memory[key]

    def _symbol_or_reject(self, raw: RawRecord, out: FeedOutput, exchange_symbol: str) -> str | None:
        try:
            return self.symbol_of(exchange_symbol, self._connections.get(raw.conn))
        except ParseError as exc:
            self.reject(raw, str(exc), out, exc.category)
            return None

    def _out_of_window(
        self, ts: int | None, raw: RawRecord, *, ahead_only: bool = False, behind_only: bool = False
    ) -> tuple[str, str] | None:
        if ts is None:
            return None
        recv_us = raw.recv_ns // 1000
        if (not behind_only and ts > recv_us + self._ahead_us) or (
            not ahead_only and ts < recv_us - self._behind_us
        ):
            return "ts_out_of_range", self._clock_detail(ts, raw)
        return None

    # ------------------------------------------------------------- derivatives

    def instrument_record(self, exchange_symbol: str) -> Instrument | None:
        """The metadata last read for the symbol (contract size and type, for unit conversions)."""
        return self._instrument_records.get(exchange_symbol)

    def funding(
        self,
        raw: RawRecord,
        out: FeedOutput,
        exchange_symbol: str,
        ts: int | None,
        *,
        rate: float,
        predicted_rate: float | None = None,
        next_funding_ts: int | None = None,
        interval_s: int | None = None,
    ) -> bool:
        """Publish a perpetual's funding when a value changed since the last one published for
        the symbol (False for a repeat). Dead-lettered (False) when a rate is not finite or beyond
        +-100 %, the interval is not positive, or the symbol or ``ts`` is bad as for ``ticker``."""
        problem = _bad_rate(rate) or _bad_rate(predicted_rate)
        if problem is None and interval_s is not None and interval_s <= 0:
            problem = "invalid_value", f"funding interval {interval_s} s is not positive"
        fields = self._record_fields(raw, out, exchange_symbol, ts, "funding", problem)
        if fields is None:
            return False
        if not self._changed(
            "funding", fields["symbol"], (rate, predicted_rate, next_funding_ts, interval_s)
        ):
            return False
        record = FundingRate(
            rate=rate,
            predicted_rate=predicted_rate,
            next_funding_ts=next_funding_ts,
            interval_s=interval_s,
            **fields,
        )
        self._add_derivative(out.funding, record)
        return True

    def open_interest(
        self,
        raw: RawRecord,
        out: FeedOutput,
        exchange_symbol: str,
        ts: int | None,
        *,
        open_interest: float,
        value: float | None = None,
    ) -> bool:
        """Publish open interest (contracts; ``value`` the notional the venue states) when it
        changed for the symbol (False for a repeat). Dead-lettered (False) when negative or not
        finite."""
        problem = _bad_values((), (open_interest, value))
        fields = self._record_fields(raw, out, exchange_symbol, ts, "open interest", problem)
        if fields is None:
            return False
        if not self._changed("open interest", fields["symbol"], (open_interest, value)):
            return False
        self._add_derivative(
            out.open_interest, OpenInterest(open_interest=open_interest, value=value, **fields)
        )
        return True

    def mark_price(
        self,
        raw: RawRecord,
        out: FeedOutput,
        exchange_symbol: str,
        ts: int | None,
        *,
        mark_price: float | None = None,
        index_price: float | None = None,
        settle_price: float | None = None,
    ) -> bool:
        """Publish a contract's mark/index/settle prices (a repeat of the last values at the
        same time, e.g. from a second connection, is dropped: False). Dead-lettered (False) when
        a price is not positive and finite, or none is given."""
        prices = (mark_price, index_price, settle_price)
        problem = _bad_values(prices, ())
        if problem is None and mark_price is None and index_price is None and settle_price is None:
            problem = "invalid_value", "no mark, index or settle price"
        fields = self._record_fields(raw, out, exchange_symbol, ts, "mark price", problem)
        if fields is None:
            return False
        if not self._changed("mark price", fields["symbol"], (ts, *prices)):
            return False
        record = MarkPrice(
            mark_price=mark_price, index_price=index_price, settle_price=settle_price, **fields
        )
        self._add_derivative(out.mark_prices, record)
        return True

    def liquidation(
        self,
        raw: RawRecord,
        out: FeedOutput,
        exchange_symbol: str,
        ts: int | None,
        *,
        side: Side,
        price: float,
        size: float,
        liquidation_id: str | None = None,
    ) -> bool:
        """Publish a liquidation (``side``: the liquidation order's side; ``size`` in contracts)
        once: the same one again (a second connection, a re-sent snapshot) is dropped and
        counted. Dead-lettered (False) when the price or size is not positive and finite."""
        problem = _bad_values((price, size), ())
        fields = self._record_fields(raw, out, exchange_symbol, ts, "liquidation", problem)
        if fields is None:
            return False
        seen = self._liquidations_seen.get(fields["symbol"])
        if seen is None:
            seen = self._liquidations_seen[fields["symbol"]] = deque(maxlen=LIQUIDATION_MEMORY)
        key = (ts, side, price, size, liquidation_id)
        if key in seen:
            self.counters.repeats_dropped += 1
            return True
        seen.append(key)
        record = Liquidation(side=side, price=price, size=size, liquidation_id=liquidation_id, **fields)
        self._add_derivative(out.liquidations, record)
        return True

    def _record_fields(
        self,
        raw: RawRecord,
        out: FeedOutput,
        exchange_symbol: str,
        ts: int | None,
        what: str,
        problem: tuple[str, str] | None,
    ) -> dict[str, Any] | None:
        """The fields every funding/open-interest/mark/liquidation record carries, or None when
        it is dead-lettered (a bad symbol, value or time)."""
        symbol = self._symbol_or_reject(raw, out, exchange_symbol)
        if symbol is None:
            return None
        problem = problem or self._out_of_window(ts, raw)
        if problem:
            self.reject(raw, f"{self.exchange} {what} of {exchange_symbol}: {problem[1]}", out, problem[0])
            return None
        recv_us = raw.recv_ns // 1000
        return {
            "exchange": self.exchange,
            "symbol": symbol,
            "exchange_symbol": exchange_symbol,
            "ts": recv_us if ts is None else ts,
            "recv_ts": recv_us,
            "conn": raw.conn,
            "seq": raw.seq,
        }

    def _changed(self, what: str, symbol: str, values: tuple[object, ...]) -> bool:
        """False (and counted) when ``values`` repeat the last ones published for the symbol."""
        key = (what, symbol)
        if self._last_published.get(key) == values:
            self.counters.repeats_dropped += 1
            return False
        self._last_published[key] = values
        return True

    def _add_derivative(self, records: list[Any], record: Record) -> None:
        self.counters.derivatives += 1
        records.append(record)


def _bad_values(
    prices: tuple[float | None, ...], amounts: tuple[float | int | None, ...]
) -> tuple[str, str] | None:
    """("invalid_value", detail) for a price that is not positive and finite or an amount
    (size, volume, count) that is negative or not finite; None values are not sent, so fine."""
    for price in prices:
        if price is not None and not 0.0 < price < _INF:
            return "invalid_value", f"price {price} is not a positive finite number"
    for amount in amounts:
        if amount is not None and not 0.0 <= amount < _INF:
            return "invalid_value", f"size/volume/count {amount} is not a finite number >= 0"
    return None


def _bad_rate(rate: float | None) -> tuple[str, str] | None:
    if rate is not None and not -1.0 <= rate <= 1.0:
        return "invalid_value", f"funding rate {rate} is not a finite fraction within +-1"
    return None


def _bad_candle(
    open_time: int, close_time: int, open_: float, high: float, low: float, close: float
) -> tuple[str, str] | None:
    if close_time <= open_time:
        return "invalid_value", f"close time {close_time} is not after the open time"
    if not (low <= open_ <= high and low <= close <= high):
        return "invalid_value", f"low {low} / high {high} do not bound open {open_} and close {close}"
    return None
