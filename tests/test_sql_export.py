"""`marketpipe sql` with a FORMAT clause and `marketpipe export`, on a real embedded ClickHouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import chdb
import pytest
from click.testing import CliRunner, Result

from marketpipe.cli import main
from sinks.clickhouse import connect
from sinks.migrate import migrate

REPO = Path(__file__).resolve().parents[1]

STATUS_ROWS = (
    "INSERT INTO status (exchange, symbol, ts, state, reason) VALUES "
    "('bybit', 'BTC-USDT', '2024-05-01 10:00:00', 'synced', 'snapshot'), "
    "('okx', 'ETH-USDT', '2024-05-02 10:00:00', 'synced', 'snapshot'), "
    "('kraken', 'BTC-USD', '2024-05-03 10:00:00', 'resyncing', 'gap')"
)


@pytest.fixture
def dsn(chdb_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    client = connect(chdb_dsn)
    migrate(client)
    client.command(STATUS_ROWS)
    client.close()
    monkeypatch.setenv("CLICKHOUSE_DSN", chdb_dsn)
    yield chdb_dsn


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_sql_passes_a_format_clause_through_like_clickhouse_client(dsn: str) -> None:
    result = _run("sql", "SELECT exchange, state FROM status ORDER BY exchange FORMAT JSONEachRow")
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"exchange": "bybit", "state": "synced"},
        {"exchange": "kraken", "state": "resyncing"},
        {"exchange": "okx", "state": "synced"},
    ]
    csv = _run("sql", "select exchange from status order by exchange format CSVWithNames;")
    assert csv.exit_code == 0, csv.output
    assert csv.stdout.splitlines() == ['"exchange"', '"bybit"', '"kraken"', '"okx"']
    both = _run("sql", "SELECT 1 FORMAT JSONEachRow", "--format", "csv")
    assert both.exit_code == 2 and "FORMAT JSONEachRow" in both.output


def test_sql_piped_prints_full_tab_separated_rows_and_json_lines(dsn: str) -> None:
    query = "SELECT exchange, symbol, ts FROM status ORDER BY exchange"
    piped = _run("sql", query)  # CliRunner's stdout is not a terminal
    assert piped.exit_code == 0, piped.output
    assert piped.stdout.splitlines() == [
        "exchange\tsymbol\tts",
        "bybit\tBTC-USDT\t2024-05-01 10:00:00",
        "kraken\tBTC-USD\t2024-05-03 10:00:00",
        "okx\tETH-USDT\t2024-05-02 10:00:00",
    ]
    lines = _run("sql", query, "--format", "json").stdout.splitlines()
    assert [json.loads(line)["exchange"] for line in lines] == ["bybit", "kraken", "okx"]


def test_export_a_table_to_parquet_between_two_times(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "out" / "status.parquet"
    result = _run(
        "export", "status", "--from", "2024-05-01T12:00:00Z", "--to", "2024-05-03", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert "exported 1 row(s)" in result.output
    assert out.read_bytes()[:4] == b"PAR1"
    read_back = chdb.query(f"SELECT exchange, symbol FROM file('{out}', Parquet)", "CSV")
    assert read_back.bytes().decode().splitlines() == ['"okx","ETH-USDT"']
    assert not any(p.name.endswith(".partial") for p in out.parent.iterdir())


def test_export_a_query_to_csv_and_refuse_what_cannot_work(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "btc.csv"
    query = "SELECT exchange, ts FROM status WHERE symbol LIKE 'BTC-%' ORDER BY ts"
    result = _run("export", query, "--from", "1714521600000", "--out", str(out))  # 2024-05-01 00:00Z in ms
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines() == [
        '"exchange","ts"',
        '"bybit","2024-05-01 10:00:00.000000"',
        '"kraken","2024-05-03 10:00:00.000000"',
    ]
    no_suffix = _run("export", "status", "--out", str(tmp_path / "status.out"))
    assert no_suffix.exit_code == 2 and "--format parquet or csv" in no_suffix.output
    no_time = _run("export", "SELECT 1 AS a", "--from", "2024-05-01", "--out", str(out))
    assert no_time.exit_code == 2 and "no Date/DateTime column" in no_time.output
    bad_time = _run("export", "status", "--from", "yesterday", "--out", str(out))
    assert bad_time.exit_code == 2 and "ISO 8601" in bad_time.output
    missing = _run("export", "no_such_table", "--out", str(tmp_path / "x.parquet"))
    assert missing.exit_code == 1 and "no_such_table" in missing.output
    assert not (tmp_path / "x.parquet").exists()


OWNER = (
    "import sys\n"
    "from sinks.worker import ClickHouseLink\n"
    "link = ClickHouseLink(sys.argv[1])\n"
    "link.open()\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
    "link.close()\n"
)


def test_format_clause_and_export_through_the_owner_endpoint(dsn: str, tmp_path: Path) -> None:
    """While a sink owns the embedded database, both go through its loopback HTTP endpoint."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, dsn], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        env = {**os.environ, "CLICKHOUSE_DSN": dsn}
        query = "SELECT exchange FROM status ORDER BY exchange FORMAT JSONEachRow"
        sql = subprocess.run(
            [sys.executable, "-m", "marketpipe.cli", "sql", query],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sql.returncode == 0, sql.stderr
        assert sql.stdout.splitlines() == [
            '{"exchange":"bybit"}',
            '{"exchange":"kraken"}',
            '{"exchange":"okx"}',
        ]
        out = tmp_path / "status.parquet"
        export = subprocess.run(
            [sys.executable, "-m", "marketpipe.cli", "export", "status", "--out", str(out)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert export.returncode == 0, export.stderr
        assert "exported 3 row(s)" in export.stderr and out.read_bytes()[:4] == b"PAR1"
    finally:
        assert owner.stdin is not None
        owner.stdin.close()
        owner.wait(timeout=30)
