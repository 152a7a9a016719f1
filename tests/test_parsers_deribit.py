"""Deribit v2 parser on the real frames of ../shared/exchange-protocols/samples/deribit_derivatives.json
(read at test time): instruments, JSON-RPC answers and heartbeats, trades and liquidations, books
under the change_id rule, tickers (ticker, mark/index, funding, open interest), book summaries,
chart candles, and what is dead-lettered with which reason.

The captured get_instruments elements name BTC-PERPETUAL, BTC-25MAR22 and an option; the other
frames' instruments get metadata built from those captured rows with the name, expiry, strike or
currencies changed (``_row``), so every conversion is from real metadata fields."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from feed_helpers import Feed
from samples import messages

from marketpipe.codec import AvroCodec
from marketpipe.exchanges.deribit import parse_instruments
from producers.connectors.deribit import DeribitConnector
from producers.publisher import CaptureRawPublisher
from streams.feed import FeedOutput

SAMPLE = "deribit_derivatives.json"
WS_URL = "wss://www.deribit.com/ws/api/v2"
INSTRUMENTS_URL = "https://www.deribit.com/api/v2/public/get_instruments?currency={}&kind={}&expired=false"
MS = 1000


def _captured() -> dict[str, dict[str, Any]]:
    rows = [json.loads(row) for row in messages(SAMPLE, "instrument")]
    return {row["instrument_name"]: row for row in rows}


def _expiry_ms(day: str) -> int:
    """08:00 UTC of ``YYYY-MM-DD``, when Deribit's captured contracts expire."""
    return int(datetime.fromisoformat(f"{day}T08:00:00+00:00").timestamp() * 1000)


def _row(template: str, name: str, **changes: Any) -> dict[str, Any]:
    return {**_captured()[template], "instrument_name": name, **changes}


def _all_rows() -> list[dict[str, Any]]:
    """The captured rows and rows for every other instrument the sample frames name."""
    future, option = "BTC-25MAR22", "BTC-24JUN22-30000-C"
    return [
        *_captured().values(),
        _row(future, "BTC-26MAR21", expiration_timestamp=_expiry_ms("2021-03-26")),
        _row(future, "BTC-30SEP22", expiration_timestamp=_expiry_ms("2022-09-30")),
        _row(future, "BTC-24JUN22", expiration_timestamp=_expiry_ms("2022-06-24")),
        _row(option, "BTC-26MAR21-62000-C", strike=62000.0, expiration_timestamp=_expiry_ms("2021-03-26")),
        _row(
            option,
            "BTC-24SEP21-8000-P",
            strike=8000.0,
            option_type="put",
            expiration_timestamp=_expiry_ms("2021-09-24"),
        ),
        _row(
            option,
            "BTC-31DEC21-34000-P",
            strike=34000.0,
            option_type="put",
            expiration_timestamp=_expiry_ms("2021-12-31"),
        ),
        _row(
            "BTC-PERPETUAL",
            "LINK_USDC-PERPETUAL",
            base_currency="LINK",
            quote_currency="USDC",
            settlement_currency="USDC",
            instrument_type="linear",
            contract_size=0.1,
            min_trade_amount=0.1,
            tick_size=0.001,
        ),
    ]


def _answer(rows: list[dict[str, Any]]) -> str:
    return json.dumps(
        {"jsonrpc": "2.0", "result": rows, "usIn": 1, "usOut": 2, "usDiff": 1, "testnet": False}
    )


def _feed() -> Feed:
    feed = Feed("deribit")
    feed.open(WS_URL, [])
    out = feed.rest(INSTRUMENTS_URL.format("BTC", "future"), _answer(_all_rows()))
    assert out.errors == [] and len(out.instruments) == len(_all_rows())
    return feed


def _frame(kind: str, index: int) -> str:
    return messages(SAMPLE, kind)[index]


def _notification(channel: str, data: Any) -> str:
    return json.dumps(
        {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}}
    )


# -- instruments ------------------------------------------------------------------------------


def test_captured_instruments_are_named_from_their_metadata() -> None:
    found = parse_instruments(_answer(list(_captured().values())).encode())
    assert dict(found) == {
        "BTC-PERPETUAL": "BTC-USD-PERP-INV",
        "BTC-25MAR22": "BTC-USD-20220325-INV",
        "BTC-24JUN22-30000-C": "BTC-USD-20220624-30000-C-INV",
    }
    perp, future, option = (found.records[name] for name in found)
    assert (perp.kind, perp.contract_type, perp.settle_currency, perp.expiry_ts) == (
        "perpetual",
        "inverse",
        "BTC",
        None,
    )
    assert (perp.contract_size, perp.contract_size_currency, perp.tick_size, perp.lot_size) == (
        10.0,
        "USD",
        0.5,
        1.0,
    )
    assert (future.kind, future.expiry_ts, future.contract_size) == ("future", 1648195200000 * MS, 10.0)
    assert (option.kind, option.strike, option.option_type, option.expiry_ts) == (
        "option",
        30000.0,
        "call",
        1656057600000 * MS,
    )
    assert (option.contract_size, option.contract_size_currency, option.settle_currency) == (
        1.0,
        "BTC",
        "BTC",
    )
    codec = AvroCodec()
    records = found.stamped(1_700_000_000_000_000)
    assert [codec.decode(codec.encode(r)) for r in records] == records


def test_instrument_type_and_counter_currency_decide_when_present() -> None:
    linear = _row(
        "BTC-PERPETUAL",
        "SOL_USDC-PERPETUAL",
        base_currency="SOL",
        quote_currency="USDC",
        instrument_type="linear",
        settlement_currency="USDC",
        contract_size=0.1,
    )
    usdc_option = _row(
        "BTC-24JUN22-30000-C",
        "BTC_USDC-24JUN22-30000-C",
        quote_currency="USDC",
        counter_currency="USDC",
        instrument_type="linear",
        settlement_currency="USDC",
    )
    reversed_future = _row("BTC-25MAR22", "ETH-25MAR22", base_currency="ETH", instrument_type="reversed")
    combo = _row("BTC-25MAR22", "BTC-FS-25MAR22_PERP", kind="future_combo")
    odd = _row("BTC-PERPETUAL", "ODD-PERPETUAL", instrument_type="quanto-ish")
    found = parse_instruments(_answer([linear, usdc_option, reversed_future, combo, odd]).encode())
    assert dict(found) == {
        "SOL_USDC-PERPETUAL": "SOL-USDC-PERP",
        "BTC_USDC-24JUN22-30000-C": "BTC-USDC-20220624-30000-C",
        "ETH-25MAR22": "ETH-USD-20220325-INV",
    }
    sol = found.records["SOL_USDC-PERPETUAL"]
    assert (sol.contract_type, sol.contract_size, sol.contract_size_currency, sol.settle_currency) == (
        "linear",
        0.1,
        "SOL",
        "USDC",
    )
    assert "combos are not normalised" in found.skipped["BTC-FS-25MAR22_PERP"]
    assert "neither linear nor reversed" in found.skipped["ODD-PERPETUAL"]


def test_an_instruments_error_answer_is_one_dead_letter() -> None:
    feed = Feed("deribit")
    feed.open(WS_URL, [])
    error = {"jsonrpc": "2.0", "error": {"code": -32602, "message": "Invalid params"}, "testnet": False}
    out = feed.rest(INSTRUMENTS_URL.format("XYZ", "future"), json.dumps(error))
    ((_, reason),) = out.errors
    assert "deribit instruments error -32602: 'Invalid params'" in reason
    assert feed.proc.counters.dead_letters == {"instruments_unreadable": 1}


# -- answers and heartbeats ---------------------------------------------------------------------


def test_subscribe_result_and_heartbeat_answers_are_counted_not_dead_lettered() -> None:
    feed = _feed()
    out = feed.recv_all(messages(SAMPLE, "ack") + messages(SAMPLE, "heartbeat"))
    assert out.errors == [] and out.trades == []
    assert (feed.proc.counters.acks, feed.proc.counters.heartbeats) == (1, 1)
    test_request = '{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}'
    assert feed.recv(test_request).errors == [] and feed.proc.counters.heartbeats == 2


def test_the_connector_answers_a_test_request_with_public_test_only() -> None:
    connector = DeribitConnector(["BTC-USD-PERP-INV"], CaptureRawPublisher(Path("/dev/null")))
    heartbeat = '{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"%s"}}'
    answer = connector.answer_frame((heartbeat % "test_request").encode())
    assert answer is not None and json.loads(answer)["method"] == "public/test"
    assert connector.answer_frame((heartbeat % "heartbeat").encode()) is None
    assert connector.answer_frame(_frame("trade", 0).encode()) is None


def test_an_error_answer_is_dead_lettered_with_the_exchange_reason() -> None:
    feed = _feed()
    error = {"message": "raw_subscriptions_not_available_for_unauthorized", "code": 13778}
    frame = json.dumps({"jsonrpc": "2.0", "id": 7, "error": error})
    ((_, reason),) = feed.recv(frame).errors
    assert reason == "deribit error 13778: 'raw_subscriptions_not_available_for_unauthorized' (request id 7)"
    assert feed.proc.counters.dead_letters == {"exchange_error": 1}


# -- trades and liquidations ----------------------------------------------------------------


def test_trades_are_in_contracts_with_the_taker_side() -> None:
    feed = _feed()
    out = feed.recv_all(messages(SAMPLE, "trade"))
    assert out.errors == []
    assert [(t.symbol, t.exchange_symbol, t.trade_id, t.price, t.size, t.side, t.ts) for t in out.trades] == [
        ("BTC-USD-PERP-INV", "BTC-PERPETUAL", "137487241", 56168.0, 558.0, "buy", 1616321478553 * MS),
        ("BTC-USD-PERP-INV", "BTC-PERPETUAL", "137487242", 56168.0, 6.0, "buy", 1616321478553 * MS),
        ("BTC-USD-20210326-INV", "BTC-26MAR21", "137486952", 56273.5, 600.0, "buy", 1616321287195 * MS),
        (
            "BTC-USD-20210326-62000-C-INV",
            "BTC-26MAR21-62000-C",
            "137488100",
            0.007,
            0.1,
            "buy",
            1616321732986 * MS,
        ),
    ]
    assert out.liquidations == []
    assert feed.recv(_frame("trade", 0)).trades == []  # the same trades again: dropped
    assert feed.proc.counters.duplicates_dropped == 2


def test_liquidation_flags_give_liquidations_by_the_tardis_rule() -> None:
    """``T``: the taker (selling) was liquidated: a sell. ``M``: the maker of a taker buy was:
    the maker sold, so a long was liquidated: a sell."""
    feed = _feed()
    out = feed.recv_all(messages(SAMPLE, "liquidation"))
    assert out.errors == []
    assert [(t.trade_id, t.size, t.side) for t in out.trades] == [
        ("66460463", 112.0, "sell"),
        ("66460626", 250.0, "buy"),
    ]
    assert [(x.symbol, x.side, x.price, x.size, x.liquidation_id, x.ts) for x in out.liquidations] == [
        ("BTC-USD-PERP-INV", "sell", 4469.5, 112.0, "66460463", 1584058044032 * MS),
        ("BTC-USD-PERP-INV", "sell", 4458.5, 250.0, "66460626", 1584058067675 * MS),
    ]
    both = json.loads(_frame("liquidation", 0))
    both["params"]["data"][0].update(liquidation="MT", trade_id="1", direction="buy")
    assert [x.side for x in feed.recv(json.dumps(both)).liquidations] == ["sell"]
    again = feed.recv_all(messages(SAMPLE, "liquidation"))
    assert again.trades == [] and again.liquidations == []  # a trade seen before gives nothing


def test_an_unknown_liquidation_flag_is_a_dead_letter() -> None:
    feed = _feed()
    frame = json.loads(_frame("liquidation", 0))
    frame["params"]["data"][0]["liquidation"] = "X"
    out = feed.recv(json.dumps(frame))
    assert len(out.trades) == 1 and out.liquidations == []
    assert "liquidation flag 'X' is not T, M or MT" in out.errors[0][1]


# -- books --------------------------------------------------------------------------------------


def test_snapshot_then_changes_chained_by_change_id() -> None:
    feed = _feed()
    snapshot = feed.recv(_frame("book_snapshot", 0))
    (change,) = snapshot.books
    assert change.snapshot and change.symbol == "BTC-USD-20210924-8000-P-INV"
    assert [(lv.price, lv.size) for lv in change.bids] == [(0.0005, 153.1)]
    assert len(change.asks) == 14 and change.last_update_id == 33195894164
    first, second = (feed.recv(frame) for frame in messages(SAMPLE, "book_update")[:2])
    assert [(lv.price, lv.size) for lv in first.books[0].asks] == [(0.001, 2.6)]
    assert [(lv.price, lv.size) for lv in second.books[0].asks] == [(0.001, 0.0)]  # delete
    assert (second.books[0].first_update_id, second.books[0].last_update_id) == (33195894355, 33195894358)
    assert [b.ask_price for b in first.bbos + second.bbos] == [0.001, 0.0015]
    assert feed.proc.counters.sequence_gaps == 0


def test_perpetual_book_sizes_are_contracts_and_a_broken_chain_is_a_gap() -> None:
    feed = _feed()
    (snapshot,) = feed.recv(_frame("book_snapshot", 1)).books
    assert [(lv.price, lv.size) for lv in snapshot.bids] == [
        (37240.0, 2.0),
        (37237.0, 1427.0),
        (37233.0, 5.0),
    ]
    # the captured change is not the next one after this (trimmed) snapshot: prev_change_id differs
    out = feed.recv(_frame("book_update", 2))
    assert out.books == [] and [(s.state, s.reason) for s in out.status] == [("unsynced", "gap")]
    ((control),) = out.control
    assert (control.action, control.reason, control.exchange_symbol) == ("resync", "gap", "BTC-PERPETUAL")
    assert "prev_change_id 31479598064 after change_id 31479596557" in out.status[0].detail
    assert feed.recv(_frame("book_update", 2)).control == []  # one request per episode
    resynced = feed.recv(_frame("book_snapshot", 1))
    assert [(s.state, s.reason) for s in resynced.status] == [("synced", "snapshot")]
    chained = json.loads(_frame("book_update", 2))
    chained["params"]["data"]["prev_change_id"] = 31479596557
    (change,) = feed.recv(json.dumps(chained)).books
    assert [(lv.price, lv.size) for lv in change.bids] == [(36779.0, 0.0), (36809.5, 25487.0)]
    assert [(lv.price, lv.size) for lv in change.asks] == [(37462.5, 0.0), (37394.0, 4267.0)]


def test_a_snapshot_is_told_by_its_type_even_with_prev_change_id() -> None:
    """The LINK_USDC snapshot carries prev_change_id 20: read as a change it would be a gap."""
    feed = _feed()
    out = feed.recv(_frame("book_snapshot", 2))
    assert out.errors == [] and [(s.state, s.reason) for s in out.status] == [("synced", "snapshot")]
    (book,) = out.books
    assert book.snapshot and book.symbol == "LINK-USDC-PERP" and book.asks == []
    assert [(lv.price, lv.size) for lv in book.bids][:2] == [(7.562, 340.0), (7.561, 3290.0)]  # 0.1 LINK each


def test_updates_before_any_snapshot_ask_for_one() -> None:
    feed = _feed()
    out = feed.recv(_frame("book_update", 0))
    assert out.books == [] and [c.reason for c in out.control] == ["gap"]


# -- tickers and book summaries -------------------------------------------------------------------


def test_perpetual_ticker_gives_ticker_mark_funding_and_open_interest() -> None:
    feed = _feed()
    out = feed.recv(_frame("ticker", 0))
    assert out.errors == []
    (ticker,) = out.tickers
    ts = 1654161785818 * MS
    assert (
        ticker.symbol,
        ticker.last_price,
        ticker.bid_price,
        ticker.bid_size,
        ticker.ask_size,
        ticker.ts,
    ) == ("BTC-USD-PERP-INV", 29931.0, 29930.5, 14991.0, 6285.0, ts)
    assert (ticker.high_24h, ticker.low_24h, ticker.volume_24h, ticker.quote_volume_24h) == (
        31903.5,
        29265.5,
        17945.19644566,
        545442610.0,
    )
    ((mark,), (funding,), (oi,)) = out.mark_prices, out.funding, out.open_interest
    assert (mark.mark_price, mark.index_price, mark.settle_price, mark.ts) == (29932.79, 29930.44, None, ts)
    assert (funding.rate, funding.predicted_rate, funding.next_funding_ts, funding.interval_s) == (
        0.0,
        None,
        None,
        None,
    )
    assert (oi.open_interest, oi.value) == (55979131.0, 559791310.0)


def test_future_ticker_settle_price_only_in_the_delivery_window() -> None:
    feed = _feed()
    out = feed.recv(_frame("ticker", 1))
    assert out.errors == [] and out.funding == []
    ((mark,), (oi,)) = out.mark_prices, out.open_interest
    assert (mark.symbol, mark.mark_price, mark.index_price, mark.settle_price) == (
        "BTC-USD-20220930-INV",
        30218.9,
        29939.87,
        None,
    )
    assert (oi.open_interest, oi.value) == (23073327.0, 230733270.0)
    near = json.loads(_frame("ticker", 1))
    near["params"]["data"]["timestamp"] = _expiry_ms("2022-09-30") - 10 * 60 * 1000
    (late,) = feed.recv(json.dumps(near)).mark_prices
    assert late.settle_price == 29939.87


def test_option_ticker_gives_ticker_and_open_interest_only() -> None:
    feed = _feed()
    out = feed.recv(_frame("ticker", 2))
    assert out.errors == [] and out.mark_prices == [] and out.funding == []
    (ticker,) = out.tickers
    assert (ticker.symbol, ticker.last_price, ticker.bid_size, ticker.volume_24h) == (
        "BTC-USD-20211231-34000-P-INV",
        0.229,
        0.8,
        None,
    )
    ((oi,),) = (out.open_interest,)
    assert (oi.open_interest, oi.value) == (4.6, None)


def test_open_interest_and_funding_are_published_when_they_change() -> None:
    feed = _feed()
    feed.recv(_frame("ticker", 0))
    same = feed.recv(_frame("ticker", 0))
    assert same.funding == [] and same.open_interest == [] and len(same.tickers) == 1
    moved = json.loads(_frame("ticker", 0))
    moved["params"]["data"].update(current_funding=0.00012, open_interest=559791320, timestamp=1654161786818)
    out = feed.recv(json.dumps(moved))
    assert [f.rate for f in out.funding] == [0.00012]
    assert [o.open_interest for o in out.open_interest] == [55979132.0]


def test_book_summaries_give_open_interest_mark_and_funding() -> None:
    feed = _feed()
    out = feed.recv_all(messages(SAMPLE, "open_interest"))
    assert out.errors == []
    assert [(o.symbol, o.open_interest, o.value) for o in out.open_interest] == [
        ("BTC-USD-PERP-INV", 56010587.0, 560105870.0),
        ("BTC-USD-20220624-INV", 27230807.0, 272308070.0),
    ]
    assert [(m.symbol, m.mark_price, m.index_price) for m in out.mark_prices] == [
        ("BTC-USD-PERP-INV", 29700.53, None),
        ("BTC-USD-20220624-INV", 29727.97, None),
    ]
    assert [(f.symbol, f.rate) for f in out.funding] == [("BTC-USD-PERP-INV", 0.0)]


def test_a_book_summary_fetched_over_http_is_read_the_same() -> None:
    feed = _feed()
    url = "https://www.deribit.com/api/v2/public/get_book_summary_by_instrument?instrument_name=BTC-PERPETUAL"
    out = feed.rest(url, _frame("open_interest", 0))
    assert out.errors == [] and [o.open_interest for o in out.open_interest] == [56010587.0]


# -- candles and what is dead-lettered ---------------------------------------------------------


def test_chart_frames_are_exchange_candles() -> None:
    feed = _feed()
    (candle,) = feed.recv(_frame("other_chart", 0)).exchange_candles
    assert (candle.symbol, candle.interval, candle.open_time, candle.close_time) == (
        "BTC-USD-PERP-INV",
        "1m",
        1654079340000 * MS,
        1654079400000 * MS,
    )
    assert (candle.open, candle.close, candle.volume, candle.quote_volume, candle.closed) == (
        31595.5,
        31595.5,
        0.02120555,
        670.0,
        False,
    )


@pytest.mark.parametrize(
    ("frame", "reason", "category"),
    [
        (lambda: _frame("other_quote", 0), "unsupported deribit channel 'quote.BTC-30SEP22'", "unsupported"),
        # the docs show only the params part of a deribit_price_index notification
        (lambda: _frame("index_price", 0), "unrecognised deribit frame", "unsupported"),
        (
            lambda: _notification(
                "deribit_price_index.btc_usd", json.loads(_frame("index_price", 0))["data"]
            ),
            "unsupported deribit channel 'deribit_price_index.btc_usd'",
            "unsupported",
        ),
        (lambda: _frame("trade", 0)[:80], "invalid JSON", "undecodable"),
        (
            lambda: _frame("trade", 0).replace("BTC-PERPETUAL", "XRP-PERPETUAL"),
            "deribit instrument 'XRP-PERPETUAL': no instrument metadata",
            "unnamed_instrument",
        ),
        (
            lambda: _frame("trade", 0).replace('"amount":5580.0', '"amount":"x"'),
            "malformed deribit trades",
            "malformed",
        ),
    ],
)
def test_what_is_dead_lettered_and_why(frame: Any, reason: str, category: str) -> None:
    feed = _feed()
    out: FeedOutput = feed.recv(frame())
    assert out.trades == [] and len(out.errors) == 1
    assert reason in out.errors[0][1]
    assert feed.proc.counters.dead_letters == {category: 1}
