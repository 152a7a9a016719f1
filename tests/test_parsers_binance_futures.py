"""Binance USDⓈ-M futures parser on the real frames of samples/binance_derivatives.json: the
KEEPUSDT diff depth and REST snapshot of one 2021 session (the futures ``pu`` rule), aggTrades
and trades, 24 h tickers, mark price / funding, forceOrder liquidations, polled open interest,
closed klines, bookTicker and the exchangeInfo entries (USDⓈ-M and COIN-M shapes).

Symbols the captured exchangeInfo entries do not cover get entries built from the captured
BTCUSDT one (symbol and assets replaced): the parser names instruments from metadata only."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from feed_helpers import Feed, empty, published
from samples import messages

from marketpipe.exchanges.binance_futures import parse_instruments
from marketpipe.records import Level

SAMPLES = "binance_derivatives.json"
WS_URL = "wss://fstream.binance.com/public/stream"
INFO_URL = "https://fapi.binance.com/fapi/v1/exchangeInfo"
DEPTH_URL = "https://fapi.binance.com/fapi/v1/depth?symbol=KEEPUSDT&limit=1000"
OI_URL = "https://fapi.binance.com/fapi/v1/openInterest?symbol={}"
SNAPSHOT_ID = 600859619434
PERPETUALS = {
    "KEEPUSDT": "KEEP",
    "SUSHIUSDT": "SUSHI",
    "AKROUSDT": "AKRO",
    "CTKUSDT": "CTK",
    "ETHUSDT": "ETH",
    "IOTXUSDT": "IOTX",
}
JUN_24_2022_MS = 1656057600000  # 2022-06-24 08:00 UTC
JAN_29_2021_MS = 1611907200000  # 2021-01-29 08:00 UTC


def captured(symbol: str) -> dict[str, Any]:
    """The captured exchangeInfo element of ``symbol`` (BTCUSDT, BTCUSD_PERP, BTCUSD_210924)."""
    rows = [json.loads(row) for row in messages(SAMPLES, "instrument")]
    found: dict[str, Any] = next(row for row in rows if row["symbol"] == symbol)
    return found


def entry(symbol: str, base: str, quote: str = "USDT", **changes: Any) -> dict[str, Any]:
    return {**captured("BTCUSDT"), "symbol": symbol, "pair": base + quote, "baseAsset": base, **changes}


def dated(symbol: str, base: str, quote: str, delivery_ms: int) -> dict[str, Any]:
    return entry(
        symbol, base, quote, quoteAsset=quote, marginAsset=quote, contractType="CURRENT_QUARTER",
        deliveryDate=delivery_ms,
    )  # fmt: skip


def info(*rows: dict[str, Any]) -> str:
    return json.dumps({"timezone": "UTC", "serverTime": 1, "rateLimits": [], "symbols": list(rows)})


def all_entries() -> list[dict[str, Any]]:
    return [
        captured("BTCUSDT"),
        *(entry(symbol, base) for symbol, base in PERPETUALS.items()),
        dated("BTCUSDT_220624", "BTC", "USDT", JUN_24_2022_MS),
        dated("BTCBUSD_210129", "BTC", "BUSD", JAN_29_2021_MS),
    ]


def connected() -> Feed:
    feed = Feed("binance-futures")
    feed.open(WS_URL, ["KEEPUSDT"])
    assert feed.rest(INFO_URL, info(*all_entries())).errors == []
    feed.feed("sent", '{"method":"SUBSCRIBE","params":["keepusdt@depth@100ms"],"id":1}')
    return feed


def diffs() -> list[str]:
    return messages(SAMPLES, "book_update")


def snapshot(last_update_id: int = SNAPSHOT_ID) -> str:
    body = json.loads(messages(SAMPLES, "book_snapshot")[0])
    body["lastUpdateId"] = last_update_id
    return json.dumps(body)


def data(frame: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(frame)["data"]
    return found


def with_data(frame: str, **changes: Any) -> str:
    msg = json.loads(frame)
    msg["data"].update(changes)
    return json.dumps(msg)


# ------------------------------------------------------------------------------- instruments


def test_exchange_info_entries_become_named_instrument_records() -> None:
    rows = [captured(s) for s in ("BTCUSDT", "BTCUSD_PERP", "BTCUSD_210924")]
    found = parse_instruments(info(*rows, dated("BTCUSDT_220624", "BTC", "USDT", JUN_24_2022_MS)).encode())
    assert found.skipped == {}
    assert dict(found) == {
        "BTCUSDT": "BTC-USDT-PERP",
        "BTCUSD_PERP": "BTC-USD-PERP-INV",
        "BTCUSD_210924": "BTC-USD-20210924-INV",
        "BTCUSDT_220624": "BTC-USDT-20220624",
    }
    perp, coin_perp, coin_future, future = (found.records[s] for s in found)
    assert (perp.exchange, perp.kind, perp.contract_type, perp.settle_currency) == (
        "binance-futures",
        "perpetual",
        "linear",
        "USDT",
    )
    assert (perp.contract_size, perp.contract_size_currency, perp.expiry_ts) == (1.0, "BTC", None)
    assert (perp.tick_size, perp.lot_size) == (0.01, 0.001)
    assert (future.kind, future.expiry_ts, future.contract_size) == ("future", JUN_24_2022_MS * 1000, 1.0)
    # the COIN-M shape (contractSize): inverse, contracts of 100 USD, settled in BTC
    assert (coin_perp.contract_type, coin_perp.contract_size, coin_perp.contract_size_currency) == (
        "inverse",
        100.0,
        "USD",
    )
    assert (coin_future.kind, coin_future.settle_currency, coin_future.expiry_ts) == (
        "future",
        "BTC",
        1632470400000 * 1000,
    )


def test_pending_and_unknown_contract_types_are_skipped_with_the_reason() -> None:
    pending = entry("NEWUSDT", "NEW", contractType="")
    odd = entry("ODDUSDT", "ODD", contractType="EVERLASTING")
    broken = {k: v for k, v in entry("NOBASEUSDT", "X").items() if k != "baseAsset"}
    found = parse_instruments(info(pending, odd, broken, captured("BTCUSDT")).encode())
    assert dict(found) == {"BTCUSDT": "BTC-USDT-PERP"}
    assert "a pending listing" in found.skipped["NEWUSDT"]
    assert "'EVERLASTING': not a perpetual or dated future" in found.skipped["ODDUSDT"]
    assert "baseAsset" in found.skipped["NOBASEUSDT"]


def test_instrument_records_are_published_from_the_connections_metadata() -> None:
    feed = Feed("binance-futures")
    feed.open(WS_URL, ["BTCUSDT"])
    out = feed.rest(INFO_URL, info(captured("BTCUSDT"), captured("BTCUSD_210924")))
    assert [(r.symbol, r.ts) for r in out.instruments] == [
        ("BTC-USDT-PERP", feed.recv_us(1)),
        ("BTC-USD-20210924-INV", feed.recv_us(1)),
    ]


# ------------------------------------------------------------------------------------- book


def test_the_futures_bridge_on_the_real_session() -> None:
    """Events 1-3 are older than the snapshot, event 4 ends at lastUpdateId (contained in it),
    event 5 continues it by ``pu`` although its ``U`` is not the previous ``u + 1``."""
    feed = connected()
    assert empty(feed.recv_all(diffs()[:4]))  # buffered until the snapshot
    out = feed.rest(DEPTH_URL, snapshot())
    assert out.errors == [] and out.control == []
    (book,) = out.books
    body = json.loads(snapshot())
    assert book.snapshot and book.symbol == "KEEP-USDT-PERP" and book.last_update_id == SNAPSHOT_ID
    assert book.bids[:2] == [Level(float(p), float(q)) for p, q in body["bids"][:2]]
    assert book.ts == body["E"] * 1000
    assert [(s.state, s.reason) for s in out.status] == [("synced", "snapshot")]

    fifth = data(diffs()[4])
    assert fifth["pu"] == SNAPSHOT_ID and fifth["U"] != SNAPSHOT_ID + 1  # the spot rule would fail
    out = feed.recv(diffs()[4])
    (change,) = out.books
    assert not change.snapshot and out.errors == [] and out.control == []
    assert (change.first_update_id, change.last_update_id) == (fifth["U"], fifth["u"])
    assert change.bids == [Level(0.2398, 181.0)] and change.asks == [Level(0.2465, 812.0)]
    assert change.ts == fifth["E"] * 1000
    assert feed.proc.counters.sequence_gaps == 0


def test_an_event_straddling_the_snapshot_is_applied() -> None:
    """``U <= lastUpdateId < u``: the first event kept must straddle the snapshot."""
    fourth = data(diffs()[3])
    feed = connected()
    feed.recv_all(diffs()[:4])
    out = feed.rest(DEPTH_URL, snapshot(fourth["u"] - 1))
    assert [c.snapshot for c in out.books] == [True, False]
    assert out.books[1].first_update_id == fourth["U"] and out.books[1].last_update_id == fourth["u"]
    assert feed.recv(diffs()[4]).books[0].last_update_id == data(diffs()[4])["u"]
    assert feed.proc.counters.sequence_gaps == 0


def test_a_pu_break_unsyncs_once_and_the_next_snapshot_resyncs() -> None:
    feed = connected()
    feed.recv_all(diffs()[:4])
    feed.rest(DEPTH_URL, snapshot())
    fifth = data(diffs()[4])
    out = feed.recv(with_data(diffs()[4], pu=SNAPSHOT_ID - 1))  # an event in between was missed
    assert not published(out)
    (status,) = out.status
    assert (status.state, status.reason) == ("unsynced", "gap")
    assert status.detail == f"delta from update id {fifth['U']} does not follow {SNAPSHOT_ID}"
    (control,) = out.control
    assert (control.action, control.symbol, control.exchange_symbol) == (
        "resync",
        "KEEP-USDT-PERP",
        "KEEPUSDT",
    )
    later = with_data(diffs()[4], U=fifth["u"] + 5, u=fifth["u"] + 9, pu=fifth["u"])
    assert empty(feed.recv(later))  # buffered: still one episode
    out = feed.rest(DEPTH_URL, snapshot(fifth["u"]))  # bridges to the buffered event by pu
    assert [c.snapshot for c in out.books] == [True, False]
    assert out.books[1].last_update_id == fifth["u"] + 9
    assert [(s.state, s.reason) for s in out.status] == [("synced", "snapshot")]
    assert (feed.proc.counters.sequence_gaps, feed.proc.counters.resyncs) == (1, 1)


def test_a_snapshot_older_than_the_buffered_events_asks_again() -> None:
    feed = connected()
    feed.recv_all(diffs()[3:])  # events 4 and 5 buffered
    first = data(diffs()[3])
    out = feed.rest(DEPTH_URL, snapshot(first["U"] - 10))  # neither straddled nor continued
    assert not published(out)
    assert [c.reason for c in out.control] == ["gap"]
    assert "older than the buffered delta" in out.status[0].detail
    out = feed.rest(DEPTH_URL, snapshot())
    assert [c.snapshot for c in out.books] == [True, False]


def test_a_malformed_depth_event_is_dead_lettered_with_the_reason() -> None:
    feed = connected()
    broken = json.loads(diffs()[4])
    del broken["data"]["pu"]
    out = feed.recv(json.dumps(broken))
    ((_, reason),) = out.errors
    assert "binance-futures depthUpdate" in reason and "pu" in reason


# ------------------------------------------------------------------------ trades, tickers


def test_agg_trades_and_trades_field_by_field() -> None:
    feed = connected()
    frames = messages(SAMPLES, "trade")
    out = feed.recv_all(frames)
    assert out.errors == []
    first, second, insurance, market = out.trades
    assert (first.exchange, first.symbol, first.exchange_symbol) == (
        "binance-futures",
        "CTK-USDT-PERP",
        "CTKUSDT",
    )
    assert (first.trade_id, first.price, first.size, first.side) == ("16599292", 1.011, 10.0, "buy")
    assert first.ts == 1626992741421 * 1000
    assert (second.symbol, second.side, second.size) == ("AKRO-USDT-PERP", "sell", 312.0)  # m: taker sold
    assert (insurance.symbol, insurance.trade_id, insurance.price) == ("ETH-USDT-PERP", "73701056", 2366.55)
    assert (market.symbol, market.size, market.ts) == ("BTC-USDT-PERP", 0.467, 1596240000519 * 1000)


def test_24h_tickers_of_a_perpetual_and_a_dated_contract() -> None:
    feed = connected()
    frames = messages(SAMPLES, "ticker")
    out = feed.recv_all(frames)
    assert out.errors == []
    perp, future = out.tickers
    payload = data(frames[0])
    assert (perp.symbol, perp.last_price, perp.last_size) == ("ETH-USDT-PERP", 1782.02, 0.003)
    assert (perp.open_24h, perp.high_24h, perp.low_24h) == (1757.33, 1809.33, 1750.45)
    assert (perp.volume_24h, perp.quote_volume_24h, perp.trades_24h) == (1678290.411, 2990736920.72, 1912297)
    assert perp.bid_price is None and perp.ask_price is None  # the futures ticker has no bid/ask
    assert perp.ts == payload["E"] * 1000
    assert (future.symbol, future.last_price) == ("BTC-USDT-20220624", 29122.5)


def test_closed_klines() -> None:
    feed = connected()
    out = feed.recv_all(messages(SAMPLES, "other_kline_closed"))
    assert out.errors == []
    sushi, ctk = out.exchange_candles
    assert (sushi.symbol, sushi.interval, sushi.closed, sushi.trades) == ("SUSHI-USDT-PERP", "1m", True, 113)
    assert (sushi.open, sushi.high, sushi.low, sushi.close, sushi.volume) == (
        7.608,
        7.618,
        7.607,
        7.617,
        3005.0,
    )
    assert (sushi.open_time, sushi.close_time) == (1626992700000 * 1000, 1626992760000 * 1000)
    assert (sushi.first_trade_id, sushi.last_trade_id) == ("126902874", "126902986")
    assert ctk.symbol == "CTK-USDT-PERP"


def test_book_tickers_are_recognised_not_published() -> None:
    feed = connected()
    out = feed.recv_all(messages(SAMPLES, "other_bookTicker"))
    assert empty(out)
    assert feed.proc.counters.tickers == 2


# --------------------------------------------------------------------- mark price, funding


def test_mark_price_index_and_funding_of_perpetuals() -> None:
    feed = connected()
    frames = messages(SAMPLES, "mark_price")
    out = feed.recv_all(frames[:3])
    assert out.errors == []
    assert [(m.symbol, m.mark_price, m.index_price, m.settle_price) for m in out.mark_prices] == [
        ("BTC-USDT-PERP", 58940.14924532, 58857.26693664, None),  # P: not a dated contract
        ("BTC-USDT-PERP", 59022.53514719, 58936.68384, None),
        ("ETH-USDT-PERP", 1981.1570442, 1978.08197502, None),
        ("BTC-USDT-PERP", 11857.56, 11851.86949091, None),
    ]
    assert out.mark_prices[0].ts == data(frames[0])["E"] * 1000
    assert [(f.symbol, f.rate, f.next_funding_ts, f.predicted_rate) for f in out.funding] == [
        ("BTC-USDT-PERP", 0.00058455, 1617321600000 * 1000, None),
        ("BTC-USDT-PERP", 0.00058959, 1617321600000 * 1000, None),
        ("ETH-USDT-PERP", 0.00059142, 1617321600000 * 1000, None),
        ("BTC-USDT-PERP", 0.0001564, 1597564800000 * 1000, None),
    ]
    assert all(f.interval_s is None for f in out.funding)  # no funding time has passed yet


def test_the_funding_interval_is_the_step_between_two_funding_times() -> None:
    feed = connected()
    first = messages(SAMPLES, "mark_price")[0]
    feed.recv(first)
    payload = data(first)
    later = with_data(first, E=payload["T"] + 1000, T=payload["T"] + 4 * 3600 * 1000, r="0.00010000")
    (funding,) = feed.recv(later).funding
    assert (funding.interval_s, funding.rate) == (4 * 3600, 0.0001)


def test_a_dated_contract_has_a_mark_price_and_no_funding() -> None:
    feed = connected()
    frame = messages(SAMPLES, "mark_price")[3]  # BTCBUSD_210129: r "0.00000000", T 0
    out = feed.recv(frame)
    assert out.errors == [] and out.funding == []
    (mark,) = out.mark_prices
    assert (mark.symbol, mark.mark_price, mark.index_price) == ("BTC-BUSD-20210129", 31799.2773, 31307.034)
    assert mark.settle_price is None  # weeks before delivery
    settling = with_data(frame, E=JAN_29_2021_MS - 600_000)
    (mark,) = feed.recv(settling).mark_prices
    assert mark.settle_price == 31235.82439517  # P in the last hour before delivery


def test_repeated_mark_and_funding_values_are_dropped() -> None:
    feed = connected()
    frame = messages(SAMPLES, "mark_price")[0]
    feed.recv(frame)
    out = feed.recv(frame)  # the same frame again (a second connection)
    assert out.mark_prices == [] and out.funding == [] and out.errors == []
    assert feed.proc.counters.repeats_dropped == 1
    later = with_data(frame, E=data(frame)["E"] + 1000, p="58941.00000000")
    out = feed.recv(later)  # a new mark price, the same funding rate and time
    assert len(out.mark_prices) == 1 and out.funding == []
    assert feed.proc.counters.repeats_dropped == 2


# --------------------------------------------------------------------------- liquidations


def test_filled_force_orders_are_liquidations() -> None:
    feed = connected()
    out = feed.recv_all(messages(SAMPLES, "liquidation"))
    assert out.errors == []
    short, long_ = out.liquidations
    assert (short.symbol, short.side, short.price, short.size) == ("BTC-USDT-PERP", "buy", 4706.04, 0.014)
    assert short.ts == 1584059031421 * 1000 and short.liquidation_id is None
    assert (long_.symbol, long_.side, long_.price, long_.size) == ("IOTX-USDT-PERP", "sell", 0.06669, 3661.0)


def test_force_orders_not_filled_are_not_published() -> None:
    feed = connected()
    frame = json.loads(messages(SAMPLES, "liquidation")[0])
    frame["data"]["o"]["X"] = "PARTIALLY_FILLED"
    out = feed.recv(json.dumps(frame))
    assert empty(out) and out.liquidations == []
    assert feed.proc.counters.notices == 1


def test_a_force_order_with_an_odd_side_is_dead_lettered() -> None:
    feed = connected()
    frame = json.loads(messages(SAMPLES, "liquidation")[0])
    frame["data"]["o"]["S"] = "BOTH"
    ((_, reason),) = feed.recv(json.dumps(frame)).errors
    assert "forceOrder side 'BOTH'" in reason


# -------------------------------------------------------------------------- open interest


def test_polled_open_interest_answers() -> None:
    feed = connected()
    answers = messages(SAMPLES, "open_interest")
    out = feed.rest(OI_URL.format("BTCUSDT"), answers[0])
    out2 = feed.rest(OI_URL.format("BTCUSDT_220624"), answers[1])
    assert out.errors == out2.errors == []
    ((perp), (future)) = (out.open_interest[0], out2.open_interest[0])
    assert (perp.symbol, perp.open_interest, perp.value, perp.ts) == (
        "BTC-USDT-PERP",
        84617.188,
        None,
        1654336844754 * 1000,
    )
    assert (future.symbol, future.open_interest) == ("BTC-USDT-20220624", 1275.028)
    assert feed.rest(OI_URL.format("BTCUSDT"), answers[0]).open_interest == []  # unchanged


# ------------------------------------------------------------------------------- failures


def test_a_symbol_without_metadata_is_dead_lettered_not_guessed() -> None:
    feed = Feed("binance-futures")
    out = feed.recv(messages(SAMPLES, "trade")[0])
    ((_, reason),) = out.errors
    assert "unknown binance-futures symbol 'CTKUSDT'" in reason


@pytest.mark.parametrize(
    ("kind", "index", "change", "expected"),
    [
        ("mark_price", 0, {"p": "abc"}, "could not convert string to float"),
        ("mark_price", 0, {"p": "-1"}, "price -1.0 is not a positive finite number"),
        ("mark_price", 0, {"s": 5}, "Expected `str`"),
        ("liquidation", 0, {"o": {"s": "BTCUSDT"}}, "missing required field"),
    ],
)
def test_bad_derivative_frames_are_dead_lettered_with_the_reason(
    kind: str, index: int, change: dict[str, Any], expected: str
) -> None:
    feed = connected()
    frame = with_data(messages(SAMPLES, kind)[index], **change)
    out = feed.recv(frame)
    assert out.mark_prices == [] and out.liquidations == []
    ((_, reason),) = out.errors
    assert expected in reason


def test_an_unreadable_open_interest_answer_is_dead_lettered() -> None:
    feed = connected()
    ((_, reason),) = feed.rest(OI_URL.format("BTCUSDT"), '{"symbol":"BTCUSDT"}').errors
    assert "openInterest answer" in reason and "openInterest" in reason


def test_a_restored_checkpoint_keeps_the_funding_times_and_the_synced_book() -> None:
    feed = connected()
    feed.recv_all(diffs()[:4])
    feed.rest(DEPTH_URL, snapshot())
    first = messages(SAMPLES, "mark_price")[0]
    feed.recv(first)
    restored = Feed("binance-futures", conn=feed.conn, processor=pickle.loads(pickle.dumps(feed.proc)))
    assert restored.recv(diffs()[4]).books[0].last_update_id == data(diffs()[4])["u"]
    payload = data(first)
    (funding,) = restored.recv(with_data(first, E=payload["T"] + 1, T=payload["T"] + 8 * 3600 * 1000)).funding
    assert funding.interval_s == 8 * 3600
