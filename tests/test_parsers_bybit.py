"""Bybit v5 parser on the real frames: spot (orderbook.200 snapshot + deltas, publicTrade), and
linear and inverse derivatives (bybit_derivatives.json: every frame kind, instrument entries)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from feed_helpers import BYBIT_INFO_URL, Feed, bybit_instruments, empty, published
from samples import messages

from marketpipe.records import Level

INFO = bybit_instruments(("BTCUSDT", "BTC", "USDT"), ("ETHUSDT", "ETH", "USDT"))


def connected() -> Feed:
    feed = Feed("bybit")
    feed.open("wss://stream.bybit.com/v5/public/spot", ["BTCUSDT"])
    feed.rest(BYBIT_INFO_URL, INFO)
    feed.feed("sent", '{"op":"subscribe","args":["orderbook.200.BTCUSDT"]}')
    return feed


def snapshot() -> str:
    return messages("bybit.json", "book_snapshot")[0]


def deltas() -> list[str]:
    return messages("bybit.json", "book_update")


def rows_to_levels(rows: list[list[str]]) -> list[Level]:
    return [Level(float(p), float(q)) for p, q in rows]


def replay(frames: list[str]) -> tuple[dict[float, float], dict[float, float]]:
    """Independent book: plain dicts, absolute sizes, 0 deletes."""
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    for frame in frames:
        data = json.loads(frame)["data"]
        for side, rows in ((bids, data["b"]), (asks, data["a"])):
            for price, size in rows:
                if float(size) == 0:
                    side.pop(float(price), None)
                else:
                    side[float(price)] = float(size)
    return bids, asks


def test_public_trades_field_by_field() -> None:
    feed = connected()
    out = feed.recv_all(messages("bybit.json", "trade"))
    assert len(out.trades) == 3 and not out.errors
    first = out.trades[0]
    assert (first.exchange, first.symbol, first.exchange_symbol) == ("bybit", "BTC-USDT", "BTCUSDT")
    assert (first.trade_id, first.price, first.size, first.side) == (
        "2290000001189048101",
        65140.5,
        0.002705,
        "buy",
    )
    assert first.ts == 1786310822605 * 1000 and first.recv_ts == feed.records[-3].recv_ns // 1000


def test_snapshot_then_contiguous_deltas() -> None:
    feed = connected()
    out = feed.recv(snapshot())
    (change,) = out.books
    wire = json.loads(snapshot())
    assert change.snapshot and change.last_update_id == wire["data"]["u"]
    assert change.bids == sorted(rows_to_levels(wire["data"]["b"]), key=lambda lv: -lv.price)
    assert change.ts == wire["cts"] * 1000
    out = feed.recv_all(deltas())
    assert not out.errors and not out.control and len(out.books) == 5
    for change, frame in zip(out.books, deltas(), strict=True):
        data = json.loads(frame)["data"]
        assert change.bids == rows_to_levels(data["b"]) and change.asks == rows_to_levels(data["a"])
        assert change.first_update_id == change.last_update_id == data["u"]
    bids, asks = replay([snapshot(), *deltas()])
    last = out.bbos[-1]
    best_bid, best_ask = max(bids), min(asks)
    assert (last.bid_price, last.bid_size, last.ask_price, last.ask_size) == (
        best_bid,
        bids[best_bid],
        best_ask,
        asks[best_ask],
    )


def test_gap_unsyncs_until_the_next_snapshot() -> None:
    feed = connected()
    feed.recv(snapshot())
    feed.recv(deltas()[0])
    out = feed.recv(deltas()[2])  # u=62505427 after 62505425
    assert not published(out)
    assert [(s.state, s.reason) for s in out.status] == [("unsynced", "gap")]
    assert "u=62505427 after u=62505425" in out.status[0].detail
    assert [(c.action, c.symbol) for c in out.control] == [("resync", "BTC-USDT")]
    assert empty(feed.recv_all(deltas()[3:]))
    out = feed.recv(snapshot())
    assert out.books[0].snapshot and [s.state for s in out.status] == ["synced"]


def test_restart_delta_with_u_1_overwrites_the_book() -> None:
    feed = connected()
    feed.recv(snapshot())
    restart = json.loads(deltas()[0])
    restart["data"]["u"] = 1
    restart["data"]["b"] = [["65000", "1"]]
    restart["data"]["a"] = [["65001", "2"]]
    out = feed.recv(json.dumps(restart))
    (change,) = out.books
    assert change.snapshot and change.bids == [Level(65000.0, 1.0)] and change.asks == [Level(65001.0, 2.0)]
    assert not out.control


def test_crossed_book_is_never_published() -> None:
    feed = connected()
    feed.recv(snapshot())
    crossing = json.loads(deltas()[0])
    crossing["data"]["b"] = [["65300", "1"]]  # above the best ask
    out = feed.recv(json.dumps(crossing))
    assert not published(out)
    ((status),) = out.status
    assert (status.state, status.reason, status.crossed) == ("unsynced", "crossed", 1)
    assert [c.reason for c in out.control] == ["crossed"]
    assert empty(feed.recv(deltas()[1]))
    assert feed.recv(snapshot()).books


def test_acks_and_pong_are_counted() -> None:
    feed = connected()
    out = feed.recv_all([*messages("bybit.json", "ack"), *messages("bybit.json", "heartbeat")])
    assert empty(out)
    assert (feed.proc.counters.acks, feed.proc.counters.heartbeats) == (3, 1)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"success":false,"ret_msg":"Invalid topic","op":"subscribe"}', "subscribe rejected"),
        ('{"topic":"insurance.USDT","type":"snapshot","data":[]}', "unsupported bybit topic"),
        ('{"topic":"orderbook.200.BTCUSDT","type":"delta","ts":1,"data":{"s":"BTCUSDT"}}',
         "missing required field `b`"),
        ('{"topic":"tickers.BTCUSDT","type":"delta","ts":1,"data":{"symbol":"BTCUSDT","lastPrice":"1"}}',
         "delta for BTCUSDT before its snapshot"),
        ('{"op":"auth","success":true}', "unrecognised bybit frame"),
        ('{"topic":"orderbook.200.DOGEUSDT","type":"snapshot","ts":1,"data":{"s":"DOGEUSDT","b":[],"a":[],"u":5}}',
         "unknown bybit symbol 'DOGEUSDT'"),
    ],
)  # fmt: skip
def test_bad_frames(frame: str, reason: str) -> None:
    out = connected().recv(frame)
    assert len(out.errors) == 1 and reason in out.errors[0][1], out.errors


# -- linear and inverse (bybit_derivatives.json) ------------------------------------------------

DERIV = "bybit_derivatives.json"
MS = 1000
LINEAR_URL = "wss://stream.bybit.com/v5/public/linear"
INVERSE_URL = "wss://stream.bybit.com/v5/public/inverse"
INFO_URL = "https://api.bybit.com/v5/market/instruments-info?category={}"


def _rows() -> dict[str, dict[str, Any]]:
    """The captured linear instrument entries, by symbol."""
    rows = [json.loads(row) for row in messages(DERIV, "instrument")]
    return {row["symbol"]: row for row in rows}


def _answer(category: str, *rows: dict[str, Any], cursor: str = "") -> str:
    result = {"category": category, "list": list(rows), "nextPageCursor": cursor}
    return json.dumps({"retCode": 0, "retMsg": "OK", "result": result, "time": 1})


def _linear_like(symbol: str, base: str) -> dict[str, Any]:
    """The captured BTCUSDT entry for another USDT perpetual of the session (constructed)."""
    return {**_rows()["BTCUSDT"], "symbol": symbol, "baseCoin": base}


def _inverse(symbol: str, contract_type: str = "InversePerpetual", delivery_ms: int = 0) -> dict[str, Any]:
    """An inverse entry in the linear entries' shape (no inverse entry was captured)."""
    base = symbol[: symbol.index("USD")]
    return {
        **_rows()["BTCUSDT"],
        "symbol": symbol,
        "contractType": contract_type,
        "baseCoin": base,
        "quoteCoin": "USD",
        "settleCoin": base,
        "deliveryTime": str(delivery_ms),
        "lotSizeFilter": {"qtyStep": "1", "minOrderQty": "1"},
        "priceFilter": {"tickSize": "0.50"},
    }


SESSION_LINEAR = ("ETHUSDT", "SOLUSDT", "DOGEUSDT", "ROSEUSDT", "PIPPINUSDT")
BTCUSDU23_DELIVERY_MS = 1695974400000  # the ticker's deliveryTime 2023-09-29T08:00:00Z


def linear_feed(conn: str = "bybit.t2.0", processor: Any = None) -> Feed:
    feed = Feed("bybit", conn=conn, processor=processor)
    feed.open(LINEAR_URL, ["BTCUSDT", *SESSION_LINEAR])
    rows = [_rows()["BTCUSDT"], *(_linear_like(s, s.removesuffix("USDT")) for s in SESSION_LINEAR)]
    assert not feed.rest(INFO_URL.format("linear"), _answer("linear", *rows)).errors
    return feed


def inverse_feed(conn: str = "bybit.t2.1", processor: Any = None) -> Feed:
    feed = Feed("bybit", conn=conn, processor=processor)
    feed.open(INVERSE_URL, ["BTCUSD", "BTCUSDU23", "XRPUSD"])
    rows = [
        _inverse("BTCUSD"),
        _inverse("BTCUSDU23", "InverseFutures", BTCUSDU23_DELIVERY_MS),
        _inverse("XRPUSD"),
    ]
    assert not feed.rest(INFO_URL.format("inverse"), _answer("inverse", *rows)).errors
    return feed


def snapshot_for(symbol: str) -> str:
    """The captured BTCUSDT tickers snapshot under another symbol (the session's ETH/SOL deltas
    came after snapshots that were not captured)."""
    msg = json.loads(messages(DERIV, "ticker")[0])
    msg["topic"], msg["data"]["symbol"] = f"tickers.{symbol}", symbol
    return json.dumps(msg)


def test_captured_linear_instrument_entries_are_named_from_their_metadata() -> None:
    from marketpipe.exchanges.bybit import parse_instruments

    found = parse_instruments(_answer("linear", *_rows().values()).encode())
    assert dict(found) == {
        "BTCUSDT": "BTC-USDT-PERP",
        "BTCUSDT-14AUG26": "BTC-USDT-20260814",
        "BTCPERP": "BTC-USDC-PERP",
    }
    assert found.skipped == {} and found.instrument("BTCUSDT") == "linear:BTCUSDT"
    perp, future = found.records["BTCUSDT"], found.records["BTCUSDT-14AUG26"]
    assert (perp.kind, perp.contract_type, perp.base, perp.quote, perp.settle_currency) == (
        "perpetual",
        "linear",
        "BTC",
        "USDT",
        "USDT",
    )
    assert (perp.contract_size, perp.contract_size_currency, perp.expiry_ts) == (1.0, "BTC", None)
    assert (perp.tick_size, perp.lot_size) == (0.1, 0.001)
    assert (future.kind, future.expiry_ts) == ("future", 1786694400000 * MS)
    assert found.records["BTCPERP"].settle_currency == "USDC"


def test_inverse_entries_are_one_usd_contracts_with_the_inv_suffix() -> None:
    from marketpipe.exchanges.bybit import parse_instruments

    future = _inverse("BTCUSDU23", "InverseFutures", BTCUSDU23_DELIVERY_MS)
    found = parse_instruments(_answer("inverse", _inverse("BTCUSD"), future).encode())
    assert dict(found) == {"BTCUSD": "BTC-USD-PERP-INV", "BTCUSDU23": "BTC-USD-20230929-INV"}
    perp = found.records["BTCUSD"]
    assert (perp.contract_type, perp.contract_size, perp.contract_size_currency, perp.settle_currency) == (
        "inverse",
        1.0,
        "USD",
        "BTC",
    )
    assert found.records["BTCUSDU23"].expiry_ts == BTCUSDU23_DELIVERY_MS * MS


def test_entries_that_cannot_be_named_are_skipped_alone_with_the_reason() -> None:
    from marketpipe.exchanges.bybit import next_page_cursor, parse_instruments

    btc = _rows()["BTCUSDT"]
    rows = [btc, {**btc, "symbol": "XUSDT", "contractType": "Weird"}, {**btc, "symbol": "YUSDT-1JAN27",
            "contractType": "LinearFutures", "deliveryTime": "0"}, _inverse("BTCUSD")]  # fmt: skip
    found = parse_instruments(_answer("linear", *rows, cursor="next%3D2").encode())
    assert dict(found) == {"BTCUSDT": "BTC-USDT-PERP"}
    assert "contractType 'Weird'" in found.skipped["XUSDT"]
    assert "without a deliveryTime" in found.skipped["YUSDT-1JAN27"]
    assert "InversePerpetual listed under category linear" in found.skipped["BTCUSD"]
    assert next_page_cursor(_answer("linear", btc, cursor="next%3D2").encode()) == "next%3D2"
    options = parse_instruments(_answer("option", btc).encode())
    assert "option instruments are not normalised" in options.skipped["BTCUSDT"]


def test_linear_trades_are_the_perpetual_and_spot_btcusdt_stays_spot_in_one_processor() -> None:
    """The recorded failure: linear BTCUSDT came out as spot BTC-USDT."""
    spot = connected()
    linear = linear_feed(processor=spot.proc)
    out = linear.recv_all(messages(DERIV, "trade"))
    assert not out.errors
    assert [(t.symbol, t.exchange_symbol, t.price, t.size, t.side) for t in out.trades] == [
        ("BTC-USDT-PERP", "BTCUSDT", 65114.2, 0.004, "sell"),
        ("BTC-USDT-PERP", "BTCUSDT", 65114.2, 0.003, "sell"),
    ]
    assert out.trades[0].trade_id == "a9188a0a-82bc-50de-be60-03eedbe3cdd7"
    assert out.trades[0].ts == 1786310819680 * MS
    spot_out = spot.recv_all(messages("bybit.json", "trade"))
    assert not spot_out.errors and {t.symbol for t in spot_out.trades} == {"BTC-USDT"}
    again = linear.recv(messages(DERIV, "trade")[0])  # and the linear one stays the perpetual
    assert not again.trades and linear.proc.counters.duplicates_dropped == 1


def test_linear_book_snapshot_then_contiguous_deltas_and_a_gap() -> None:
    feed = linear_feed()
    snapshot, eth = messages(DERIV, "book_snapshot")
    first, second, third = messages(DERIV, "book_update")
    out = feed.recv_all([snapshot, eth, first, second, third])
    assert not out.errors and not out.control
    assert [(b.symbol, b.snapshot, b.last_update_id) for b in out.books] == [
        ("BTC-USDT-PERP", True, 15076952),
        ("ETH-USDT-PERP", True, 14768460),
        ("BTC-USDT-PERP", False, 15076953),
        ("BTC-USDT-PERP", False, 15076954),
        ("BTC-USDT-PERP", False, 15076955),
    ]
    assert out.books[0].ts == 1786310818027 * MS  # cts
    gapped = linear_feed(conn="bybit.t2.9")
    gapped.recv_all([snapshot, first])
    out = gapped.recv(third)  # u=15076955 after 15076953
    assert [(s.state, s.reason) for s in out.status] == [("unsynced", "gap")]
    assert [(c.symbol, c.exchange_symbol) for c in out.control] == [("BTC-USDT-PERP", "BTCUSDT")]


def test_linear_tickers_snapshot_and_deltas_give_ticker_funding_oi_and_mark() -> None:
    feed = linear_feed()
    snapshot, bid_ask, mark_oi = messages(DERIV, "ticker")[:3]
    out = feed.recv(snapshot)
    (ticker,) = out.tickers
    assert (ticker.symbol, ticker.last_price, ticker.bid_price, ticker.ask_size) == (
        "BTC-USDT-PERP",
        65114.3,
        65114.2,
        10.47,
    )
    assert (ticker.volume_24h, ticker.quote_volume_24h, ticker.ts) == (
        17573.912,
        1142118412.9021,
        1786310817583 * MS,
    )
    (funding,) = out.funding
    assert (funding.rate, funding.next_funding_ts, funding.interval_s, funding.predicted_rate) == (
        0.0001,
        1786320000000 * MS,
        8 * 3600,
        None,
    )
    (oi,) = out.open_interest
    assert (oi.symbol, oi.open_interest, oi.value) == ("BTC-USDT-PERP", 59891.732, 3899996265.01)
    (mark,) = out.mark_prices
    assert (mark.mark_price, mark.index_price, mark.settle_price) == (65117.44, 65137.76, None)

    out = feed.recv(bid_ask)  # only bid/ask changed: a ticker, nothing else
    assert len(out.tickers) == 1 and not (out.funding or out.open_interest or out.mark_prices)
    assert (out.tickers[0].last_price, out.tickers[0].bid_size, out.tickers[0].ask_size) == (
        65114.3,
        6.054,
        10.486,
    )
    out = feed.recv(mark_oi)  # markPrice and openInterestValue changed
    ((mark,), (oi,)) = out.mark_prices, out.open_interest
    assert (mark.mark_price, mark.index_price, mark.ts) == (65117.43, 65137.76, 1786310818183 * MS)
    assert (oi.open_interest, oi.value) == (59891.732, 3899995666.09)
    assert not out.funding and not out.errors


def test_every_captured_mark_index_funding_and_oi_delta() -> None:
    feed = linear_feed()
    feed.recv_all([messages(DERIV, "ticker")[0], snapshot_for("ETHUSDT"), snapshot_for("SOLUSDT")])
    marks = feed.recv_all(messages(DERIV, "mark_price"))
    assert [(m.symbol, m.mark_price, m.index_price) for m in marks.mark_prices] == [
        ("BTC-USDT-PERP", 65117.43, 65137.76),
        ("BTC-USDT-PERP", 65118.03, 65138.36),
    ]
    repeats = feed.proc.counters.repeats_dropped
    index = feed.recv_all(messages(DERIV, "index_price"))  # the first is the last mark frame again
    assert [(m.symbol, m.index_price) for m in index.mark_prices] == [("ETH-USDT-PERP", 1923.19)]
    assert feed.proc.counters.repeats_dropped == repeats + 2  # its mark and its open interest
    funding = feed.recv_all(messages(DERIV, "funding_rate"))
    assert [(f.symbol, f.rate, f.interval_s) for f in funding.funding] == [
        ("ETH-USDT-PERP", 0.00004709, 8 * 3600),
        ("SOL-USDT-PERP", 0.00000952, 8 * 3600),
    ]
    oi = feed.recv_all(messages(DERIV, "open_interest"))
    assert [(o.symbol, o.open_interest, o.value) for o in oi.open_interest] == [
        ("ETH-USDT-PERP", 830089.25, 1595904689.37),
        ("BTC-USDT-PERP", 59895.976, 3900322936.04),
    ]
    assert not (marks.errors or index.errors or funding.errors or oi.errors)


def test_inverse_tickers_state_contracts_and_usd_not_the_base_coin_value() -> None:
    feed = inverse_feed()
    perpetual, delta, future = messages(DERIV, "ticker")[3:6]
    out = feed.recv(perpetual)
    (ticker,) = out.tickers
    assert (ticker.symbol, ticker.bid_size, ticker.volume_24h) == ("BTC-USD-PERP-INV", 340549.0, 661543991.0)
    assert ticker.quote_volume_24h == 661543991.0  # USD: turnover24h 23389.1894 is BTC
    (oi,) = out.open_interest
    assert (oi.open_interest, oi.value) == (449736676.0, 449736676.0)  # not openInterestValue 15747.08 BTC
    (funding,) = out.funding
    assert (funding.rate, funding.next_funding_ts, funding.interval_s) == (0.0001, 1680681600000 * MS, None)
    out = feed.recv(delta)  # openInterest changed; fundingRate re-sent unchanged: dropped as a repeat
    assert [(o.open_interest, o.value) for o in out.open_interest] == [(449736674.0, 449736674.0)]
    assert not out.funding and not out.errors
    out = feed.recv(future)  # a dated future: empty fundingRate, no funding record
    assert not out.errors and not out.funding
    assert [(m.symbol, m.mark_price, m.index_price) for m in out.mark_prices] == [
        ("BTC-USD-20230929-INV", 29023.6, 28566.94)
    ]
    assert [o.open_interest for o in out.open_interest] == [4547176.0]


def test_liquidations_side_is_the_closing_orders_and_the_price_the_bankruptcy_price() -> None:
    rose, pippin, legacy = messages(DERIV, "liquidation")
    out = linear_feed().recv_all([rose, pippin])
    assert not out.errors
    assert [(x.symbol, x.side, x.price, x.size, x.ts) for x in out.liquidations] == [
        ("ROSE-USDT-PERP", "buy", 0.04499, 20000.0, 1739502302929 * MS),  # S Sell: a short was closed
        ("PIPPIN-USDT-PERP", "buy", 0.02456, 2846.0, 1740480207110 * MS),
    ]
    out = inverse_feed().recv(legacy)  # the older liquidation.{symbol} topic
    assert [(x.symbol, x.side, x.price, x.size) for x in out.liquidations] == [
        ("XRP-USD-PERP-INV", "buy", 0.5149, 6949.0)
    ]
    long_closed = json.loads(rose)
    long_closed["data"][0]["S"] = "Buy"
    (liquidation,) = linear_feed().recv(json.dumps(long_closed)).liquidations
    assert liquidation.side == "sell"


def test_derivative_acks_and_pong_are_counted() -> None:
    feed = linear_feed()
    out = feed.recv_all([*messages(DERIV, "ack"), *messages(DERIV, "heartbeat")])
    assert empty(out) and (feed.proc.counters.acks, feed.proc.counters.heartbeats) == (2, 1)


def test_inverse_kline_quote_volume_is_the_contracts_usd() -> None:
    frame = {
        "topic": "kline.1.BTCUSD",
        "type": "snapshot",
        "ts": 1680673822577,
        "data": [
            {"start": 1680673800000, "end": 1680673859999, "interval": "1", "open": "28560", "close": "28561",
             "high": "28562", "low": "28559", "volume": "120000", "turnover": "4.2017", "confirm": False,
             "timestamp": 1680673822577},
        ],
    }  # fmt: skip
    (candle,) = inverse_feed().recv(json.dumps(frame)).exchange_candles
    assert (candle.symbol, candle.volume, candle.quote_volume) == ("BTC-USD-PERP-INV", 120000.0, 120000.0)
