"""One book stream per symbol: while two connections of a symbol overlap (a make-before-break
handover, a reconnect, a second shard), md.book, md.bbo and bucket snapshots follow one of them.

The newest synced book is the published one; when it goes away the other connection's book
takes over with a whole-book snapshot, so a consumer rebuilding books from md.book never mixes
two connections' update streams.
"""

from __future__ import annotations

import json
import pickle

from feed_helpers import BINANCE_INFO_URL, SAMPLE_CLOCK, Feed, binance_info

from marketpipe.records import BookChange
from streams.buckets import Bucketer
from streams.feed import FeedOutput, FeedProcessor
from streams.parsers import processor_for

DEPTH_URL = "https://api.binance.com/api/v3/depth?symbol=NKNUSDT&limit=1000"
WS_URL = "wss://stream.binance.com:9443/stream"


def _connect(processor: FeedProcessor, conn: str, snapshot_id: int) -> tuple[Feed, FeedOutput]:
    """A connection with a synced book; and what its snapshot published."""
    feed = Feed("binance", conn, processor)
    feed.open(WS_URL, ["NKNUSDT"])
    feed.rest(BINANCE_INFO_URL, binance_info(("NKNUSDT", "NKN", "USDT"), ("LRCBTC", "LRC", "BTC")))
    book = {"lastUpdateId": snapshot_id, "bids": [["0.10", "5"]], "asks": [["0.11", "5"]]}
    return feed, feed.rest(DEPTH_URL, json.dumps(book))


def _diff(feed: Feed, update_id: int, bid_size: str) -> FeedOutput:
    data = {"e": "depthUpdate", "E": 1_786_000_000_000 + update_id, "s": "NKNUSDT"}
    data |= {"U": update_id, "u": update_id, "b": [["0.10", bid_size]], "a": []}
    return feed.recv(json.dumps({"stream": "nknusdt@depth@100ms", "data": data}))


def _books(out: FeedOutput) -> list[tuple[str, bool]]:
    return [(change.conn, change.snapshot) for change in out.books]


def test_overlapping_connections_publish_one_book_stream() -> None:
    processor = processor_for("binance", SAMPLE_CLOCK)
    old, synced = _connect(processor, "binance.a.0", 100)
    assert _books(synced) == [("binance.a.0", True)]
    assert _books(_diff(old, 101, "6")) == [("binance.a.0", False)]

    new, synced = _connect(processor, "binance.b.0", 101)
    assert _books(synced) == [("binance.b.0", True)]  # the newest synced book is the published one
    assert _books(_diff(new, 102, "7")) == [("binance.b.0", False)]
    quiet = _diff(old, 102, "7")  # the same change on the old connection: its book stays valid
    assert quiet.books == [] and quiet.bbos == [] and quiet.errors == []
    assert _books(_diff(new, 103, "8")) == [("binance.b.0", False)]

    new.close()
    takeover = _diff(old, 103, "8")
    assert _books(takeover) == [("binance.a.0", True)]  # whole, so consumers restart from it
    whole: BookChange = takeover.books[0]
    assert [(level.price, level.size) for level in whole.bids] == [(0.10, 8.0)]
    assert [bbo.bid_size for bbo in takeover.bbos] == [8.0]
    assert _books(_diff(old, 104, "9")) == [("binance.a.0", False)]


def test_only_the_published_book_gives_bucket_snapshots() -> None:
    processor = processor_for("binance", SAMPLE_CLOCK)
    processor.bucketer = Bucketer(interval_us=1_000)  # a boundary between every two updates
    old, _ = _connect(processor, "binance.a.0", 100)
    _diff(old, 101, "6")
    new, _ = _connect(processor, "binance.b.0", 101)
    _diff(new, 102, "7")
    published = _diff(new, 103, "8").buckets
    assert published and {snapshot.ts for snapshot in published} <= {1_786_000_000_103_000}
    assert _diff(old, 102, "7").buckets == [] and _diff(old, 103, "8").buckets == []


def test_a_processor_checkpointed_before_book_owners_existed_restores() -> None:
    processor = processor_for("binance", SAMPLE_CLOCK)
    old, _ = _connect(processor, "binance.a.0", 100)
    _diff(old, 101, "6")
    del processor.__dict__["_book_owners"]  # as pickled by the previous version
    restored = pickle.loads(pickle.dumps(processor))
    old.proc = restored
    assert _books(_diff(old, 102, "7")) == [("binance.a.0", True)]  # takes the stream over, whole
