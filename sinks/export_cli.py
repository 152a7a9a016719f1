"""``marketpipe export``: a table, view or query from ClickHouse into a Parquet or CSV file.

ClickHouse writes the file's bytes itself (``FORMAT Parquet`` / ``FORMAT CSVWithNames``),
streamed to a temporary file next to ``--out`` and renamed when complete, so a failed export
never leaves a half-written file under the name asked for.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from marketpipe.times import parse_time
from sinks.cli import copy_out, open_clickhouse, trailing_format

CLICKHOUSE_FORMATS = {"parquet": "Parquet", "csv": "CSVWithNames"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


@click.command()
@click.argument("source")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (replaced when the export completes).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(CLICKHOUSE_FORMATS)),
    default=None,
    help="File format (default: from the --out suffix, .parquet or .csv).",
)
@click.option("--from", "start", default=None, metavar="TIME", help="Rows at or after TIME (ISO 8601 or ms).")
@click.option("--to", "end", default=None, metavar="TIME", help="Rows before TIME (ISO 8601 or ms).")
@click.option(
    "--time-column",
    default=None,
    help="Column --from/--to apply to (default: ts, else the first DateTime column).",
)
@click.pass_context
def export(
    ctx: click.Context,
    source: str,
    out: Path,
    fmt: str | None,
    start: str | None,
    end: str | None,
    time_column: str | None,
) -> None:
    """Write a table or query result from ClickHouse to a Parquet or CSV file.

    SOURCE is a table or view name (trades, ohlcv_final, feed_health, ...) or a SELECT
    query. Parquet loads straight into pandas, polars or DuckDB.

    \b
    marketpipe export trades --from 2024-05-01 --to 2024-05-02 --out trades.parquet
    marketpipe export "SELECT * FROM ohlcv_final WHERE interval = '1m'" --out 1m.csv
    """
    from clickhouse_connect.driver.exceptions import ClickHouseError

    file_format = fmt or _format_of(out)
    if trailing_format(source):
        raise click.UsageError("leave the FORMAT clause out of the query: --format chooses the file format")
    relation = source if _NAME.match(source) else f"({source.strip().rstrip(';')})"
    since = parse_time(start, "--from") if start else None
    until = parse_time(end, "--to") if end else None
    client = open_clickhouse(ctx)
    try:
        where = ""
        if since or until:
            column = time_column or _time_column(client, relation)
            where = _time_filter(column, since, until)
        query = f"SELECT * FROM {relation}{where}"
        rows = client.command(f"SELECT count() FROM {relation}{where}")
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        try:
            with partial.open("wb") as file:
                copy_out(client.raw_stream(query, fmt=CLICKHOUSE_FORMATS[file_format]), file)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    except ClickHouseError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()
    click.echo(f"exported {rows} row(s) to {out} ({file_format}, {out.stat().st_size} bytes)", err=True)


def _format_of(out: Path) -> str:
    suffix = out.suffix.lower().lstrip(".")
    if suffix in CLICKHOUSE_FORMATS:
        return suffix
    raise click.UsageError(f"cannot tell the format from {out.name!r}: give --format parquet or csv")


def _time_column(client: Any, relation: str) -> str:
    columns = client.query(f"DESCRIBE TABLE {relation}").result_rows
    names = [name for name, kind, *_ in columns if "DateTime" in kind or kind.startswith("Date")]
    if "ts" in names:
        return "ts"
    if not names:
        raise click.UsageError(f"{relation} has no Date/DateTime column for --from/--to")
    return str(names[0])


def _time_filter(column: str, since: datetime | None, until: datetime | None) -> str:
    quoted = f"`{column.replace('`', '')}`"
    bounds = []
    if since is not None:
        bounds.append(f"{quoted} >= {_literal(since)}")
    if until is not None:
        bounds.append(f"{quoted} < {_literal(until)}")
    return " WHERE " + " AND ".join(bounds)


def _literal(moment: datetime) -> str:
    micros = (moment - EPOCH) // timedelta(microseconds=1)
    return f"fromUnixTimestamp64Micro({micros}, 'UTC')"
