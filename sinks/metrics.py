"""Prometheus metrics of the ClickHouse sink (default registry, labelled by table/topic)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

ROWS = Counter("marketpipe_sink_rows", "Rows inserted into ClickHouse", ["table"])
BATCHES = Counter("marketpipe_sink_batches", "Batches inserted into ClickHouse", ["table"])
INSERT_SECONDS = Histogram(
    "marketpipe_sink_insert_seconds",
    "ClickHouse insert latency per batch",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
DLQ = Counter("marketpipe_sink_dlq", "Records sent to the dead-letter topic", ["topic", "kind"])
INSERT_ERRORS = Counter("marketpipe_sink_insert_errors", "Failed insert attempts", ["table", "kind"])
CONSUMER_LAG = Gauge(
    "marketpipe_sink_consumer_lag", "Messages behind the partition end", ["topic", "partition"]
)
CLICKHOUSE_UP = Gauge("marketpipe_sink_clickhouse_up", "1 while ClickHouse accepts inserts, 0 while paused")
PAUSED = Gauge("marketpipe_sink_paused_partitions", "Partitions paused while ClickHouse is unavailable")
REPLAYED_BATCHES = Counter(
    "marketpipe_sink_replayed_batches",
    "Recorded batches re-formed and inserted again after a restart or rebalance "
    "(outcome exact: same records as recorded; changed: the range could not be read again as it was)",
    ["table", "outcome"],
)


CANDLE_CHECK_HORIZON_H = 24
CANDLE_DISAGREEING = Gauge(
    "marketpipe_candle_check_disagreeing_windows",
    "Windows of the last 24 h where marketpipe's candle differs from the exchange's final candle "
    "(view candle_check: missed or doubled trades)",
    ["exchange", "interval"],
)
CANDLE_COMPARED = Gauge(
    "marketpipe_candle_check_windows",
    "Windows of the last 24 h compared with the exchange's final candle (view candle_check)",
    ["exchange", "interval"],
)


def set_candle_check(counts: Sequence[Sequence[Any]]) -> None:
    """One ``candle_check`` count (exchange, interval, disagreeing, compared) per row."""
    for exchange, interval, disagreeing, compared in counts:
        CANDLE_DISAGREEING.labels(exchange, interval).set(disagreeing)
        CANDLE_COMPARED.labels(exchange, interval).set(compared)


def record_librdkafka_stats(stats_json: str) -> None:
    """confluent-kafka ``stats_cb``: publish per-partition consumer lag."""
    try:
        stats = json.loads(stats_json)
    except ValueError:
        return
    for topic, topic_stats in stats.get("topics", {}).items():
        for partition, part_stats in topic_stats.get("partitions", {}).items():
            lag = part_stats.get("consumer_lag", -1)
            if partition != "-1" and lag >= 0:
                CONSUMER_LAG.labels(topic, partition).set(lag)
