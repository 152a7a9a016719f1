"""Order book structure and the validated-book rules shared by every exchange."""

from __future__ import annotations

import random

import msgspec
import pytest
from feed_helpers import (
    BYBIT_INFO_URL,
    OKX_INSTRUMENTS_URL,
    Feed,
    bybit_instruments,
    okx_instruments,
    published,
)
from samples import messages

from marketpipe.raw import RawRecord
from streams.book import BookSide, OrderBook
from streams.feed import FeedOutput
from streams.parsers import EXCHANGES, processor_for


def test_side_keeps_prices_sorted_and_deletes() -> None:
    asks = BookSide(is_bid=False)
    for price, size in [(10.5, 1.0), (10.1, 2.0), (11.0, 3.0), (10.1, 4.0), (9.9, 0.0)]:
        asks.set(price, size)
    assert asks.prices == [10.1, 10.5, 11.0] and asks.sizes[10.1] == 4.0
    assert asks.best() == (10.1, 4.0) and asks.top_prices(2) == [10.1, 10.5]
    asks.set(10.1, 0.0)
    assert asks.best() == (10.5, 1.0) and 10.1 not in asks.sizes


def test_bid_side_order_truncate_and_levels() -> None:
    bids = BookSide(is_bid=True, keep_text=True)
    bids.load_text([(1.0, 1.0, "1.0:1"), (3.0, 3.0, "3.0:3"), (2.0, 2.0, "2.0:2"), (0.5, 0.0, "0.5:0")])
    assert bids.levels() == [(3.0, 3.0), (2.0, 2.0), (1.0, 1.0)]
    assert bids.top_prices(2) == [3.0, 2.0] and bids.top_prices(10) == [3.0, 2.0, 1.0]
    assert bids.truncate(2) == [1.0]
    assert bids.levels() == [(3.0, 3.0), (2.0, 2.0)] and bids.texts == {3.0: "3.0:3", 2.0: "2.0:2"}


def test_book_bbo_and_crossed() -> None:
    book = OrderBook()
    assert book.bbo() is None and not book.is_crossed()
    book.bids.load([(99.0, 1.0), (98.0, 2.0)])
    book.asks.load([(101.0, 3.0)])
    assert book.bbo() == (99.0, 1.0, 101.0, 3.0)
    book.bids.set(101.0, 1.0)
    assert book.is_crossed()


def _bybit() -> Feed:
    feed = Feed("bybit")
    feed.open("wss://stream.bybit.com/v5/public/spot", ["BTCUSDT"])
    feed.rest(BYBIT_INFO_URL, bybit_instruments(("BTCUSDT", "BTC", "USDT")))
    return feed


def test_close_unsyncs_every_book_once_and_nothing_is_published_after() -> None:
    feed = _bybit()
    feed.recv(messages("bybit.json", "book_snapshot")[0])
    out = feed.close(1006, "abnormal")
    ((status),) = out.status
    assert (status.state, status.reason, status.conn) == ("unsynced", "close", feed.conn)
    assert "abnormal" in status.detail
    assert [(c.action, c.reason, c.conn) for c in out.control] == [("resync", "close", feed.conn)]
    assert not published(out)


def test_reconnect_is_a_new_connection_with_its_own_book() -> None:
    first = _bybit()
    first.recv(messages("bybit.json", "book_snapshot")[0])
    first.close()
    second = Feed("bybit", conn="bybit.t1.1", processor=first.proc)
    second.open("wss://stream.bybit.com/v5/public/spot", ["BTCUSDT"])
    assert not published(second.recv(messages("bybit.json", "book_update")[0]))  # no snapshot yet here
    out = second.recv(messages("bybit.json", "book_snapshot")[0])
    assert out.books[0].conn == "bybit.t1.1" and [s.state for s in out.status] == ["synced"]
    assert first.proc.counters.books_synced == {"BTC-USDT"}


def test_same_input_gives_the_same_output() -> None:
    def run() -> bytes:
        feed = Feed("okx")
        feed.rest(OKX_INSTRUMENTS_URL, okx_instruments(("BTC-USDT", "BTC", "USDT")))
        frames = [*messages("okx.json", "book_snapshot"), *messages("okx.json", "book_update")]
        out = feed.recv_all([*frames, *messages("okx.json", "trade")])
        out2 = feed.close()
        return msgspec.json.encode([out.books, out.bbos, out.trades, out2.status, out2.control])

    assert run() == run()


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_process_never_raises_on_garbage(exchange: str) -> None:
    rng = random.Random(7)
    proc = processor_for(exchange)
    out = FeedOutput()
    shapes = [
        b"\x00\xff",
        b"null",
        b"[]",
        b"{}",
        b'{"data":7}',
        b'{"channel":"book","type":"update","data":[{}]}',
        b'[1,{"a":[["x","y","z"]],"c":"1"},"book-10","XBT/USD"]',
        b'{"topic":"orderbook.1.X","type":"delta","data":{"s":"X","u":"a","b":[],"a":[]}}',
        b'{"arg":{"channel":"books","instId":"A-B"},"action":"update","data":[{"asks":[["1"]],"bids":[]}]}',
        b'{"channel":"l2_data","sequence_num":"x","events":[]}',
    ]
    kinds = ("recv", "rest", "sent", "open", "close")
    for index in range(300):
        data = (
            rng.choice(shapes) if index % 2 else bytes(rng.randrange(256) for _ in range(rng.randrange(12)))
        )
        kind = rng.choice(kinds)
        url = "https://x/api/v3/depth?symbol=X" if kind == "rest" and index % 3 else "wss://x"
        proc.process(RawRecord(exchange, "c", index, kind, index, data, url), out)  # type: ignore[arg-type]
    assert all(isinstance(reason, str) and reason for _, reason in out.errors)
    assert proc.counters.parse_errors == len(out.errors) > 0
