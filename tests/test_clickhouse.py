"""ClickHouse on chDB: DSN factory, migrations, per-table insert/dedup, views, the owner endpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from marketpipe.cli import main
from marketpipe.codec import AvroCodec
from marketpipe.records import (
    BBO,
    BookBuckets,
    BookState,
    Bucket,
    Candle,
    DepthBand,
    Record,
    StatusEvent,
    Trade,
)
from sinks.clickhouse import DsnError, connect, is_embedded, parse_dsn
from sinks.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, migrate
from sinks.server import QueryServer, read_endpoint
from sinks.tables import BatchDecoder, Table, sink_tables
from sinks.worker import ClickHouseLink

REPO = Path(__file__).resolve().parents[1]
T0 = 1_714_560_000_000_000  # 2024-05-01T10:40:00Z in µs


@pytest.fixture
def client(chdb_dsn: str) -> Iterator[Client]:
    client = connect(chdb_dsn)
    migrate(client)
    yield client
    client.close()


def _scalar(client: Client, sql: str) -> object:
    return client.query(sql).result_rows[0][0]


# -- DSN factory ------------------------------------------------------------------------


def test_parse_dsn_accepts_embedded_and_server_forms(tmp_path: Path) -> None:
    embedded = parse_dsn(f"chdb:///{tmp_path}/ch")
    assert embedded.kind == "chdb" and embedded.path == (tmp_path / "ch").resolve()
    assert parse_dsn(f"chdb://{tmp_path}/ch").path == embedded.path
    server = parse_dsn("https://alice:s3cret@ch.internal:8443/market")
    assert (server.kind, server.database) == ("http", "market")
    assert "s3cret" not in server.display and "alice@ch.internal:8443" in server.display


@pytest.mark.parametrize(
    ("dsn", "fragment"),
    [
        ("", "empty"),
        ("clickhouse://host:9000/db", "unsupported ClickHouse DSN scheme 'clickhouse'"),
        ("http://host:notaport/db", "malformed"),
        ("http:///db", "no host"),
        ("http://host:8123/a/b", "single database name"),
        ("chdb://memory", "database directory"),
        ("chdb:///", "no directory"),
    ],
)
def test_malformed_dsn_gets_a_clear_error(dsn: str, fragment: str) -> None:
    with pytest.raises(DsnError, match=r"expected chdb|database directory") as info:
        connect(dsn)
    assert fragment in str(info.value)


# -- migrations -------------------------------------------------------------------------


def test_migrations_apply_once_and_second_run_is_a_noop(chdb_dsn: str) -> None:
    client = connect(chdb_dsn)
    try:
        first = migrate(client)
        assert first == [f"{m.version:04d}_{m.name}" for m in load_migrations()]
        tables = {row[0] for row in client.query("SHOW TABLES").result_rows}
        assert {"trades", "ohlcv", "book_buckets", "bbo", "status", "schema_migrations"} <= tables
        assert {
            "ohlcv_final",
            "candle_series",
            "cross_exchange_spread",
            "book_heatmap_latest",
            "feed_health",
        } <= tables
        assert migrate(client) == []
        assert _scalar(client, "SELECT count() FROM schema_migrations") == len(first)
        engine = _scalar(client, "SELECT engine_full FROM system.tables WHERE name = 'ohlcv'")
        assert "ReplacingMergeTree(version)" in str(engine)
        assert "non_replicated_deduplication_window = 10000" in str(engine)
    finally:
        client.close()


def test_editing_an_applied_migration_is_refused(chdb_dsn: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    client = connect(chdb_dsn)
    try:
        migrate(client, directory)
        views = directory / "0002_views.sql"
        views.write_text(views.read_text() + "\n-- an edit\n")
        with pytest.raises(MigrationError, match="0002_views changed after it was applied"):
            migrate(client, directory)
    finally:
        client.close()


# -- per-table insert and dedup -----------------------------------------------------------


def _trade(trade_id: str, price: float, ts: int) -> Trade:
    return Trade(
        exchange="binance",
        symbol="BTC-USDT",
        exchange_symbol="BTCUSDT",
        trade_id=trade_id,
        price=price,
        size=0.5,
        side="buy",
        ts=ts,
        recv_ts=ts + 900,
        conn="binance.0",
        seq=1,
    )


def _candle(open_time: int, version: int, close: float, exchange: str = "binance") -> Candle:
    return Candle(
        exchange=exchange,
        symbol="BTC-USDT",
        interval="1m",
        open_time=open_time,
        close_time=open_time + 60_000_000,
        open=100.0,
        high=max(close, 100.0),
        low=min(close, 100.0),
        close=close,
        volume=2.0,
        quote_volume=200.0,
        buy_volume=1.5,
        sell_volume=0.5,
        trades=version,
        vwap=100.0,
        first_trade_ts=open_time + 1,
        last_trade_ts=open_time + 2,
        closed=version > 1,
        version=version,
    )


def _buckets(ts: int, bid_size: float) -> BookBuckets:
    return BookBuckets(
        exchange="okx",
        symbol="ETH-USDT",
        ts=ts,
        mid=3000.05,
        best_bid=3000.0,
        best_ask=3000.1,
        spread=0.1,
        bucket_size=1.0,
        bids=[Bucket(3000.0, bid_size, 3000.0 * bid_size), Bucket(2999.0, 2.0, 5998.0)],
        asks=[Bucket(3000.0, 1.5, 4500.15)],
        bands=[DepthBand(0.1, bid_size + 2.0, 1.5, 0.2)],
    )


def _bbo(exchange: str, ts: int, bid: float, ask: float) -> BBO:
    return BBO(
        exchange=exchange,
        symbol="BTC-USDT",
        exchange_symbol="BTCUSDT",
        bid_price=bid,
        bid_size=1.0,
        ask_price=ask,
        ask_size=1.0,
        ts=ts,
        recv_ts=ts + 500,
    )


def _status(ts: int, state: BookState, reason: str) -> StatusEvent:
    return StatusEvent(
        exchange="kraken",
        symbol="BTC-USD",
        ts=ts,
        state=state,
        reason=reason,
        conn="kraken.0",
        gaps=1 if reason == "gap" else 0,
    )


def _insert(link: ClickHouseLink, table: Table, records: list[Record], token: str) -> None:
    codec = AvroCodec()
    decoded = BatchDecoder(codec, table.record_type).decode([codec.encode(r) for r in records])
    assert not decoded.failures
    link.insert(table, table.to_columns(decoded.rows), token)


CASES: dict[str, tuple[list[Any], Record]] = {
    # table: (two distinct records, a replay of the first one's natural key)
    "trades": ([_trade("1", 100.0, T0), _trade("2", 101.0, T0 + 5)], _trade("1", 100.0, T0)),
    "ohlcv": ([_candle(T0, 1, 100.5), _candle(T0 + 60_000_000, 1, 99.0)], _candle(T0, 2, 101.0)),
    "book_buckets": ([_buckets(T0, 1.0), _buckets(T0 + 1_000_000, 3.0)], _buckets(T0, 1.0)),
    "bbo": (
        [_bbo("binance", T0, 100.0, 100.1), _bbo("binance", T0 + 7, 100.0, 100.2)],
        _bbo("binance", T0, 100.0, 100.1),
    ),
    "status": (
        [_status(T0, "unsynced", "gap"), _status(T0 + 9, "synced", "snapshot")],
        _status(T0, "unsynced", "gap"),
    ),
}


@pytest.mark.parametrize("table_name", list(CASES))
def test_insert_dedup_by_token_and_natural_key(chdb_dsn: str, table_name: str) -> None:
    link = ClickHouseLink(chdb_dsn)
    try:
        client = link.open()
        table = sink_tables(AvroCodec())[table_name]
        distinct, replay = CASES[table_name]
        _insert(link, table, list(distinct), "tok-a")
        _insert(link, table, list(distinct), "tok-a")  # a retry with the same token is stored once
        assert _scalar(client, f"SELECT count() FROM {table_name}") == 2

        _insert(link, table, [replay], "tok-b")  # a replay with a new token: same natural key
        assert _scalar(client, f"SELECT count() FROM {table_name}") == 3
        assert _scalar(client, f"SELECT count() FROM {table_name} FINAL") == 2
        client.command(f"OPTIMIZE TABLE {table_name} FINAL")
        assert _scalar(client, f"SELECT count() FROM {table_name}") == 2
    finally:
        link.close()


def test_rows_round_trip_with_microsecond_timestamps_and_nested_buckets(client: Client) -> None:
    link = ClickHouseLink("unused")
    link.client = client
    tables = sink_tables(AvroCodec())
    _insert(link, tables["book_buckets"], [_buckets(T0 + 123_456, 4.0)], "t1")
    _insert(link, tables["trades"], [_trade("77", 123.25, T0 + 654_321)], "t2")
    row = client.query(
        "SELECT toUnixTimestamp64Micro(ts), bids.price, bids.size, asks.notional, bands.imbalance "
        "FROM book_buckets"
    ).result_rows[0]
    assert row == (T0 + 123_456, [3000.0, 2999.0], [4.0, 2.0], [4500.15], [0.2])
    trade = client.query(
        "SELECT trade_id, price, toUnixTimestamp64Micro(ts), "
        "toUnixTimestamp64Micro(recv_ts), side FROM trades"
    ).result_rows[0]
    assert trade == ("77", 123.25, T0 + 654_321, T0 + 654_321 + 900, "buy")


# -- views ------------------------------------------------------------------------------


def test_views_answer_on_chdb(client: Client) -> None:
    link = ClickHouseLink("unused")
    link.client = client
    tables = sink_tables(AvroCodec())
    _insert(
        link,
        tables["ohlcv"],
        [
            _candle(T0, 1, 100.5),
            _candle(T0, 3, 102.0),
            _candle(T0, 2, 101.0),
            _candle(T0 + 60_000_000, 1, 99.0),
            _candle(T0, 1, 50.0, "okx"),
        ],
        "c",
    )
    _insert(
        link,
        tables["bbo"],
        [
            _bbo("binance", T0, 100.0, 100.4),
            _bbo("binance", T0 + 200_000, 100.1, 100.3),
            _bbo("kraken", T0 + 100_000, 100.2, 100.5),
            _bbo("okx", T0 + 2_000_000, 1, 2),
        ],
        "b",
    )
    _insert(link, tables["book_buckets"], [_buckets(T0, 1.0), _buckets(T0 + 1_000_000, 3.0)], "k")
    _insert(
        link,
        tables["status"],
        [
            _status(T0, "unsynced", "gap"),
            _status(T0 + 5, "synced", "snapshot"),
            _status(T0 + 9, "unsynced", "checksum"),
        ],
        "s",
    )

    final = client.query(
        "SELECT close, version FROM ohlcv_final WHERE exchange = 'binance' "
        "AND open_time = fromUnixTimestamp64Micro(toInt64({t:Int64}), 'UTC')",
        parameters={"t": T0},
    ).result_rows
    assert final == [(102.0, 3)]
    series = client.query(
        "SELECT close, version FROM candle_series(exchange='binance', symbol='BTC-USDT', interval='1m')"
    ).result_rows
    assert series == [(102.0, 3), (99.0, 1)]

    spread = client.query(
        "SELECT best_bid, best_bid_exchange, best_ask, best_ask_exchange, exchanges "
        "FROM cross_exchange_spread"
    ).result_rows
    assert spread == [(100.2, "kraken", 100.3, "binance", 2)]  # okx is alone in its second

    heatmap = client.query(
        "SELECT side, price, size FROM book_heatmap_latest ORDER BY side, price"
    ).result_rows
    assert heatmap == [("ask", 3000.0, 1.5), ("bid", 2999.0, 2.0), ("bid", 3000.0, 3.0)]

    health = client.query(
        "SELECT exchange, gaps, checksum_failures, resyncs, events FROM feed_health"
    ).result_rows
    assert health == [("kraken", 1, 1, 2, 3)]


# -- sql command --------------------------------------------------------------------------


def test_sql_command_prints_table_csv_and_json(chdb_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKHOUSE_DSN", chdb_dsn)
    runner = CliRunner()
    query = "SELECT number AS n, toString(number * 2) AS doubled FROM system.numbers LIMIT 3"
    csv_out = runner.invoke(main, ["sql", query, "--format", "csv"])
    assert csv_out.exit_code == 0, csv_out.output
    assert csv_out.stdout.splitlines() == ["n,doubled", "0,0", "1,2", "2,4"]
    json_out = runner.invoke(
        main,
        [
            "sql",
            "SELECT count() AS tables FROM system.tables WHERE name IN ('trades', 'feed_health')",
            "--format",
            "json",
        ],
    )
    assert json_out.exit_code == 0, json_out.output
    assert [json.loads(line) for line in json_out.stdout.splitlines()] == [{"tables": 2}]  # JSON lines
    table_out = runner.invoke(main, ["sql", query])
    assert table_out.exit_code == 0 and "doubled" in table_out.stdout and "4" in table_out.stdout
    bad = runner.invoke(main, ["sql", "SELECT nonexistent_column FROM trades"])
    assert bad.exit_code == 1 and "nonexistent_column" in bad.output


# -- the owner endpoint: a second process reaches the data --------------------------------

OWNER = textwrap.dedent(
    """
    import sys, time
    from sinks.worker import ClickHouseLink
    link = ClickHouseLink(sys.argv[1])
    client = link.open()
    client.command("INSERT INTO status (exchange, symbol, ts, state, reason) VALUES "
                   "('bybit', 'BTC-USDT', fromUnixTimestamp64Micro(1714560000000000), 'synced', 'snapshot')")
    print("ready", flush=True)
    sys.stdin.read()
    link.close()
    """
)


@pytest.fixture
def owner_process(chdb_dsn: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, chdb_dsn],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)


def test_second_process_queries_through_the_owner_endpoint(
    chdb_dsn: str, owner_process: subprocess.Popen[str]
) -> None:
    path = parse_dsn(chdb_dsn).path
    assert path is not None and read_endpoint(path) is not None
    other = connect(chdb_dsn)
    try:
        assert not is_embedded(other)
        assert other.query("SELECT exchange, reason FROM status").result_rows == [("bybit", "snapshot")]
        other.insert(
            "status",
            [["okx"], ["ETH-USDT"], [T0], ["synced"], ["snapshot"]],
            column_names=["exchange", "symbol", "ts", "state", "reason"],
            column_oriented=True,
        )
        assert other.command("SELECT count() FROM status") == 2
        with pytest.raises(DatabaseError, match="no_such_column"):
            other.query("SELECT no_such_column FROM status")
    finally:
        other.close()

    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "marketpipe.cli",
            "sql",
            "SELECT exchange FROM status ORDER BY exchange",
            "--format",
            "csv",
        ],
        cwd=REPO,
        env={**os.environ, "CLICKHOUSE_DSN": chdb_dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.splitlines() == ["exchange", "bybit", "okx"]

    assert owner_process.stdin is not None
    owner_process.stdin.close()
    assert owner_process.wait(timeout=30) == 0
    assert read_endpoint(path) is None and not (path / "marketpipe-endpoint.json").exists()


def test_endpoint_refuses_a_wrong_password(chdb_dsn: str, owner_process: subprocess.Popen[str]) -> None:
    path = parse_dsn(chdb_dsn).path
    assert path is not None
    endpoint = read_endpoint(path)
    assert endpoint is not None
    import clickhouse_connect

    with pytest.raises(DatabaseError, match=r"516|wrong user or password"):
        clickhouse_connect.get_client(
            host=endpoint.host, port=endpoint.port, username="marketpipe", password="guess"
        )


def test_embedded_directory_busy_without_endpoint_is_a_clear_error(chdb_dsn: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, clickhouse_connect; c = clickhouse_connect.get_client(dsn=sys.argv[1]);"
            " print('ready', flush=True); sys.stdin.read()",
            chdb_dsn,
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        started = time.monotonic()
        from sinks.clickhouse import ClickHouseUnavailable

        with pytest.raises(ClickHouseUnavailable, match="in use by another process"):
            connect(chdb_dsn, wait_s=1.0)
        assert time.monotonic() - started < 30
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def test_query_server_serves_this_process_engine(client: Client, chdb_dsn: str) -> None:
    path = parse_dsn(chdb_dsn).path
    assert path is not None
    with QueryServer(path) as server:
        import clickhouse_connect

        remote = clickhouse_connect.get_client(
            host=server.endpoint.host,
            port=server.endpoint.port,
            username=server.endpoint.user,
            password=server.endpoint.password,
        )
        remote.insert(
            "trades",
            [
                ["kraken"],
                ["BTC-USD"],
                ["XBT/USD"],
                ["t-1"],
                [1.0],
                [2.0],
                ["sell"],
                [T0],
                [T0],
                ["kraken.0"],
                [5],
            ],
            column_names=list(sink_tables(AvroCodec())["trades"].columns),
            column_oriented=True,
            settings={"insert_deduplication_token": "same"},
        )
        remote.insert(
            "trades",
            [
                ["kraken"],
                ["BTC-USD"],
                ["XBT/USD"],
                ["t-1"],
                [1.0],
                [2.0],
                ["sell"],
                [T0],
                [T0],
                ["kraken.0"],
                [5],
            ],
            column_names=list(sink_tables(AvroCodec())["trades"].columns),
            column_oriented=True,
            settings={"insert_deduplication_token": "same"},
        )
        assert _scalar(client, "SELECT count() FROM trades") == 1
        remote.close()


def test_documented_queries_run(client: Client) -> None:
    import re

    queries = re.findall(r"```sql\n(.*?)```", (REPO / "docs" / "sql.md").read_text(), re.S)
    assert len(queries) >= 8
    for query in queries:
        client.query(query)
