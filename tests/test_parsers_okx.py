"""OKX v5 parser: the real 2022 books frames (live checksums) and the current doc seqId examples."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from feed_helpers import OKX_INSTRUMENTS_URL, Feed, empty, okx_instruments, published
from samples import messages

from marketpipe.records import Level

INFO = okx_instruments(("BTC-USDT", "BTC", "USDT"))


def connected() -> Feed:
    feed = Feed("okx")
    feed.open("wss://ws.okx.com:8443/ws/v5/public", ["BTC-USDT"])
    feed.rest(OKX_INSTRUMENTS_URL, INFO)
    return feed


def real_books() -> list[str]:
    return [*messages("okx.json", "book_snapshot"), *messages("okx.json", "book_update")]


def doc(index: int) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(messages("okx.json", "doc_examples_with_seqId")[index])
    return frame


def update_from_doc(prev: int, seq: int, asks: list[list[str]], bids: list[list[str]]) -> str:
    frame = copy.deepcopy(doc(1))
    frame["data"][0].update(prevSeqId=prev, seqId=seq, asks=asks, bids=bids)
    return json.dumps(frame)


def test_trades_field_by_field() -> None:
    feed = connected()
    out = feed.recv_all(messages("okx.json", "trade"))
    assert len(out.trades) == 3 and not out.errors
    first = out.trades[0]
    assert (first.exchange, first.symbol, first.exchange_symbol) == ("okx", "BTC-USDT", "BTC-USDT")
    assert (first.trade_id, first.price, first.size, first.side) == ("338476307", 30236.0, 0.0002, "buy")
    assert first.ts == 1652459224818 * 1000


def test_real_checksums_verify_on_snapshot_and_every_update() -> None:
    feed = connected()
    out = feed.recv_all(real_books())
    assert not out.errors and not out.control
    assert feed.proc.counters.checksums_verified == 5
    expected = [json.loads(frame)["data"][0]["checksum"] for frame in real_books()]
    assert [change.checksum for change in out.books] == expected
    first_update = json.loads(real_books()[1])["data"][0]
    assert out.books[1].asks == [Level(float(row[0]), float(row[1])) for row in first_update["asks"]]
    assert out.books[1].ts == int(first_update["ts"]) * 1000


@pytest.mark.parametrize(
    ("old", "new"), [('["30243.5","1.2112"', '["30243.5","1.21120"'), ('"1.2112"', '"1.2113"')]
)
def test_corrupted_update_fails_its_checksum(old: str, new: str) -> None:
    feed = connected()
    feed.recv(real_books()[0])
    corrupted = real_books()[1].replace(old, new, 1)
    assert corrupted != real_books()[1]
    out = feed.recv(corrupted)
    assert not published(out)
    assert [(s.state, s.reason) for s in out.status] == [("unsynced", "checksum")]
    assert [c.reason for c in out.control] == ["checksum"]
    assert empty(feed.recv_all(real_books()[2:]))
    assert feed.proc.counters.checksum_failures == 1


def test_doc_sequence_with_keepalive_and_reset() -> None:
    """The documented sequence: snapshot (-1->123456), update, no-change keep-alive, reset, update."""
    feed = connected()
    out = feed.recv(json.dumps(doc(0)))
    assert out.books[0].snapshot and out.books[0].last_update_id == 123456 and out.books[0].checksum is None
    out = feed.recv(json.dumps(doc(1)))
    assert (out.books[0].first_update_id, out.books[0].last_update_id) == (123456, 123457)
    keepalive = feed.recv(update_from_doc(123457, 123457, [], []))
    assert empty(keepalive) and feed.proc.counters.heartbeats == 1
    reset = feed.recv(update_from_doc(123457, 3, [["8477", "9", "0", "2"]], []))
    assert not reset.control and reset.books[0].last_update_id == 3
    assert reset.books[0].asks == [Level(8477.0, 9.0)]
    after = feed.recv(update_from_doc(3, 5, [], [["8476.97", "0", "0", "0"]]))
    assert not after.control and after.books[0].bids == [Level(8476.97, 0.0)]
    assert after.bbos[0].bid_price == 8475.55
    gap = feed.recv(update_from_doc(7, 9, [], []))
    assert not published(gap) and [s.reason for s in gap.status] == ["gap"]
    assert feed.proc.counters.sequence_gaps == 1


def test_keepalive_with_a_stale_seq_is_a_gap() -> None:
    feed = connected()
    feed.recv(json.dumps(doc(0)))
    out = feed.recv(update_from_doc(123455, 123455, [], []))
    assert [c.reason for c in out.control] == ["gap"]


def test_control_frames_are_counted() -> None:
    feed = connected()
    frames = [
        *messages("okx.json", "ack"),
        messages("okx.json", "doc_examples_with_seqId")[2],
        "pong",
        '{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service upgrade."}',
    ]
    assert empty(feed.recv_all(frames))
    counters = feed.proc.counters
    assert (counters.acks, counters.heartbeats, counters.notices) == (4, 1, 1)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"event":"error","code":"60012","msg":"Invalid request"}', "okx error 60012"),
        ('{"arg":{"channel":"price-limit","instId":"BTC-USDT"},"data":[]}', "unsupported okx channel"),
        (
            '{"arg":{"channel":"mark-price","instId":"BTC-USDT"},"data":[{"markPx":"1"}]}',
            "malformed okx mark-price",
        ),
        ('{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":{}}', "malformed okx trades"),
        ('{"data":[]}', "neither an event nor a push"),
        ("ping", "invalid JSON"),
    ],
)
def test_bad_frames(frame: str, reason: str) -> None:
    out = connected().recv(frame)
    assert len(out.errors) == 1 and reason in out.errors[0][1], out.errors
