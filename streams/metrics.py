"""Prometheus metrics of a streams worker, read from the processors' own counters at scrape time.

Nothing on the hot path changes: the feed processors, the OHLCV builders and the
transactional loops already count what matters; this collector turns those numbers into metric families when
Prometheus (or `marketpipe run`'s live view) scrapes the worker's port.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from marketpipe.metrics import serve_metrics_endpoint

log = logging.getLogger(__name__)

FEED_COUNTERS = {
    "frames": "websocket frames normalised",
    "trades": "trades published",
    "book_messages": "book messages applied",
    "checksums_verified": "book checksums verified",
    "checksum_failures": "book checksum mismatches",
    "sequence_gaps": "sequence gaps detected",
    "resyncs": "resync requests (one per unsynced episode)",
    "crossed_books": "crossed books detected",
    "parse_errors": "frames that could not be parsed (dead-lettered)",
    "dropped_unsynced": "updates dropped while a book was unsynced",
    "duplicates_dropped": "trades already published (re-sent on subscribe or by an overlapping connection)",
}


LOOP_COUNTERS = {
    "transactions": "transactions committed (outputs, input offsets and checkpoints together)",
    "aborts": "transactions aborted (the stage restored its state from the last commit)",
    "checkpoints": "partition state checkpoints written",
    "checkpoint_bytes": "bytes of partition state checkpoints written",
    "restores": "partitions whose state was restored from a checkpoint",
    "replayed": "input records re-read to rebuild state after a restore (outputs discarded)",
    "restore_failures": "partitions that started with fresh state because their checkpoint was unreadable",
    "stalls": "stalls detected (unread input, no progress)",
    "restarts": "times the stage started again with fresh clients from its last commit",
}


class StreamCollector(Collector):
    """Metric families of one worker: per-exchange feed counters, book health, OHLCV, the loops."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self._books_seen: set[tuple[str, str]] = set()

    def collect(self) -> Iterator[Any]:
        # The stage threads mutate these dicts while the HTTP thread reads them.
        for _ in range(3):
            try:
                families = list(self._families())
            except RuntimeError:  # "dictionary changed size during iteration": read again
                continue
            yield from families
            return

    def _states(self, stage: str) -> list[Any]:
        loop = self.worker.loops.get(stage)
        return [part.state for part in list(loop.partitions.values())] if loop is not None else []

    def _families(self) -> Iterator[Any]:
        processors = self._states("normalise")
        for name, help_text in FEED_COUNTERS.items():
            totals: dict[str, int] = {}
            for processor in processors:
                totals[processor.exchange] = totals.get(processor.exchange, 0) + getattr(
                    processor.counters, name
                )
            family = CounterMetricFamily(f"marketpipe_stream_{name}", help_text, labels=["exchange"])
            for exchange, value in sorted(totals.items()):
                family.add_metric([exchange], value)
            yield family
        yield self._books(processors)
        normalise = self.worker.loops.get("normalise")
        yield _counter(
            "marketpipe_stream_dead_letters",
            "records dead-lettered by the normaliser",
            normalise.stage if normalise is not None else None,
            "dead_letters",
        )
        yield from self._ohlcv()
        yield _counter(
            "marketpipe_stream_flushes", "end-of-input flushes done by every stage", self.worker, "flushes"
        )
        yield from self._loops()

    def _books(self, processors: list[Any]) -> GaugeMetricFamily:
        """1 per book currently synced on some connection, 0 for books seen before and not synced now."""
        family = GaugeMetricFamily(
            "marketpipe_stream_book_synced", "1 while the book is synced", labels=["exchange", "symbol"]
        )
        synced: set[tuple[str, str]] = set()
        for processor in processors:
            for connection in list(processor._connections.values()):
                for state in list(connection.books.values()):
                    self._books_seen.add((processor.exchange, state.symbol))
                    if state.synced:
                        synced.add((processor.exchange, state.symbol))
        for exchange, symbol in sorted(self._books_seen):
            family.add_metric([exchange, symbol], 1.0 if (exchange, symbol) in synced else 0.0)
        return family

    def _ohlcv(self) -> Iterator[Any]:
        builders = self._states("ohlcv")
        markets = GaugeMetricFamily("marketpipe_stream_ohlcv_markets", "markets with candle state")
        markets.add_metric([], sum(len(builder.markets) for builder in builders))
        yield markets
        late = CounterMetricFamily("marketpipe_stream_ohlcv_late_trades", "trades applied to closed candles")
        late.add_metric([], sum(builder.late_trades for builder in builders))
        yield late
        consolidations = self._states("consolidate")
        ignored = CounterMetricFamily(
            "marketpipe_stream_consolidate_late",
            "per-market records that came after their consolidated window or boundary was final (dropped)",
            labels=["record"],
        )
        ignored.add_metric(["candle"], sum(c.candles.ignored_late for c in consolidations))
        ignored.add_metric(["buckets"], sum(c.buckets.ignored_late for c in consolidations))
        yield ignored

    def _loops(self) -> Iterator[Any]:
        loops = dict(self.worker.loops)
        received = CounterMetricFamily(
            "marketpipe_stream_messages_received", "messages consumed", labels=["topic"]
        )
        lag = GaugeMetricFamily(
            "marketpipe_stream_consumer_lag",
            "messages behind the partition end",
            labels=["topic", "partition"],
        )
        for loop in loops.values():
            for topic, count in list(loop.stats.received.items()):
                received.add_metric([topic], count)
            for (topic, partition), behind in list(loop.stats.lag.items()):
                lag.add_metric([topic, str(partition)], behind)
        yield received
        yield lag
        for name, help_text in LOOP_COUNTERS.items():
            family = CounterMetricFamily(f"marketpipe_stream_{name}", help_text, labels=["stage"])
            for stage, loop in loops.items():
                family.add_metric([stage], getattr(loop.stats, name))
            yield family


def _counter(name: str, help_text: str, source: Any, attribute: str) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text)
    family.add_metric([], getattr(source, attribute, 0) if source is not None else 0)
    return family


def serve_stream_metrics(worker: Any, port: int) -> StreamCollector:
    """Expose the worker's metrics on ``port`` (0 = off); returns the collector."""
    collector = StreamCollector(worker)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    serve_metrics_endpoint(port, registry)
    return collector
