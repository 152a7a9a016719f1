"""Prometheus metrics of a streams worker, read from the processors' own counters at scrape time.

Nothing on the hot path changes: the feed processors, the OHLCV stage and Faust's monitor
already count what matters; this collector turns those numbers into metric families when
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
}


class StreamCollector(Collector):
    """Metric families of one worker: per-exchange feed counters, book health, OHLCV, consumer lag."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.flushes = 0
        self._books_seen: set[tuple[str, str]] = set()

    def collect(self) -> Iterator[Any]:
        # The worker's event loop mutates these dicts while the HTTP thread reads them.
        for _ in range(3):
            try:
                families = list(self._families())
            except RuntimeError:  # "dictionary changed size during iteration": read again
                continue
            yield from families
            return

    def _families(self) -> Iterator[Any]:
        normaliser = getattr(self.app, "marketpipe_normaliser", None)
        processors = dict(normaliser.processors) if normaliser is not None else {}
        for name, help_text in FEED_COUNTERS.items():
            family = CounterMetricFamily(f"marketpipe_stream_{name}", help_text, labels=["exchange"])
            for exchange, processor in processors.items():
                family.add_metric([exchange], getattr(processor.counters, name))
            yield family
        yield self._books(processors)
        yield _counter(
            "marketpipe_stream_dead_letters",
            "records dead-lettered by the normaliser",
            normaliser,
            "dead_letters",
        )
        yield from self._ohlcv()
        yield _counter(
            "marketpipe_stream_flushes", "open-candle flushes done (end of input)", self, "flushes"
        )
        yield from self._consumer()

    def _books(self, processors: dict[str, Any]) -> GaugeMetricFamily:
        """1 per book currently synced on some connection, 0 for books seen before and not synced now."""
        family = GaugeMetricFamily(
            "marketpipe_stream_book_synced", "1 while the book is synced", labels=["exchange", "symbol"]
        )
        synced: set[tuple[str, str]] = set()
        for exchange, processor in processors.items():
            for connection in list(processor._connections.values()):
                for state in list(connection.books.values()):
                    self._books_seen.add((exchange, state.symbol))
                    if state.synced:
                        synced.add((exchange, state.symbol))
        for exchange, symbol in sorted(self._books_seen):
            family.add_metric([exchange, symbol], 1.0 if (exchange, symbol) in synced else 0.0)
        return family

    def _ohlcv(self) -> Iterator[Any]:
        stage = getattr(self.app, "marketpipe_ohlcv", None)
        builder = stage.builder if stage is not None else None
        markets = GaugeMetricFamily("marketpipe_stream_ohlcv_markets", "markets with candle state")
        markets.add_metric([], len(builder.markets) if builder is not None else 0)
        yield markets
        yield _counter(
            "marketpipe_stream_ohlcv_late_trades", "trades applied to closed candles", builder, "late_trades"
        )
        yield _counter("marketpipe_stream_ohlcv_duplicates", "replayed trades skipped", builder, "duplicates")

    def _consumer(self) -> Iterator[Any]:
        monitor = getattr(self.app, "monitor", None)
        received = CounterMetricFamily(
            "marketpipe_stream_messages_received", "messages consumed", labels=["topic"]
        )
        lag = GaugeMetricFamily(
            "marketpipe_stream_consumer_lag",
            "messages behind the partition end",
            labels=["topic", "partition"],
        )
        if monitor is not None:
            for topic, count in list(monitor.messages_received_by_topic.items()):
                received.add_metric([topic], count)
            read = dict(monitor.tp_read_offsets)
            for tp, end in list(monitor.tp_end_offsets.items()):
                behind = end - (read[tp] + 1) if tp in read else end
                lag.add_metric([tp.topic, str(tp.partition)], max(0, behind))
        yield received
        yield lag


def _counter(name: str, help_text: str, source: Any, attribute: str) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text)
    family.add_metric([], getattr(source, attribute, 0) if source is not None else 0)
    return family


def serve_stream_metrics(app: Any, port: int) -> StreamCollector:
    """Expose the worker's metrics on ``port`` (0 = off); returns the collector."""
    collector = StreamCollector(app)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    serve_metrics_endpoint(port, registry)
    return collector
