"""The normalise stage publishes a batch's outputs every ``PUBLISH_EVERY`` frames: a batch read
whole emits, topic by topic, exactly what the same frames emit read one at a time (real
Binance sample frames, many connections)."""

from __future__ import annotations

from collections import defaultdict
from typing import cast

from confluent_kafka import Message
from feed_helpers import BINANCE_INFO_URL, SAMPLE_CLOCK, Feed, binance_info
from samples import messages
from test_normalize import BINANCE_AT

from bench.stream_bench import ConsumedFrame
from marketpipe.codec import AvroCodec
from marketpipe.raw import RawRecord
from marketpipe.topics import Topology
from streams.app import PUBLISH_EVERY, NormaliseStage
from streams.consolidate import SymbolMap


def _connections(count: int) -> list[RawRecord]:
    records: list[RawRecord] = []
    diffs = messages("binance.json", "book_update")
    for number in range(count):
        feed = Feed("binance", conn=f"binance.t{number}.0", base_ns=BINANCE_AT + number * 10**9)
        feed.open("wss://stream.binance.com:9443/stream", ["NKNUSDT"])
        feed.rest(BINANCE_INFO_URL, binance_info(("NKNUSDT", "NKN", "USDT")))
        feed.recv(messages("binance.json", "ack")[0])
        feed.recv(diffs[0])
        feed.rest(
            "https://api.binance.com/api/v3/depth?symbol=NKNUSDT&limit=1000",
            messages("binance.json", "book_snapshot")[0],
        )
        feed.recv_all([*diffs[1:], *messages("binance.json", "trade"), "{broken"])
        feed.close(1000, "bye")
        records += feed.records
    return records


def _emitted(stage: NormaliseStage, batches: list[list[ConsumedFrame]], topic: str) -> dict[str, list[bytes]]:
    state = stage.new_state(topic, 0)
    by_topic: dict[str, list[bytes]] = defaultdict(list)
    for batch in batches:
        stage.process(
            state, cast(list[Message], batch), lambda t, key, value: by_topic[t].append(key + value)
        )
    return by_topic


def test_a_batch_read_whole_emits_what_its_frames_emit_one_at_a_time() -> None:
    topology = Topology(prefix="t.", exchanges=("binance",))
    stage = NormaliseStage(topology, AvroCodec(), ["binance"], None, SymbolMap(), SAMPLE_CLOCK)
    topic = stage.topics[0]
    consumed = [ConsumedFrame(raw, topic, offset) for offset, raw in enumerate(_connections(30))]
    assert len(consumed) > 3 * PUBLISH_EVERY

    whole = _emitted(stage, [consumed], topic)
    one_by_one = _emitted(stage, [[message] for message in consumed], topic)

    assert whole == one_by_one
    for published in (topology.book, topology.bbo, topology.dlq, topology.status):
        assert len(whole[published]) >= 30, published
    assert whole[topology.trades]  # the connections deliver the same trades: published once
