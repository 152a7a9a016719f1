"""The stream runtime: a thin transactional consume-transform-produce loop over confluent-kafka.

One ``TransactionalLoop`` runs one ``Stage`` (normalise, ohlcv, consolidate) in its own
consumer group. Each round:

1. take what has arrived, up to ``batch_size``, as soon as there is anything: no waiting for a
   batch to fill, so a batch is what came in while the previous round ran (rebalance
   callbacks run only here, so never inside a transaction);
2. hand each input partition's messages, in order, to the stage with that partition's
   state object; its outputs are collected in memory;
3. wait for the previous round's commit (it ran on the committer thread while 1 and 2 ran
   here) and begin a transaction; while a backlog drains (a full batch) and that commit still
   runs, the round's work is carried instead: the next round is read and processed, and both
   go into the next transaction (``_carry``, up to ``CARRY_BATCHES`` batches);
4. when a checkpoint is due, pickle the state of every partition changed since its last
   checkpoint;
5. on the committer thread: ``send_offsets_to_transaction`` (KIP-447: fenced by the group
   generation) with, in each partition's offset metadata, a pointer to its latest checkpoint
   record; queue every output to librdkafka; commit. In a round with checkpoints, the
   outputs and the states (to the compacted checkpoint topic, inside the same transaction)
   are written first, because the offsets carry the checkpoints' pointers.

The offsets go first for latency: right after a commit, the coordinator is still writing
that transaction's markers and refuses the next transaction's first request as
CONCURRENT_TRANSACTIONS. librdkafka retries AddOffsetsToTxn after ``retry.backoff.ms``
(2 ms here) but AddPartitionsToTxn (sent with the first output) after a fixed 20 ms, which
was a third of the receive-to-visible latency at 5,000 frames/s.

Outputs, input offsets and checkpoints are therefore committed atomically; downstream
consumers read with ``isolation.level=read_committed``. Only one transaction is open at a
time: round N+1 is consumed and processed while round N commits, but its outputs reach the
producer only once that commit succeeded. If it failed, every assigned partition is restored
from its last commit (below) and round N+1's messages are read again; rebalance callbacks
wait for a running commit before they hand partitions over or take new ones. Carried work
that a revoke reaches is dropped the same way (it cannot be committed without the revoked
partitions' offsets): every partition goes back to its last commit.

Outputs are produced without a delivery callback: a transactional producer fails the
commit (abortable) when any of the transaction's messages could not be delivered.

Restoring a partition (on assignment, or after an aborted transaction): the committed
offset ``C`` carries the pointer to the checkpoint, which holds the state as of offset
``S <= C``. The state is unpickled, the consumer seeks to ``S`` and messages ``S..C-1`` are
processed again with their outputs discarded (they were committed already), then processing
goes on live from ``C``. Stages are pure functions of their input, so the rebuilt state is
the one a never-interrupted worker would hold. Without a pointer (first run) the stage gets
a fresh state at the committed offset.

At its first assignment, before restoring, a loop aborts one transaction that touched every
partition its stage writes and its group's offsets (``_abort_leftovers``): that decides, all
the same way, whatever an earlier producer of its transactional id left open without markers.

Failure policy: retriable errors are retried; an abortable one aborts the transaction and
restores every assigned partition from its last commit (nothing of the aborted round
survives); anything else raises ``StageFailed`` (``Fenced`` when another process took the
transactional id), and the worker (streams/worker.py) starts the loop again with fresh
clients, which restores the same way. A loop that holds partitions with unread records and
makes no progress for ``stall_timeout_s`` raises ``StageFailed`` too. Every blocking client
call runs through ``_call``: one still running ``CALL_GRACE_S`` past its own timeout
(``stuck_call``) is stuck in librdkafka, and the worker's watchdog ends the process.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import zstandard
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from marketpipe.config import Settings
from marketpipe.logs import log_event
from marketpipe.topics import Topology

log = logging.getLogger(__name__)

S = TypeVar("S")
T = TypeVar("T")
Emit = Callable[[str, bytes, bytes], None]
TP = tuple[str, int]
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024
_POINTER_PREFIX = "cp1:"
CARRY_BATCHES = 4
"""at most this many batches are processed while one commit runs (``_carry``)"""
RETRY_FOR_S = 120.0
"""how long retriable transaction errors (a broker restart) are retried before the worker gives up"""
CALL_TIMEOUT_S = 10.0
"""the timeout given to each transactional call (a retriable timeout is retried, see ``RETRY_FOR_S``)"""
CALL_GRACE_S = 5.0
"""a client call still running this long after its own timeout is stuck for good (the worker's
watchdog then exits for a restart): librdkafka 2.16's ``send_offsets_to_transaction`` ignores its
timeout and, when a broker restart made it drop the group coordinator, waits for that coordinator
forever (confluentinc/librdkafka#5456, #5511; fixes proposed in #5457, #5512)"""


BACKLOG_FETCH = {
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 16 * 1024 * 1024,
    "queued.max.messages.kbytes": 256 * 1024,
}
"""consumer settings that keep a full batch fetched ahead while a backlog drains"""


class Stage(Protocol[S]):
    """What a loop runs. ``process`` must be a pure function of (state, messages)."""

    name: str
    group: str

    @property
    def topics(self) -> Sequence[str]: ...

    @property
    def outputs(self) -> Sequence[str]:
        """Every topic the stage may write (besides the checkpoint topic)."""
        ...

    def new_state(self, topic: str, partition: int) -> S: ...

    def process(self, state: S, messages: Sequence[Message], emit: Emit | None) -> None:
        """Apply one partition's messages in order; ``emit`` is None while replaying (discard)."""
        ...

    def flush(self, state: S, emit: Emit) -> None:
        """End of input (``marketpipe run --exit-on-drain``): publish what waits for more input."""
        ...


class StageFailed(RuntimeError):
    """The loop cannot go on with its clients: nothing uncommitted survives; start it again with
    fresh ones (it restores from the last commit)."""


class Fenced(StageFailed):
    """Another process took this worker's transactional id: starting again would fence it back."""


_FENCING_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


class Checkpoint(msgspec.Struct, array_like=True):
    stage: str
    topic: str
    partition: int
    offset: int
    """the state is as of this input offset (the next one to process)"""
    state: bytes
    """zstd(pickle(state))"""


@dataclass
class PartitionState(Generic[S]):
    state: S
    replay_until: int = -1
    """messages below this offset were committed already: rebuild state, emit nothing"""
    pointer: str = ""
    """offset metadata: where the latest checkpoint of this partition is"""
    dirty: bool = False
    """processed since the last checkpoint"""
    position: int = -1
    """the consumer's position: next offset to read, past transaction markers (-1: not known yet)"""
    committed: int = -1
    """the offset committed for this partition (never moved backwards)"""


@dataclass
class _Snapshot:
    """A partition's state, pickled on the loop's thread for the committer to write."""

    tp: TP
    part: PartitionState[Any]
    offset: int
    """the state is as of this input offset"""
    state: bytes


@dataclass
class _Commit:
    """A transaction handed to the committer thread."""

    future: Future[None]
    flush: bool
    """it carried the end-of-input flush (counted once it is committed)"""


@dataclass
class LoopStats:
    """Running totals read by the metrics collector (another thread: plain ints only)."""

    received: dict[str, int] = field(default_factory=dict)
    transactions: int = 0
    aborts: int = 0
    checkpoints: int = 0
    checkpoint_bytes: int = 0
    restores: int = 0
    replayed: int = 0
    restore_failures: int = 0
    stalls: int = 0
    restarts: int = 0
    flushes: int = 0
    lag: dict[TP, int] = field(default_factory=dict)


class TransactionalLoop(Generic[S]):
    def __init__(self, stage: Stage[S], settings: Settings, worker_id: str) -> None:
        self.stage = stage
        self.settings = settings
        streams = settings.streams
        self.batch_size = streams.batch_size
        self.poll_s = streams.poll_interval_ms / 1000
        self.commit_every_s = streams.commit_interval_ms / 1000
        self.commit_min_records = streams.commit_min_records
        self.commit_max_wait_s = streams.commit_max_interval_ms / 1000
        self._began_at = 0.0
        """monotonic time the last transaction began"""
        self.checkpoint_every_s = streams.checkpoint_interval_s
        self.stall_timeout_s = streams.stall_timeout_s
        self.checkpoint_topic = Topology.from_settings(settings).checkpoints
        self.stats = LoopStats()
        self.partitions: dict[TP, PartitionState[S]] = {}
        self.flush_requested = threading.Event()
        self.stopping = threading.Event()
        self._compress = zstandard.ZstdCompressor(level=1)
        self._decompress = zstandard.ZstdDecompressor()
        self._last_checkpoint = time.monotonic()
        self._last_progress = time.monotonic()
        self._last_lag_check = 0.0
        self.heartbeat = time.monotonic()
        """when the loop last came back from the broker (a watchdog on another thread reads it)"""
        self._calls: dict[int, tuple[str, float]] = {}
        """blocking client calls under way, by thread: what, and when it is past its timeout and
        grace (the watchdog reads it)"""
        self._delivered: dict[bytes, tuple[int, int]] = {}
        self._failures: list[str] = []
        self._outputs: list[tuple[str, bytes, bytes]] = []
        """the current round's outputs, produced once its transaction begins"""
        self._carried = 0
        """records processed since the last transaction began (``_carry``)"""
        self._carry_lost = False
        """partitions were revoked while the carried work held outputs of theirs"""
        self._committer = ThreadPoolExecutor(1, thread_name_prefix=f"commit-{stage.name}")
        self._pending: _Commit | None = None
        """the previous round's transaction, committing on the committer thread"""
        self._commit_failure: KafkaException | None = None
        """a commit failure a rebalance callback found (handled once ``consume`` returns)"""
        self._assigned: set[tuple[str | None, int | None]] = set()
        """partitions assigned since ``_next_batch`` read its first record"""
        client = settings.kafka_client_config()
        self.consumer = Consumer(
            {
                **client,
                "group.id": stage.group,
                # static membership: a restarted worker takes its partitions back at once,
                # without a rebalance (a worker gone for good loses them after the session timeout)
                "group.instance.id": f"{stage.name}-{worker_id}",
                "client.id": f"{stage.group}-{worker_id}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": int(streams.session_timeout_s * 1000),
                "heartbeat.interval.ms": max(1000, int(streams.session_timeout_s * 1000) // 5),
                **BACKLOG_FETCH,
            }
        )
        compression = settings.kafka.compression
        self.producer = Producer(
            {
                **client,
                # zstd's level 1 costs a third less CPU per output than its default level 3
                **({"compression.level": 1} if compression == "zstd" else {}),
                "transactional.id": f"{stage.group}-{worker_id}",
                "transaction.timeout.ms": int(streams.transaction_timeout_s * 1000),
                # undeliverable outputs fail the transaction in time, rather than blocking its commit
                "message.timeout.ms": int(streams.transaction_timeout_s * 1000),
                "client.id": f"{stage.group}-{worker_id}",
                "compression.type": compression,
                "linger.ms": 5,
                # a transaction begun right after the previous commit finds the coordinator still
                # writing that one's markers (CONCURRENT_TRANSACTIONS, retriable): retry within
                # milliseconds, not after the default 100 ms
                "retry.backoff.ms": 2,
                "retry.backoff.max.ms": 10,
                "message.max.bytes": MAX_CHECKPOINT_BYTES + 1024 * 1024,
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 2 * 1024 * 1024,
                "partitioner": "murmur2_random",
            }
        )
        self._checkpoint_partitions = 0
        self._swept = False
        """the start-up abort (``_abort_leftovers``) is done"""

    # ------------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Process until ``stopping`` is set. Raises StageFailed when output could be lost."""
        try:
            self._call("init transactions", 60, self.producer.init_transactions)
        except KafkaException as exc:
            raise StageFailed(f"{self.stage.name}: cannot start transactions: {exc.args[0].str()}") from None
        self._checkpoint_partitions = self._partition_count(self.checkpoint_topic)
        self.consumer.subscribe(
            list(self.stage.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        try:
            while not self.stopping.is_set():
                messages = self._next_batch()
                self.heartbeat = time.monotonic()
                self._round(messages)
            self._await_commit()
        finally:
            self._close()

    def _abort_leftovers(self, partitions: list[TopicPartition], group: object) -> None:
        """Abort, on every partition the stage writes and on its group's offsets, whatever an
        earlier producer of this transactional id may have left there without a marker (once,
        at the first assignment: its offsets need the group's generation, and nothing of this
        loop is committed before it).

        ``init_transactions`` ends the transaction the coordinator knows of. But a broker shut
        down (controlled) while it completed a transaction can record it complete and skip the
        markers of partitions it had just stopped leading (KAFKA-20734: "Couldn't find leader
        endpoint ... these partitions are likely deleted already and hence can be skipped").
        That transaction's outputs and its pending offsets then stay open, and the next marker
        of this producer id on each partition decides them, each on its own: an abort reaching
        only the offsets partition and a later commit reaching the outputs published them
        twice. One transaction touching all of them, aborted, decides them together; nobody
        could read them (they sat above the last stable offset), and their input is processed
        again.
        """
        self._swept = True
        self.producer.begin_transaction()
        topics = self._call(
            "list topics", 30, lambda timeout: self.producer.list_topics(timeout=timeout)
        ).topics
        for topic in {*self.stage.outputs, self.checkpoint_topic}:
            if topic not in topics:
                raise StageFailed(f"topic {topic} does not exist (run `marketpipe topics apply`)")
            for partition in topics[topic].partitions:
                self.producer.produce(topic, b"", b"abort", partition=partition)
        # an abort purges what was not sent: those partitions would get no marker
        if self._call("flush", 30, self.producer.flush):
            raise StageFailed(f"{self.stage.name}: the start-up abort's records were not sent within 30 s")
        offsets = [TopicPartition(partitions[0].topic, partitions[0].partition, 0)]
        try:  # registers the group's offsets partition first: even refused, they are in the abort
            self._retrying(
                "send offsets",
                lambda timeout: self.producer.send_offsets_to_transaction(offsets, group, timeout),
            )
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal():
                raise StageFailed(f"{self.stage.name}: start-up abort failed: {error.str()}") from None
        self._retrying("abort", self.producer.abort_transaction)

    def _close(self) -> None:
        if self._pending is not None:  # failing: let a running commit end before the clients go
            self._pending.future.exception()
            self._pending = None
        self._committer.shutdown()
        try:
            # a static member stays in the group: restarted with the same worker id it gets its
            # partitions back at once; gone for good, they move after the session timeout
            # close takes no timeout: this one is only the watchdog's
            self._call("close the consumer", CALL_TIMEOUT_S, lambda _: self.consumer.close())
        except KafkaException as exc:
            log_event(log, logging.WARNING, "closing the consumer failed", stage=self.stage.name, error=exc)

    # --------------------------------------------------------------------------- a round

    def _next_batch(self) -> list[Message]:
        """What has arrived, up to ``batch_size``, as soon as there is anything (at most
        ``poll_s`` for the first record). A batch does not wait to fill: records that come
        in while a round commits make the next round, so the batch grows with the load and
        the latency stays at about one commit (``consume`` would wait out its timeout
        whenever fewer than ``batch_size`` records arrive in it). It gathers until
        ``commit_interval_ms`` after the previous transaction began, and while it holds fewer
        than ``commit_min_records``, until ``commit_max_interval_ms`` after: as a producer
        lingers to fill a batch, so that at low rates a transaction carries more than a few
        records (its markers and requests cost the broker the same either way)."""
        first = self.consumer.poll(self.poll_s)
        if first is None or self.batch_size == 1:
            return [first] if first is not None else []
        self._assigned.clear()  # assigned during the poll: `first` comes after that
        batch = self._still_current([first], self.consumer.consume(self.batch_size - 1, 0))
        for until, enough in (
            (self._began_at + self.commit_every_s, self.batch_size),
            (self._began_at + self.commit_max_wait_s, min(self.commit_min_records, self.batch_size)),
        ):
            gather = until - time.monotonic()
            if gather > 0 and len(batch) < enough:
                batch = self._still_current(batch, self.consumer.consume(enough - len(batch), gather))
        return batch

    def _still_current(self, earlier: list[Message], consumed: list[Message]) -> list[Message]:
        """``earlier`` + what one ``consume`` call returned, without the earlier records of a
        partition that call revoked and assigned again: restored and repositioned at or before
        them, they are read again from there (a call's own records are already repositioned)."""
        assigned, self._assigned = self._assigned, set()
        if assigned:
            earlier = [m for m in earlier if (m.topic(), m.partition()) not in assigned]
        return [*earlier, *consumed]

    def _round(self, messages: list[Message]) -> None:
        batches = self._by_partition(messages)
        if self._commit_failure is not None:
            # found while rebalancing: restored and repositioned, what this round read comes again
            failure, self._commit_failure = self._commit_failure, None
            self._transaction_failed(failure)
            return
        if self._carry_lost:
            # revoked while carried work held outputs of theirs: that work cannot be committed
            # without them, so every partition goes back to its last commit
            log_event(log, logging.INFO, "carried work dropped on a revoke", stage=self.stage.name)
            self._rewind()
            return
        moved = self._positions()
        if batches:
            self._refresh_lag()
        flush = self.flush_requested.is_set()
        checkpoint = self._checkpoint_due()
        if not batches and not moved and not flush and not checkpoint:
            if self._await_commit():
                self._watch_progress()
            return
        self.flush_requested.clear()  # asked again should this round's transaction fail
        outputs = self._outputs
        try:
            for tp, batch in batches.items():
                self._process(tp, batch)
            self._carried += len(messages)
            if flush:
                for part in self.partitions.values():
                    self.stage.flush(part.state, self._emit)
                    part.dirty = True
            elif self._carry(len(messages)):
                return
            if not self._await_commit():
                if flush:
                    self.flush_requested.set()
                return  # restored from the last commit: this round's input is read again
            self.producer.begin_transaction()
            self._began_at = time.monotonic()
            # a partition's first commit carries its first checkpoint: committed input is never
            # without the state built from it
            first = [tp for tp in moved if not self.partitions[tp].pointer]
            snapshots: list[_Snapshot] = []
            if checkpoint or flush or first:
                snapshots = self._snapshots(everything=checkpoint or flush, also=first)
                moved = sorted({*moved, *(snapshot.tp for snapshot in snapshots)})
            self._outputs, self._carried = [], 0  # handed over to the committer thread
            self._commit(moved, flush, snapshots, outputs)
        except KafkaException as exc:
            if flush:
                self.flush_requested.set()
            self._transaction_failed(exc)

    def _carry(self, consumed: int) -> bool:
        """Whether this round's work waits for the next transaction instead of for the previous
        commit: while a backlog drains (full batches) the loop goes on processing, up to
        ``CARRY_BATCHES`` batches, rather than idle until the committer is done."""
        pending = self._pending
        return (
            pending is not None
            and not pending.future.done()
            and consumed >= self.batch_size
            and self._carried < CARRY_BATCHES * self.batch_size
        )

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_check >= 1.0:
            self._last_lag_check = now
            self._update_lag()

    def _positions(self) -> list[TP]:
        """Update every partition's position; the ones that moved past their committed offset.

        The position (not the last offset + 1) is committed: a read-committed consumer's
        position also steps over the transaction markers that follow the last record, so a
        drained partition is committed up to its end.
        """
        if not self.partitions:
            return []
        moved: list[TP] = []
        for tp in self.consumer.position([TopicPartition(*key) for key in self.partitions]):
            part = self.partitions.get((tp.topic, tp.partition))
            if part is None or tp.offset < 0:
                continue
            part.position = tp.offset
            if tp.offset > part.committed:
                moved.append((tp.topic, tp.partition))
        return moved

    def _by_partition(self, messages: list[Message]) -> dict[TP, list[Message]]:
        batches: dict[TP, list[Message]] = {}
        received = self.stats.received
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise StageFailed(f"{self.stage.name}: consumer failed: {error.str()}")
                log_event(log, logging.WARNING, "consumer error", stage=self.stage.name, error=error.str())
                continue
            tp: TP = (message.topic() or "", message.partition() or 0)
            found = batches.get(tp)
            if found is None:
                found = batches[tp] = []
                received.setdefault(tp[0], 0)
            found.append(message)
        for tp, batch in batches.items():
            received[tp[0]] += len(batch)
        return batches

    def _process(self, tp: TP, batch: list[Message]) -> None:
        part = self.partitions.get(tp)
        if part is None:  # revoked meanwhile (messages fetched before the revoke)
            return
        if part.replay_until > (batch[0].offset() or 0):
            replay = [m for m in batch if (m.offset() or 0) < part.replay_until]
            self.stage.process(part.state, replay, None)
            self.stats.replayed += len(replay)
            batch = batch[len(replay) :]
        if batch:
            self.stage.process(part.state, batch, self._emit)
        part.dirty = True

    def _emit(self, topic: str, key: bytes, value: bytes) -> None:
        self._outputs.append((topic, key, value))

    def _produce(self, outputs: list[tuple[str, bytes, bytes]]) -> None:
        """Queue the round's outputs (no delivery callback: a failed one fails the commit)."""
        produce, done = self.producer.produce, 0
        while True:
            try:
                for topic, key, value in outputs[done:] if done else outputs:
                    produce(topic, value, key)
                    done += 1
                return
            except BufferError:  # librdkafka's queue is full: let it send
                self.producer.poll(0.05)

    def _commit(
        self,
        moved: list[TP],
        flush: bool,
        snapshots: list[_Snapshot],
        outputs: list[tuple[str, bytes, bytes]],
    ) -> None:
        """On the committer thread (``_await_commit`` collects the result): the offsets of the
        partitions that moved, with their checkpoint pointers, the outputs and the checkpoints,
        then commit."""
        parts = self.partitions
        committing: list[tuple[TP, PartitionState[S]]] = []
        for tp in moved:
            part = parts[tp]
            # counted as committed now; should the commit fail, every partition is restored
            part.committed = max(part.position, part.committed)
            committing.append((tp, part))
        group = self.consumer.consumer_group_metadata() if committing else None
        future = self._committer.submit(self._send_and_commit, outputs, snapshots, committing, group)
        self._pending = _Commit(future, flush)

    def _send_and_commit(
        self,
        outputs: list[tuple[str, bytes, bytes]],
        snapshots: list[_Snapshot],
        committing: list[tuple[TP, PartitionState[S]]],
        group: object,
    ) -> None:
        if snapshots:  # the offsets carry the new checkpoints' pointers
            self._produce(outputs)
            self._write_checkpoints(snapshots)
            self._send_offsets(committing, group)
        else:  # offsets first, see the module docstring
            self._send_offsets(committing, group)
            self._produce(outputs)
        self._retrying("commit", self.producer.commit_transaction)

    def _send_offsets(self, committing: list[tuple[TP, PartitionState[S]]], group: object) -> None:
        offsets = [TopicPartition(*tp, part.committed, metadata=part.pointer) for tp, part in committing]
        if offsets:
            self._retrying(
                "send offsets",
                lambda timeout: self.producer.send_offsets_to_transaction(offsets, group, timeout),
            )

    def _await_commit(self) -> bool:
        """Wait for the previous round's commit. False when it failed with an abortable error
        (aborted, every assigned partition restored and repositioned); raises otherwise."""
        pending, self._pending = self._pending, None
        if pending is None:
            return True
        try:
            pending.future.result()
        except KafkaException as exc:
            if pending.flush:
                self.flush_requested.set()
            self._transaction_failed(exc)
            return False
        self.stats.transactions += 1
        if pending.flush:
            self.stats.flushes += 1
        self._last_progress = time.monotonic()
        return True

    def _retrying(self, what: str, call: Callable[[float], object]) -> None:
        """Retry a transactional call (given ``CALL_TIMEOUT_S``) while its error is retriable (a
        broker restart, a coordinator moving) for up to ``RETRY_FOR_S``; abortable and fatal
        errors go to the caller."""
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                self._call(what, CALL_TIMEOUT_S, call)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() or error.txn_requires_abort() or error.fatal():
                    raise
                if time.monotonic() > deadline:
                    raise StageFailed(
                        f"{self.stage.name}: {what} still failing after {RETRY_FOR_S} s: {error.str()}"
                    ) from None
                log_event(
                    log,
                    logging.WARNING,
                    "kafka call retried",
                    stage=self.stage.name,
                    call=what,
                    error=error.str(),
                )
                time.sleep(0.5)

    def _call(self, what: str, timeout_s: float, call: Callable[[float], T]) -> T:
        """``call(timeout_s)``, a blocking client call, where the watchdog sees it should it
        outlive its timeout (``stuck_call``)."""
        thread = threading.get_ident()
        self._calls[thread] = (what, time.monotonic() + timeout_s + CALL_GRACE_S)
        try:
            return call(timeout_s)
        finally:
            del self._calls[thread]

    def stuck_call(self, now: float) -> str | None:
        """A client call of this loop still running ``CALL_GRACE_S`` after its own timeout
        (librdkafka is stuck in it: only new clients, a new process, get past it)."""
        for what, stuck_after in list(self._calls.values()):
            if now > stuck_after:
                return what
        return None

    def _transaction_failed(self, exc: KafkaException) -> None:
        error: KafkaError = exc.args[0]
        if error.code() in _FENCING_CODES:
            raise Fenced(
                f"{self.stage.name}: fenced ({error.str()}): another worker runs with the same worker id"
            ) from None
        if error.fatal() or not error.txn_requires_abort():
            raise StageFailed(f"{self.stage.name}: transaction failed: {error.str()}") from None
        log_event(
            log,
            logging.WARNING,
            "transaction aborted, restoring from the last commit",
            stage=self.stage.name,
            error=error.str(),
        )
        self._retrying("abort", self.producer.abort_transaction)
        self._failures.clear()
        self.stats.aborts += 1
        self._rewind()

    def _rewind(self) -> None:
        """Drop what is not committed: every assigned partition restored from its last commit
        and repositioned there."""
        self._outputs.clear()
        self._carried, self._carry_lost = 0, False
        assigned = [TopicPartition(topic, partition) for topic, partition in self.partitions]
        for tp in self._restore(assigned):
            self.consumer.seek(tp)

    # ----------------------------------------------------------------------- checkpoints

    def _checkpoint_due(self) -> bool:
        return time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s

    def _snapshots(self, everything: bool, also: Sequence[TP] = ()) -> list[_Snapshot]:
        """The state of the partitions processed since their last checkpoint (``everything``) or
        of just those in ``also``, pickled now (the committer thread writes them)."""
        if everything:
            self._last_checkpoint = time.monotonic()
        chosen = self.partitions.keys() if everything else also
        snapshots: list[_Snapshot] = []
        for tp in chosen:
            part = self.partitions[tp]
            if not part.dirty or part.position < 0:
                continue
            state = pickle.dumps(part.state, protocol=pickle.HIGHEST_PROTOCOL)
            snapshots.append(_Snapshot(tp, part, part.position, state))
            part.dirty = False  # should the commit fail, every partition is restored anyway
        return snapshots

    def _write_checkpoints(self, snapshots: list[_Snapshot]) -> None:
        """Write the checkpoints into the open transaction; each partition's pointer names its
        record (the commit carries it in the offset metadata)."""
        written: list[tuple[_Snapshot, bytes]] = []
        for snapshot in snapshots:
            tp = snapshot.tp
            blob = self._compress.compress(snapshot.state)
            value = msgspec.msgpack.encode(Checkpoint(self.stage.name, tp[0], tp[1], snapshot.offset, blob))
            if len(value) > MAX_CHECKPOINT_BYTES:
                raise StageFailed(f"{self.stage.name}: state of {tp} is {len(value)} bytes, over the limit")
            key = checkpoint_key(self.stage.name, *tp)
            partition = zlib.crc32(key) % self._checkpoint_partitions
            self.producer.produce(
                self.checkpoint_topic, value, key, partition=partition, on_delivery=self._on_checkpoint
            )
            written.append((snapshot, key))
            self.stats.checkpoint_bytes += len(value)
        if self._call("flush", 60, self.producer.flush):
            raise StageFailed(f"{self.stage.name}: checkpoints not delivered within 60 s")
        for snapshot, key in written:
            where = self._delivered.pop(key, None)
            if where is None:
                raise StageFailed(
                    f"{self.stage.name}: checkpoint of {snapshot.tp} failed: {self._failures[:1]}"
                )
            snapshot.part.pointer = f"{_POINTER_PREFIX}{where[0]}:{where[1]}"
            self.stats.checkpoints += 1

    def _on_checkpoint(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"checkpoint: {error.str()}")
            return
        key = message.key()
        assert key is not None
        self._delivered[key] = (message.partition() or 0, message.offset() or 0)

    # -------------------------------------------------------------------------- rebalance

    def _settle_commit(self) -> None:
        """In a rebalance callback: the running commit ends before partitions change hands; a
        failure is handled once ``consume`` returns (restoring here would race the rebalance)."""
        pending = self._pending
        if pending is None:
            return
        try:
            pending.future.result()
        except KafkaException as exc:
            self._pending = None
            self._commit_failure = exc
            if pending.flush:
                self.flush_requested.set()
            return
        self._await_commit()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle_commit()
        if partitions and not self._swept:
            # on the committer thread: a client's blocking call inside another's callback
            # trips confluent-kafka's per-thread call state (the process aborts)
            group = consumer.consumer_group_metadata()
            self._committer.submit(self._abort_leftovers, partitions, group).result()
        restored = self._restore(partitions)
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)
        consumer.incremental_assign(restored)
        log_event(log, logging.INFO, "assigned", stage=self.stage.name, partitions=_names(restored))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle_commit()
        if partitions and self._carried:
            self._carry_lost = True
        for tp in partitions:
            self.partitions.pop((tp.topic, tp.partition), None)
        consumer.incremental_unassign(partitions)
        log_event(log, logging.INFO, "revoked", stage=self.stage.name, partitions=_names(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log_event(
            log,
            logging.WARNING,
            "partitions lost (session timed out)",
            stage=self.stage.name,
            partitions=_names(partitions),
        )
        self._on_revoke(consumer, partitions)

    def _restore(self, partitions: Iterable[TopicPartition]) -> list[TopicPartition]:
        """Each partition's state from its checkpoint; returns where to resume reading."""
        partitions = list(partitions)
        if not partitions:
            return []
        committed = self._committed(partitions)
        resume: list[TopicPartition] = []
        for tp in committed:
            key = (tp.topic, tp.partition)
            offset = tp.offset if tp.offset >= 0 else -1
            checkpoint = self._read_checkpoint(tp.metadata or "", key)
            if checkpoint is None:
                state = self.stage.new_state(*key)
                part: PartitionState[S] = PartitionState(state, position=offset, committed=offset)
                start = offset if offset >= 0 else OFFSET_BEGINNING
            else:
                state = pickle.loads(self._decompress.decompress(checkpoint.state))
                pointer = tp.metadata or ""
                start = checkpoint.offset
                part = PartitionState(state, offset, pointer, position=start, committed=offset)
                self.stats.restores += 1
            self.partitions[key] = part
            resume.append(TopicPartition(tp.topic, tp.partition, start))
        return resume

    def _committed(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        for attempt in range(60):
            try:
                return self._call(
                    "read committed offsets",
                    30,
                    lambda timeout: self.consumer.committed(partitions, timeout=timeout),
                )
            except KafkaException as exc:
                # UNSTABLE_OFFSET_COMMIT: a previous owner's transaction is still pending
                log_event(
                    log,
                    logging.WARNING,
                    "committed offsets not readable yet",
                    stage=self.stage.name,
                    error=exc,
                )
                time.sleep(min(1.0, 0.1 * (attempt + 1)))
        raise StageFailed(f"{self.stage.name}: committed offsets unreadable for a minute")

    def _read_checkpoint(self, pointer: str, key: TP) -> Checkpoint | None:
        if not pointer.startswith(_POINTER_PREFIX):
            return None
        partition, offset = (int(x) for x in pointer[len(_POINTER_PREFIX) :].split(":"))
        reader = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": f"{self.stage.group}-restore",
                "enable.auto.commit": False,
                # the record gone (deleted, compacted): read the oldest one, see it is not ours at once
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "fetch.max.bytes": MAX_CHECKPOINT_BYTES + 1024 * 1024,
                "max.partition.fetch.bytes": MAX_CHECKPOINT_BYTES + 1024 * 1024,
            }
        )
        try:
            reader.assign([TopicPartition(self.checkpoint_topic, partition, offset)])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                message = reader.poll(1.0)
                if message is None or message.error() is not None:
                    continue
                if message.offset() != offset:
                    break  # compacted away (should not happen: it is the newest of its key)
                found = msgspec.msgpack.decode(message.value() or b"", type=Checkpoint)
                if (found.topic, found.partition) != key or found.stage != self.stage.name:
                    break
                return found
        except (KafkaException, msgspec.DecodeError) as exc:
            log_event(
                log,
                logging.ERROR,
                "checkpoint unreadable",
                stage=self.stage.name,
                checkpoint=pointer,
                partition=_name(key),
                error=exc,
            )
        finally:
            reader.close()
        self.stats.restore_failures += 1
        log_event(
            log,
            logging.ERROR,
            "no checkpoint, starting with fresh state",
            stage=self.stage.name,
            checkpoint=pointer,
            partition=_name(key),
        )
        return None

    # --------------------------------------------------------------------------- progress

    def _watch_progress(self) -> None:
        """Nothing consumed this round: if records wait in an assigned partition, count the silence."""
        now = time.monotonic()
        if now - self._last_lag_check < 1.0:
            return
        self._last_lag_check = now
        waiting = sum(self._update_lag().values())
        if not waiting:
            self._last_progress = now
            return
        silent = now - self._last_progress
        if silent > self.stall_timeout_s:
            self.stats.stalls += 1
            raise StageFailed(
                f"{self.stage.name}: stalled: {waiting} records waiting, nothing consumed for {silent:.0f}s"
            )

    def _update_lag(self) -> dict[TP, int]:
        """Records between each partition's position and its end (also published as a metric)."""
        lag: dict[TP, int] = {}
        for key, part in list(self.partitions.items()):
            tp = TopicPartition(*key)
            try:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    _, high = self.consumer.get_watermark_offsets(tp, timeout=5)
            except KafkaException:
                continue
            position = part.position if part.position >= 0 else part.committed
            lag[key] = max(0, high - max(position, 0)) if high >= 0 else 0
        self.stats.lag = lag
        return lag

    def _partition_count(self, topic: str) -> int:
        metadata = self._call(
            "list topics", 30, lambda timeout: self.consumer.list_topics(topic, timeout=timeout)
        )
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise StageFailed(f"topic {topic} does not exist (run `marketpipe topics apply`)")
        return len(found.partitions)


def checkpoint_key(stage: str, topic: str, partition: int) -> bytes:
    return f"{stage}|{topic}|{partition}".encode()


def _names(partitions: Iterable[TopicPartition]) -> str:
    return ",".join(_name((tp.topic, tp.partition)) for tp in partitions) or "nothing"


def _name(key: TP) -> str:
    return f"{key[0]}[{key[1]}]"
