"""Book sync by bridging buffered deltas to a snapshot, the rule Binance, KuCoin, Gate.io, MEXC
and HTX share (each names the ids differently).

A delta covers the update ids ``first_id..last_id``. Until a snapshot with id ``S`` arrives, the
deltas of a book are buffered (bounded). On the snapshot, buffered deltas with ``last_id <= S``
are dropped and the first remaining one must straddle ``S + 1``. After that each delta must
start at the previous ``last_id + 1`` (``strict_chain``), or, by Binance's documented rule, at
least not skip past it. A delta that skips ahead is a gap: the book is unsynced, a fresh snapshot
is requested, and the delta stays buffered so the next snapshot can bridge to it. A snapshot
older than the buffered deltas cannot bridge either, so another one is requested.
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar, NamedTuple

from marketpipe.raw import RawRecord
from marketpipe.records import Level
from streams.book_sync import BookSync
from streams.feed import ConnectionState, FeedOutput, FeedProcessor


class Delta(NamedTuple):
    first_id: int
    last_id: int
    bids: list[Level]
    asks: list[Level]
    ts: int
    raw: RawRecord
    changes: Any = None
    """the exchange's own change rows, for ``trim_straddling`` (KuCoin numbers every change)"""
    prev_id: int | None = None
    """the last id of the delta before it, where the exchange sends it (Binance futures ``pu``)"""


class SnapshotBridgeProcessor(FeedProcessor):
    """A processor whose books sync by bridging deltas to REST (or requested) snapshots."""

    strict_chain: ClassVar[bool] = True
    """deltas after the first must start exactly at the previous ``last_id + 1``"""
    max_buffered_deltas: ClassVar[int] = 2000
    """deltas kept per book while waiting for a snapshot (10 s of 100 ms deltas is 100)"""
    id_name: ClassVar[str] = "update id"
    """what the exchange calls the ids, for status details"""

    def on_delta(self, conn: ConnectionState, exchange_symbol: str, delta: Delta, out: FeedOutput) -> None:
        self.counters.book_messages += 1
        state = self.book_state(conn, exchange_symbol)
        if state.synced:
            self._apply(state, delta, out)
        else:
            self._buffer(state, delta)

    def breaks_chain(self, delta: Delta, local_id: int, bridging: bool) -> bool:
        """The delta does not connect to a book at ``local_id``: right after a snapshot it must
        straddle ``local_id + 1``, then start at ``local_id + 1`` (``strict_chain``) or at
        least not skip past it. A venue with another rule (Binance futures ``pu``) overrides it."""
        first = delta.first_id
        return first > local_id + 1 or (self.strict_chain and not bridging and first != local_id + 1)

    def trim_straddling(self, delta: Delta, snapshot_id: int) -> Delta:
        """The part of a delta straddling the snapshot that is newer than it. Applying all of it is
        right where a delta's levels are the state at its end (Binance, Gate.io, MEXC, HTX)."""
        return delta

    def bridge(
        self,
        conn: ConnectionState,
        exchange_symbol: str,
        raw: RawRecord,
        snapshot_id: int,
        bids: list[Level],
        asks: list[Level],
        out: FeedOutput,
        ts: int | None = None,
    ) -> None:
        """A snapshot with id ``snapshot_id``: load it and apply the buffered deltas after it."""
        self.counters.book_messages += 1
        state = self.book_state(conn, exchange_symbol)
        if state.synced and state.last_id is not None and snapshot_id <= state.last_id:
            self.counters.stale_updates += 1  # the live book is already newer than this snapshot
            return
        pending: deque[Delta] = state.pending if state.pending is not None else deque()
        while pending and pending[0].last_id <= snapshot_id:
            pending.popleft()
        if pending and self.breaks_chain(pending[0], snapshot_id, bridging=True):
            first = pending[0].first_id
            detail = f"snapshot {self.id_name} {snapshot_id} is older than the buffered delta from {first}"
            state.resync_requested = False  # the answer to our request came too early: ask again
            self.unsync(state, "gap", detail, raw, out)
            return
        state.book.bids.load((level.price, level.size) for level in bids)
        state.book.asks.load((level.price, level.size) for level in asks)
        at = raw.recv_ns // 1000 if ts is None else ts
        if not self.accept_snapshot(state, raw, out, at, last_id=snapshot_id):
            return
        state.bridging = True
        while pending and state.synced:
            self._apply(state, pending.popleft(), out)

    def _buffer(self, state: BookSync, delta: Delta) -> None:
        pending = state.pending
        if pending is None:
            pending = state.pending = deque(maxlen=self.max_buffered_deltas)
        pending.append(delta)

    def _apply(self, state: BookSync, delta: Delta, out: FeedOutput) -> None:
        local_id = state.last_id
        assert local_id is not None
        if delta.last_id <= local_id:
            self.counters.stale_updates += 1
            return
        first = delta.first_id
        if self.breaks_chain(delta, local_id, state.bridging):
            detail = f"delta from {self.id_name} {first} does not follow {local_id}"
            self.unsync(state, "gap", detail, delta.raw, out)
            self._buffer(state, delta)  # newer than what was missed: the next snapshot may bridge to it
            return
        if state.bridging and first <= local_id:
            delta = self.trim_straddling(delta, local_id)
        state.bridging = False
        book = state.book
        book.bids.apply(delta.bids)
        book.asks.apply(delta.asks)
        if state.depth is not None:  # a fixed-depth channel (HTX mbp.150): levels beyond it are gone
            book.bids.truncate(state.depth)
            book.asks.truncate(state.depth)
        self.accept_update(
            state, delta.raw, out, delta.ts, delta.bids, delta.asks, first_id=first, last_id=delta.last_id
        )
