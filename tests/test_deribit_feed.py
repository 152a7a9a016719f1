"""Deribit end to end: simulator -> DeribitConnector -> Kafka -> stream worker -> sink -> ClickHouse
(chDB), each a `marketpipe` process on a fresh topic namespace.

One inverse perpetual, one inverse dated future and one linear USDC perpetual: trades (in
contracts), books (BBOs and price buckets), funding, open interest, mark/index prices and
liquidations (from trades flagged ``liquidation``) must reach their tables; a change_id gap
injected into the perpetual's book must give one unsynced episode, the connector's resubscribe a
fresh snapshot, and the book must be synced and publishing again afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from pipeline_support import Pipeline, pipeline, query, read_topic

from marketpipe.raw import RawRecord
from simulator.deribit import next_quarterly
from sinks.server import ENDPOINT_FILE

pytestmark = pytest.mark.slow

PERP, LINEAR = "BTC-USD-PERP-INV", "SOL-USDC-PERP"
FUTURE = f"BTC-USD-{next_quarterly(datetime.now(UTC))}-INV"
SYMBOLS = (PERP, FUTURE, LINEAR)
Headers = list[tuple[str, bytes | None]]
TABLES: tuple[str, ...] = ("status", "trades", "bbo", "book_buckets", "instruments")
TABLES += ("funding", "open_interest", "mark_price", "liquidations")


@dataclass
class Run:
    pipeline: Pipeline
    statuses: list[tuple[Any, ...]]
    dead_letters: int
    heartbeats: tuple[int, int]
    """(test_request notifications received, public/test requests sent)"""


def _rows(p: Pipeline, sql: str) -> list[tuple[Any, ...]]:
    return query(p.dsn, sql)


def _sink_serving(p: Pipeline) -> bool:
    """The sink has created its tables and serves its database (the test must never open the
    directory itself while the sink starts: one process owns it)."""
    if not (p.root / "data" / "clickhouse" / ENDPOINT_FILE).exists():
        return False
    return all(_rows(p, f"EXISTS TABLE {table}") == [(1,)] for table in TABLES)


def _wait(p: Pipeline, what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        p.check_alive()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1.0)


def _statuses(p: Pipeline, symbol: str) -> list[tuple[Any, ...]]:
    return _rows(
        p,
        "SELECT state, reason FROM status FINAL"
        f" WHERE exchange = 'deribit' AND symbol = '{symbol}' ORDER BY ts",
    )


def _count(p: Pipeline, table: str, where: str = "") -> int:
    found = _rows(p, f"SELECT count() FROM {table} WHERE exchange = 'deribit' {where}")
    return int(found[0][0])


def _fault(p: Pipeline, fault: str, symbol: str) -> int:
    return p.inject_fault("deribit", fault, symbol)


def _heartbeats(p: Pipeline) -> tuple[int, int]:
    """From the raw topic: (``test_request`` frames received, ``public/test`` frames sent)."""
    records = [
        RawRecord.from_kafka(m.value(), cast(Headers, m.headers()), m.key())
        for m in read_topic(p.bootstrap, p.topics.raw("deribit"))
    ]
    requests = sum(r.kind == "recv" and b'"test_request"' in r.payload for r in records)
    answers = sum(r.kind == "sent" and b'"public/test"' in r.payload for r in records)
    return requests, answers


def _flowing(p: Pipeline) -> bool:
    """Every kind of row is there: funding changed at least once, a liquidation came."""
    synced = all(("synced", "snapshot") in _statuses(p, symbol) for symbol in SYMBOLS)
    return (
        synced
        and _count(p, "liquidations") > 0
        and int(_rows(p, "SELECT uniqExact(rate) FROM funding WHERE exchange = 'deribit'")[0][0]) >= 2
        and _count(p, "open_interest") >= 3
    )


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("deribit-feed")
    with pipeline(kafka_bootstrap, root, ("deribit",), ",".join(SYMBOLS), prefix="d") as p:
        p.env["MARKETPIPE_PRODUCERS__DERIBIT__REST_MIN_INTERVAL_S"] = "0"
        p.start_sim(trade_rate=8, seed=21)
        p.start("stream", "stream")
        p.start_sink()
        _wait(p, "the sink serving ClickHouse", lambda: _sink_serving(p))
        p.start("produce", "produce")
        _wait(p, "trades, books, funding, open interest and liquidations", lambda: _flowing(p), 90)
        assert _fault(p, "gap", PERP) == 1
        _wait(p, "the gap and the resync", lambda: len(_statuses(p, PERP)) >= 3)
        resynced_at = int(
            _rows(p, f"SELECT max(toUnixTimestamp64Micro(ts)) FROM status WHERE symbol = '{PERP}'")[0][0]
        )
        _wait(
            p,
            "book changes after the resync",
            lambda: (
                _count(p, "bbo", f"AND symbol = '{PERP}' AND toUnixTimestamp64Micro(recv_ts) > {resynced_at}")
                > 0
            ),
        )
        _wait(p, "a test_request (every 10 s)", lambda: _heartbeats(p)[0] >= 1)
        p.stop("produce")
        p.wait_drained()
        dead = read_topic(p.bootstrap, p.topics.dlq, timeout_s=20)
        yield Run(p, _statuses(p, PERP), len(dead), _heartbeats(p))


def test_the_gap_is_one_episode_and_the_resubscribe_resyncs(run: Run) -> None:
    stopped = ("unsynced", "close")  # the producer was stopped at the end
    assert run.statuses == [("synced", "snapshot"), ("unsynced", "gap"), ("synced", "snapshot"), stopped]
    for symbol in (FUTURE, LINEAR):
        assert _statuses(run.pipeline, symbol) == [("synced", "snapshot"), stopped]
    assert run.dead_letters == 0


def test_every_test_request_is_answered_with_public_test(run: Run) -> None:
    """Unanswered, the simulator (as Deribit) closes the connection: the statuses show none."""
    requests, answers = run.heartbeats
    assert requests >= 1 and answers == requests


def test_trades_are_contracts_of_each_instrument(run: Run) -> None:
    p = run.pipeline
    rows = _rows(
        p,
        "SELECT symbol, exchange_symbol, count(), countIf(size != round(size)), min(size)"
        " FROM trades FINAL WHERE exchange = 'deribit' GROUP BY symbol, exchange_symbol ORDER BY symbol",
    )
    names = {row[0]: row[1] for row in rows}
    assert names[PERP] == "BTC-PERPETUAL" and names[LINEAR] == "SOL_USDC-PERPETUAL"
    assert names[FUTURE].startswith("BTC-") and len(rows) == 3
    assert all(row[2] > 0 and row[3] == 0 and row[4] >= 1 for row in rows), rows  # whole contracts
    instruments = _rows(
        p,
        "SELECT symbol, kind, contract_type, contract_size, contract_size_currency FROM instruments FINAL"
        " WHERE exchange = 'deribit' ORDER BY symbol",
    )
    assert {row[0]: row[1:] for row in instruments} == {
        PERP: ("perpetual", "inverse", 10.0, "USD"),
        FUTURE: ("future", "inverse", 10.0, "USD"),
        LINEAR: ("perpetual", "linear", 0.0001, "SOL"),
    }


def test_liquidations_follow_their_trades_by_the_tardis_rule(run: Run) -> None:
    rows = _rows(
        run.pipeline,
        "SELECT l.liquidation_id, toString(l.side), t.side, l.price = t.price, l.size = t.size"
        " FROM (SELECT * FROM liquidations FINAL WHERE exchange = 'deribit') AS l"
        " LEFT JOIN (SELECT * FROM trades FINAL WHERE exchange = 'deribit') AS t"
        " ON l.symbol = t.symbol AND l.liquidation_id = t.trade_id",
    )
    assert rows
    for trade_id, side, taker, same_price, same_size in rows:
        assert same_price and same_size, trade_id
        taker_was_liquidated = int(trade_id) % 10 == 3  # the simulator flags these "T"
        assert (side == taker) == taker_was_liquidated, (trade_id, side, taker)


def test_funding_only_for_perpetuals_and_open_interest_and_marks_for_all(run: Run) -> None:
    p = run.pipeline
    funding = _rows(
        p,
        "SELECT symbol, count(), countIf(next_funding_ts IS NOT NULL OR predicted_rate IS NOT NULL)"
        " FROM funding FINAL WHERE exchange = 'deribit' GROUP BY symbol",
    )
    by_perpetual = {row[0]: row[1:] for row in funding}
    assert set(by_perpetual) == {PERP, LINEAR}  # not the dated future
    assert all(count >= 2 and forecasts == 0 for count, forecasts in by_perpetual.values()), funding
    interest = _rows(
        p,
        "SELECT symbol, count(), countIf(value IS NULL), countIf(value != open_interest * 10)"
        " FROM open_interest FINAL WHERE exchange = 'deribit' GROUP BY symbol ORDER BY symbol",
    )
    by_symbol = {row[0]: row[1:] for row in interest}
    assert by_symbol[PERP][0] >= 2 and by_symbol[PERP][1:] == (0, 0)  # USD value = 10 USD contracts
    assert by_symbol[FUTURE][1:] == (0, 0)
    assert by_symbol[LINEAR][0] >= 1 and by_symbol[LINEAR][1] == by_symbol[LINEAR][0]  # no notional stated
    marks = _rows(
        p,
        "SELECT symbol, count(), countIf(mark_price < index_price), countIf(settle_price IS NOT NULL)"
        " FROM mark_price FINAL WHERE exchange = 'deribit' GROUP BY symbol",
    )
    assert {row[0] for row in marks} == set(SYMBOLS)
    assert all(row[1] > 0 and row[2] == 0 and row[3] == 0 for row in marks), marks


def test_books_reach_bbo_and_buckets(run: Run) -> None:
    p = run.pipeline
    bbo = _rows(
        p,
        "SELECT symbol, count(), countIf(bid_price >= ask_price) FROM bbo FINAL"
        " WHERE exchange = 'deribit' GROUP BY symbol",
    )
    assert {row[0] for row in bbo} == set(SYMBOLS) and all(row[1] > 0 and row[2] == 0 for row in bbo)
    buckets = _rows(p, "SELECT DISTINCT symbol FROM book_buckets WHERE exchange = 'deribit'")
    assert {row[0] for row in buckets} == set(SYMBOLS)
