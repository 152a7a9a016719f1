"""One stream worker process: the normalise, ohlcv and consolidate stages, each in its own
transactional loop (streams/runtime.py) on its own thread.

confluent-kafka releases the GIL while it waits on the network, so the stages overlap their
I/O; for more CPU, run more workers (each stage's partitions spread over them) or one stage
per process (``marketpipe stream --stages normalise``).

Signals: SIGTERM/SIGINT finish the current transaction and leave the groups; SIGHUP asks every
stage to publish what waits for more input (the open candles' last trades) in its next
transaction: `marketpipe run --exit-on-drain` sends it once every input is consumed, and
waits for ``marketpipe_stream_flushes_total``. A stage that fails (or stalls) stops the worker
with exit code 70 and nothing uncommitted; the supervisor restarts it.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any

from marketpipe.codec import AvroCodec
from marketpipe.config import Settings
from marketpipe.topics import Topology
from streams.aggregations import ConsolidateStage, OhlcvStage
from streams.app import NormaliseStage
from streams.buckets import Bucketer
from streams.consolidate import SymbolMap
from streams.runtime import StageFailed, TransactionalLoop

log = logging.getLogger(__name__)

STAGES = ("normalise", "ohlcv", "consolidate")
EXIT_STAGE_FAILED = 70


class StreamWorker:
    def __init__(
        self, settings: Settings, stages: Sequence[str] = STAGES, worker_id: str | None = None
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id or settings.streams.worker_id or socket.gethostname()
        topology = Topology.from_settings(settings)
        codec = AvroCodec(settings.schema_registry_url)
        streams = settings.streams
        symbols = SymbolMap(streams.quote_equivalents)
        bucketer = Bucketer(
            interval_us=int(streams.bucket_interval_s * 1_000_000),
            max_distance_pct=streams.bucket_max_distance_pct,
            sizes=dict(streams.bucket_sizes),
        )
        built: dict[str, Any] = {
            "normalise": lambda: NormaliseStage(topology, codec, settings.exchanges, bucketer, symbols),
            "ohlcv": lambda: OhlcvStage(topology, codec, streams, symbols),
            "consolidate": lambda: ConsolidateStage(topology, codec, symbols, bucketer.interval_us),
        }
        self.loops: dict[str, TransactionalLoop[Any]] = {
            name: TransactionalLoop(built[name](), settings, self.worker_id) for name in stages
        }
        self.failure: str | None = None
        self._done = threading.Event()

    def request_flush(self) -> None:
        for loop in self.loops.values():
            loop.flush_requested.set()

    def stop(self) -> None:
        for loop in self.loops.values():
            loop.stopping.set()

    @property
    def flushes(self) -> int:
        """Flushes every stage has completed (the worker's end-of-input flush is done at this count)."""
        return min((loop.stats.flushes for loop in self.loops.values()), default=0)

    def run(self) -> int:
        threads = [
            threading.Thread(target=self._run_loop, args=(name, loop), name=f"stage-{name}", daemon=True)
            for name, loop in self.loops.items()
        ]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            self._done.wait(0.5)
        if self.failure:
            log.critical("stream worker %s stopped: %s", self.worker_id, self.failure)
            return EXIT_STAGE_FAILED
        return 0

    def _run_loop(self, name: str, loop: TransactionalLoop[Any]) -> None:
        try:
            loop.run()
        except StageFailed as exc:
            self._fail(str(exc))
        except Exception as exc:
            log.exception("stage %s crashed", name)
            self._fail(f"{name}: {type(exc).__name__}: {exc}")
        finally:
            self._done.set()

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.stop()


def run_worker(settings: Settings, stages: Sequence[str] = STAGES, worker_id: str | None = None) -> None:
    """Run a stream worker in the foreground until SIGTERM/SIGINT; exits non-zero if a stage failed."""
    from streams.metrics import serve_stream_metrics

    worker = StreamWorker(settings, stages, worker_id)
    serve_stream_metrics(worker, settings.metrics_port)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    signal.signal(signal.SIGHUP, lambda *_: worker.request_flush())
    log.warning("stream worker %s: stages %s", worker.worker_id, ", ".join(worker.loops))
    code = worker.run()
    logging.shutdown()
    sys.exit(code)
