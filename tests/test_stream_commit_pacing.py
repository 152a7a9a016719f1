"""The stream loop's commit pacing (``streams.commit_interval_ms``, ``commit_min_records`` and
``commit_max_interval_ms``), on a real broker.

A trickle of input, one record every few milliseconds: without pacing every round commits as
soon as the previous commit is done; with it, transactions begin at least the interval apart
(or hold at least the minimum of records, or began the longest wait after the previous one)
and a round gathers what arrives meanwhile, so the same input takes far fewer transactions and
still comes out whole, in order, exactly once.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer
from echo_stage import EchoStage, start_loop, wait_assigned
from pipeline_support import read_topic

from marketpipe.config import Settings
from marketpipe.topics import Topology
from streams.runtime import TransactionalLoop

RECORDS = 300
SPACING_S = 0.005
INTERVAL_MS = 500
MIN_RECORDS = 150  # 750 ms of the trickle: more than a commit takes on a loaded machine
LINGER_MS = 2000


def _run(bootstrap: str, topology: Topology, name: str, **pacing: int) -> tuple[int, float, list[bytes]]:
    """(transactions committed, seconds the trickle lasted, values read back from md.trades)."""
    settings = Settings(
        exchanges=["binance"],
        kafka={"bootstrap_servers": bootstrap, "topic_prefix": topology.prefix},
        streams={"commit_min_records": 0, **pacing, "poll_interval_ms": 5},
    )
    loop = TransactionalLoop(EchoStage(topology), settings, f"pacing-{name}")
    runner = start_loop(loop)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    values = [f"{name}-{i}".encode() for i in range(RECORDS)]
    try:
        assert wait_assigned(loop), "the loop was assigned no partition in 30 s"
        before = loop.stats.transactions
        started = time.monotonic()
        for value in values:
            producer.produce(topology.raw("binance"), value, b"conn-1")
            producer.poll(0)
            time.sleep(SPACING_S)
        producer.flush(10)
        trickle_s = time.monotonic() - started
        deadline = time.monotonic() + 30
        while loop.stats.received.get(topology.raw("binance"), 0) < RECORDS and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(pacing.get("commit_max_interval_ms", 100) / 1000 + 0.5)  # the last round committed
        transactions = loop.stats.transactions - before
    finally:
        loop.stopping.set()
        runner.join(30)
    ours = set(values)  # both runs write to the same md.trades
    return (
        transactions,
        trickle_s,
        [v for m in read_topic(bootstrap, topology.trades) if (v := m.value()) in ours],
    )


@pytest.mark.kafka
def test_pacing_gathers_a_trickle_into_fewer_transactions(kafka_bootstrap: str, topics: Topology) -> None:
    unpaced, unpaced_s, unpaced_out = _run(kafka_bootstrap, topics, "unpaced", commit_interval_ms=0)
    paced, paced_s, paced_out = _run(
        kafka_bootstrap, topics, "paced", commit_interval_ms=INTERVAL_MS, commit_max_interval_ms=INTERVAL_MS
    )
    # no minimum spacing, but a round short of MIN_RECORDS waits for more, up to LINGER_MS
    # after the previous transaction began
    lingered, lingered_s, lingered_out = _run(
        kafka_bootstrap,
        topics,
        "lingered",
        commit_interval_ms=0,
        commit_min_records=MIN_RECORDS,
        commit_max_interval_ms=LINGER_MS,
    )

    for name, out in (("unpaced", unpaced_out), ("paced", paced_out), ("lingered", lingered_out)):
        assert out == [f"{name}-{i}".encode() for i in range(RECORDS)]
    # paced: at most one transaction per interval of input, plus the one at each edge;
    # lingered: each transaction holds MIN_RECORDS or began LINGER_MS after the one before
    paced_bound = paced_s / (INTERVAL_MS / 1000) + 2
    lingered_bound = RECORDS / MIN_RECORDS + lingered_s / (LINGER_MS / 1000) + 2
    assert paced <= paced_bound, (paced, paced_s)
    assert lingered <= lingered_bound, (lingered, lingered_s)
    # unpaced, an input as long takes more than either
    assert unpaced > max(paced_bound, lingered_bound), (unpaced, unpaced_s)
