"""Gate.io v4 spot parser on the real 2021 frames: subscribe acks, spot.trades, and the HAI_ETH
spot.order_book_update deltas bridged by the REST snapshot taken in the same session (id=2691446)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from feed_helpers import Feed, empty, published
from samples import load_sample, messages

from marketpipe.exchanges.gateio import create_time_ms_to_us, parse_instruments
from marketpipe.records import Level

WS_URL = "wss://api.gateio.ws/ws/v4/"
PAIRS_URL = "https://api.gateio.ws/api/v4/spot/currency_pairs"
BOOK_URL = "https://api.gateio.ws/api/v4/spot/order_book?currency_pair=HAI_ETH&limit=100&with_id=true"
PAIRS = (("HAI_ETH", "HAI", "ETH"), ("DIS_USDT", "DIS", "USDT"), ("NEO_BTC", "NEO", "BTC"))


def pair(pair_id: str, base: str, quote: str) -> dict[str, Any]:
    """One currency_pairs entry in the documented shape (fields the parser does not read trimmed)."""
    return {
        "id": pair_id,
        "base": base,
        "quote": quote,
        "fee": "0.2",
        "min_quote_amount": "1",
        "amount_precision": 3,
        "precision": 8,
        "trade_status": "tradable",
        "sell_start": 0,
        "buy_start": 0,
    }


def connected() -> Feed:
    feed = Feed("gateio")
    feed.open(WS_URL, [p[0] for p in PAIRS])
    for pair_id, base, quote in PAIRS:  # the connector asks per pair: one object each
        assert not feed.rest(f"{PAIRS_URL}/{pair_id}", json.dumps(pair(pair_id, base, quote))).errors
    for sent in load_sample("gateio.json")["subscribe"]["captured_sent_frames"]:
        feed.feed("sent", sent)
    return feed


def snapshot_text() -> str:
    return messages("gateio.json", "book_snapshot")[0]


def updates() -> list[str]:
    return messages("gateio.json", "book_update")


def result(frame: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(frame)["result"]
    return found


def variant(frame: str, **changes: Any) -> str:
    """A real update frame with fields of ``result`` replaced."""
    msg = json.loads(frame)
    msg["result"].update(changes)
    return json.dumps(msg)


# ------------------------------------------------------------------------------ instruments


def test_instruments_from_the_list_and_from_one_pair() -> None:
    listed = json.dumps([pair(*p) for p in PAIRS]).encode()
    assert parse_instruments(listed) == {"HAI_ETH": "HAI-ETH", "DIS_USDT": "DIS-USDT", "NEO_BTC": "NEO-BTC"}
    assert parse_instruments(json.dumps(pair("QTUM3S_USDT", "QTUM3S", "USDT")).encode()) == {
        "QTUM3S_USDT": "QTUM3S-USDT"
    }


def test_instrument_error_body_is_a_clear_dead_letter() -> None:
    feed = Feed("gateio")
    out = feed.rest(
        f"{PAIRS_URL}/NOPE_USDT", '{"label":"INVALID_CURRENCY_PAIR","message":"Invalid currency pair"}'
    )
    ((_, reason),) = out.errors
    assert "INVALID_CURRENCY_PAIR" in reason
    out = feed.rest(PAIRS_URL, '"nothing"')
    ((_, reason),) = out.errors
    assert "neither a list nor an object" in reason


# ----------------------------------------------------------------------------------- trades


def test_trades_field_by_field() -> None:
    feed = connected()
    frames = messages("gateio.json", "trade")
    out = feed.recv_all(frames)
    assert not out.errors
    first, second = out.trades
    payload = result(frames[0])
    assert (first.exchange, first.symbol, first.exchange_symbol) == ("gateio", "DIS-USDT", "DIS_USDT")
    assert first.trade_id == str(payload["id"]) == "816995772"
    assert (first.price, first.size, first.side) == (121.58, 0.201, "sell")
    assert first.ts == 1619093543708264  # create_time_ms "1619093543708.2642": µs kept, the rest cut
    assert first.recv_ts == feed.records[-2].recv_ns // 1000 and first.seq == feed.records[-2].seq
    assert (second.symbol, second.price, second.size, second.side) == ("NEO-BTC", 0.0018735, 0.5, "buy")
    assert second.ts == 1619093546958116
    assert feed.proc.counters.trades == 2


def test_create_time_ms_fractions() -> None:
    assert create_time_ms_to_us("1619093546958.116") == 1619093546958116
    assert create_time_ms_to_us("1619093546958.1") == 1619093546958100
    assert create_time_ms_to_us("1619093546958") == 1619093546958000


def test_pair_without_metadata_is_read_by_the_documented_rule_or_dead_lettered() -> None:
    feed = Feed("gateio")
    out = feed.recv(messages("gateio.json", "trade")[0])
    (trade,) = out.trades
    assert (trade.symbol, trade.exchange_symbol) == ("DIS-USDT", "DIS_USDT") and not out.errors
    frame = json.loads(messages("gateio.json", "trade")[1])
    frame["result"]["currency_pair"] = "NEO_BTC_X"  # not BASE_QUOTE: ambiguous without metadata
    out = feed.recv(json.dumps(frame))
    ((_, reason),) = out.errors
    assert not out.trades and "unknown gateio symbol 'NEO_BTC_X'" in reason
    assert feed.proc.counters.dead_letters == {"unknown_symbol": 1}


# --------------------------------------------------------------------------- control frames


def test_real_acks_and_pong_are_counted_errors_are_dead_letters() -> None:
    feed = connected()
    assert empty(feed.recv_all(messages("gateio.json", "ack")))
    assert feed.proc.counters.acks == 2
    assert empty(
        feed.recv(
            '{"time":1619093600,"time_ms":1619093600123,"channel":"spot.pong","event":"","result":null}'
        )
    )
    assert feed.proc.counters.heartbeats == 1
    refused = (
        '{"time":1,"channel":"spot.order_book_update","event":"subscribe",'
        '"error":{"code":2,"message":"unknown currency pair: NOPE_USDT"},"result":null}'
    )
    ((_, reason),) = feed.recv(refused).errors
    assert "spot.order_book_update subscribe error 2" in reason and "NOPE_USDT" in reason
    ((_, reason),) = feed.recv(variant(messages("gateio.json", "ack")[0], status="fail")).errors
    assert "unrecognised" in reason or "not successful" in reason
    ((_, reason),) = feed.recv('{"time":1,"channel":"spot.book_ticker","event":"update","result":{}}').errors
    assert "unsupported gateio channel 'spot.book_ticker'" in reason


@pytest.mark.parametrize("frame", ["", "{", "[]", '{"channel":"spot.trades","event":"update","result":{}}'])
def test_garbage_is_a_parse_error_with_a_reason(frame: str) -> None:
    feed = connected()
    ((_, reason),) = feed.recv(frame).errors
    assert reason


# ------------------------------------------------------------------------------------ books


def test_real_frames_satisfy_the_bridging_and_contiguity_rules() -> None:
    """The rules the processor enforces, checked directly on the captured session."""
    snapshot_id = json.loads(snapshot_text())["id"]
    ids = [(result(f)["U"], result(f)["u"]) for f in updates()]
    live = [(first, last) for first, last in ids if last > snapshot_id]
    assert ids[0] == (snapshot_id, snapshot_id)  # dropped: u <= id
    assert live[0][0] <= snapshot_id + 1 <= live[0][1]
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(live))


def test_snapshot_bridging_on_real_frames_drops_first_update_applies_next() -> None:
    feed = connected()
    assert empty(feed.recv(updates()[0]))  # buffered: no snapshot yet
    out = feed.rest(BOOK_URL, snapshot_text())
    snapshot = json.loads(snapshot_text())
    assert not out.errors
    (change,) = out.books  # the snapshot; the buffered update (u == id) was dropped
    assert change.snapshot and change.last_update_id == 2691446
    assert change.bids == [Level(float(p), float(q)) for p, q in snapshot["bids"]]
    assert change.asks == [Level(float(p), float(q)) for p, q in snapshot["asks"]]
    assert change.symbol == "HAI-ETH" and change.ts == change.recv_ts == feed.recv_us(-1)
    (status,) = out.status
    assert (status.state, status.reason) == ("synced", "snapshot")
    (bbo,) = out.bbos
    assert (bbo.bid_price, bbo.ask_price) == (float(snapshot["bids"][0][0]), float(snapshot["asks"][0][0]))

    out = feed.recv(updates()[1])  # deletes the best bid and the best ask ("0" sizes)
    (change,) = out.books
    assert (change.first_update_id, change.last_update_id) == (2691447, 2691448)
    assert change.bids == [Level(0.00010322, 0.0)] and change.asks == [Level(0.00010396, 0.0)]
    assert change.ts == result(updates()[1])["t"] * 1000
    (bbo,) = out.bbos
    assert (bbo.bid_price, bbo.ask_price) == (float(snapshot["bids"][1][0]), float(snapshot["asks"][1][0]))

    out = feed.recv(updates()[2])  # U == previous u + 1: applied
    (change,) = out.books
    assert (change.first_update_id, change.last_update_id) == (2691449, 2691452)
    payload = result(updates()[2])
    (bbo,) = out.bbos
    expected = (*map(float, payload["b"][0]), *map(float, payload["a"][0]))
    assert (bbo.bid_price, bbo.bid_size, bbo.ask_price, bbo.ask_size) == expected
    assert not out.control and feed.proc.counters.books_synced == {"HAI-ETH"}
    assert feed.proc.counters.sequence_gaps == 0


def test_snapshot_before_any_update_gives_the_same_book() -> None:
    buffered, live = connected(), connected()
    buffered.recv(updates()[0])
    buffered.rest(BOOK_URL, snapshot_text())
    live.rest(BOOK_URL, snapshot_text())
    assert not published(live.recv(updates()[0]))  # u <= id: older than the snapshot, ignored
    assert live.proc.counters.stale_updates == 1
    a, b = buffered.recv_all(updates()[1:]), live.recv_all(updates()[1:])
    assert len(a.books) == 2 and [c.bids for c in a.books] == [c.bids for c in b.books]
    assert a.bbos[-1] == b.bbos[-1]


def test_gap_unsyncs_once_and_a_newer_snapshot_bridges_the_buffered_update() -> None:
    feed = connected()
    feed.rest(BOOK_URL, snapshot_text())
    out = feed.recv(updates()[2])  # update 1 (U=2691447) missed: U=2691449 skips past id 2691446
    assert not published(out)
    ((status), (control)) = (out.status[0], out.control[0])
    assert (status.state, status.reason, status.gaps, status.resyncs) == ("unsynced", "gap", 1, 1)
    assert (control.action, control.reason, control.exchange_symbol) == ("resync", "gap", "HAI_ETH")
    later = variant(updates()[2], U=2691453, u=2691455, b=[["0.00010335", "1"]], a=[])
    out = feed.recv(later)  # still unsynced: buffered, no second request
    assert empty(out)

    # the resync snapshot: the real one advanced by update 1 (id 2691448)
    book = json.loads(snapshot_text())
    book.update(id=2691448, bids=book["bids"][1:], asks=book["asks"][1:])
    out = feed.rest(BOOK_URL, json.dumps(book))
    assert [c.snapshot for c in out.books] == [True, False, False]
    assert [c.last_update_id for c in out.books] == [2691448, 2691452, 2691455]
    assert [s.state for s in out.status] == ["synced"]
    assert out.bbos[-1].bid_price == 0.00010335 and out.bbos[-1].bid_size == 1.0
    assert feed.proc.counters.resyncs == 1 and feed.proc.counters.sequence_gaps == 1


def test_overlapping_update_after_the_bridge_is_a_gap() -> None:
    """Only the first update after the snapshot may straddle; later ones must continue exactly."""
    feed = connected()
    feed.rest(BOOK_URL, snapshot_text())
    feed.recv(updates()[1])  # local id 2691448
    out = feed.recv(variant(updates()[2], U=2691448))  # overlaps the previous update
    assert not published(out) and [s.reason for s in out.status] == ["gap"]


def test_straddling_first_update_is_applied() -> None:
    feed = connected()
    feed.rest(BOOK_URL, snapshot_text())
    out = feed.recv(variant(updates()[1], U=2691440))  # U <= id+1 <= u
    assert published(out) and not out.status


def test_snapshot_older_than_the_buffered_updates_unsyncs() -> None:
    feed = connected()
    feed.recv(updates()[2])  # U=2691449
    out = feed.rest(BOOK_URL, snapshot_text())  # id 2691446: update 2691447..2691448 is missing
    assert not out.books and [s.reason for s in out.status] == ["gap"] and len(out.control) == 1
    out = feed.rest(BOOK_URL, snapshot_text())  # the resync answer is still too old: ask again
    assert not out.books and len(out.control) == 1


def test_snapshot_without_id_or_pair_is_a_dead_letter() -> None:
    feed = connected()
    no_id = json.loads(snapshot_text())
    del no_id["id"]
    ((_, reason),) = feed.rest(BOOK_URL, json.dumps(no_id)).errors
    assert "has no id" in reason
    ((_, reason),) = feed.rest(BOOK_URL.split("?")[0] + "?limit=100", snapshot_text()).errors
    assert "names no currency_pair" in reason


def test_close_unsyncs_the_book_and_requests_one_resync() -> None:
    feed = connected()
    feed.rest(BOOK_URL, snapshot_text())
    feed.recv(updates()[1])
    out = feed.close()
    assert [s.reason for s in out.status] == ["close"] and len(out.control) == 1


# -- tickers and candlesticks (gateio_ticker_kline.json) --------------------------------------------

TK = "gateio_ticker_kline.json"


def ticker_feed() -> Feed:
    feed = connected()
    rows = [pair(*p) for p in (*PAIRS, ("BTC_USDT", "BTC", "USDT"))]
    feed.rest(PAIRS_URL, json.dumps(rows))
    return feed


def test_real_ticker_field_by_field() -> None:
    feed = ticker_feed()
    out = feed.recv(messages(TK, "ticker")[2])
    assert out.errors == []
    (ticker,) = out.tickers
    assert (ticker.symbol, ticker.exchange_symbol) == ("BTC-USDT", "BTC_USDT")
    assert (ticker.last_price, ticker.bid_price, ticker.ask_price) == (29968.31, 29968.3, 29968.31)
    assert (ticker.high_24h, ticker.low_24h) == (32399.99, 29324.36)
    assert (ticker.volume_24h, ticker.quote_volume_24h) == (10676.32785905, 324419781.600232)
    assert ticker.ts == 1654161931_000000
    assert (ticker.bid_size, ticker.ask_size, ticker.open_24h, ticker.trades_24h) == (None, None, None, None)


def test_real_2021_tickers_and_ack() -> None:
    feed = ticker_feed()
    assert empty(feed.recv_all(messages(TK, "ack")))
    out = feed.recv_all(messages(TK, "ticker")[:2])
    assert out.errors == []
    assert [(t.symbol, t.ask_price) for t in out.tickers] == [("NEO-BTC", 0.0018734), ("NEO-BTC", 0.0018735)]


def test_real_candles_v_is_quote_and_a_is_base() -> None:
    feed = ticker_feed()
    out = feed.recv(messages(TK, "kline")[2])
    assert out.errors == []
    (candle,) = out.exchange_candles
    assert (candle.symbol, candle.interval, candle.open_time) == ("BTC-USDT", "1m", 1662803040_000000)
    assert (candle.open, candle.high, candle.low, candle.close) == (21352.26, 21352.26, 21342.41, 21342.41)
    assert (candle.volume, candle.quote_volume) == (0.1533, 3272.187909)
    assert candle.close_time == 1662803100_000000 and candle.ts == 1662803082_000000
    assert candle.closed is False, "no w: open until a later window arrives"


def test_real_2021_candles_without_a_or_w() -> None:
    feed = ticker_feed()
    out = feed.recv_all(messages(TK, "kline")[:2])
    assert out.errors == []
    assert [(c.symbol, c.volume, c.quote_volume, c.closed) for c in out.exchange_candles] == [
        ("DIS-USDT", None, 0.0, False),
        ("NEO-BTC", None, 0.0, False),
    ]


def test_doc_candle_with_w_true_is_final_and_uses_time_ms() -> None:
    feed = ticker_feed()
    (candle,) = feed.recv(messages(TK, "kline")[3]).exchange_candles
    assert candle.closed is True and candle.ts == 1606292600376000
    assert (candle.volume, candle.quote_volume) == (3.8283, 2362.32035)


def test_candle_without_w_is_final_once_a_later_window_arrives() -> None:
    feed = ticker_feed()
    frame = json.loads(messages(TK, "kline")[2])
    feed.recv(json.dumps(frame))
    frame["result"]["t"] = str(int(frame["result"]["t"]) + 60)
    out = feed.recv(json.dumps(frame))
    final, current = out.exchange_candles
    assert (final.open_time, final.closed) == (1662803040_000000, True)
    assert (current.open_time, current.closed) == (1662803100_000000, False)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"n": "2m_BTC_USDT"}, "unsupported gateio candlestick name"),
        ({"h": "1"}, "do not bound"),
        ({"v": "-3"}, "not a finite number >= 0"),
        ({"c": "x"}, "could not convert"),
    ],
)
def test_bad_candles_are_dead_lettered_with_a_reason(change: dict[str, str], reason: str) -> None:
    feed = ticker_feed()
    frame = json.loads(messages(TK, "kline")[2])
    frame["result"].update(change)
    out = feed.recv(json.dumps(frame))
    assert len(out.errors) == 1 and reason in out.errors[0][1], out.errors
    assert out.exchange_candles == []


def test_bad_ticker_is_dead_lettered() -> None:
    feed = ticker_feed()
    frame = json.loads(messages(TK, "ticker")[2])
    frame["result"]["last"] = "0"
    out = feed.recv(json.dumps(frame))
    assert len(out.errors) == 1 and "not a positive finite" in out.errors[0][1]


def test_a_final_w_frame_is_not_followed_by_a_stale_final_copy() -> None:
    feed = ticker_feed()
    frame = json.loads(messages(TK, "kline")[3])  # 1m BTC_USDT, w: true
    open_frame = json.loads(json.dumps(frame))
    del open_frame["result"]["w"]
    open_frame["result"]["c"] = open_frame["result"]["l"] = "19120"  # an earlier state of the window
    feed.recv(json.dumps(open_frame))
    (final,) = feed.recv(json.dumps(frame)).exchange_candles
    assert (final.closed, final.close) == (True, 19128.1)
    frame["result"].update(t=str(int(frame["result"]["t"]) + 60))
    del frame["result"]["w"]
    (current,) = feed.recv(json.dumps(frame)).exchange_candles
    assert (current.open_time, current.closed) == (1606292640_000000, False)
