"""Binance USDⓈ-M futures end to end: simulator -> binance-futures connector (a /public and a
/market connection per shard, REST depth snapshots and open-interest polling) -> Kafka -> stream
-> sink -> ClickHouse (chDB), each a `marketpipe` process on a fresh topic namespace.

Two perpetuals and a quarterly contract: trades, synced books, mark and index prices, funding
(perpetuals only: the dated contract sends ``r`` 0 with ``T`` 0), polled open interest and
filled liquidations must reach their tables under the contracts' own names, and a diff event
dropped from a perpetual's book (a ``pu`` gap) must unsync it once and see it re-synced from a
fresh REST snapshot, with nothing published across the gap.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from pipeline_support import Pipeline, derivative_rows, pipeline, query, read_topic, states

from marketpipe.codec import AvroCodec
from marketpipe.records import BookChange, DeadLetter, StatusEvent

pytestmark = pytest.mark.slow

EXCHANGE = "binance-futures"
CODEC = AvroCodec()


def quarter_end(today: date) -> date:
    """The last Friday of the quarter after ``today``'s (a quarterly contract's delivery day)."""
    month = ((today.month - 1) // 3 + 1) * 3 + 3
    year, month = today.year + (month - 1) // 12, (month - 1) % 12 + 1
    last = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - 4) % 7)


DELIVERY = quarter_end(datetime.now(UTC).date())
FUTURE = f"BTC-USDT-{DELIVERY:%Y%m%d}"
NAMES = {  # normalised name -> fapi symbol
    "BTC-USDT-PERP": "BTCUSDT",
    "ETH-USDT-PERP": "ETHUSDT",
    FUTURE: f"BTCUSDT_{DELIVERY:%y%m%d}",
}
PERPETUALS = ("BTC-USDT-PERP", "ETH-USDT-PERP")
GAPPED = "BTC-USDT-PERP"
PRICE_RANGES = {"BTC-USDT-PERP": (50_000, 80_000), "ETH-USDT-PERP": (1_000, 3_000), FUTURE: (50_000, 80_000)}


@dataclass
class Run:
    pipeline: Pipeline
    statuses: list[StatusEvent]
    books: list[BookChange]
    dead_letters: list[DeadLetter]

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return query(self.pipeline.dsn, sql)


def _fault(p: Pipeline, fault: str, symbol: str) -> int:
    return p.inject_fault(EXCHANGE, fault, symbol)


def _statuses(p: Pipeline) -> list[StatusEvent]:
    return p.statuses()


def _states(statuses: list[StatusEvent], symbol: str) -> list[tuple[str, str]]:
    return states(statuses, EXCHANGE, symbol)


def _wait(p: Pipeline, done: Callable[[], bool], what: str, timeout_s: float = 40.0) -> None:
    p.wait_for(done, what, timeout_s)


def _filled(p: Pipeline) -> bool:
    """Every derivative table has rows of each contract it applies to."""
    wanted = {("funding", s) for s in PERPETUALS} | {
        (table, s) for table in ("open_interest", "mark", "index", "liquidations") for s in NAMES
    }
    return wanted <= derivative_rows(p.dsn)


def _route_producer_to_the_simulator(p: Pipeline) -> None:
    p.env["MARKETPIPE_PRODUCERS__BINANCE_FUTURES__REST_MIN_INTERVAL_S"] = "0.05"


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("binance-futures")
    with pipeline(kafka_bootstrap, root, (EXCHANGE,), ",".join(NAMES), prefix="f") as p:
        _route_producer_to_the_simulator(p)
        p.start_sim(trade_rate=6, seed=31)
        p.start("stream", "stream")
        p.start_sink()
        p.start("produce", "produce")

        def synced(symbol: str, times: int) -> Callable[[], bool]:
            return lambda: _states(_statuses(p), symbol).count(("synced", "snapshot")) >= times

        for name in NAMES:
            _wait(p, synced(name, 1), f"synced book of {name}")
        assert _fault(p, "gap", GAPPED) == 1  # the /public connection only carries books
        _wait(p, synced(GAPPED, 2), f"{GAPPED} re-synced after the pu gap")
        _wait(p, lambda: _filled(p), "funding, open interest, mark/index and liquidation rows")
        p.stop("produce")
        p.wait_drained()
        books = [CODEC.decode(m.value() or b"", BookChange) for m in read_topic(p.bootstrap, p.topics.book)]
        dead = [CODEC.decode(m.value() or b"", DeadLetter) for m in read_topic(p.bootstrap, p.topics.dlq)]
        yield Run(p, _statuses(p), books, dead)
        p.check_alive("stream", "sink")


def test_trades_books_and_instruments_of_each_contract(run: Run) -> None:
    trades = run.rows("SELECT symbol, exchange_symbol, count(), min(size) FROM trades FINAL GROUP BY 1, 2")
    assert {(symbol, exchange_symbol) for symbol, exchange_symbol, _, _ in trades} == set(NAMES.items())
    assert all(count > 0 and size > 0 for _, _, count, size in trades)
    assert {b.symbol for b in run.books} == set(NAMES)
    assert all(NAMES[b.symbol] == b.exchange_symbol for b in run.books)
    bbo = run.rows("SELECT symbol, min(bid_price), max(ask_price) FROM bbo GROUP BY symbol")
    assert {row[0] for row in bbo} == set(NAMES)
    assert all(PRICE_RANGES[s][0] < bid <= ask < PRICE_RANGES[s][1] for s, bid, ask in bbo)
    instruments = run.rows(
        "SELECT symbol, kind, contract_type, contract_size, contract_size_currency, settle_currency,"
        " toUnixTimestamp64Micro(expiry_ts) FROM instruments FINAL"
    )
    delivery_us = (
        int(datetime(DELIVERY.year, DELIVERY.month, DELIVERY.day, 8, tzinfo=UTC).timestamp()) * 10**6
    )
    assert sorted(instruments) == sorted(
        [
            ("BTC-USDT-PERP", "perpetual", "linear", 1.0, "BTC", "USDT", None),
            ("ETH-USDT-PERP", "perpetual", "linear", 1.0, "ETH", "USDT", None),
            (FUTURE, "future", "linear", 1.0, "BTC", "USDT", delivery_us),
        ]
    )


def test_funding_open_interest_mark_index_and_liquidations_reach_clickhouse(run: Run) -> None:
    funding = run.rows(
        "SELECT symbol, rate, predicted_rate, interval_s,"
        " toUnixTimestamp64Micro(next_funding_ts) - toUnixTimestamp64Micro(ts) FROM funding FINAL"
    )
    assert {row[0] for row in funding} == set(PERPETUALS)  # the dated contract sends T 0: no funding
    assert all(abs(rate) < 0.0075 and predicted is None for _, rate, predicted, _, _ in funding)
    assert all(0 < ahead <= 8 * 3600 * 1_000_000 for *_, ahead in funding)
    assert {interval for _, _, _, interval, _ in funding} <= {None, 8 * 3600}
    interest = run.rows(
        "SELECT symbol, min(open_interest), max(value) FROM open_interest FINAL GROUP BY symbol"
    )
    assert {row[0] for row in interest} == set(NAMES)
    assert all(low > 0 and value is None for _, low, value in interest)
    marks = run.rows(
        "SELECT symbol, min(mark_price), max(mark_price), min(index_price), countIf(settle_price IS NOT NULL)"
        " FROM mark_price FINAL GROUP BY symbol"
    )
    assert {row[0] for row in marks} == set(NAMES)
    for symbol, low, high, index, settles in marks:
        assert PRICE_RANGES[symbol][0] < low <= high < PRICE_RANGES[symbol][1] and index > 0
        assert settles == 0  # P is a settle price only in the last hour before a delivery
    liquidations = run.rows("SELECT symbol, side, price, size FROM liquidations FINAL")
    assert {row[0] for row in liquidations} == set(NAMES)
    assert {row[1] for row in liquidations} == {"buy", "sell"}
    assert all(
        PRICE_RANGES[s][0] < price < PRICE_RANGES[s][1] and size > 0 for s, _, price, size in liquidations
    )


def test_a_pu_gap_unsyncs_the_book_once_and_a_fresh_snapshot_resyncs_it(run: Run) -> None:
    states = _states(run.statuses, GAPPED)
    assert states[:3] == [("synced", "snapshot"), ("unsynced", "gap"), ("synced", "snapshot")]
    for name in NAMES:
        if name != GAPPED:
            assert ("unsynced", "gap") not in _states(run.statuses, name)
    changes = [b for b in run.books if b.symbol == GAPPED]
    snapshots = [i for i, b in enumerate(changes) if b.snapshot]
    assert len(snapshots) >= 2  # the first sync and the re-sync after the gap
    # the simulator numbers futures-style (U == pu + 2): each published chain is unbroken, so
    # nothing was published across the gap
    resync = snapshots[1]
    for chain in (changes[snapshots[0] : resync], changes[resync:]):
        for previous, update in itertools.pairwise(chain):
            assert update.snapshot or update.first_update_id == (previous.last_update_id or 0) + 2
    rows = query(
        run.pipeline.dsn,
        "SELECT state, reason FROM status WHERE exchange = {exchange:String} AND symbol = {symbol:String}"
        " ORDER BY ts",
        exchange=EXCHANGE,
        symbol=GAPPED,
    )
    assert [tuple(row) for row in rows][:3] == states[:3]


def test_nothing_was_dead_lettered(run: Run) -> None:
    """Every frame the simulator sent, every REST answer the connector published, was read (the
    expired liquidation orders are left out by rule, not dead-lettered)."""
    assert [(d.stage, d.reason) for d in run.dead_letters] == []
