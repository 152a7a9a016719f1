"""Bybit spot, linear and inverse end to end: simulator -> one Bybit connector process -> Kafka ->
stream -> sink -> ClickHouse (chDB), each a `marketpipe` process on a fresh topic namespace
(the ``slow`` tests); and, in process, the connector's resolution against the simulator.

One configuration mixes the spot pair BTC-USDT, the linear perpetual BTC-USDT-PERP (the same wire
name ``BTCUSDT`` as the spot pair) and the inverse perpetual BTC-USD-PERP-INV: the connector must
read every category's instrument list (linear through two cursor pages) and shard them per
category to /v5/public/{spot,linear,inverse}; each must come out under its own name with its own
book (the recorded failure named linear BTCUSDT spot ``BTC-USDT``); the derivative tickers and
``allLiquidation`` must fill ``funding``, ``open_interest``, ``mark_price`` (mark and index) and
``liquidations``; a sequence gap injected into ``BTCUSDT`` (both the spot and the linear book)
must unsync each once, and the resync of each must reach its own connection.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pipeline_support import Pipeline, derivative_rows, pipeline, query, read_topic, states
from producers_support import read_topic as read_raw
from producers_support import sim_settings
from pydantic import ValidationError

import simulator
from marketpipe.codec import AvroCodec
from marketpipe.config import ConnectorSettings
from marketpipe.raw import RawRecord
from marketpipe.records import BookChange, ControlRequest, StatusEvent
from producers.base import SymbolError
from producers.connectors.bybit import BybitConnector, CategoryShard
from producers.publisher import CaptureRawPublisher

CODEC = AvroCodec()
NAMES = {  # normalised name -> (category, Bybit symbol)
    "BTC-USDT": ("spot", "BTCUSDT"),
    "BTC-USDT-PERP": ("linear", "BTCUSDT"),
    "BTC-USD-PERP-INV": ("inverse", "BTCUSD"),
}
CONTRACTS = ("BTC-USDT-PERP", "BTC-USD-PERP-INV")
GAPPED = ("BTC-USDT", "BTC-USDT-PERP")  # the simulator's BTC-USDT market on spot and on linear


@dataclass
class Run:
    pipeline: Pipeline
    statuses: list[StatusEvent]
    books: list[BookChange]
    controls: list[ControlRequest]
    raw: list[RawRecord]

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return query(self.pipeline.dsn, sql)


def _fault(p: Pipeline, fault: str, symbol: str) -> int:
    return p.inject_fault("bybit", fault, symbol)


def _decoded(p: Pipeline, topic: str, kind: type[Any]) -> list[Any]:
    return [CODEC.decode(m.value() or b"", kind) for m in read_topic(p.bootstrap, topic)]


def _order(record: RawRecord) -> tuple[str, int]:
    return record.conn, record.seq


def _states(statuses: list[StatusEvent], symbol: str) -> list[tuple[str, str]]:
    return states(statuses, "bybit", symbol)


def _wait(p: Pipeline, done: Callable[[], bool], what: str, timeout_s: float = 40.0) -> None:
    p.wait_for(done, what, timeout_s)


def _filled(p: Pipeline) -> bool:
    """Every derivative table has rows of both contracts."""
    tables = ("funding", "open_interest", "mark", "index", "liquidations")
    return {(table, s) for table in tables for s in CONTRACTS} <= derivative_rows(p.dsn)


def test_the_old_single_category_setting_is_refused_naming_categories() -> None:
    with pytest.raises(ValidationError, match="replaced by `categories`"):
        ConnectorSettings.model_validate({"category": "linear"})
    with pytest.raises(ValidationError, match="at least 1 item"):
        ConnectorSettings.model_validate({"categories": []})
    assert ConnectorSettings().categories == ["spot", "linear", "inverse"]


async def test_the_connector_resolves_each_name_in_its_category_through_every_page(tmp_path: Any) -> None:
    sim = await simulator.start_simulator(seed=1, exchanges=("bybit",), symbols=tuple(NAMES))
    publisher = CaptureRawPublisher(tmp_path / "none.jsonl")
    try:
        connector = BybitConnector(list(NAMES), publisher, sim_settings(sim.urls(), "bybit"))
        shards = await connector.start()
        # the simulator lists 1100 other linear perpetuals first: BTCUSDT is on the second page
        assert connector.rest.calls == 4  # spot, linear twice, inverse
        assert [(s.category, s.symbols) for s in shards if isinstance(s, CategoryShard)] == [
            ("spot", ("BTCUSDT",)),
            ("linear", ("BTCUSDT",)),
            ("inverse", ("BTCUSD",)),
        ]
        assert [connector.instrument_urls(s.symbols)[0].split("?")[1] for s in shards] == [
            "category=spot&symbol=BTCUSDT",
            "category=linear&symbol=BTCUSDT",
            "category=inverse&symbol=BTCUSD",
        ]
        assert ["allLiquidation" in "".join(connector.subscribe_messages(s.symbols)) for s in shards] == [
            False,
            True,
            True,
        ]
        await connector.rest.close()
        spot_only = BybitConnector(
            ["BTC-USDT-PERP"], publisher, sim_settings(sim.urls(), "bybit", categories=["spot"])
        )
        with pytest.raises(SymbolError, match="BTC-USDT-PERP"):
            await spot_only.start()
        await spot_only.rest.close()
    finally:
        await publisher.close()
        await sim.stop()


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("bybit-derivatives")
    with pipeline(kafka_bootstrap, root, ("bybit",), ",".join(NAMES), prefix="y") as p:
        p.start_sim(trade_rate=8, seed=23)
        p.start("stream", "stream")
        p.start_sink()
        p.start("produce", "produce")

        def synced(symbol: str, times: int) -> Callable[[], bool]:
            statuses = lambda: _decoded(p, p.topics.status, StatusEvent)  # noqa: E731
            return lambda: _states(statuses(), symbol).count(("synced", "snapshot")) >= times

        for name in NAMES:
            _wait(p, synced(name, 1), f"synced book of {name}")
        assert _fault(p, "gap", "BTC-USDT") == 2  # the spot and the linear connection
        for name in GAPPED:
            _wait(p, synced(name, 2), f"{name} re-synced after the gap")
        _wait(p, lambda: _filled(p), "funding, open interest, mark, index and liquidation rows")
        p.stop("produce")
        p.wait_drained()
        yield Run(
            p,
            _decoded(p, p.topics.status, StatusEvent),
            _decoded(p, p.topics.book, BookChange),
            _decoded(p, p.topics.control, ControlRequest),
            sorted((c.record for c in read_raw(p.bootstrap, p.topics.raw("bybit"))), key=_order),
        )
        p.check_alive("stream", "sink")


@pytest.mark.slow
def test_one_connector_serves_each_category_on_its_own_endpoint(run: Run) -> None:
    opens = [r for r in run.raw if r.kind == "open"]
    by_category = {urlsplit(r.url or "").path.rsplit("/", 1)[-1]: r for r in opens}
    assert set(by_category) == {"spot", "linear", "inverse"}
    for name, (category, symbol) in NAMES.items():
        conn = by_category[category].conn
        records = [r for r in run.raw if r.conn == conn]
        assert json.loads(records[0].payload) == {"symbols": [symbol]}, name
        rest = [r for r in records if r.kind == "rest"]
        assert rest and all(parse_qs(urlsplit(r.url or "").query)["category"] == [category] for r in rest)
        sent = b" ".join(r.payload for r in records if r.kind == "sent")
        assert (b"allLiquidation." in sent) == (category != "spot")
    assert len({r.shard for r in opens}) == 3, "spot and linear BTCUSDT are keyed apart"


@pytest.mark.slow
def test_spot_and_linear_btcusdt_and_the_inverse_contract_keep_their_own_names(run: Run) -> None:
    trades = run.rows(
        "SELECT symbol, exchange_symbol, count(), max(size - floor(size)) FROM trades FINAL GROUP BY 1, 2"
    )
    assert {(symbol, exchange_symbol) for symbol, exchange_symbol, _, _ in trades} == {
        (name, symbol) for name, (_, symbol) in NAMES.items()
    }
    fractions = {symbol: fraction for symbol, _, _, fraction in trades}
    assert fractions["BTC-USD-PERP-INV"] == 0  # whole USD contracts
    assert fractions["BTC-USDT"] > 0 and fractions["BTC-USDT-PERP"] > 0  # base coin
    assert {b.symbol for b in run.books} == set(NAMES)
    assert {(b.symbol, b.exchange_symbol) for b in run.books} == {(n, s) for n, (_, s) in NAMES.items()}
    bbo = run.rows("SELECT symbol, count() FROM bbo GROUP BY symbol")
    assert {symbol for symbol, count in bbo if count > 0} == set(NAMES)
    instruments = run.rows(
        "SELECT symbol, exchange_symbol, kind, contract_type, contract_size, contract_size_currency,"
        " settle_currency FROM instruments FINAL"
    )
    assert sorted(instruments) == [
        ("BTC-USD-PERP-INV", "BTCUSD", "perpetual", "inverse", 1.0, "USD", "BTC"),
        ("BTC-USDT", "BTCUSDT", "spot", None, 1.0, "BTC", None),
        ("BTC-USDT-PERP", "BTCUSDT", "perpetual", "linear", 1.0, "BTC", "USDT"),
    ]


@pytest.mark.slow
def test_funding_open_interest_mark_index_and_liquidations_reach_clickhouse(run: Run) -> None:
    funding = run.rows(
        "SELECT symbol, rate, interval_s,"
        " toUnixTimestamp64Micro(next_funding_ts) - toUnixTimestamp64Micro(ts), predicted_rate"
        " FROM funding FINAL"
    )
    assert {row[0] for row in funding} == set(CONTRACTS)
    assert all(0.0001 <= rate <= 0.00014 and interval == 8 * 3600 for _, rate, interval, _, _ in funding)
    assert all(0 < ahead <= 8 * 3600 * 1_000_000 and predicted is None for *_, ahead, predicted in funding)
    interest = run.rows(
        "SELECT o.symbol, o.open_interest, o.value, m.mark_price FROM open_interest AS o FINAL"
        " ASOF JOIN (SELECT symbol, ts, mark_price FROM mark_price FINAL WHERE mark_price IS NOT NULL) AS m"
        " ON o.symbol = m.symbol AND o.ts >= m.ts"
    )
    assert {row[0] for row in interest} == set(CONTRACTS)
    for symbol, contracts, value, mark in interest:
        if symbol == "BTC-USD-PERP-INV":  # 1 USD contracts: the notional is the contracts' USD
            assert contracts == int(contracts) and value == contracts
        else:  # 1 BTC contracts: openInterestValue, USDT
            assert value == pytest.approx(contracts * mark, rel=0.01)
    marks = run.rows(
        "SELECT symbol, countIf(mark_price IS NOT NULL), countIf(index_price IS NOT NULL),"
        " min(least(mark_price, index_price)), max(greatest(mark_price, index_price))"
        " FROM mark_price FINAL GROUP BY symbol"
    )
    assert {row[0] for row in marks} == set(CONTRACTS)
    assert all(
        mark > 0 and index > 0 and 50_000 < low <= high < 80_000 for _, mark, index, low, high in marks
    )
    liquidations = run.rows("SELECT symbol, side, price, size FROM liquidations FINAL")
    assert {row[0] for row in liquidations} == set(CONTRACTS)
    assert {row[1] for row in liquidations} <= {"buy", "sell"}
    assert all(price > 0 and size > 0 for _, _, price, size in liquidations)
    assert all(size == int(size) for symbol, _, _, size in liquidations if symbol == "BTC-USD-PERP-INV")


@pytest.mark.slow
def test_an_injected_gap_unsyncs_each_btcusdt_book_once_and_each_resyncs_on_its_own_connection(
    run: Run,
) -> None:
    for name in GAPPED:
        assert _states(run.statuses, name)[:3] == [
            ("synced", "snapshot"),
            ("unsynced", "gap"),
            ("synced", "snapshot"),
        ]
        (control,) = [c for c in run.controls if c.symbol == name and c.reason == "gap"]
        assert control.exchange_symbol == "BTCUSDT"
        changes = [b for b in run.books if b.symbol == name]
        snapshots = [i for i, b in enumerate(changes) if b.snapshot]
        assert len(snapshots) >= 2  # the first sync and the re-sync after the gap
        for chain in (changes[snapshots[0] : snapshots[1]], changes[snapshots[1] :]):
            for previous, update in itertools.pairwise(chain):  # u +1: nothing across the gap
                assert update.snapshot or update.last_update_id == (previous.last_update_id or 0) + 1
        # the resync went to the connection whose book failed: an unsubscribe + subscribe there
        sent = [r.payload for r in run.raw if r.conn == control.conn and r.kind == "sent"]
        assert any(b'"unsubscribe"' in frame and b"orderbook.200.BTCUSDT" in frame for frame in sent)
    assert ("unsynced", "gap") not in _states(run.statuses, "BTC-USD-PERP-INV")
