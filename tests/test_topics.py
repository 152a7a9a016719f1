"""Declarative topology against the real broker: apply is idempotent and configs are verified."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, OffsetSpec

from marketpipe.codec import AvroCodec
from marketpipe.config import EXCHANGES
from marketpipe.topics import TopicSpec, Topology, apply_topology, describe_configs
from sinks.tables import sink_tables

COMPACTED = {
    "md.bbo",
    "md.book-buckets",
    "md.ohlcv",
    "md.ticker",
    "md.exchange-candles",
    "md.instruments",
    "md.status",
    "marketpipe-streams-checkpoints",
}


def test_apply_twice_then_configs_match(kafka_admin: AdminClient) -> None:
    topology = Topology(prefix=f"apply{uuid.uuid4().hex[:8]}.", exchanges=("binance", "okx"), partitions=3)
    specs = topology.specs()

    first = apply_topology(kafka_admin, specs)
    assert sorted(first.created) == sorted(s.name for s in specs)

    second = apply_topology(kafka_admin, specs)
    assert not second.changed
    assert sorted(second.unchanged) == sorted(s.name for s in specs)

    metadata = kafka_admin.list_topics(timeout=10).topics
    configs = describe_configs(kafka_admin, [s.name for s in specs])
    for spec in specs:
        assert len(metadata[spec.name].partitions) == spec.partitions
        base = spec.name.removeprefix(topology.prefix)
        expected_policy = "compact" if base in COMPACTED else "delete"
        assert configs[spec.name]["cleanup.policy"] == expected_policy, spec.name
        for key, value in spec.configs().items():
            assert configs[spec.name][key] == value, (spec.name, key)
        if expected_policy == "compact":
            assert int(configs[spec.name]["min.compaction.lag.ms"]) > 0


def test_apply_returns_when_every_new_partition_is_served(kafka_admin: AdminClient) -> None:
    """A broker names itself leader of a new partition before it serves it, refusing writes
    meanwhile: apply waits until each partition answers (without the wait this fails at once)."""
    prefix = f"served{uuid.uuid4().hex[:8]}."
    specs = Topology(prefix=prefix, exchanges=EXCHANGES, partitions=3).specs()
    assert sorted(apply_topology(kafka_admin, specs).created) == sorted(s.name for s in specs)
    _assert_served(kafka_admin, specs)

    grown = Topology(prefix=prefix, exchanges=EXCHANGES, partitions=5).specs()
    report = apply_topology(kafka_admin, grown)
    assert report.repartitioned == {s.name: s.partitions for s in grown if s.partitions == 5}
    _assert_served(kafka_admin, grown)


def _assert_served(admin: AdminClient, specs: list[TopicSpec]) -> None:
    request = {TopicPartition(s.name, p): OffsetSpec.latest() for s in specs for p in range(s.partitions)}
    unserved = []
    for tp, future in admin.list_offsets(request).items():
        try:
            future.result()
        except KafkaException as exc:
            unserved.append((tp.topic, tp.partition, exc.args[0].name()))
    assert not unserved


def test_apply_reconciles_drifted_config(kafka_admin: AdminClient) -> None:
    topology = Topology(prefix=f"drift{uuid.uuid4().hex[:8]}.", exchanges=(), partitions=1)
    specs = [s for s in topology.specs() if s.name == topology.ohlcv]
    apply_topology(kafka_admin, specs)
    entry = ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topology.ohlcv, incremental_configs=[entry])
    for future in kafka_admin.incremental_alter_configs([resource]).values():
        future.result()
    _wait_for_config(kafka_admin, topology.ohlcv, "cleanup.policy", "delete")

    report = apply_topology(kafka_admin, specs)
    assert report.reconfigured == {topology.ohlcv: {"cleanup.policy": "compact"}}
    _wait_for_config(kafka_admin, topology.ohlcv, "cleanup.policy", "compact")


def _wait_for_config(admin: AdminClient, topic: str, key: str, value: str) -> None:
    """KRaft brokers apply metadata asynchronously: wait until the broker reports the change."""
    for _ in range(100):
        if describe_configs(admin, [topic])[topic].get(key) == value:
            return
        time.sleep(0.1)
    raise AssertionError(f"{topic} never reported {key}={value}")


def test_prefix_separates_deployments() -> None:
    a, b = Topology(prefix="a.", exchanges=("okx",)), Topology(prefix="b.", exchanges=("okx",))
    assert not {s.name for s in a.specs()} & {s.name for s in b.specs()}
    assert a.raw("okx") == "a.raw.okx" and b.ohlcv == "b.md.ohlcv"


def test_every_sink_table_has_its_topic_and_record_type() -> None:
    """The sink, drain checks and the live view follow Topology.sink_tables(); the sink's table
    definitions must name the same tables, each decoding the record type its topic carries."""
    topology = Topology(prefix="x.", exchanges=("binance",))
    specs = {spec.name: spec for spec in topology.specs()}
    tables = sink_tables(AvroCodec())
    assert sorted(topology.sink_tables().values()) == sorted(tables)
    for topic, table in topology.sink_tables().items():
        assert specs[topic].value == tables[table].record_type.__name__, topic


def test_the_stream_catalogue_has_one_row_per_record_type_and_drives_the_outputs() -> None:
    """Every record type has its md topic in the catalogue, once; the normalise stage's outputs
    all have one; the topic specs and the sink's tables come from the same rows."""
    from marketpipe.records import RECORD_TYPES
    from marketpipe.topics import MD_STREAMS
    from streams.feed import FeedOutput

    assert sorted(row.record.__name__ for row in MD_STREAMS) == sorted(t.__name__ for t in RECORD_TYPES)
    assert len({row.topic for row in MD_STREAMS}) == len(MD_STREAMS)
    topology = Topology(prefix="p.")
    specs = {spec.name: spec for spec in topology.specs()}
    for row in MD_STREAMS:
        spec = specs[topology.md_topic(row.record)]
        assert (spec.value, spec.compacted, spec.retention_ms) == (
            row.record.__name__,
            row.compacted,
            row.retention_ms,
        )
    assert set(topology.sink_tables().values()) == {row.table for row in MD_STREAMS if row.table}
    assert len(FeedOutput().records()) == len(
        [r for r in MD_STREAMS if r.record.__name__ not in NOT_NORMALISED]
    )


NOT_NORMALISED = ("Candle", "BookBuckets", "DeadLetter")
"""md records the normalise processor's output lists do not carry: candles come from the ohlcv
stage, bucket snapshots and dead letters take their own paths"""
