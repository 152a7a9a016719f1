"""The validated-book rules every exchange shares (``FeedProcessor`` inherits them).

A book is published only while it is synced; a gap, checksum mismatch, crossed book or
connection close marks it unsynced, emits one StatusEvent and one ControlRequest(resync) for
the episode, and nothing more is published for it until a fresh snapshot re-syncs it. The
exchange modules load snapshots and apply changes to a :class:`BookSync`, then hand it to
``accept_snapshot`` / ``accept_update`` / ``checksum_result`` / ``unsync``.

Price buckets (when ``bucketer`` is set): every ``bucketer.interval_us`` of exchange event
time a synced book publishes a ``BookBuckets`` snapshot. When a validated change's ``ts``
reaches the next boundary, the snapshot is taken of the book as it was at the boundary,
i.e. before that change (the book side's journal undoes it for the view), and stamped with
the boundary. Boundaries a quiet book skipped over are filled with the same book (at most
``MAX_FILLED_BOUNDARIES``). Nothing depends on wall-clock time, so replays are identical.

A book level with a non-finite or non-positive price or a negative size (``streams/book.py``
flags it as it is applied) and a change timestamp out of the clock window are dead-lettered
with the reason, and the book is unsynced (it held the bad level or missed the change).

Books are kept per connection, but one book stream is published per symbol: the newest
synced book (a handover's successor, a reconnect) is the published one, and while connections
overlap the others stay valid without publishing book changes, BBOs or bucket snapshots. When
the published book goes away (unsynced, its connection closed) the next change of another
synced book takes over with a whole-book snapshot, so md.book never interleaves two
connections' update streams.

Checkpoints pickle processors: the state lives in ``_health`` and ``_book_owners`` and in the
connections' ``BookSync`` objects (pickled as ``streams.feed.BookState`` by older versions:
streams.feed keeps that name as an alias).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import msgspec

from marketpipe.raw import RawRecord
from marketpipe.records import BBO, BookChange, ControlRequest, Level, StatusEvent
from streams.book import OrderBook
from streams.buckets import Bucketer

if TYPE_CHECKING:
    from streams.feed import ConnectionState, FeedCounters, FeedOutput

UnsyncReason = Literal["gap", "checksum", "crossed", "close", "invalid"]
MAX_FILLED_BOUNDARIES = 60
"""a book quiet for longer publishes only the latest this many skipped boundaries"""
_NEVER = 1 << 62
LIVE_WITHIN_NS = 120 * 1_000_000_000
"""a connection heard from this recently is live (every connector reconnects after at most 60 s
of silence)"""


@dataclass(slots=True)
class SymbolHealth:
    """Per-symbol totals carried in StatusEvents (across connections)."""

    gaps: int = 0
    checksum_failures: int = 0
    resyncs: int = 0
    crossed: int = 0


class BookSync:
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


class BookSyncRules:
    """The book-sync rules of ``FeedProcessor`` (a mixin: the processor holds the state)."""

    exchange: ClassVar[str]
    keep_text: ClassVar[bool]
    bucketer: Bucketer | None
    counters: FeedCounters
    _connections: dict[str, ConnectionState]
    _ahead_us: int
    _behind_us: int
    _health: dict[str, SymbolHealth]
    _book_owners: dict[str, str]

    if TYPE_CHECKING:  # provided by FeedProcessor

        def reject(
            self, raw: RawRecord, reason: str, out: FeedOutput, category: str = "malformed"
        ) -> None: ...

        def symbol_of(self, exchange_symbol: str, conn: ConnectionState | None = None) -> str: ...

        def _clock_detail(self, ts: int, raw: RawRecord) -> str: ...

    def _start_book_sync(self) -> None:
        self._health = {}
        self._book_owners = {}
        """symbol -> the connection whose book is published: one book stream per symbol, also
        while two connections overlap (a handover, a reconnect, a second shard)"""

    def book_state(self, conn: ConnectionState, exchange_symbol: str) -> BookSync:
        state = conn.books.get(exchange_symbol)
        if state is None:
            symbol = self.symbol_of(exchange_symbol, conn)
            state = conn.books[exchange_symbol] = BookSync(conn.conn, symbol, exchange_symbol, self.keep_text)
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
        state: BookSync,
        raw: RawRecord,
        out: FeedOutput,
        ts: int,
        *,
        last_id: int | None = None,
        checksum: int | None = None,
    ) -> bool:
        """Publish a book the exchange module has just loaded from a snapshot (and validated)."""
        if self._refuse(state, raw, out, ts):
            return False
        bucketer = self.bucketer
        if bucketer is not None:
            if state.synced and ts >= state.bucket_next:
                published = self._book_owners.get(state.symbol) == state.conn
                self._buckets(state, ts, bucketer, out if published else None)
            state.bucket_next = ts - ts % bucketer.interval_us + bucketer.interval_us
            self._end_change(state)
        if self._crossed(state, raw, out):
            return False
        was_synced = state.synced
        state.synced = True
        state.resync_requested = False
        state.last_id = last_id
        self.counters.books_synced.add(state.symbol)
        self._own(state)  # the newest synced book is the symbol's published one
        out.books.append(self._whole_book(state, raw, ts, last_id, checksum))
        if not was_synced:
            self._status(state, "synced", "snapshot", "", raw, out)
        self._bbo(state, ts, raw, out)
        return True

    def accept_update(
        self,
        state: BookSync,
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
        book = state.book
        recv_us = raw.recv_ns // 1000
        if (
            book.bids.invalid is not None
            or book.asks.invalid is not None
            or not recv_us - self._behind_us <= ts <= recv_us + self._ahead_us
        ) and self._refuse(state, raw, out, ts):
            return False
        owner = self._book_owners.get(state.symbol)
        if ts >= state.bucket_next and self.bucketer is not None:
            self._buckets(state, ts, self.bucketer, out if owner == state.conn else None)
        self._end_change(state)
        if self._crossed(state, raw, out):
            return False
        state.last_id = last_id
        if owner != state.conn:
            if owner is not None:
                return True  # another connection's book of the symbol is the published one
            self._own(state)  # the published book went away: this one takes over, whole
            out.books.append(self._whole_book(state, raw, ts, last_id, checksum))
            self._bbo(state, ts, raw, out)
            return True
        out.books.append(
            BookChange(
                exchange=self.exchange,
                symbol=state.symbol,
                exchange_symbol=state.exchange_symbol,
                snapshot=False,
                bids=bids,
                asks=asks,
                ts=ts,
                recv_ts=recv_us,
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
        self, state: BookSync, ok: bool, expected: int, actual: int, raw: RawRecord, out: FeedOutput
    ) -> bool:
        if self._refuse(state, raw, out, None):
            return False
        if ok:
            self.counters.checksums_verified += 1
            return True
        self.unsync(state, "checksum", f"checksum {expected} expected, book gives {actual}", raw, out)
        return False

    def unsync(
        self,
        state: BookSync,
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
        if self._book_owners.get(state.symbol) == state.conn:
            del self._book_owners[state.symbol]
        state.book.clear()
        state.bucket_next = _NEVER
        state.last_bbo = None
        state.last_id = None
        if state.resync_requested:
            return
        state.resync_requested = True
        counters.resyncs += 1
        health.resyncs += 1
        if not self._synced_elsewhere(state, raw.recv_ns):
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

    def _synced_elsewhere(self, state: BookSync, now_ns: int) -> bool:
        """Another live connection (one heard from within ``LIVE_WITHIN_NS``: one that ended
        without a close is not) holds a synced book of the symbol: that one is the symbol's
        current state (the successor of a handover or reconnect), so this connection's loss of
        the book is not news for md.status."""
        for conn in self._connections.values():
            if conn.conn != state.conn and now_ns - conn.last_ns <= LIVE_WITHIN_NS:
                other = conn.books.get(state.exchange_symbol)
                if other is not None and other.synced:
                    return True
        return False

    def _refuse(self, state: BookSync, raw: RawRecord, out: FeedOutput, ts: int | None) -> bool:
        """The book holds a level it refused (``BookSide.invalid``) or the change's timestamp is
        out of the clock window: dead-letter the frame and unsync the book (it misses that
        change). False when neither is the case (the callers inline the cheap check)."""
        book = state.book
        bad = book.bids.invalid or book.asks.invalid
        if bad is not None:
            detail = f"book level price {bad[0]} size {bad[1]}: not a positive finite price with a size >= 0"
            category = "invalid_value"
        elif ts is not None and not (
            raw.recv_ns // 1000 - self._behind_us <= ts <= raw.recv_ns // 1000 + self._ahead_us
        ):
            detail = f"book {self._clock_detail(ts, raw)}"
            category = "ts_out_of_range"
        else:
            return False
        self.reject(raw, f"{self.exchange} {state.exchange_symbol}: {detail}", out, category)
        self.unsync(state, "invalid", detail, raw, out)
        return True

    def skip_unsynced(self, state: BookSync, raw: RawRecord, out: FeedOutput) -> None:
        """An update for a book that is not synced: dropped; if no snapshot ever came, ask for one."""
        self.counters.dropped_unsynced += 1
        if not state.resync_requested:
            self.unsync(state, "gap", "update before any snapshot", raw, out)

    def connection_gap(self, conn: ConnectionState, detail: str, raw: RawRecord, out: FeedOutput) -> None:
        """A gap in a connection-wide sequence: every book of the connection is suspect."""
        self.counters.sequence_gaps += 1
        for state in conn.books.values():
            self.unsync(state, "gap", detail, raw, out, count=False)

    def _own(self, state: BookSync) -> None:
        if self._book_owners.get(state.symbol) != state.conn:
            self._book_owners[state.symbol] = state.conn
            state.last_bbo = None  # the BBO published meanwhile came from another book

    def _whole_book(
        self, state: BookSync, raw: RawRecord, ts: int, last_id: int | None, checksum: int | None
    ) -> BookChange:
        book = state.book
        return BookChange(
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

    def _buckets(self, state: BookSync, ts: int, bucketer: Bucketer, out: FeedOutput | None) -> None:
        """Snapshots at each boundary from ``state.bucket_next`` up to ``ts``, of the book before
        the change now being accepted (so as it stood at those boundaries); ``out`` None: the
        book is not the published one, only the next boundary moves on."""
        step = bucketer.interval_us
        last = ts - ts % step
        first = max(state.bucket_next, last - (MAX_FILLED_BOUNDARIES - 1) * step)
        state.bucket_next = last + step
        if out is None:
            return
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
    def _end_change(state: BookSync) -> None:
        for side in (state.book.bids, state.book.asks):
            if side.journal:
                side.journal.clear()

    def _crossed(self, state: BookSync, raw: RawRecord, out: FeedOutput) -> bool:
        if not state.book.is_crossed():
            return False
        bbo = state.book.bbo()
        self.unsync(state, "crossed", f"best bid/ask {bbo[0]}/{bbo[2]}" if bbo else "crossed", raw, out)
        return True

    def _bbo(self, state: BookSync, ts: int, raw: RawRecord, out: FeedOutput) -> None:
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
        state: BookSync,
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
