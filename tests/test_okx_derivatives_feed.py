"""OKX spot, SWAP and FUTURES end to end: simulator -> OKX connector -> Kafka -> stream -> sink ->
ClickHouse (chDB), each a `marketpipe` process on a fresh topic namespace.

One configuration mixes a spot pair, a linear and an inverse perpetual and an inverse quarterly
future of one exchange: each must come out under its own name with its own book (never ``-``,
never merged), the derivative channels must fill ``funding``, ``open_interest``, ``mark_price``
(mark and index) and ``liquidations``, and a sequence gap injected into the linear perpetual's
book must unsync it once and see it re-synced from a fresh snapshot.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pipeline_support import Pipeline, derivative_rows, pipeline, query, read_topic, states

from marketpipe.codec import AvroCodec
from marketpipe.records import BookChange, StatusEvent
from simulator.okx import futures_expiry

pytestmark = pytest.mark.slow

CODEC = AvroCodec()
FUTURE = f"BTC-USD-{futures_expiry():%Y%m%d}-INV"
FUTURE_ID = f"BTC-USD-{futures_expiry():%y%m%d}"
NAMES = {  # normalised name -> OKX instId
    "BTC-USDT": "BTC-USDT",
    "BTC-USDT-PERP": "BTC-USDT-SWAP",
    "BTC-USD-PERP-INV": "BTC-USD-SWAP",
    FUTURE: FUTURE_ID,
}
CONTRACTS = ("BTC-USDT-PERP", "BTC-USD-PERP-INV", FUTURE)
PERPETUALS = ("BTC-USDT-PERP", "BTC-USD-PERP-INV")
GAPPED = "BTC-USDT-PERP"


@dataclass
class Run:
    pipeline: Pipeline
    statuses: list[StatusEvent]
    books: list[BookChange]

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return query(self.pipeline.dsn, sql)


def _fault(p: Pipeline, fault: str, symbol: str) -> int:
    return p.inject_fault("okx", fault, symbol)


def _statuses(p: Pipeline) -> list[StatusEvent]:
    return p.statuses()


def _states(statuses: list[StatusEvent], symbol: str) -> list[tuple[str, str]]:
    return states(statuses, "okx", symbol)


def _wait(p: Pipeline, done: Callable[[], bool], what: str, timeout_s: float = 40.0) -> None:
    p.wait_for(done, what, timeout_s)


def _filled(p: Pipeline) -> bool:
    """Every derivative table has rows of each contract it applies to."""
    wanted = {("funding", s) for s in PERPETUALS} | {
        (table, s) for table in ("open_interest", "mark", "index", "liquidations") for s in CONTRACTS
    }
    return wanted <= derivative_rows(p.dsn)


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("okx-derivatives")
    with pipeline(kafka_bootstrap, root, ("okx",), ",".join(NAMES), prefix="d") as p:
        p.start_sim(trade_rate=8, seed=21)
        p.start("stream", "stream")
        p.start_sink()
        p.start("produce", "produce")

        def synced(symbol: str, times: int) -> Callable[[], bool]:
            return lambda: _states(_statuses(p), symbol).count(("synced", "snapshot")) >= times

        for name in NAMES:
            _wait(p, synced(name, 1), f"synced book of {name}")
        assert _fault(p, "gap", NAMES[GAPPED]) == 1
        _wait(p, synced(GAPPED, 2), f"{GAPPED} re-synced after the gap")
        _wait(p, lambda: _filled(p), "funding, open interest, mark, index and liquidation rows")
        p.stop("produce")
        p.wait_drained()
        books = [CODEC.decode(m.value() or b"", BookChange) for m in read_topic(p.bootstrap, p.topics.book)]
        yield Run(p, _statuses(p), books)
        p.check_alive("stream", "sink")


def test_each_instrument_has_its_own_name_trades_and_book(run: Run) -> None:
    trades = run.rows(
        "SELECT symbol, exchange_symbol, count(), max(size - floor(size)) FROM trades FINAL GROUP BY 1, 2"
    )
    assert {(symbol, exchange_symbol) for symbol, exchange_symbol, _, _ in trades} == set(NAMES.items())
    fractions = {symbol: fraction for symbol, _, _, fraction in trades}
    # contracts are whole numbers, the spot pair's sizes are BTC: nothing was merged across them
    assert all(fractions[name] == 0 for name in CONTRACTS) and fractions["BTC-USDT"] > 0
    assert {b.exchange_symbol for b in run.books if b.symbol != "-"} == set(NAMES.values())
    assert all(b.symbol != "-" and NAMES[b.symbol] == b.exchange_symbol for b in run.books)
    assert {s.symbol for s in run.statuses} == set(NAMES)
    bbo = run.rows("SELECT symbol, count() FROM bbo GROUP BY symbol")
    assert {symbol for symbol, count in bbo if count > 0} == set(NAMES)
    instruments = run.rows(
        "SELECT symbol, kind, contract_type, contract_size, contract_size_currency, settle_currency"
        " FROM instruments FINAL"
    )
    assert sorted(instruments) == sorted(
        [
            ("BTC-USDT", "spot", None, 1.0, "BTC", None),
            ("BTC-USDT-PERP", "perpetual", "linear", 0.01, "BTC", "USDT"),
            ("BTC-USD-PERP-INV", "perpetual", "inverse", 100.0, "USD", "BTC"),
            (FUTURE, "future", "inverse", 100.0, "USD", "BTC"),
        ]
    )


def test_funding_open_interest_mark_index_and_liquidations_reach_clickhouse(run: Run) -> None:
    funding = run.rows(
        "SELECT symbol, rate, interval_s,"
        " toUnixTimestamp64Micro(next_funding_ts) - toUnixTimestamp64Micro(ts), predicted_rate"
        " FROM funding FINAL"
    )
    assert {row[0] for row in funding} == set(PERPETUALS)  # the future has no funding channel
    assert all(abs(rate) < 0.01 and interval == 8 * 3600 for _, rate, interval, _, _ in funding)
    assert all(
        0 < ahead <= 8 * 3600 * 1_000_000 and predicted is None for _, _, _, ahead, predicted in funding
    )
    interest = run.rows(
        "SELECT symbol, min(open_interest), max(value) FROM open_interest FINAL GROUP BY symbol"
    )
    assert {row[0] for row in interest} == set(CONTRACTS)
    assert all(low > 0 and value is None for _, low, value in interest)
    marks = run.rows(
        "SELECT symbol, countIf(mark_price IS NOT NULL), countIf(index_price IS NOT NULL),"
        " min(coalesce(mark_price, index_price)), max(coalesce(mark_price, index_price))"
        " FROM mark_price FINAL GROUP BY symbol"
    )
    assert {row[0] for row in marks} == set(CONTRACTS)
    assert all(
        mark > 0 and index > 0 and 50_000 < low <= high < 80_000 for _, mark, index, low, high in marks
    )
    liquidations = run.rows("SELECT symbol, side, price, size FROM liquidations FINAL")
    assert {row[0] for row in liquidations} == set(CONTRACTS)
    assert {row[1] for row in liquidations} <= {"buy", "sell"}
    assert all(price > 0 and size >= 1 and size == int(size) for _, _, price, size in liquidations)


def test_an_injected_gap_unsyncs_the_book_once_and_a_fresh_snapshot_resyncs_it(run: Run) -> None:
    states = _states(run.statuses, GAPPED)
    assert states[:3] == [("synced", "snapshot"), ("unsynced", "gap"), ("synced", "snapshot")]
    for name in NAMES:
        if name != GAPPED:
            assert ("unsynced", "gap") not in _states(run.statuses, name)
    changes = [b for b in run.books if b.symbol == GAPPED]
    snapshots = [i for i, b in enumerate(changes) if b.snapshot]
    assert len(snapshots) >= 2  # the first sync and the re-sync after the gap
    resync = snapshots[1]
    # the updates around the re-sync chain by seqId/prevSeqId: nothing published across the gap
    before, after = changes[snapshots[0] : resync], changes[resync:]
    for chain in (before, after):
        for previous, update in itertools.pairwise(chain):
            assert update.snapshot or update.first_update_id == previous.last_update_id
    rows = query(
        run.pipeline.dsn,
        "SELECT state, reason FROM status WHERE exchange = 'okx' AND symbol = {symbol:String} ORDER BY ts",
        symbol=GAPPED,
    )
    assert [tuple(row) for row in rows][:3] == states[:3]
