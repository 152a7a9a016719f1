"""The one output path of every command that prints rows: ``--format table|csv|tsv|json``.

Like clickhouse-client, the default follows stdout: an aligned table on a terminal, tab
separated values when piped or redirected, so scripts get every value in full. Values are
never cut: the table folds long cells instead of ending them with an ellipsis.

* ``table``: aligned columns (rich) for people.
* ``tsv``: a header line, then one line per row, tab separated; tab, newline and backslash
  inside a value escaped as ``\\t``, ``\\n``, ``\\\\`` (ClickHouse's TSVWithNames).
* ``csv``: a header line, then RFC 4180 rows.
* ``json``: JSON lines, one object per row (ClickHouse's JSONEachRow, kcat's ``-J``), so
  ``jq`` and line-oriented tools read the output as it streams.

A command that prints several tables at once (``status``) labels each row with its table in
a leading ``kind`` column (a ``kind`` key in JSON) and, in csv/tsv, separates the tables by a
blank line, each with its own header.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import IO, Any, TypeVar
from uuid import UUID

import click

FORMATS = ("table", "csv", "tsv", "json")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Rows:
    """One table to print: column names, rows of values, and a title (its ``kind``)."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    title: str = ""
    # column -> style of a cell's text on a terminal (rich style name, or None for plain)
    styles: dict[str, Callable[[str], str | None]] = field(default_factory=dict)


def format_option(command: F) -> F:
    """The ``--format`` option, stored as ``fmt`` (None: decided by where stdout goes)."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=None,
        help="Output format (default: table on a terminal, tsv when piped). json = JSON lines.",
    )(command)


def chosen_format(fmt: str | None, out: IO[str] | None = None) -> str:
    """The format asked for, else table for a terminal and tsv for a pipe or file."""
    if fmt is not None:
        return fmt
    stream = out if out is not None else sys.stdout
    isatty = getattr(stream, "isatty", None)
    return "table" if isatty is not None and isatty() else "tsv"


def write(
    tables: Rows | Sequence[Rows], fmt: str | None, out: IO[str] | None = None, *, header: bool = True
) -> None:
    """Print one table, or several (each row then labelled with its table's title).

    header=False leaves out the csv/tsv header line (rows appended to earlier output).
    """
    stream = out if out is not None else sys.stdout
    many = not isinstance(tables, Rows)
    parts: list[Rows] = list(tables) if not isinstance(tables, Rows) else [tables]
    fmt = chosen_format(fmt, stream)
    if fmt == "table":
        for part in parts:
            _write_rich(part, stream)
        return
    for index, part in enumerate(parts):
        columns, rows = list(part.columns), [list(row) for row in part.rows]
        if many:
            columns, rows = ["kind", *columns], [[part.title, *row] for row in rows]
        if fmt == "json":
            _write_json(columns, rows, stream)
            continue
        if index:
            stream.write("\n")
        if fmt == "csv":
            writer = csv.writer(stream, lineterminator="\n")
            if header:
                writer.writerow(columns)
            writer.writerows([[text(v) for v in row] for row in rows])
        else:
            if header:
                stream.write("\t".join(_tsv(c) for c in columns) + "\n")
            for row in rows:
                stream.write("\t".join(_tsv(text(v)) for v in row) + "\n")
    stream.flush()


def text(value: Any) -> str:
    """A value as a person and a script read it: NULL, ISO timestamps, plain numbers."""
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def json_default(value: Any) -> Any:
    """orjson's fallback for the values ClickHouse returns that JSON has no type for."""
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, set | tuple | frozenset):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _write_json(columns: list[str], rows: list[list[Any]], stream: IO[str]) -> None:
    import orjson

    for row in rows:
        line = orjson.dumps(dict(zip(columns, row, strict=True)), default=json_default)
        stream.write(line.decode() + "\n")


def _tsv(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _write_rich(part: Rows, stream: IO[str]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=part.title or None, title_justify="left")
    for column in part.columns:
        table.add_column(column, overflow="fold")
    for row in part.rows:
        cells = []
        for column, value in zip(part.columns, row, strict=True):
            shown = text(value)
            style = part.styles[column](shown) if column in part.styles else None
            cells.append(Text(shown, style=style or ""))
        table.add_row(*cells)
    Console(file=stream).print(table)
