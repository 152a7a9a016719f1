"""End to end: simulator -> producers -> Kafka -> streams -> sink -> ClickHouse (chDB).

Every part runs as its own `marketpipe` process on a fresh topic namespace and data dir.
After a bounded run the producers stop, the streams app and the sink drain, and the
ClickHouse contents are checked against an independent computation in this file over the
records on Kafka: trades row for row, closed candles recomputed from the trades, bucket
snapshots recomputed by replaying md.book.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from kafka_helpers import replay_book
from pipeline_support import Pipeline, pipeline, query, read_topic

from marketpipe.codec import AvroCodec
from marketpipe.config import StreamSettings, interval_to_us
from marketpipe.exchanges import subset
from marketpipe.records import BBO, BookChange, StatusEvent, Trade
from streams.feed import MAX_FILLED_BOUNDARIES

pytestmark = pytest.mark.slow

EXCHANGES = subset("binance", "coinbase", "okx")
SYMBOLS = "BTC-USDT,ETH-USDT,BTC-USD"  # binance/okx list the USDT pairs, coinbase BTC-USD
MARKETS = {
    "binance:BTC-USDT",
    "binance:ETH-USDT",
    "okx:BTC-USDT",
    "okx:ETH-USDT",
    "coinbase:BTC-USD",
}
STREAMS = StreamSettings()  # the defaults the processes run with
GRACE_US = int(STREAMS.ohlcv_grace_s * 1_000_000)
BUCKET_US = int(STREAMS.bucket_interval_s * 1_000_000)
CODEC = AvroCodec()
# float sums accumulated in a different order (per-second chunks merged into longer
# candles, ClickHouse's own sum): equal up to rounding, not bit for bit
SUM_REL = 1e-12

Market = str  # "exchange:symbol"


@dataclass
class Run:
    trades: list[Trade]
    books: list[BookChange]
    bbos: list[BBO]
    statuses: list[StatusEvent]
    seconds: float
    trade_rows: list[tuple[Any, ...]]
    trade_sums: list[tuple[Any, ...]]
    candle_rows: list[tuple[Any, ...]]
    bucket_rows: list[tuple[Any, ...]]
    bbo_rows: list[tuple[Any, ...]]
    status_rows: list[tuple[Any, ...]]


def _market_seconds() -> tuple[float, float]:
    """(wait, run) so the run crosses a minute boundary and closes that minute's 1m candles.

    Candles close on the market's own event time (trade ts - grace), and the simulator
    stamps wall-clock time, so the run must reach a little past the boundary.
    """
    to_boundary = 60 - time.time() % 60
    if to_boundary < 15:  # too close for the connectors to be up and trading before it: the next one
        to_boundary += 60
    wait = max(0.0, to_boundary - 26)
    return wait, max(18.0, to_boundary - wait + 5 + GRACE_US / 1e6)


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("e2e")
    with pipeline(kafka_bootstrap, root, EXCHANGES, SYMBOLS) as p:
        p.start_sim(trade_rate=8, seed=11)
        p.start("stream", "stream")
        p.start_sink()
        wait, seconds = _market_seconds()
        time.sleep(wait)
        p.start("produce", "produce")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            p.check_alive()
            time.sleep(1.0)
        p.stop("produce")
        p.wait_drained()
        yield _collect(p, seconds)
        p.check_alive("stream", "sink")


def _collect(p: Pipeline, seconds: float) -> Run:
    def decoded(topic: str, kind: Any) -> list[Any]:
        return [CODEC.decode(m.value() or b"", kind) for m in read_topic(p.bootstrap, topic)]

    dsn, t = p.dsn, p.topics
    return Run(
        trades=decoded(t.trades, Trade),
        books=decoded(t.book, BookChange),
        bbos=decoded(t.bbo, BBO),
        statuses=decoded(t.status, StatusEvent),
        seconds=seconds,
        # queried while the sink runs: through the endpoint of the process that owns the database
        trade_rows=query(
            dsn,
            "SELECT exchange, symbol, trade_id, price, size, side, toUnixTimestamp64Micro(ts),"
            " toUnixTimestamp64Micro(recv_ts), conn, seq FROM trades",
        ),
        trade_sums=query(
            dsn,
            "SELECT exchange, symbol, count(), sum(size), sum(price * size), sumIf(size, side = 'buy'),"
            " toUnixTimestamp64Micro(min(ts)), toUnixTimestamp64Micro(max(ts))"
            " FROM trades FINAL GROUP BY exchange, symbol",
        ),
        candle_rows=query(
            dsn,
            "SELECT exchange, symbol, interval, toUnixTimestamp64Micro(open_time), open, high, low, close,"
            " volume, quote_volume, buy_volume, sell_volume, trades, vwap,"
            " toUnixTimestamp64Micro(first_trade_ts), toUnixTimestamp64Micro(last_trade_ts), closed,"
            " markets FROM ohlcv_final",
        ),
        bucket_rows=query(
            dsn,
            "SELECT exchange, symbol, toUnixTimestamp64Micro(ts), mid, best_bid, best_ask, bucket_size,"
            " bids.price, bids.size, bids.notional, asks.price, asks.size, asks.notional,"
            " bands.pct, bands.bid_size, bands.ask_size, markets FROM book_buckets FINAL",
        ),
        bbo_rows=query(
            dsn,
            "SELECT exchange, symbol, bid_price, bid_size, ask_price, ask_size,"
            " toUnixTimestamp64Micro(ts), toUnixTimestamp64Micro(recv_ts) FROM bbo",
        ),
        status_rows=query(
            dsn, "SELECT exchange, symbol, toUnixTimestamp64Micro(ts), state, reason, gaps FROM status"
        ),
    )


def _split(market: Market) -> tuple[str, str]:
    exchange, symbol = market.split(":")
    return exchange, symbol


def _by_market(records: list[Any]) -> dict[Market, list[Any]]:
    """Records per market, in topic order (one market is one key, hence one partition)."""
    found: dict[Market, list[Any]] = defaultdict(list)
    for record in records:
        found[f"{record.exchange}:{record.symbol}"].append(record)
    return found


# ------------------------------------------------------------------------------- trades


def test_trades_table_is_md_trades_row_for_row(run: Run) -> None:
    assert set(_by_market(run.trades)) == MARKETS
    assert len(run.trades) > 5 * run.seconds, "the simulated market traded too little to test anything"
    natural_keys = [(t.exchange, t.symbol, t.trade_id) for t in run.trades]
    assert len(set(natural_keys)) == len(natural_keys), "md.trades holds a trade twice"

    expected = sorted(
        (t.exchange, t.symbol, t.trade_id, t.price, t.size, t.side, t.ts, t.recv_ts, t.conn, t.seq)
        for t in run.trades
    )
    # no FINAL: a duplicate insert would show here even before ClickHouse merges
    assert sorted(run.trade_rows) == expected


def test_trade_aggregates_per_market(run: Run) -> None:
    sums = {f"{row[0]}:{row[1]}": row[2:] for row in run.trade_sums}
    assert set(sums) == MARKETS
    for market, trades in _by_market(run.trades).items():
        count, volume, notional, bought, first, last = sums[market]
        assert count == len(trades)
        assert volume == pytest.approx(math.fsum(t.size for t in trades), rel=SUM_REL)
        assert notional == pytest.approx(math.fsum(t.price * t.size for t in trades), rel=SUM_REL)
        assert bought == pytest.approx(math.fsum(t.size for t in trades if t.side == "buy"), rel=SUM_REL)
        assert (first, last) == (min(t.ts for t in trades), max(t.ts for t in trades))


# ------------------------------------------------------------------------------ candles


@dataclass
class Expected:
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    buy_volume: float
    sell_volume: float
    trades: int
    first_ts: int
    last_ts: int


def _candle_of(trades: list[Trade]) -> Expected:
    """OHLCV of trades given in processing order: open = earliest ts (first processed on a tie),
    close = latest ts (last processed on a tie)."""
    first = min(range(len(trades)), key=lambda i: (trades[i].ts, i))
    last = max(range(len(trades)), key=lambda i: (trades[i].ts, i))
    volume = quote = bought = sold = 0.0
    for t in trades:
        volume += t.size
        quote += t.price * t.size
        if t.side == "buy":
            bought += t.size
        else:
            sold += t.size
    return Expected(
        open=trades[first].price,
        high=max(t.price for t in trades),
        low=min(t.price for t in trades),
        close=trades[last].price,
        volume=volume,
        quote_volume=quote,
        buy_volume=bought,
        sell_volume=sold,
        trades=len(trades),
        first_ts=trades[first].ts,
        last_ts=trades[last].ts,
    )


def _windows(trades: list[Trade], length: int) -> dict[int, list[Trade]]:
    windows: dict[int, list[Trade]] = defaultdict(list)
    for t in trades:
        windows[t.ts - t.ts % length].append(t)
    return windows


def _assert_candle(row: tuple[Any, ...], expected: Expected) -> None:
    (_, _, _, _, open_, high, low, close, volume, quote, bought, sold, count, vwap, first, last) = row[:16]
    where = row[:4]
    assert (open_, high, low, close) == (expected.open, expected.high, expected.low, expected.close), where
    assert (count, first, last) == (expected.trades, expected.first_ts, expected.last_ts), where
    sums = (volume, quote, bought, sold)
    wanted = (expected.volume, expected.quote_volume, expected.buy_volume, expected.sell_volume)
    # the builder sums per-second accumulators, split again at each publication: the same
    # additions in another grouping, so equal up to rounding only
    assert sums == pytest.approx(wanted, rel=SUM_REL, abs=1e-12), where
    assert vwap == pytest.approx(expected.quote_volume / expected.volume, rel=SUM_REL), where


def test_closed_candles_match_candles_recomputed_from_the_trades(run: Run) -> None:
    rows = {(r[0], r[1], r[2], r[3]): r for r in run.candle_rows if r[0] != "all"}
    closed = {key for key, r in rows.items() if r[16]}
    expected_closed = set()
    compared: dict[str, int] = defaultdict(int)
    for market, trades in _by_market(run.trades).items():
        exchange, symbol = market.split(":")
        watermark = max(t.ts for t in trades) - GRACE_US
        for interval in STREAMS.ohlcv_intervals:
            length = interval_to_us(interval)
            for open_time, in_window in _windows(trades, length).items():
                key = (exchange, symbol, interval, open_time)
                if open_time + length > watermark:
                    continue  # still open: publications are throttled, the last trades may be unsent
                expected_closed.add(key)
                assert key in rows, f"no candle for {key}"
                _assert_candle(rows[key], _candle_of(in_window))
                compared[interval] += 1
    assert closed == expected_closed
    assert compared["1s"] >= 5 * len(MARKETS) and compared["1m"] >= len(MARKETS), compared


def test_closed_consolidated_candles_merge_every_exchange(run: Run) -> None:
    """exchange "all": one candle per symbol and window, from every market's trades in it."""
    per_market = {(r[0], r[1], r[2], r[3]): r for r in run.candle_rows if r[0] != "all"}
    merged = {(r[1], r[2], r[3]): r for r in run.candle_rows if r[0] == "all"}
    by_symbol: dict[str, list[tuple[Market, Trade]]] = defaultdict(list)
    for market, trades in _by_market(run.trades).items():
        by_symbol[market.split(":")[1]] += [(market, t) for t in trades]
    checked = 0
    for symbol, trades in by_symbol.items():
        for interval in STREAMS.ohlcv_intervals:
            length = interval_to_us(interval)
            windows: dict[int, list[tuple[Market, Trade]]] = defaultdict(list)
            for market, t in trades:
                windows[t.ts - t.ts % length].append((market, t))
            for open_time, in_window in windows.items():
                markets = sorted({m for m, _ in in_window})
                parts = [per_market.get((*_split(m), interval, open_time)) for m in markets]
                if not all(part is not None and part[16] for part in parts):
                    continue  # some market's candle is still open: so is the merged one
                row = merged[(symbol, interval, open_time)]
                where = (symbol, interval, open_time)
                assert row[16] and sorted(row[17]) == markets, where
                # open: the earliest trade; on a tie in ts the alphabetically first market wins,
                # and within one market the first processed trade. close: the latest trade, the
                # first market on a tie, and within it the last processed trade.
                first = min(range(len(in_window)), key=lambda i: (in_window[i][1].ts, in_window[i][0], i))
                last_ts = max(t.ts for _, t in in_window)
                last_market = min(m for m, t in in_window if t.ts == last_ts)
                last = [t for m, t in in_window if m == last_market and t.ts == last_ts][-1]
                prices = [t.price for _, t in in_window]
                assert row[4:8] == (in_window[first][1].price, max(prices), min(prices), last.price), where
                assert row[12] == len(in_window), where
                assert row[8] == pytest.approx(math.fsum(t.size for _, t in in_window), rel=SUM_REL)
                checked += 1
    assert checked >= 10, checked


# ------------------------------------------------------------------------------ buckets


@dataclass
class BookAt:
    """A replayed book as it stood at a bucket boundary."""

    bids: dict[float, float]
    asks: dict[float, float]


def _replay_boundaries(changes: list[BookChange]) -> dict[int, BookAt]:
    """Replay one market's md.book and take the book at every bucket boundary.

    The design: while a book is synced, the snapshot at boundary B is the book before the
    first published change (or fresh snapshot) with ts >= B. A fresh snapshot starts the
    book over; the first boundary after it is the next one past its ts.
    """
    taken: dict[int, BookAt] = {}
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    next_boundary: int | None = None
    for change in changes:
        if next_boundary is not None and change.ts >= next_boundary:
            last = change.ts - change.ts % BUCKET_US
            first = max(next_boundary, last - (MAX_FILLED_BOUNDARIES - 1) * BUCKET_US)
            for boundary in range(first, last + 1, BUCKET_US):
                taken[boundary] = BookAt(dict(bids), dict(asks))
        if change.snapshot:
            bids, asks = {}, {}
        for side, levels in ((bids, change.bids), (asks, change.asks)):
            for level in levels:
                if level.size == 0:
                    side.pop(level.price, None)
                else:
                    side[level.price] = level.size
        if change.snapshot or next_boundary is not None:
            next_boundary = change.ts - change.ts % BUCKET_US + BUCKET_US
    return taken


def _bucketed(levels: dict[float, float], size: float, mid: float, bid: bool) -> list[tuple[float, float]]:
    """(lower edge, total size) per bucket within the distance limit, best first, in exact decimals."""
    limit = mid * (1 - STREAMS.bucket_max_distance_pct / 100 * (1 if bid else -1))
    step = Decimal(repr(size))
    sums: dict[Decimal, float] = {}
    for price in sorted(levels, reverse=bid):
        if (price < limit) if bid else (price > limit):
            continue
        edge = (Decimal(repr(price)) / step).to_integral_value(rounding="ROUND_FLOOR") * step
        sums[edge] = sums.get(edge, 0.0) + levels[price]
    return [(float(edge), total) for edge, total in sums.items()]


def _is_default_bucket_size(size: float, mid: float) -> bool:
    """On the 1-2-5 series, at most 1 bp of mid, and the next step up would exceed it."""
    text = f"{size:.0e}"
    mantissa, exponent = int(text[0]), int(text.split("e")[1])
    on_series = mantissa in (1, 2, 5) and math.isclose(size, mantissa * 10.0**exponent, rel_tol=1e-12)
    following = {1: 2, 2: 5, 5: 10}[mantissa] * 10.0**exponent
    return on_series and size <= mid * 1e-4 * (1 + 1e-9) < following


def test_no_book_went_unsynced_after_syncing(run: Run) -> None:
    """Precondition of the bucket replay below: md.book alone tells the book's state."""
    for market, events in _by_market(run.statuses).items():
        states = [(e.state, e.reason) for e in events]
        first_sync = states.index(("synced", "snapshot"))
        later = states[first_sync + 1 :]
        # the connection closing when the producers stop is the only way out
        assert later in ([], [("unsynced", "close")]), (market, states)
    assert set(_by_market(run.statuses)) == MARKETS


def test_bucket_snapshots_match_the_replayed_book(run: Run) -> None:
    rows = {(r[0], r[1], r[2]): r for r in run.bucket_rows if r[0] != "all"}
    checked = 0
    for market, changes in _by_market(run.books).items():
        exchange, symbol = market.split(":")
        expected = _replay_boundaries(changes)
        assert {ts for (e, s, ts) in rows if (e, s) == (exchange, symbol)} == set(expected), market
        for boundary, book in expected.items():
            row = rows[(exchange, symbol, boundary)]
            mid, best_bid, best_ask, size = row[3:7]
            assert (best_bid, best_ask) == (max(book.bids), min(book.asks)), (market, boundary)
            assert mid == (best_bid + best_ask) / 2
            assert _is_default_bucket_size(size, mid), (market, boundary, size)
            for side, prices, sizes, notionals, bid in (
                (book.bids, row[7], row[8], row[9], True),
                (book.asks, row[10], row[11], row[12], False),
            ):
                buckets = _bucketed(side, size, mid, bid)
                assert list(prices) == [edge for edge, _ in buckets], (market, boundary, bid)
                assert list(sizes) == pytest.approx([total for _, total in buckets], rel=SUM_REL)
                assert all(n > 0 for n in notionals)
            for pct, bid_size, ask_size in zip(row[13], row[14], row[15], strict=True):
                near_bids = math.fsum(s for p, s in book.bids.items() if p >= mid * (1 - pct / 100))
                near_asks = math.fsum(s for p, s in book.asks.items() if p <= mid * (1 + pct / 100))
                assert (bid_size, ask_size) == pytest.approx((near_bids, near_asks), rel=SUM_REL)
            checked += 1
    assert checked >= len(MARKETS) * (run.seconds - 8), checked


def _replayed_bbos(changes: list[BookChange]) -> list[tuple[float, float, float, float, int, int]]:
    """The top of the book after every md.book change, whenever it differs from the last one."""
    tops: list[tuple[float, float, float, float, int, int]] = []
    last = None
    for change, bids, asks in replay_book(changes):
        if bids and asks:
            bid, ask = max(bids), min(asks)
            top = (bid, bids[bid], ask, asks[ask])
            if top != last:
                tops.append((*top, change.ts, change.recv_ts))
                last = top
    return tops


def test_bbo_rows_are_the_tops_of_the_replayed_book(run: Run) -> None:
    published = sorted(
        (b.exchange, b.symbol, b.bid_price, b.bid_size, b.ask_price, b.ask_size, b.ts, b.recv_ts)
        for b in run.bbos
    )
    assert published and sorted(run.bbo_rows) == published
    bbos = _by_market(run.bbos)
    for market, changes in _by_market(run.books).items():
        seen = [(b.bid_price, b.bid_size, b.ask_price, b.ask_size, b.ts, b.recv_ts) for b in bbos[market]]
        assert seen == _replayed_bbos(changes), market


def test_status_rows_are_the_published_events(run: Run) -> None:
    expected = sorted((s.exchange, s.symbol, s.ts, s.state, s.reason, s.gaps) for s in run.statuses)
    assert sorted(run.status_rows) == expected


def test_consolidated_buckets_sum_their_markets(run: Run) -> None:
    rows = {(r[0], r[1], r[2]): r for r in run.bucket_rows}
    merged = [r for r in run.bucket_rows if r[0] == "all"]
    assert merged
    for row in merged:
        parts = [rows[(*m.split(":"), row[2])] for m in row[16]]
        assert row[4] == max(p[4] for p in parts) and row[5] == min(p[5] for p in parts)
        for index in (8, 11):  # total bid / ask size within the distance limit
            assert math.fsum(row[index]) == pytest.approx(
                math.fsum(math.fsum(p[index]) for p in parts), rel=1e-9
            )
