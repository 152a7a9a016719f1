"""Tickers and exchange candles (klines) of Binance, Coinbase, Kraken (v2 and v1), Bybit and OKX,
on the real frames in ../shared/exchange-protocols/samples/*_ticker_kline.json."""

from __future__ import annotations

import json
import pickle

import pytest
from feed_helpers import (
    BINANCE_INFO_URL,
    BYBIT_INFO_URL,
    Feed,
    binance_info,
    bybit_instruments,
)
from samples import messages

from streams.feed import ClockWindow, FeedOutput
from streams.parsers.base import interval_name, interval_span_us
from streams.parsers.okx import okx_bar

MS = 1000
S = 1_000_000


def binance_feed(clock: ClockWindow | None = None) -> Feed:
    feed = Feed("binance", clock=clock) if clock else Feed("binance")
    pairs = (("ETHUSDT", "ETH", "USDT"), ("ETHBTC", "ETH", "BTC"), ("NKNUSDT", "NKN", "USDT"))
    feed.rest(BINANCE_INFO_URL, binance_info(*pairs, ("LRCBTC", "LRC", "BTC"), ("BTCUSDT", "BTC", "USDT")))
    return feed


def bybit_feed() -> Feed:
    feed = Feed("bybit")
    feed.rest(BYBIT_INFO_URL, bybit_instruments(("BTCUSDT", "BTC", "USDT"), ("ETHUSDT", "ETH", "USDT")))
    return feed


def only(out: FeedOutput) -> FeedOutput:
    assert not out.errors, out.errors
    return out


# ------------------------------------------------------------------------------ Binance


def test_binance_24hr_ticker_and_ticker_array() -> None:
    feed = binance_feed()
    frames = messages("binance_ticker_kline.json", "ticker")
    out = only(feed.recv_all(frames))
    eth, ethbtc = out.tickers
    assert (eth.symbol, eth.exchange_symbol) == ("ETH-USDT", "ETHUSDT")
    assert (eth.last_price, eth.last_size) == (1792.84, 0.5572)
    assert (eth.bid_price, eth.bid_size, eth.ask_price, eth.ask_size) == (1792.83, 1.6274, 1792.84, 20.2914)
    assert (eth.open_24h, eth.high_24h, eth.low_24h) == (1764.61, 1808.98, 1748.94)
    assert (eth.volume_24h, eth.quote_volume_24h, eth.trades_24h) == (471703.5311, 840180761.513581, 552479)
    assert eth.ts == 1653812650349 * MS and eth.conn == feed.conn
    assert ethbtc.symbol == "ETH-BTC" and ethbtc.trades_24h == 117442  # from !ticker@arr


def test_binance_kline_with_trade_ids_and_final_flag() -> None:
    feed = binance_feed()
    frames = messages("binance_ticker_kline.json", "kline")
    out = only(feed.recv_all(frames))
    nkn = out.exchange_candles[0]
    assert (nkn.symbol, nkn.interval) == ("NKN-USDT", "1m")
    assert (nkn.open_time, nkn.close_time) == (1633998480000 * MS, 1633998540000 * MS)
    assert (nkn.open, nkn.high, nkn.low, nkn.close) == (0.3527, 0.3528, 0.3522, 0.3528)
    assert (nkn.volume, nkn.quote_volume) == (25877.0, 9116.046)
    assert (nkn.trades, nkn.first_trade_id, nkn.last_trade_id) == (30, "19862761", "19862790")
    assert nkn.closed is False and nkn.key() == "binance:NKN-USDT:1m:1633998480000000"
    final = json.loads(frames[0])
    final["data"]["k"]["x"] = True
    (closed,) = only(feed.recv(json.dumps(final))).exchange_candles
    assert closed.closed is True


def test_binance_kline_with_a_non_boolean_flag_is_dead_lettered() -> None:
    feed = binance_feed()
    frame = json.loads(messages("binance_ticker_kline.json", "kline")[0])
    frame["data"]["k"]["x"] = "yes"
    out = feed.recv(json.dumps(frame))
    assert not out.exchange_candles and "not a boolean" in out.errors[0][1]


# ----------------------------------------------------------------------------- Coinbase


def test_coinbase_ticker_snapshot_and_update() -> None:
    out = only(Feed("coinbase").recv_all(messages("coinbase_ticker_kline.json", "ticker")))
    btc, eth, eth_update = out.tickers
    assert (btc.symbol, btc.last_price, btc.bid_price, btc.ask_size) == (
        "BTC-USD",
        65086.18,
        65083.66,
        0.24290402,
    )
    assert (btc.high_24h, btc.low_24h, btc.volume_24h) == (65252.99, 64675.22, 2867.54532609)
    assert btc.open_24h is None and btc.quote_volume_24h is None and btc.trades_24h is None
    assert btc.ts == 1786309548229198
    assert eth.symbol == eth_update.symbol == "ETH-USD" and eth_update.bid_price == 1919.44


def test_coinbase_candles_close_when_a_later_window_arrives() -> None:
    frames = messages("coinbase_ticker_kline.json", "kline")
    snapshot = json.loads(frames[0])["events"][0]["candles"]
    out = only(Feed("coinbase").recv_all(frames))
    candles = out.exchange_candles
    assert all(candle.interval == "5m" for candle in candles)
    eth = [c for c in candles if c.symbol == "ETH-USD"]
    eth_snapshot = [c for c in snapshot if c["product_id"] == "ETH-USD"]
    # every snapshot candle once, closed except the newest; the update re-sends the newest (open)
    assert [c.open_time for c in eth[: len(eth_snapshot)]] == [int(c["start"]) * S for c in eth_snapshot]
    assert all(c.closed for c in eth[: len(eth_snapshot) - 1])
    assert eth[len(eth_snapshot) - 1].closed is False
    first = eth[0]
    assert (first.open, first.high, first.low, first.close, first.volume) == (
        1916.11,
        1916.6,
        1915.91,
        1916.02,
        13.9044026,
    )
    assert first.close_time - first.open_time == 300 * S and first.trades is None


# ------------------------------------------------------------------------------- Kraken


def test_kraken_v2_ticker_open_is_last_minus_change() -> None:
    (ticker,) = only(Feed("kraken").recv_all(messages("kraken_ticker_kline.json", "ticker"))).tickers
    assert (ticker.symbol, ticker.exchange_symbol) == ("ALGO-USD", "ALGO/USD")
    assert (ticker.last_price, ticker.bid_price, ticker.bid_size) == (0.10035, 0.10025, 740.0)
    assert ticker.open_24h == 0.10052  # 0.10035 - (-0.00017), in decimal
    assert (ticker.high_24h, ticker.low_24h, ticker.volume_24h) == (0.10285, 0.09979, 997038.98383185)
    assert ticker.ts == 1695632671742648


def test_kraken_v2_ohlc_trade_count_and_later_window_rule() -> None:
    feed = Feed("kraken")
    snapshot, update_1, update_2 = messages("kraken_ticker_kline.json", "kline")
    first = only(feed.recv(snapshot)).exchange_candles
    assert [(c.open_time, c.trades, c.closed) for c in first] == [
        (1791309420 * S, 36, True),  # 17:57, closed by the 17:58 candle
        (1791309480 * S, 40, False),
    ]
    assert first[0].interval == "1m" and first[0].close_time == 1791309480 * S
    later = only(feed.recv(update_1)).exchange_candles
    assert [(c.open_time, c.closed) for c in later] == [(1791309480 * S, True), (1791309960 * S, False)]
    (fresher,) = only(feed.recv(update_2)).exchange_candles
    assert (fresher.open_time, fresher.trades, fresher.volume, fresher.closed) == (
        1791309960 * S,
        12,
        0.51707722,
        False,
    )


def test_kraken_v1_ticker_and_ohlc() -> None:
    feed = Feed("kraken")
    out = only(feed.recv_all(messages("kraken_v1_ticker_kline.json", "ticker")))
    waves = out.tickers[0]
    assert (waves.symbol, waves.last_price, waves.last_size) == ("WAVES-EUR", 13.2539, 3.71672)
    assert (waves.bid_price, waves.bid_size, waves.ask_price) == (13.2329, 185.18432037, 13.2539)
    assert (waves.open_24h, waves.high_24h, waves.volume_24h, waves.trades_24h) == (
        13.4283,
        14.2112,
        72035.05488104,
        1353,
    )
    assert waves.ts == waves.recv_ts  # v1 tickers carry no time
    (candle,) = only(feed.recv_all(messages("kraken_v1_ticker_kline.json", "kline"))).exchange_candles
    assert (candle.symbol, candle.exchange_symbol, candle.interval) == ("BTC-USD", "XBT/USD", "1m")
    assert (candle.open_time, candle.close_time) == (1675209600 * S, 1675209660 * S)
    assert (candle.open, candle.high, candle.close, candle.volume, candle.trades) == (
        23135.0,
        23135.4,
        23135.4,
        0.39012812,
        7,
    )
    assert candle.ts == 1675209613118218 and candle.closed is False


# -------------------------------------------------------------------------------- Bybit


def test_bybit_spot_ticker_has_no_bid_ask() -> None:
    out = only(bybit_feed().recv_all(messages("bybit_ticker_kline.json", "ticker")))
    first = out.tickers[0]
    assert (first.symbol, first.last_price, first.open_24h) == ("BTC-USDT", 65140.5, 65045.3)
    assert (first.volume_24h, first.quote_volume_24h) == (2953.835931, 191907024.69597728)
    assert first.bid_price is None and first.ask_price is None
    assert first.ts == 1786310819126 * MS


def test_bybit_klines_confirm_and_several_per_frame() -> None:
    out = only(bybit_feed().recv_all(messages("bybit_ticker_kline.json", "kline")))
    assert [(c.open_time, c.closed) for c in out.exchange_candles] == [
        (1786310760000 * MS, False),
        (1786310760000 * MS, True),
        (1786310760000 * MS, True),  # the linear frame: closed and the next open candle
        (1786310820000 * MS, False),
    ]
    closed = out.exchange_candles[1]
    assert (closed.interval, closed.close_time, closed.volume, closed.quote_volume) == (
        "1m",
        1786310820000 * MS,
        0.15388,
        10023.8067889,
    )


def test_bybit_linear_ticker_deltas_merge_into_the_snapshot() -> None:
    feed = bybit_feed()
    snapshot = {
        "topic": "tickers.BTCUSDT",
        "type": "snapshot",
        "ts": 1,
        "data": {"symbol": "BTCUSDT", "lastPrice": "10", "bid1Price": "9", "bid1Size": "1", "volume24h": "5"},
    }
    delta = {
        "topic": "tickers.BTCUSDT",
        "type": "delta",
        "ts": 2,
        "data": {"symbol": "BTCUSDT", "bid1Price": "9.5"},
    }
    only(feed.recv(json.dumps(snapshot)))
    (merged,) = only(feed.recv(json.dumps(delta))).tickers
    assert (merged.last_price, merged.bid_price, merged.bid_size, merged.volume_24h) == (10.0, 9.5, 1.0, 5.0)


# ---------------------------------------------------------------------------------- OKX


def test_okx_ticker() -> None:
    out = only(Feed("okx").recv_all(messages("okx_ticker_kline.json", "ticker")))
    first = out.tickers[0]
    assert (first.symbol, first.last_price, first.last_size) == ("BTC-USDT", 30236.0, 0.0002)
    assert (first.bid_price, first.ask_price, first.open_24h) == (30228.6, 30228.7, 29700.4)
    assert (first.volume_24h, first.quote_volume_24h) == (17602.13085371, 525802090.62716611)
    assert first.ts == 1652459224956 * MS


def test_okx_candles_nine_and_seven_fields() -> None:
    nine, seven, swap = messages("okx_ticker_kline.json", "kline")
    feed = Feed("okx")
    (daily,) = only(feed.recv(nine)).exchange_candles
    assert daily.interval == "1d+08:00" and daily.closed is False  # confirm "0"; Hong Kong days
    assert (daily.volume, daily.quote_volume) == (45247.0, 5529.5858061)  # volCcyQuote
    (minute,) = only(feed.recv(seven)).exchange_candles
    assert (minute.interval, minute.open_time, minute.close_time) == (
        "1m",
        1654154580000 * MS,
        1654154640000 * MS,
    )
    assert (minute.open, minute.high, minute.low, minute.close) == (29930.7, 29936.3, 29930.7, 29936.3)
    assert (minute.volume, minute.quote_volume, minute.closed) == (0.0111536, 333.86246417, False)
    out = feed.recv(swap)  # a swap is not named yet: dead-lettered with its reason
    assert not out.exchange_candles and "BTC-USDT-SWAP" in out.errors[0][1]
    confirmed = json.loads(nine)
    confirmed["data"][0][8] = "1"
    assert only(feed.recv(json.dumps(confirmed))).exchange_candles[0].closed is True


def test_okx_bar_names() -> None:
    assert okx_bar("1m") == ("1m", 0)
    assert okx_bar("4H") == ("4h", 0)
    assert okx_bar("1Dutc") == ("1d", 0)
    assert okx_bar("1D")[0] == "1d+08:00"
    assert okx_bar("1Mutc") == ("1M", 0)


# ----------------------------------------------------------------------- shared rules


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [("c", "0", "price 0.0"), ("c", "nan", "price nan"), ("v", "-1", "-1.0"), ("o", "-5", "price -5.0")],
)
def test_invalid_ticker_values_are_dead_lettered(field: str, value: str, reason: str) -> None:
    frame = json.loads(messages("binance_ticker_kline.json", "ticker")[0])
    frame["data"][field] = value
    feed = binance_feed()
    out = feed.recv(json.dumps(frame))
    assert not out.tickers
    assert reason in out.errors[0][1]
    assert feed.proc.counters.dead_letters == {"invalid_value": 1}


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [("h", "0.3", "do not bound"), ("l", "-1", "price -1.0"), ("v", "inf", "inf")],
)
def test_invalid_candle_values_are_dead_lettered(field: str, value: str, reason: str) -> None:
    frame = json.loads(messages("binance_ticker_kline.json", "kline")[0])
    frame["data"]["k"][field] = value
    out = binance_feed().recv(json.dumps(frame))
    assert not out.exchange_candles and reason in out.errors[0][1]


def test_odd_forms_are_dead_lettered_not_raised() -> None:
    okx = Feed("okx")
    short = {"arg": {"channel": "candle1m", "instId": "BTC-USDT"}, "data": [["1654154580000", "1", "1"]]}
    assert "not [ts" in okx.recv(json.dumps(short)).errors[0][1]
    unknown_bar = {"arg": {"channel": "candle7m", "instId": "BTC-USDT"}, "data": []}
    assert "unsupported okx candle bar" in okx.recv(json.dumps(unknown_bar)).errors[0][1]
    kraken = Feed("kraken")
    assert "ohlc payload" in kraken.recv('[1,["1"],"ohlc-1","XBT/USD"]').errors[0][1]
    bybit = bybit_feed()
    odd = {"topic": "kline.7.BTCUSDT", "ts": 1, "data": []}
    assert "interval" in bybit.recv(json.dumps(odd)).errors[0][1]


def test_kline_timestamps_outside_the_clock_window_are_dead_lettered() -> None:
    frame = messages("binance_ticker_kline.json", "kline")[0]  # 2021, the receive time is 2026
    feed = binance_feed(ClockWindow())
    out = feed.recv(frame)
    assert not out.exchange_candles and "behind the receive time" in out.errors[0][1]
    assert feed.proc.counters.dead_letters == {"ts_out_of_range": 1}


def test_later_window_memory_survives_a_checkpoint() -> None:
    feed = Feed("kraken")
    snapshot, update_1, _ = messages("kraken_ticker_kline.json", "kline")
    feed.recv(snapshot)
    restored = Feed("kraken", processor=pickle.loads(pickle.dumps(feed.proc)))
    later = only(restored.recv(update_1)).exchange_candles
    assert [(c.open_time, c.closed) for c in later] == [(1791309480 * S, True), (1791309960 * S, False)]


def test_interval_names() -> None:
    assert [interval_name(s) for s in (1, 60, 300, 3600, 14400, 86400, 604800)] == [
        "1s",
        "1m",
        "5m",
        "1h",
        "4h",
        "1d",
        "1w",
    ]
    assert interval_name(21600 * 60) == "15d"  # Kraken's largest
    jan_31 = 1769817600 * S  # 2026-01-31 00:00 UTC
    assert interval_span_us("1M", 1767225600 * S) == 1769904000 * S  # 2026-01-01 -> 2026-02-01
    assert interval_span_us("1m", jan_31) == jan_31 + 60 * S


def test_a_final_flag_ends_the_later_window_memory() -> None:
    """An optional final flag (closed=True on one frame, None on others) never lets an older
    remembered state be re-published as final over the exchange's own final candle."""
    feed = Feed("kraken")
    snapshot, update_1, _ = messages("kraken_ticker_kline.json", "kline")
    feed.recv(snapshot)  # remembers the 17:58 candle (open)
    proc, conn = feed.proc, feed.proc._connections[feed.conn]
    raw = feed.record("recv", "{}")
    out = FeedOutput()
    minute = 1791309480 * S
    args = (conn, raw, out, "BTC/USD", "1m", minute, minute + 60 * S, 2.0, 2.0, 2.0, 2.0)
    assert proc.exchange_candle(*args, closed=True)
    later = only(feed.recv(update_1)).exchange_candles
    assert [(c.open_time, c.closed) for c in later] == [(1791309960 * S, False)]


def test_coinbase_trades_of_one_time_publish_in_execution_order() -> None:
    """Coinbase lists a frame's trades newest first; trades sharing a timestamp must come out
    oldest first, or our candle's close is not the exchange's (candle_check found this)."""
    frame = json.loads(messages("coinbase.json", "trade")[1])
    (trade,) = frame["events"][0]["trades"]
    newer = {**trade, "trade_id": str(int(trade["trade_id"]) + 1), "price": "1.5"}
    frame["events"][0]["trades"] = [newer, trade]  # as sent: the newest first
    out = only(Feed("coinbase").recv(json.dumps(frame)))
    assert [t.trade_id for t in out.trades] == [trade["trade_id"], newer["trade_id"]]
