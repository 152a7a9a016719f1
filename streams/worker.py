"""One stream worker process: the normalise, ohlcv and consolidate stages, each in its own
transactional loop (streams/runtime.py) on its own thread.

confluent-kafka releases the GIL while it waits on the network, so the stages overlap their
I/O; for more CPU, run more workers (each stage's partitions spread over them) or one stage
per process (``marketpipe stream --stages normalise``).

Signals: SIGTERM/SIGINT finish the current transaction and leave the groups; SIGHUP asks every
stage to publish what waits for more input (the open candles' last trades) in its next
transaction: `marketpipe run --exit-on-drain` sends it once every input is consumed, and
waits for ``marketpipe_stream_flushes_total``. A stage whose loop fails (a broker restart can
leave a transactional producer unusable) or stalls starts again in place with fresh clients,
from its last commit (``marketpipe_stream_restarts_total``). A stage stuck inside a client call
(past the call's own timeout, or for ``stall_timeout_s``), or fenced by another process with the
same worker id, ends the worker with exit code 70 and nothing uncommitted; the supervisor starts
it again.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from marketpipe.codec import AvroCodec
from marketpipe.config import Settings
from marketpipe.logs import log_event
from marketpipe.topics import Topology
from streams.aggregations import ConsolidateStage, OhlcvStage
from streams.app import NormaliseStage
from streams.buckets import Bucketer
from streams.consolidate import SymbolMap
from streams.feed import ClockWindow
from streams.runtime import CALL_GRACE_S, Fenced, Stage, StageFailed, TransactionalLoop

log = logging.getLogger(__name__)

STAGES = ("normalise", "ohlcv", "consolidate")
GC_THRESHOLDS = (100_000, 50, 100)
EXIT_STAGE_FAILED = 70


def stage_builders(settings: Settings) -> dict[str, Callable[[], Stage[Any]]]:
    """How each stage is built from the settings (the worker's loops; the stream bench's plain
    loop builds the normalise stage the same way)."""
    topology = Topology.from_settings(settings)
    codec = AvroCodec(settings.schema_registry_url)
    streams = settings.streams
    symbols = SymbolMap(streams.quote_equivalents)
    clock = ClockWindow.from_settings(streams)
    bucketer = Bucketer(
        interval_us=int(streams.bucket_interval_s * 1_000_000),
        max_distance_pct=streams.bucket_max_distance_pct,
        sizes=dict(streams.bucket_sizes),
    )
    return {
        "normalise": lambda: NormaliseStage(topology, codec, settings.exchanges, bucketer, symbols, clock),
        "ohlcv": lambda: OhlcvStage(topology, codec, streams, symbols),
        "consolidate": lambda: ConsolidateStage(topology, codec, symbols, bucketer.interval_us),
    }


class StreamWorker:
    def __init__(
        self, settings: Settings, stages: Sequence[str] = STAGES, worker_id: str | None = None
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id or settings.streams.worker_id or socket.gethostname()
        self._builders = stage_builders(settings)
        self.loops: dict[str, TransactionalLoop[Any]] = {name: self._new_loop(name) for name in stages}
        self.stall_timeout_s = settings.streams.stall_timeout_s
        self.failure: str | None = None
        self._stopping = threading.Event()

    def _new_loop(self, name: str) -> TransactionalLoop[Any]:
        return TransactionalLoop(self._builders[name](), self.settings, self.worker_id)

    def request_flush(self) -> None:
        for loop in self.loops.values():
            loop.flush_requested.set()

    def stop(self) -> None:
        self._stopping.set()
        for loop in self.loops.values():
            loop.stopping.set()

    @property
    def flushes(self) -> int:
        """Flushes every stage has completed (the worker's end-of-input flush is done at this count)."""
        return min((loop.stats.flushes for loop in self.loops.values()), default=0)

    def run(self) -> int:
        threads = [
            threading.Thread(target=self._run_stage, args=(name,), name=f"stage-{name}", daemon=True)
            for name in self.loops
        ]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            self._stopping.wait(0.5)
            self._watchdog()
        if self.failure:
            log_event(
                log, logging.CRITICAL, "stream worker stopped", worker=self.worker_id, reason=self.failure
            )
            return EXIT_STAGE_FAILED
        return 0

    def _run_stage(self, name: str) -> None:
        """Run a stage's loop; one that fails starts again with fresh clients from its last commit."""
        backoff = 1.0
        while not self._stopping.is_set():
            loop = self.loops[name]
            try:
                loop.run()
                return
            except Fenced as exc:
                self._fail(str(exc))
                return
            except StageFailed as exc:
                log_event(
                    log,
                    logging.ERROR,
                    "stage failed, starting it again from its last commit",
                    stage=name,
                    error=exc,
                )
            except Exception as exc:
                log_event(
                    log,
                    logging.ERROR,
                    "stage crashed, starting it again from its last commit",
                    exc_info=True,
                    stage=name,
                )
                if isinstance(exc, KeyboardInterrupt):
                    raise
            loop.heartbeat = time.monotonic() + backoff  # waiting on purpose, not stuck
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)
            successor = self._new_loop(name)
            successor.stats = loop.stats
            successor.stats.restarts += 1
            successor.flush_requested = loop.flush_requested
            self.loops[name] = successor

    def _watchdog(self) -> None:
        """A stage stuck inside a client call ends the process: a thread cannot be unstuck in
        place; the supervisor starts the worker again."""
        if self._stopping.is_set():
            return
        for name, loop in self.loops.items():
            stuck = self._stuck(loop, time.monotonic())
            if stuck is not None:
                log_event(
                    log,
                    logging.CRITICAL,
                    "stage stuck; stacks follow, exiting",
                    stage=name,
                    stuck=stuck,
                    exit_code=EXIT_STAGE_FAILED,
                )
                faulthandler.dump_traceback(all_threads=True)
                logging.shutdown()
                os._exit(EXIT_STAGE_FAILED)

    def _stuck(self, loop: TransactionalLoop[Any], now: float) -> str | None:
        """Why a loop is stuck: a client call past its own timeout, or a loop that has not come
        round for ``stall_timeout_s``."""
        call = loop.stuck_call(now)
        if call is not None:
            return f"{call} still running {CALL_GRACE_S:.0f} s after its timeout"
        silent = now - loop.heartbeat
        if silent > self.stall_timeout_s:
            return f"the loop has not come round for {silent:.0f} s"
        return None

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.stop()


def run_worker(settings: Settings, stages: Sequence[str] = STAGES, worker_id: str | None = None) -> None:
    """Run a stream worker in the foreground until SIGTERM/SIGINT; exits non-zero if a stage failed."""
    from streams.metrics import serve_stream_metrics

    # the stages allocate a few objects per record and hold large long-lived state (books, trade
    # memories, candles): CPython's default thresholds (700, 10, 10) spent about a fifth of the
    # normalise stage's CPU re-scanning that state; the records themselves form no cycles
    gc.set_threshold(*GC_THRESHOLDS)
    worker = StreamWorker(settings, stages, worker_id)
    serve_stream_metrics(worker, settings.metrics_port)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    signal.signal(signal.SIGHUP, lambda *_: worker.request_flush())
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints every thread's stack
    log_event(
        log, logging.WARNING, "stream worker started", worker=worker.worker_id, stages=",".join(worker.loops)
    )
    code = worker.run()
    logging.shutdown()
    sys.exit(code)
