"""KuCoin parser on the real 2021 frames (SNX-BTC level2 deltas + the REST snapshot of the same
session, DAPPT-BTC matches, welcome/ack) and on constructed variants in the current doc shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from feed_helpers import Feed, empty, published
from samples import messages

from marketpipe.records import Level
from streams.parsers.kucoin import parse_instruments

SYMBOLS_URL = "https://api.kucoin.com/api/v2/symbols"
SNAPSHOT_URL = "https://api.kucoin.com/api/v1/market/orderbook/level2_100?symbol=SNX-BTC"


def symbols_body(*pairs: tuple[str, str, str], one: bool = False) -> str:
    rows = [
        {"symbol": s, "name": s, "baseCurrency": b, "quoteCurrency": q, "enableTrading": True}
        for s, b, q in pairs
    ]
    return json.dumps({"code": "200000", "data": rows[0] if one else rows})


def connected() -> Feed:
    feed = Feed("kucoin")
    feed.open("wss://ws-api-spot.kucoin.com/?token=REDACTED&connectId=x", ["SNX-BTC", "DAPPT-BTC"])
    feed.rest(SYMBOLS_URL, symbols_body(("SNX-BTC", "SNX", "BTC"), ("DAPPT-BTC", "DAPPT", "BTC")))
    return feed


def snapshot(sequence: int | None = None) -> str:
    frame = messages("kucoin.json", "book_snapshot")[0]
    if sequence is None:
        return frame
    body = json.loads(frame)
    body["data"]["sequence"] = str(sequence)
    return json.dumps(body)


def deltas() -> list[str]:
    return messages("kucoin.json", "book_update")


def delta_data(index: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(deltas()[index])["data"]
    return data


def delta(start: int, end: int, asks: list[list[str]], bids: list[list[str]], **extra: Any) -> str:
    """A constructed trade.l2update in the shape of the real frames."""
    frame = json.loads(deltas()[0])
    frame["data"].update(sequenceStart=start, sequenceEnd=end, changes={"asks": asks, "bids": bids}, **extra)
    return json.dumps(frame)


def test_instruments_from_the_list_and_the_single_symbol_responses() -> None:
    assert parse_instruments(symbols_body(("SNX-BTC", "SNX", "BTC")).encode()) == {"SNX-BTC": "SNX-BTC"}
    one = symbols_body(("BCHSV-USDT", "BSV", "USDT"), one=True).encode()
    assert parse_instruments(one) == {"BCHSV-USDT": "BSV-USDT"}, "named from the currency fields"


def test_per_symbol_metadata_names_the_records() -> None:
    feed = Feed("kucoin")
    feed.rest(f"{SYMBOLS_URL}/BCHSV-USDT", symbols_body(("BCHSV-USDT", "BSV", "USDT"), one=True))
    frame = messages("kucoin.json", "trade")[0].replace("DAPPT-BTC", "BCHSV-USDT")
    out = feed.recv(frame)
    assert [(t.symbol, t.exchange_symbol) for t in out.trades] == [("BSV-USDT", "BCHSV-USDT")]


def test_trades_field_by_field() -> None:
    out = connected().recv_all(messages("kucoin.json", "trade"))
    assert not out.errors and len(out.trades) == 2
    first, second = out.trades
    assert (first.exchange, first.symbol, first.exchange_symbol) == ("kucoin", "DAPPT-BTC", "DAPPT-BTC")
    assert (first.trade_id, first.price, first.size, first.side) == (
        "6085c09769bc506996295e36",
        0.0000001117,
        81.8814,
        "buy",
    )
    assert first.ts == 1619378327739050  # time is in nanoseconds
    assert (second.trade_id, second.price, second.size) == ("6085c09769bc506996295e37", 0.0000001119, 0.0267)


def test_real_deltas_are_contiguous_and_older_than_the_real_snapshot() -> None:
    """Bridging on the real session: all three deltas (1654..1656) end at or below the snapshot's
    sequence (1657), so they are dropped and the snapshot alone syncs the book."""
    ends = [(delta_data(i)["sequenceStart"], delta_data(i)["sequenceEnd"]) for i in range(3)]
    assert all(start == prev_end + 1 for (start, _), (_, prev_end) in zip(ends[1:], ends, strict=False))
    feed = connected()
    assert empty(feed.recv_all(deltas()))  # buffered until the snapshot
    out = feed.rest(SNAPSHOT_URL, snapshot())
    assert not out.errors and not out.control
    (book,) = out.books
    real = json.loads(snapshot())["data"]
    assert book.snapshot and book.last_update_id == int(real["sequence"]) == 1612844051657
    assert book.ts == real["time"] * 1000
    assert len(book.bids) == len(real["bids"]) and len(book.asks) == len(real["asks"])
    assert book.bids[0] == Level(0.00028678, 3.70422021) and book.asks[0] == Level(0.00028717, 14.04274325)
    assert [s.state for s in out.status] == ["synced"]
    assert out.bbos[0].bid_price == 0.00028678 and out.bbos[0].ask_price == 0.00028717
    # the next update must start right after the snapshot's sequence
    assert not feed.recv(
        delta(1612844051658, 1612844051658, [], [["0.0002867", "1", "1612844051658"]])
    ).control
    gap = feed.recv(delta(1612844051660, 1612844051660, [], [["0.0002866", "1", "1612844051660"]]))
    assert not published(gap) and [c.reason for c in gap.control] == ["gap"]
    assert feed.proc.counters.sequence_gaps == 1


def test_real_deltas_apply_after_an_earlier_snapshot() -> None:
    """The real deltas on a snapshot taken just before them: a delete, a sequence-only entry, an add."""
    feed = connected()
    feed.rest(SNAPSHOT_URL, snapshot(1612844051653))
    first = feed.recv(deltas()[0])
    assert first.books[0].asks == [Level(0.00028718, 0.0)]
    assert (first.books[0].first_update_id, first.books[0].last_update_id) == (1612844051654,) * 2
    only_sequence = feed.recv(deltas()[1])  # ["0","0",seq]: nothing changes, the sequence advances
    assert only_sequence.books[0].asks == [] and only_sequence.books[0].last_update_id == 1612844051655
    added = feed.recv(deltas()[2])
    assert added.books[0].asks == [Level(0.00028734, 14.05828264)] and not added.control
    state = feed.proc._connections[feed.conn].books["SNX-BTC"]
    assert state.book.asks.sizes[0.00028734] == 14.05828264
    assert feed.proc.counters.sequence_gaps == 0


def test_update_straddling_the_snapshot_applies_only_the_newer_changes() -> None:
    """The documented bridging example: snapshot sequence 16, an update spanning 15..19."""
    feed = connected()
    feed.recv(
        delta(
            15,
            19,
            [["0.00028717", "3", "16"], ["0.00028719", "0", "19"], ["0.00028737", "8", "15"]],
            [["0.00028678", "44", "18"]],
        )
    )
    out = feed.rest(SNAPSHOT_URL, snapshot(16))
    assert not out.control and len(out.books) == 2
    update = out.books[1]
    assert update.asks == [Level(0.00028719, 0.0)] and update.bids == [Level(0.00028678, 44.0)]
    book = feed.proc._connections[feed.conn].books["SNX-BTC"].book
    assert 0.00028719 not in book.asks.sizes and book.asks.sizes[0.00028717] == 14.04274325
    assert book.asks.sizes[0.00028737] == 0.01376935 and book.bids.sizes[0.00028678] == 44.0


def test_snapshot_older_than_the_buffered_updates_is_a_gap() -> None:
    feed = connected()
    feed.recv_all(deltas())
    out = feed.rest(SNAPSHOT_URL, snapshot(1612844051650))
    assert not published(out) and [c.reason for c in out.control] == ["gap"]
    # the resync snapshot bridges the buffered updates
    again = feed.rest(SNAPSHOT_URL, snapshot(1612844051654))
    assert [s.state for s in again.status] == ["synced"] and len(again.books) == 3
    assert again.books[-1].last_update_id == 1612844051656


def test_current_doc_shape_with_time() -> None:
    feed = connected()
    feed.rest(SNAPSHOT_URL, snapshot(1612844051657))
    out = feed.recv(
        delta(1612844051658, 1612844051658, [["0.0003", "1.5", "1612844051658"]], [], time=1729816425625)
    )
    assert out.books[0].ts == 1729816425625 * 1000


def test_control_frames_are_counted() -> None:
    feed = connected()
    frames = [*messages("kucoin.json", "ack"), '{"id":"1729","type":"pong","timestamp":1729816425625000}']
    assert empty(feed.recv_all(frames))
    assert (feed.proc.counters.acks, feed.proc.counters.heartbeats) == (2, 1)
    assert empty(feed.feed("sent", messages("kucoin.json", "ack")[1]))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"id":"1","type":"error","code":404,"data":"topic /market/x is not found"}', "kucoin error 404"),
        (
            '{"type":"message","topic":"/market/ticker:BTC-USDT","subject":"trade.ticker","data":{}}',
            "subject",
        ),
        ('{"type":"surprise"}', "unsupported kucoin frame type"),
        ('{"type":"message","subject":"trade.l2update","data":{"symbol":"SNX-BTC"}}', "missing field"),
        ("{broken", "invalid JSON"),
    ],
)
def test_bad_frames(frame: str, reason: str) -> None:
    out = connected().recv(frame)
    assert len(out.errors) == 1 and reason in out.errors[0][1], out.errors


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"code":"400100","msg":"symbol not exists"}', "kucoin level2 snapshot error 400100"),
        ('{"code":"200000","data":{"sequence":null,"bids":null,"asks":null}}', "has no sequence"),
    ],
)
def test_bad_snapshots(body: str, reason: str) -> None:
    out = connected().rest(SNAPSHOT_URL, body)
    assert len(out.errors) == 1 and reason in out.errors[0][1], out.errors


def test_unknown_rest_response_is_rejected() -> None:
    out = connected().rest("https://api.kucoin.com/api/v1/market/histories?symbol=SNX-BTC", "{}")
    assert len(out.errors) == 1 and "unrecognised kucoin REST response" in out.errors[0][1]
