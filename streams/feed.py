"""The exchange-agnostic part of normalisation: raw records in, normalised records out.

``FeedProcessor`` owns the connection lifecycle (open/rest/sent/recv/close), the instrument
map, and the validated-book rules every exchange shares: a book is published only while it
is synced; a gap, checksum mismatch, crossed book or connection close marks it unsynced,
emits one StatusEvent and one ControlRequest(resync) for the episode, and nothing more is
published for it until a fresh snapshot re-syncs it. Exchange modules in
``streams/parsers/`` subclass it and declare only how their frames are read.

Price buckets (when ``bucketer`` is set): every ``bucketer.interval_us`` of exchange event
time a synced book publishes a ``BookBuckets`` snapshot. When a validated change's ``ts``
reaches the next boundary, the snapshot is taken of the book as it was at the boundary,
i.e. before that change (the book side's journal undoes it for the view), and stamped with
the boundary. Boundaries a quiet book skipped over are filled with the same book (at most
``MAX_FILLED_BOUNDARIES``). Nothing depends on wall-clock time, so replays are identical.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import msgspec

from marketpipe.raw import RawRecord
from marketpipe.records import BBO, BookBuckets, BookChange, ControlRequest, Level, StatusEvent, Trade
from streams.book import OrderBook
from streams.buckets import Bucketer

UnsyncReason = Literal["gap", "checksum", "crossed", "close"]
MAX_FILLED_BOUNDARIES = 60
"""a book quiet for longer publishes only the latest this many skipped boundaries"""
_NEVER = 1 << 62


class ParseError(Exception):
    """The frame cannot be normalised; the message is the dead-letter reason."""


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
    stale_updates: int = 0
    dropped_unsynced: int = 0

    def report(self) -> dict[str, object]:
        """The JSON-friendly summary used by ``marketpipe normalize --report``."""
        return {
            "frames": self.frames,
            "trades": self.trades,
            "book_messages": self.book_messages,
            "checksums_verified": self.checksums_verified,
            "checksum_failures": self.checksum_failures,
            "sequence_gaps": self.sequence_gaps,
            "resyncs": self.resyncs,
            "parse_errors": self.parse_errors,
            "books_synced": sorted(self.books_synced),
        }


class FeedOutput:
    """What processing produced; the caller drains and clears it between batches."""

    __slots__ = ("bbos", "books", "buckets", "control", "errors", "status", "trades")

    def __init__(self) -> None:
        self.trades: list[Trade] = []
        self.buckets: list[BookBuckets] = []
        self.books: list[BookChange] = []
        self.bbos: list[BBO] = []
        self.status: list[StatusEvent] = []
        self.control: list[ControlRequest] = []
        self.errors: list[tuple[RawRecord, str]] = []

    def clear(self) -> None:
        self.trades.clear()
        self.buckets.clear()
        self.books.clear()
        self.bbos.clear()
        self.status.clear()
        self.control.clear()
        self.errors.clear()


@dataclass(slots=True)
class SymbolHealth:
    """Per-symbol totals carried in StatusEvents (across connections)."""

    gaps: int = 0
    checksum_failures: int = 0
    resyncs: int = 0
    crossed: int = 0


class BookState:
    """One book on one connection, with its sync state."""

    __slots__ = (
        "book",
        "bridging",
        "bucket_next",
        "conn",
        "depth",
        "exchange_symbol",
        "last_bbo",
        "last_id",
        "pending",
        "resync_requested",
        "symbol",
        "synced",
    )

    def __init__(self, conn: str, symbol: str, exchange_symbol: str, keep_text: bool) -> None:
        self.conn = conn
        self.symbol = symbol
        self.exchange_symbol = exchange_symbol
        self.book = OrderBook(keep_text=keep_text)
        self.synced = False
        # True from the resync request until a snapshot re-syncs the book (one request per episode)
        self.resync_requested = False
        self.last_id: int | None = None
        self.depth: int | None = None
        self.last_bbo: tuple[float, float, float, float] | None = None
        self.pending: deque[Any] | None = None
        self.bridging = False
        """just loaded from a snapshot: the next delta may straddle it (streams/bridge.py)"""
        self.bucket_next = _NEVER
        """next bucket boundary (event time, µs) while synced"""


class Connection:
    """State of one websocket connection; exchange modules may subclass it."""

    def __init__(self, conn: str, url: str | None) -> None:
        self.conn = conn
        self.url = url
        self.books: dict[str, BookState] = {}


class FeedProcessor:
    """Base processor. Subclasses set the class attributes and implement ``on_frame``."""

    exchange: ClassVar[str]
    instruments_path: ClassVar[str]
    """REST path (suffix) of the instrument-metadata request, e.g. ``/api/v3/exchangeInfo``."""
    instruments_parser: ClassVar[staticmethod[[bytes], dict[str, str]]]
    """The exchange module's ``parse_instruments`` (its connector uses the same function)."""
    keep_text: ClassVar[bool] = False
    """Keep the wire text of book levels (for checksums over the original strings)."""
    connection_type: ClassVar[type[Connection]] = Connection
    bucketer: Bucketer | None = None
    """set to publish price-bucket snapshots (the stream app does; offline normalize does not)"""

    def __init__(self) -> None:
        self.counters = FeedCounters()
        self.instruments: dict[str, str] = {}
        self._connections: dict[str, Connection] = {}
        self._health: dict[str, SymbolHealth] = {}

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
            self.reject(raw, str(exc), out)
        except KeyError as exc:
            self.reject(raw, f"malformed {self.exchange} {raw.kind} record: missing field {exc}", out)
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            self.reject(raw, f"malformed {self.exchange} {raw.kind} record: {type(exc).__name__}: {exc}", out)
        except Exception as exc:  # the contract: bad input never escapes process()
            self.reject(raw, f"unexpected {type(exc).__name__} normalising {raw.kind} record: {exc}", out)

    def reject(self, raw: RawRecord, reason: str, out: FeedOutput) -> None:
        self.counters.parse_errors += 1
        out.errors.append((raw, reason))

    # ----------------------------------------------------------- exchange hooks

    def on_frame(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        raise NotImplementedError

    def instruments_from(self, body: bytes) -> dict[str, str]:
        """Exchange symbol -> BASE-QUOTE from the instrument-metadata response body."""
        return self.instruments_parser(body)

    def on_sent(self, conn: Connection, raw: RawRecord) -> None:
        """A frame the client sent (subscribe requests); recognised, nothing to emit."""

    def on_rest(self, conn: Connection, raw: RawRecord, path: str, out: FeedOutput) -> None:
        """A REST response other than instrument metadata (e.g. Binance depth snapshots)."""
        raise ParseError(f"unrecognised {self.exchange} REST response for {raw.url!r}")

    def fallback_symbol(self, exchange_symbol: str) -> str | None:
        """Normalised name when no metadata named the symbol (only where the wire name is BASE-QUOTE)."""
        return None

    # -------------------------------------------------------------- connections

    def _connection(self, raw: RawRecord) -> Connection:
        conn = self._connections.get(raw.conn)
        if conn is None:
            # started mid-connection (no `open` seen): still process its frames
            conn = self._connections[raw.conn] = self.connection_type(raw.conn, None)
        return conn

    def _on_open(self, raw: RawRecord) -> None:
        self.counters.connections += 1
        self._connections[raw.conn] = self.connection_type(raw.conn, raw.url)

    def _on_close(self, raw: RawRecord, out: FeedOutput) -> None:
        conn = self._connections.pop(raw.conn, None)
        if conn is None:
            return
        detail = raw.text()[:200]
        for state in conn.books.values():
            self.unsync(state, "close", f"connection closed {detail}".strip(), raw, out)

    def _on_rest(self, conn: Connection, raw: RawRecord, out: FeedOutput) -> None:
        path = urlsplit(raw.url or "").path
        instruments = self.instruments_path
        # the listing, or one instrument's resource below it (KuCoin, Gate.io per-symbol requests)
        if path.endswith(instruments) or instruments + "/" in path:
            try:
                learned = self.instruments_from(raw.payload)
            except ParseError:
                raise
            except Exception as exc:
                raise ParseError(
                    f"{self.exchange} instrument metadata from {raw.url!r} unreadable: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self.instruments.update(learned)
            return
        self.on_rest(conn, raw, path, out)

    # ------------------------------------------------------------------ symbols

    def symbol_of(self, exchange_symbol: str) -> str:
        symbol = self.instruments.get(exchange_symbol)
        if symbol is None:
            symbol = self.fallback_symbol(exchange_symbol)
            if symbol is None:
                raise ParseError(
                    f"unknown {self.exchange} symbol {exchange_symbol!r}: "
                    "no instrument metadata (rest record) names it"
                )
        return symbol

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
    ) -> None:
        self.counters.trades += 1
        out.trades.append(
            Trade(
                exchange=self.exchange,
                symbol=self.symbol_of(exchange_symbol),
                exchange_symbol=exchange_symbol,
                trade_id=trade_id,
                price=price,
                size=size,
                side=side,
                ts=ts,
                recv_ts=raw.recv_ns // 1000,
                conn=raw.conn,
                seq=raw.seq,
            )
        )

    # --------------------------------------------------------------------- books

    def book_state(self, conn: Connection, exchange_symbol: str) -> BookState:
        state = conn.books.get(exchange_symbol)
        if state is None:
            symbol = self.symbol_of(exchange_symbol)
            state = conn.books[exchange_symbol] = BookState(
                conn.conn, symbol, exchange_symbol, self.keep_text
            )
            if self.bucketer is not None:
                state.book.bids.start_journal()
                state.book.asks.start_journal()
        return state

    def health(self, symbol: str) -> SymbolHealth:
        found = self._health.get(symbol)
        if found is None:
            found = self._health[symbol] = SymbolHealth()
        return found

    def accept_snapshot(
        self,
        state: BookState,
        raw: RawRecord,
        out: FeedOutput,
        ts: int,
        *,
        last_id: int | None = None,
        checksum: int | None = None,
    ) -> bool:
        """Publish a book the exchange module has just loaded from a snapshot (and validated)."""
        bucketer = self.bucketer
        if bucketer is not None:
            if state.synced and ts >= state.bucket_next:
                self._buckets(state, ts, bucketer, out)
            state.bucket_next = ts - ts % bucketer.interval_us + bucketer.interval_us
            self._end_change(state)
        if self._crossed(state, raw, out):
            return False
        book = state.book
        was_synced = state.synced
        state.synced = True
        state.resync_requested = False
        state.last_id = last_id
        self.counters.books_synced.add(state.symbol)
        out.books.append(
            BookChange(
                exchange=self.exchange,
                symbol=state.symbol,
                exchange_symbol=state.exchange_symbol,
                snapshot=True,
                bids=[Level(price, size) for price, size in book.bids.levels()],
                asks=[Level(price, size) for price, size in book.asks.levels()],
                ts=ts,
                recv_ts=raw.recv_ns // 1000,
                last_update_id=last_id,
                checksum=checksum,
                conn=raw.conn,
                seq=raw.seq,
            )
        )
        if not was_synced:
            self._status(state, "synced", "snapshot", "", raw, out)
        self._bbo(state, ts, raw, out)
        return True

    def accept_update(
        self,
        state: BookState,
        raw: RawRecord,
        out: FeedOutput,
        ts: int,
        bids: list[Level],
        asks: list[Level],
        *,
        first_id: int | None = None,
        last_id: int | None = None,
        checksum: int | None = None,
    ) -> bool:
        """Publish a change the exchange module has applied to a synced book (and validated)."""
        if ts >= state.bucket_next and self.bucketer is not None:
            self._buckets(state, ts, self.bucketer, out)
        self._end_change(state)
        if self._crossed(state, raw, out):
            return False
        state.last_id = last_id
        out.books.append(
            BookChange(
                exchange=self.exchange,
                symbol=state.symbol,
                exchange_symbol=state.exchange_symbol,
                snapshot=False,
                bids=bids,
                asks=asks,
                ts=ts,
                recv_ts=raw.recv_ns // 1000,
                first_update_id=first_id,
                last_update_id=last_id,
                checksum=checksum,
                conn=raw.conn,
                seq=raw.seq,
            )
        )
        self._bbo(state, ts, raw, out)
        return True

    def checksum_result(
        self, state: BookState, ok: bool, expected: int, actual: int, raw: RawRecord, out: FeedOutput
    ) -> bool:
        if ok:
            self.counters.checksums_verified += 1
            return True
        self.unsync(state, "checksum", f"checksum {expected} expected, book gives {actual}", raw, out)
        return False

    def unsync(
        self,
        state: BookState,
        reason: UnsyncReason,
        detail: str,
        raw: RawRecord,
        out: FeedOutput,
        count: bool = True,
    ) -> None:
        """Mark the book unsynced; the first failure of an episode emits status + one resync request.

        ``count=False`` when the caller already counted the event (one connection-wide gap).
        """
        health = self.health(state.symbol)
        counters = self.counters
        if reason == "gap":
            counters.sequence_gaps += count
            health.gaps += 1
        elif reason == "checksum":
            counters.checksum_failures += count
            health.checksum_failures += 1
        elif reason == "crossed":
            counters.crossed_books += count
            health.crossed += 1
        state.synced = False
        state.book.clear()
        state.bucket_next = _NEVER
        state.last_bbo = None
        state.last_id = None
        if state.resync_requested:
            return
        state.resync_requested = True
        counters.resyncs += 1
        health.resyncs += 1
        self._status(state, "unsynced", reason, detail, raw, out)
        out.control.append(
            ControlRequest(
                exchange=self.exchange,
                symbol=state.symbol,
                exchange_symbol=state.exchange_symbol,
                action="resync",
                reason=reason,
                ts=raw.recv_ns // 1000,
                conn=state.conn,
            )
        )

    def skip_unsynced(self, state: BookState, raw: RawRecord, out: FeedOutput) -> None:
        """An update for a book that is not synced: dropped; if no snapshot ever came, ask for one."""
        self.counters.dropped_unsynced += 1
        if not state.resync_requested:
            self.unsync(state, "gap", "update before any snapshot", raw, out)

    def connection_gap(self, conn: Connection, detail: str, raw: RawRecord, out: FeedOutput) -> None:
        """A gap in a connection-wide sequence: every book of the connection is suspect."""
        self.counters.sequence_gaps += 1
        for state in conn.books.values():
            self.unsync(state, "gap", detail, raw, out, count=False)

    def _buckets(self, state: BookState, ts: int, bucketer: Bucketer, out: FeedOutput) -> None:
        """Snapshots at each boundary from ``state.bucket_next`` up to ``ts``, of the book before
        the change now being accepted (so as it stood at those boundaries)."""
        step = bucketer.interval_us
        last = ts - ts % step
        first = max(state.bucket_next, last - (MAX_FILLED_BOUNDARIES - 1) * step)
        state.bucket_next = last + step
        bid_prices, bid_sizes = state.book.bids.previous()
        ask_prices, ask_sizes = state.book.asks.previous()
        snapshot = bucketer.snapshot(
            self.exchange, state.symbol, first, bid_prices, bid_sizes, ask_prices, ask_sizes
        )
        if snapshot is None:
            return
        out.buckets.append(snapshot)
        for boundary in range(first + step, last + 1, step):
            out.buckets.append(msgspec.structs.replace(snapshot, ts=boundary))

    @staticmethod
    def _end_change(state: BookState) -> None:
        for side in (state.book.bids, state.book.asks):
            if side.journal:
                side.journal.clear()

    def _crossed(self, state: BookState, raw: RawRecord, out: FeedOutput) -> bool:
        if not state.book.is_crossed():
            return False
        bbo = state.book.bbo()
        self.unsync(state, "crossed", f"best bid/ask {bbo[0]}/{bbo[2]}" if bbo else "crossed", raw, out)
        return True

    def _bbo(self, state: BookState, ts: int, raw: RawRecord, out: FeedOutput) -> None:
        bbo = state.book.bbo()
        if bbo is None or bbo == state.last_bbo:
            return
        state.last_bbo = bbo
        out.bbos.append(
            BBO(
                exchange=self.exchange,
                symbol=state.symbol,
                exchange_symbol=state.exchange_symbol,
                bid_price=bbo[0],
                bid_size=bbo[1],
                ask_price=bbo[2],
                ask_size=bbo[3],
                ts=ts,
                recv_ts=raw.recv_ns // 1000,
            )
        )

    def _status(
        self,
        state: BookState,
        new_state: Literal["synced", "unsynced"],
        reason: str,
        detail: str,
        raw: RawRecord,
        out: FeedOutput,
    ) -> None:
        health = self.health(state.symbol)
        out.status.append(
            StatusEvent(
                exchange=self.exchange,
                symbol=state.symbol,
                ts=raw.recv_ns // 1000,
                state=new_state,
                reason=reason,
                detail=detail,
                conn=state.conn,
                gaps=health.gaps,
                checksum_failures=health.checksum_failures,
                resyncs=health.resyncs,
                crossed=health.crossed,
            )
        )
