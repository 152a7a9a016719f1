"""Checkpoints pickle processors, and pickle refers to classes by module and name: the classes
issue 17 renamed (``streams.feed.Connection`` is ``ConnectionState``, ``streams.feed.BookState``
is ``streams.book_sync.BookSync``) must still load from checkpoints written under the old names.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from contextlib import contextmanager

from feed_helpers import BINANCE_INFO_URL, SAMPLE_CLOCK, Feed, binance_info

from streams.book_sync import BookSync
from streams.feed import ConnectionState, FeedOutput, FeedProcessor
from streams.parsers import processor_for

DEPTH_URL = "https://api.binance.com/api/v3/depth?symbol=NKNUSDT&limit=1000"
WS_URL = "wss://stream.binance.com:9443/stream"


@contextmanager
def _old_class_names() -> Iterator[None]:
    """While inside, pickle names the classes as the version before the rename did."""
    saved = [(cls, cls.__module__, cls.__qualname__) for cls in (ConnectionState, BookSync)]
    ConnectionState.__module__, ConnectionState.__qualname__ = "streams.feed", "Connection"
    BookSync.__module__, BookSync.__qualname__ = "streams.feed", "BookState"
    try:
        yield
    finally:
        for cls, module, qualname in saved:
            cls.__module__, cls.__qualname__ = module, qualname


def _synced(processor: FeedProcessor) -> Feed:
    feed = Feed("binance", "binance.a.0", processor)
    feed.open(WS_URL, ["NKNUSDT"])
    feed.rest(BINANCE_INFO_URL, binance_info(("NKNUSDT", "NKN", "USDT")))
    feed.rest(DEPTH_URL, json.dumps({"lastUpdateId": 100, "bids": [["0.10", "5"]], "asks": [["0.11", "5"]]}))
    return feed


def _diff(feed: Feed, update_id: int, bid_size: str) -> FeedOutput:
    data = {"e": "depthUpdate", "E": 1_786_000_000_000 + update_id, "s": "NKNUSDT"}
    data |= {"U": update_id, "u": update_id, "b": [["0.10", bid_size]], "a": []}
    return feed.recv(json.dumps({"stream": "nknusdt@depth@100ms", "data": data}))


def test_a_checkpoint_naming_the_old_classes_restores_and_continues() -> None:
    feed = _synced(processor_for("binance", SAMPLE_CLOCK))
    assert type(feed.proc._connections["binance.a.0"]) is ConnectionState
    with _old_class_names():
        blob = pickle.dumps(feed.proc, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"BookState" in blob and b"BookSync" not in blob and b"ConnectionState" not in blob

    feed.proc = pickle.loads(blob)
    conn = feed.proc._connections["binance.a.0"]
    assert type(conn) is ConnectionState and type(conn.books["NKNUSDT"]) is BookSync
    out = _diff(feed, 101, "6")
    assert [(change.conn, change.snapshot) for change in out.books] == [("binance.a.0", False)]
    assert [bbo.bid_size for bbo in out.bbos] == [6.0]
