"""The stream loop's start-up abort on a real broker: before it restores anything, a loop aborts
one transaction that wrote to every partition its stage writes (and the checkpoint topic), so
whatever an earlier producer of its transactional id left open without markers (KAFKA-20734)
is decided, as aborted, on all of them at once."""

from __future__ import annotations

import pytest
from echo_stage import EchoStage, start_loop, wait_assigned
from pipeline_support import partitions_of, read_topic

from marketpipe.config import Settings
from marketpipe.topics import Topology
from streams.runtime import TransactionalLoop

pytestmark = pytest.mark.kafka


def _aborts(bootstrap: str, topic: str, isolation: str) -> set[int]:
    """Partitions of `topic` holding a start-up abort record, as a consumer with `isolation` reads it."""
    found = read_topic(bootstrap, topic, isolation=isolation)
    return {m.partition() or 0 for m in found if m.key() == b"abort" and m.value() == b""}


def test_a_starting_loop_aborts_a_write_to_every_partition_it_writes(
    kafka_bootstrap: str, topics: Topology
) -> None:
    settings = Settings(
        exchanges=["binance"], kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": topics.prefix}
    )
    loop = TransactionalLoop(EchoStage(topics), settings, "start-abort")
    runner = start_loop(loop)
    try:
        assert wait_assigned(loop), "the loop was assigned no partition in 30 s"
    finally:
        loop.stopping.set()
        runner.join(30)

    for topic in (topics.trades, topics.checkpoints):
        partitions = {tp.partition for tp in partitions_of(kafka_bootstrap, [topic])}
        assert _aborts(kafka_bootstrap, topic, "read_uncommitted") == partitions, topic
        assert _aborts(kafka_bootstrap, topic, "read_committed") == set(), topic
