"""The stream worker's watchdog: a stage stuck inside a client call past that call's own
timeout (librdkafka#5456/#5511 after a broker restart) is found at once, not after the stall
timeout. Times are passed in, so nothing here waits."""

from __future__ import annotations

import time

import pytest

from marketpipe.config import Settings
from marketpipe.topics import Topology
from streams.runtime import CALL_GRACE_S
from streams.worker import StreamWorker

pytestmark = pytest.mark.kafka


def test_a_call_past_its_timeout_and_a_loop_that_stopped_coming_round_are_stuck(
    kafka_bootstrap: str, topics: Topology
) -> None:
    settings = Settings(
        exchanges=["binance"], kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": topics.prefix}
    )
    worker = StreamWorker(settings, ("normalise",), "watchdog")
    loop = worker.loops["normalise"]
    now = time.monotonic()
    past_grace = now + 10.0 + CALL_GRACE_S + 1

    assert worker._stuck(loop, now) is None

    def send_offsets(timeout: float) -> None:  # what the watchdog sees while the call runs
        assert worker._stuck(loop, now + timeout) is None  # past its timeout, within the grace
        assert worker._stuck(loop, past_grace) == (
            f"send offsets still running {CALL_GRACE_S:.0f} s after its timeout"
        )

    loop._call("send offsets", 10.0, send_offsets)
    assert worker._stuck(loop, past_grace) is None  # the call returned

    stall = settings.streams.stall_timeout_s
    assert past_grace - loop.heartbeat < stall
    stuck = worker._stuck(loop, loop.heartbeat + stall + 1)
    assert stuck is not None and stuck.startswith("the loop has not come round for")
