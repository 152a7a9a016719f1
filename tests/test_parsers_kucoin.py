"""KuCoin parser on the real 2021 frames (SNX-BTC level2 deltas + the REST snapshot of the same
session, DAPPT-BTC matches, welcome/ack) and on constructed variants in the current doc shapes."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from feed_helpers import Feed, empty, published
from samples import messages

from marketpipe.exchanges.kucoin import parse_instruments
from marketpipe.records import Level

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
            '{"type":"message","topic":"/market/level3:BTC-USDT","subject":"trade.l3received","data":{}}',
            "unsupported kucoin subject",
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


# -- tickers and candles (kucoin_ticker_kline.json) -------------------------------------------------

TK = "kucoin_ticker_kline.json"


def ticker_feed() -> Feed:
    feed = connected()
    pairs = (("BCHSV-USDT", "BCHSV", "USDT"), ("BTC-USDT", "BTC", "USDT"), ("SNX-BTC", "SNX", "BTC"))
    feed.rest(SYMBOLS_URL, symbols_body(*pairs, ("DAPPT-BTC", "DAPPT", "BTC")))
    return feed


def test_real_bbo_ticker_field_by_field() -> None:
    feed = ticker_feed()
    assert empty(feed.recv_all(messages(TK, "ack")))
    out = feed.recv(messages(TK, "ticker")[0])
    assert out.errors == []
    (ticker,) = out.tickers
    assert (ticker.symbol, ticker.exchange_symbol) == ("SNX-BTC", "SNX-BTC")
    assert (ticker.last_price, ticker.last_size) == (0.00028676, 0.01745248)
    assert (ticker.bid_price, ticker.bid_size) == (0.00028678, 3.70422021)
    assert (ticker.ask_price, ticker.ask_size) == (0.00028717, 14.04274325)
    assert ticker.ts == 1619378326323000
    assert ticker.open_24h is None and ticker.volume_24h is None, "/market/ticker has no 24 h stats"


def test_real_snapshot_ticker_has_the_24h_stats() -> None:
    feed = ticker_feed()
    out = feed.recv(messages(TK, "ticker")[2])
    assert out.errors == []
    (ticker,) = out.tickers
    assert ticker.symbol == "BTC-USDT" and ticker.ts == 1654165082007000
    assert (ticker.open_24h, ticker.high_24h, ticker.low_24h, ticker.last_price) == (
        31610.0,
        31901.4,
        29299.9,
        29920.1,
    )
    assert (ticker.volume_24h, ticker.quote_volume_24h) == (21637.26053196, 657871182.640000212)
    assert ticker.bid_size is None and ticker.trades_24h is None


def test_the_two_ticker_topics_join_per_symbol() -> None:
    feed = ticker_feed()
    snapshot = json.loads(messages(TK, "ticker")[2])
    bbo = json.loads(messages(TK, "ticker")[1])  # BCHSV-USDT, re-addressed to BTC-USDT
    bbo["topic"] = "/market/ticker:BTC-USDT"
    first = feed.recv(json.dumps(bbo)).tickers[0]
    assert first.bid_price == 242.654 and first.open_24h is None
    joined = feed.recv(json.dumps(snapshot)).tickers[0]
    assert (joined.open_24h, joined.bid_price, joined.bid_size) == (31610.0, 242.654, 0.68148185)
    assert (joined.last_price, joined.last_size) == (29920.1, None), "a newer last trade: its size is unknown"
    again = feed.recv(json.dumps(bbo)).tickers[0]
    assert (again.last_price, again.open_24h, again.quote_volume_24h) == (
        243.65,
        31610.0,
        657871182.640000212,
    )


def test_real_candles_add_and_update_close_before_high() -> None:
    feed = ticker_feed()
    frames = messages(TK, "kline")
    first = feed.recv(frames[0]).exchange_candles
    assert [(c.open_time, c.closed, c.volume) for c in first] == [(1619378220000000, False, 0.0)]
    added = feed.recv(frames[1])
    assert added.errors == []
    final, current = added.exchange_candles
    assert (final.open_time, final.closed) == (1619378220000000, True), (
        "add of a new window: the last is final"
    )
    # candles: start, open, CLOSE, HIGH, LOW, volume, turnover
    assert (current.open, current.close, current.high, current.low) == (
        1.117e-07,
        1.123e-07,
        1.123e-07,
        1.117e-07,
    )
    assert (current.volume, current.quote_volume) == (3437.9375, 0.00038556424505)
    assert (current.interval, current.close_time, current.closed) == ("1m", 1619378340000000, False)
    assert current.ts == 1619378328806720, "data.time is in nanoseconds"
    (updated,) = feed.recv(frames[2]).exchange_candles
    assert (updated.open_time, updated.close, updated.volume, updated.closed) == (
        1619378280000000,
        1.126e-07,
        3799.1984,
        False,
    )


def test_real_weekly_candle() -> None:
    feed = ticker_feed()
    (candle,) = feed.recv(messages(TK, "kline")[3]).exchange_candles
    assert (candle.symbol, candle.interval) == ("BTC-USDT", "1w")
    assert candle.close_time - candle.open_time == 7 * 86_400_000_000
    assert (candle.open, candle.close, candle.high, candle.low) == (29543.6, 31613.8, 32406.7, 28014.1)


def test_bad_ticker_and_candle_frames_are_dead_lettered_with_a_reason() -> None:
    feed = ticker_feed()
    candle = json.loads(messages(TK, "kline")[1])
    bbo = json.loads(messages(TK, "ticker")[0])
    cases: dict[str, str] = {}
    short = json.loads(json.dumps(candle))
    short["data"]["candles"] = short["data"]["candles"][:5]
    cases[json.dumps(short)] = "is not [start, open, close, high, low, vol, turnover]"
    inverted = json.loads(json.dumps(candle))
    inverted["data"]["candles"][3] = "0.0000001000"  # high below the open
    cases[json.dumps(inverted)] = "do not bound"
    odd = json.loads(json.dumps(candle))
    odd["topic"] = "/market/candles:DAPPT-BTC_2min"
    cases[json.dumps(odd)] = "unsupported kucoin candle type"
    negative = json.loads(json.dumps(bbo))
    negative["data"]["bestBidSize"] = "-1"
    cases[json.dumps(negative)] = "not a finite number >= 0"
    untimed = json.loads(json.dumps(bbo))
    del untimed["data"]["time"]
    cases[json.dumps(untimed)] = "missing field 'time'"
    for frame, reason in cases.items():
        out = feed.recv(frame)
        assert len(out.errors) == 1 and reason in out.errors[0][1], (reason, out.errors)
        assert out.tickers == [] and out.exchange_candles == []


def test_the_ticker_join_and_candle_memory_survive_a_checkpoint() -> None:
    feed = ticker_feed()
    snapshot = json.loads(messages(TK, "ticker")[2])
    feed.recv(json.dumps(snapshot))
    feed.recv(messages(TK, "kline")[1])
    restored = Feed("kucoin", feed.conn, pickle.loads(pickle.dumps(feed.proc)))
    restored.seq = feed.seq
    bbo = json.loads(messages(TK, "ticker")[1])
    bbo["topic"] = "/market/ticker:BTC-USDT"
    (ticker,) = restored.recv(json.dumps(bbo)).tickers
    assert (ticker.bid_price, ticker.open_24h) == (242.654, 31610.0)
    later = json.loads(messages(TK, "kline")[1])
    later["data"]["candles"][0] = "1619378340"
    final, _ = restored.recv(json.dumps(later)).exchange_candles
    assert (final.open_time, final.closed) == (1619378280_000000, True)
