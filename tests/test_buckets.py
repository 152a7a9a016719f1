"""Price buckets (streams/buckets.py), their event-time boundaries in the feed, and consolidation."""

from __future__ import annotations

import json

import msgspec
import pytest
from feed_helpers import BYBIT_INFO_URL, Feed, bybit_instruments

from marketpipe.records import BookBuckets, Bucket, Candle, Level
from streams.book import BookSide
from streams.buckets import Bucketer, bucket_floor, default_bucket_size, imbalance
from streams.consolidate import (
    WAITED_WINDOWS,
    BucketMerger,
    CandleMerger,
    SymbolMap,
    common_bucket_size,
    merge_candles,
)
from streams.parsers import processor_for

S = 1_000_000
TS = 1_786_000_000 * S


def side_of(levels: dict[float, float]) -> tuple[list[float], dict[float, float]]:
    return sorted(levels), dict(levels)


def snapshot(bids: dict[float, float], asks: dict[float, float], **kwargs: object) -> BookBuckets:
    bucketer = Bucketer(**kwargs)  # type: ignore[arg-type]
    found = bucketer.snapshot("bybit", "BTC-USDT", TS, *side_of(bids), *side_of(asks))
    assert found is not None
    return found


def test_default_bucket_size_rule() -> None:
    assert default_bucket_size(65_000) == 5
    assert default_bucket_size(20_000) == 2
    assert default_bucket_size(3_500) == 0.2
    assert default_bucket_size(100) == 0.01
    assert bucket_floor(0.3, 0.1) == 0.3
    assert bucket_floor(65_009.99, 10) == 65_000


def test_bucket_edges_sizes_and_notional() -> None:
    bids = {99.5: 1.0, 99.0: 2.0, 98.9: 1.0, 97.0: 4.0, 90.0: 100.0}  # 90 is > 5 % below mid
    asks = {100.5: 1.0, 101.0: 3.0, 101.9: 1.0, 104.99: 2.0, 106.0: 50.0}
    found = snapshot(bids, asks, sizes={"BTC-USDT": 1.0})
    assert (found.mid, found.best_bid, found.best_ask, found.spread) == (100.0, 99.5, 100.5, 1.0)
    assert found.bucket_size == 1.0 and found.ts == TS
    assert found.bids == [Bucket(99.0, 3.0, 99.5 + 198.0), Bucket(98.0, 1.0, 98.9), Bucket(97.0, 4.0, 388.0)]
    assert found.asks == [
        Bucket(100.0, 1.0, 100.5),
        Bucket(101.0, 4.0, 303.0 + 101.9),
        Bucket(104.0, 2.0, 209.98),
    ]
    assert found.markets == ["bybit:BTC-USDT"]


def test_imbalance_bands() -> None:
    bids = {99.95: 1.0, 99.6: 2.0, 99.0: 3.0, 96.0: 4.0}
    asks = {100.05: 3.0, 100.4: 1.0, 101.0: 1.0, 103.0: 1.0}
    bands = {band.pct: band for band in snapshot(bids, asks).bands}
    assert [(b.bid_size, b.ask_size) for b in bands.values()] == [(1, 3), (3, 4), (6, 5), (10, 6)]
    assert bands[0.1].imbalance == pytest.approx((1 - 3) / 4)
    assert bands[5.0].imbalance == pytest.approx(4 / 16)
    assert imbalance(0.0, 0.0) == 0.0


def test_journal_gives_the_book_before_the_change() -> None:
    side = BookSide(is_bid=True)
    side.load([(1.0, 1.0), (2.0, 2.0)])
    side.start_journal()
    side.apply([Level(3.0, 1.0), Level(1.0, 0.0), Level(2.0, 5.0), Level(3.0, 4.0)])
    assert side.previous() == ([1.0, 2.0], {1.0: 1.0, 2.0: 2.0})
    side.truncate(1)
    side.load([(7.0, 7.0)])
    assert side.previous() == ([1.0, 2.0], {1.0: 1.0, 2.0: 2.0})
    side.journal.clear()  # type: ignore[union-attr]
    assert side.previous() == ([7.0], {7.0: 7.0})


# ------------------------------------------------------------------------ through the feed


def bybit_feed(interval_s: float = 1.0) -> Feed:
    proc = processor_for("bybit")
    proc.bucketer = Bucketer(interval_us=int(interval_s * S), sizes={"BTC-USDT": 10.0})
    feed = Feed("bybit", processor=proc)
    feed.open("wss://stream.bybit.com/v5/public/spot", ["BTCUSDT"])
    feed.rest(BYBIT_INFO_URL, bybit_instruments(("BTCUSDT", "BTC", "USDT")))
    return feed


def book_frame(kind: str, u: int, ts_ms: int, bids: list[list[str]], asks: list[list[str]]) -> str:
    return json.dumps(
        {
            "topic": "orderbook.50.BTCUSDT",
            "ts": ts_ms,
            "type": kind,
            "data": {"s": "BTCUSDT", "b": bids, "a": asks, "u": u, "seq": u},
            "cts": ts_ms,
        }
    )


BASE_MS = TS // 1000


def test_snapshot_at_boundary_is_the_book_before_the_first_change_past_it() -> None:
    feed = bybit_feed()
    out = feed.recv(book_frame("snapshot", 1, BASE_MS + 100, [["65000", "1"]], [["65010", "2"]]))
    assert not out.buckets
    out = feed.recv(book_frame("delta", 2, BASE_MS + 900, [["64990", "3"]], []))
    assert not out.buckets  # still before the boundary at +1 s
    out = feed.recv(book_frame("delta", 3, BASE_MS + 1000, [["65000", "0"]], [["65020", "5"]]))
    [row] = out.buckets
    assert row.ts == TS + S
    assert row.bids == [Bucket(65000.0, 1.0, 65000.0), Bucket(64990.0, 3.0, 194970.0)]
    assert row.asks == [Bucket(65010.0, 2.0, 130020.0)]  # not yet the 65020 of the new change
    # a quiet book: every skipped boundary gets the same book
    out = feed.recv(book_frame("delta", 4, BASE_MS + 4200, [], [["65010", "0"]]))
    assert [r.ts for r in out.buckets] == [TS + 2 * S, TS + 3 * S, TS + 4 * S]
    assert out.buckets[0].bids == [Bucket(64990.0, 3.0, 194970.0)]
    assert out.buckets[0].asks == [Bucket(65010.0, 2.0, 130020.0), Bucket(65020.0, 5.0, 325100.0)]


def test_unsynced_books_publish_nothing() -> None:
    feed = bybit_feed()
    feed.recv(book_frame("snapshot", 1, BASE_MS, [["65000", "1"]], [["65010", "2"]]))
    out = feed.recv(book_frame("delta", 5, BASE_MS + 1500, [["64990", "3"]], []))  # gap: u 5 after 1
    assert out.status and not out.buckets
    out = feed.recv(book_frame("delta", 6, BASE_MS + 2500, [["64980", "3"]], []))
    assert not out.buckets
    # re-synced by a snapshot: boundaries resume after it
    out = feed.recv(book_frame("snapshot", 7, BASE_MS + 3100, [["65000", "1"]], [["65010", "2"]]))
    assert not out.buckets
    out = feed.recv(book_frame("delta", 8, BASE_MS + 4000, [["64990", "3"]], []))
    assert [r.ts for r in out.buckets] == [TS + 4 * S]


def test_buckets_off_without_bucketer() -> None:
    feed = Feed("bybit")
    feed.rest(BYBIT_INFO_URL, bybit_instruments(("BTCUSDT", "BTC", "USDT")))
    feed.recv(book_frame("snapshot", 1, BASE_MS, [["65000", "1"]], [["65010", "2"]]))
    assert not feed.recv(book_frame("delta", 2, BASE_MS + 5000, [["64990", "3"]], [])).buckets


# --------------------------------------------------------------------------- consolidation


def test_symbol_map_with_quote_equivalents() -> None:
    symbols = SymbolMap([["USD", "USDT", "USDC"]])
    assert [symbols(s) for s in ("BTC-USDT", "BTC-USDC", "BTC-USD", "ETH-BTC")] == [
        "BTC-USD",
        "BTC-USD",
        "BTC-USD",
        "ETH-BTC",
    ]
    assert SymbolMap()("BTC-USDT") == "BTC-USDT"


def candle(exchange: str, symbol: str, **fields: object) -> Candle:
    base: dict[str, object] = dict(
        exchange=exchange,
        symbol=symbol,
        interval="1m",
        open_time=TS,
        close_time=TS + 60 * S,
        trades=1,
        closed=True,
        version=1,
        markets=[f"{exchange}:{symbol}"],
    )
    base.update(fields)
    return Candle(**base)  # type: ignore[arg-type]


def test_consolidated_candle_is_exact() -> None:
    a = candle("binance", "BTC-USDT", open=100.0, high=110.0, low=95.0, close=105.0, volume=2.0,
               quote_volume=200.0, buy_volume=1.0, sell_volume=1.0, vwap=100.0,
               first_trade_ts=TS + 5, last_trade_ts=TS + 50 * S)  # fmt: skip
    b = candle("coinbase", "BTC-USD", open=99.0, high=108.0, low=90.0, close=104.0, volume=3.0,
               quote_volume=306.0, buy_volume=3.0, sell_volume=0.0, vwap=102.0, trades=4,
               first_trade_ts=TS + 1, last_trade_ts=TS + 55 * S, closed=False)  # fmt: skip
    merged = merge_candles("BTC-USD", [a, b], 3)
    assert (merged.exchange, merged.symbol, merged.version) == ("all", "BTC-USD", 3)
    assert (merged.open, merged.high, merged.low, merged.close) == (99.0, 110.0, 90.0, 104.0)
    assert (merged.volume, merged.quote_volume, merged.trades) == (5.0, 506.0, 5)
    assert merged.vwap == 506.0 / 5.0
    assert (merged.buy_volume, merged.sell_volume) == (4.0, 1.0)
    assert not merged.closed
    assert merged.markets == ["binance:BTC-USDT", "coinbase:BTC-USD"]
    assert merged.key() == f"all:BTC-USD:1m:{TS}"

    merger = CandleMerger(SymbolMap([["USD", "USDT"]]))
    merger.add(a)
    merger.add(b)
    merger.add(a)  # same version again: no change
    [published] = merger.publish()
    assert published == merge_candles("BTC-USD", [a, b], 1)


def buckets(exchange: str, ts: int, size: float, bids: list[Bucket], asks: list[Bucket]) -> BookBuckets:
    return BookBuckets(exchange=exchange, symbol="BTC-USDT", ts=ts, mid=100.0, best_bid=99.0, best_ask=101.0,
                       spread=2.0, bucket_size=size, bids=bids, asks=asks, bands=[],
                       markets=[f"{exchange}:BTC-USDT"])  # fmt: skip


def test_consolidated_buckets_sum_per_bucket_at_the_same_boundary() -> None:
    merger = BucketMerger(SymbolMap(), interval_us=S)
    one = buckets(
        "binance", TS, 1.0, [Bucket(99.0, 1.0, 99.0), Bucket(98.0, 2.0, 196.0)], [Bucket(101.0, 1.0, 101.0)]
    )
    two = buckets("okx", TS, 2.0, [Bucket(98.0, 5.0, 490.0)], [Bucket(100.0, 1.0, 100.5)])
    [alone] = merger.add(one)  # the first market of a symbol waits for no one
    assert alone.markets == ["binance:BTC-USDT"] and alone.bids == one.bids
    merger2 = BucketMerger(SymbolMap(), interval_us=S)
    merger2.add(buckets("binance", TS - S, 1.0, [], []))
    merger2.add(buckets("okx", TS - S, 2.0, [], []))
    assert merger2.add(one) == []  # okx is active and has not reported TS
    [merged] = merger2.add(two)
    assert merged.exchange == "all" and merged.ts == TS and merged.bucket_size == 2.0
    assert merged.bids == [Bucket(98.0, 8.0, 785.0)]
    assert merged.asks == [Bucket(100.0, 2.0, 201.5)]
    assert merged.markets == ["binance:BTC-USDT", "okx:BTC-USDT"]
    assert common_bucket_size([2.0, 5.0]) == 10.0
    assert common_bucket_size([1.0, 5.0]) == 5.0


def test_lagging_market_is_left_out_after_two_boundaries() -> None:
    merger = BucketMerger(SymbolMap(), interval_us=S)
    merger.add(buckets("binance", TS - S, 1.0, [], []))
    merger.add(buckets("okx", TS - S, 1.0, [], []))
    assert merger.add(buckets("binance", TS, 1.0, [Bucket(99.0, 1.0, 99.0)], [])) == []
    assert merger.add(buckets("binance", TS + S, 1.0, [], [])) == []
    [merged] = merger.add(buckets("binance", TS + 2 * S, 1.0, [], []))
    assert merged.ts == TS and merged.markets == ["binance:BTC-USDT"]


def test_consolidated_window_waits_for_slow_markets_before_expiring() -> None:
    merger = CandleMerger(SymbolMap(), retention_us=60 * S)
    fast = candle("binance", "BTC-USDT", open=1.0, high=1.0, low=1.0, close=1.0, volume=1.0, quote_volume=1.0,
                  buy_volume=1.0, sell_volume=0.0, vwap=1.0, first_trade_ts=TS, last_trade_ts=TS)  # fmt: skip
    slow = msgspec.structs.replace(fast, exchange="okx", closed=False)
    merger.add(fast)
    merger.add(slow)
    merger.publish()
    far = msgspec.structs.replace(fast, open_time=TS + 86_400 * S, close_time=TS + 86_460 * S, version=1)
    merger.add(far)  # binance is a day ahead; okx is still in the first window
    merger.add(msgspec.structs.replace(slow, closed=True, version=2))
    first = [c for c in merger.publish() if c.open_time == TS]
    assert first and first[-1].markets == ["binance:BTC-USDT", "okx:BTC-USDT"] and first[-1].closed


def test_window_closed_and_passed_in_one_batch_is_published_before_it_expires() -> None:
    """A backlog batch closes a window and carries every market past the late horizon: the
    closed consolidated candle still goes out once before the window is forgotten."""
    merger = CandleMerger(SymbolMap([["USD", "USDT"]]), retention_us=60 * S)
    prices = dict(open=1.0, high=1.0, low=1.0, close=1.0, volume=1.0, quote_volume=1.0, buy_volume=1.0,
                  sell_volume=0.0, vwap=1.0, first_trade_ts=TS, last_trade_ts=TS)  # fmt: skip
    markets = (("binance", "BTC-USDT"), ("coinbase", "BTC-USD"))
    opened = [candle(exchange, symbol, closed=False, **prices) for exchange, symbol in markets]
    for market in opened:
        merger.add(market)
    merger.publish()
    for market in opened:
        merger.add(msgspec.structs.replace(market, closed=True, version=2))
    for minutes in (7, 8, 9):
        for market in opened:
            merger.add(
                msgspec.structs.replace(
                    market, open_time=TS + minutes * 60 * S, close_time=TS + (minutes + 1) * 60 * S
                )
            )
    first = [c for c in merger.publish() if c.open_time == TS]
    assert [(c.closed, c.markets) for c in first] == [(True, ["binance:BTC-USDT", "coinbase:BTC-USD"])]
    for market in opened:  # published: the next new window forgets it
        merger.add(msgspec.structs.replace(market, open_time=TS + 10 * 60 * S, close_time=TS + 11 * 60 * S))
    assert f"BTC-USD:1m:{TS}" not in merger.windows


def _second(exchange: str, symbol: str, seconds: int, **fields: object) -> Candle:
    opened = TS + seconds * S
    prices = dict(open=1.0, high=1.0, low=1.0, close=1.0, volume=1.0, quote_volume=1.0, buy_volume=1.0,
                  sell_volume=0.0, vwap=1.0, first_trade_ts=opened, last_trade_ts=opened)  # fmt: skip
    return candle(exchange, symbol, interval="1s", open_time=opened, close_time=opened + S, **prices | fields)


def test_a_market_far_ahead_does_not_make_another_ones_window_partial() -> None:
    """One market's partition runs days ahead in a batch before the other's candles of the same
    windows arrive: the consolidated candles still hold both, whatever the order."""
    merger = CandleMerger(SymbolMap([["USD", "USDT"]]))
    later = 3 * 86_400
    merger.add(_second("binance", "BTC-USDT", 0, closed=False))
    merger.add(_second("coinbase", "BTC-USD", 5, closed=False))
    merger.publish()
    for seconds in (0, later, later + 1):
        merger.add(_second("binance", "BTC-USDT", seconds, version=2))
    merger.publish()
    for seconds in (0, 5, later):
        merger.add(_second("coinbase", "BTC-USD", seconds, version=2))
    merged = {(c.open_time - TS) // S: c for c in merger.publish()}
    both = ["binance:BTC-USDT", "coinbase:BTC-USD"]
    assert merged[0].markets == both and merged[0].closed and merged[0].trades == 2
    assert merged[5].markets == ["coinbase:BTC-USD"]  # binance traded nothing in that second
    assert merged[later].markets == both
    merger.add(_second("binance", "BTC-USDT", later + 2, closed=False))  # a new window: both moved on
    merger.publish()
    assert not any(key.endswith(f":{TS}") for key in merger.windows) and merger.ignored_late == 0
    merger.add(_second("coinbase", "BTC-USD", 0, version=3))  # too late: would publish coinbase alone
    assert merger.ignored_late == 1 and merger.publish() == []


def test_a_silent_market_is_waited_for_only_so_long() -> None:
    merger = CandleMerger(SymbolMap())
    merger.add(_second("okx", "BTC-USDT", 0, closed=False))  # then silent for good
    for seconds in range(WAITED_WINDOWS + 400):
        merger.add(_second("binance", "BTC-USDT", seconds))
        merger.publish()
    assert len(merger.windows) < WAITED_WINDOWS


def test_checkpoints_of_the_older_merger_restore() -> None:
    merger = CandleMerger(SymbolMap())
    merger.add(_second("binance", "BTC-USDT", 0))
    merger.publish()
    state = merger.__dict__.copy()
    series = state.pop("series")[("BTC-USDT", "1s")]
    del state["ignored_late"]
    state["_series"] = {("BTC-USDT", "1s"): series.windows}
    state["_progress"] = {("BTC-USDT", "1s"): series.progress}
    restored = CandleMerger.__new__(CandleMerger)
    restored.__setstate__(state)
    restored.add(_second("binance", "BTC-USDT", 1))
    assert [c.open_time for c in restored.publish()] == [TS + S]
    assert restored.series[("BTC-USDT", "1s")].windows.keys() == {TS, TS + S}
