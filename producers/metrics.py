"""Prometheus metrics for the producers, read from plain counters at scrape time.

The hot path only bumps integer attributes (ShardStats, PublisherStats); this
collector turns them into metric families when Prometheus scrapes, so frames cost
no lock or label lookup.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from marketpipe.metrics import serve_metrics_endpoint
from producers.base import Connector
from producers.publisher import RawPublisher

_SHARD_LABELS = ["exchange", "shard"]
_SHARD_COUNTERS = {
    "frames": ("frames", "websocket frames received"),
    "bytes": ("bytes", "websocket payload bytes received"),
    "sent": ("sent_frames", "frames sent to the exchange"),
    "rest": ("rest_responses", "REST responses published"),
    "connections": ("connections", "connections opened"),
    "reconnects": ("reconnects", "connections replaced after an end or a planned reconnect"),
}


class ProducerCollector(Collector):
    def __init__(self, connectors: Sequence[Connector], publisher: RawPublisher) -> None:
        self.connectors = connectors
        self.publisher = publisher

    def collect(self) -> Iterator[Any]:
        shards = [shard for connector in self.connectors for shard in connector.shards]
        for attribute, (name, help_text) in _SHARD_COUNTERS.items():
            family = CounterMetricFamily(f"marketpipe_producer_{name}", help_text, labels=_SHARD_LABELS)
            for shard in shards:
                family.add_metric([shard.stats.exchange, str(shard.index)], getattr(shard.stats, attribute))
            yield family
        yield self._frame_age(shards)
        yield from self._failures()
        yield from self._publisher_families()

    def _failures(self) -> Iterator[Any]:
        """Consecutive failed attempts per shard, and the latest reason while it fails.

        Shard ``-`` is the instrument-list request made before any shard exists: offline it is
        the first thing to fail, so it is reported as soon as the endpoint serves.
        """
        count = GaugeMetricFamily(
            "marketpipe_producer_connect_failures",
            "consecutive failed connect attempts (shard - = the instrument list request)",
            labels=_SHARD_LABELS,
        )
        reason = GaugeMetricFamily(
            "marketpipe_producer_failure",
            "1 with the latest failure reason while a shard keeps failing",
            labels=[*_SHARD_LABELS, "reason"],
        )
        for connector in self.connectors:
            slots = [(str(s.index), s.stats.failures, s.stats.last_error) for s in connector.shards]
            if not connector.shards:
                slots = [("-", connector.rest.failures, connector.rest.last_problem)]
            for shard, failures, last in slots:
                count.add_metric([connector.exchange, shard], failures)
                if failures:
                    reason.add_metric([connector.exchange, shard, last], 1)
        yield count
        yield reason

    @staticmethod
    def _frame_age(shards: Sequence[Any]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "marketpipe_producer_last_frame_age_seconds", "seconds since the last frame", labels=_SHARD_LABELS
        )
        now = time.time_ns()
        for shard in shards:
            if shard.stats.last_frame_ns:
                age = (now - shard.stats.last_frame_ns) / 1e9
                family.add_metric([shard.stats.exchange, str(shard.index)], age)
        return family

    def _publisher_families(self) -> Iterator[Any]:
        stats = self.publisher.stats
        for name, value, help_text in (
            ("published", stats.published, "records handed to the publisher"),
            ("dropped", stats.dropped, "records dropped (buffer full or undeliverable); see gap markers"),
            ("delivery_errors", stats.delivery_errors, "records Kafka failed to accept"),
            ("gap_markers", stats.gap_markers, "gap markers published"),
            ("produce_errors", stats.errors, "Kafka client errors"),
        ):
            family = CounterMetricFamily(f"marketpipe_producer_{name}", help_text)
            family.add_metric([], value)
            yield family
        depth = GaugeMetricFamily(
            "marketpipe_producer_queue_depth", "records waiting in the Kafka client queue"
        )
        depth.add_metric([], self.publisher.queue_depth())
        yield depth


def serve_metrics(port: int, connectors: Sequence[Connector], publisher: RawPublisher) -> CollectorRegistry:
    """Expose the metrics on ``port`` (0 = off). Returns the registry for inspection."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ProducerCollector(connectors, publisher))
    serve_metrics_endpoint(port, registry)
    return registry
