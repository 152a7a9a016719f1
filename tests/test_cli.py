"""The `marketpipe` group: --version, the command list without imports, the one output path."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from marketpipe.cli import COMMANDS, main
from marketpipe.output import Rows, chosen_format, write
from marketpipe.status_cli import picture_rows
from marketpipe.view import ConnRow, Endpoint, Picture, StageRow

REPO = Path(__file__).resolve().parents[1]


def test_version_names_the_installed_package() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"marketpipe, version {version('marketpipe')}"


def test_each_listed_short_help_is_the_first_sentence_of_the_commands_own_help() -> None:
    ctx = click.Context(main)
    for name, (module, short_help) in COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None, f"{module} defines no command {name}"
        assert command.get_short_help_str(limit=10_000) == short_help, name


def test_help_lists_every_command_without_importing_them() -> None:
    probe = (
        "import sys\n"
        "from marketpipe.cli import COMMANDS, main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {m for m in sys.modules if m in {w for w, _ in COMMANDS.values()}}\n"
        "heavy |= {m for m in sys.modules if m.split('.')[0] in ('pydantic', 'confluent_kafka', 'chdb')}\n"
        "print('IMPORTED', sorted(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    listed = done.stdout.split("Commands:", 1)[1]
    for name in COMMANDS:
        assert f"\n  {name} " in listed, name
    assert "IMPORTED []" in done.stdout


# -- marketpipe.output ----------------------------------------------------------------------

LONG = "t0123456789abcdef.raw.binance-with-a-long-suffix"
ROWS = Rows(("topic", "partitions", "note"), [(LONG, 3, "tab\there"), ("md.trades", 6, None)])


def _written(rows: Rows | list[Rows], fmt: str | None) -> str:
    out = io.StringIO()  # not a terminal
    write(rows, fmt, out)
    return out.getvalue()


def test_piped_output_defaults_to_full_tab_separated_values() -> None:
    assert chosen_format(None, io.StringIO()) == "tsv"
    assert _written(ROWS, None).splitlines() == [
        "topic\tpartitions\tnote",
        f"{LONG}\t3\ttab\\there",
        "md.trades\t6\tNULL",
    ]


def test_csv_json_and_table_formats_keep_every_value_whole() -> None:
    assert list(csv.reader(io.StringIO(_written(ROWS, "csv")))) == [
        ["topic", "partitions", "note"],
        [LONG, "3", "tab\there"],
        ["md.trades", "6", "NULL"],
    ]
    assert [json.loads(line) for line in _written(ROWS, "json").splitlines()] == [
        {"topic": LONG, "partitions": 3, "note": "tab\there"},
        {"topic": "md.trades", "partitions": 6, "note": None},
    ]
    table = _written(ROWS, "table")  # folded into the cell, never cut to `t0123…`
    assert "…" not in table
    assert "".join(part.strip("│ ") for part in table.splitlines()).count("raw.binance") == 1


def test_several_tables_label_each_row_with_its_kind() -> None:
    other = Rows(("stage", "lag"), [("normalise", 0)], title="stage")
    first = Rows(ROWS.columns, ROWS.rows[:1], title="topic")
    lines = _written([first, other], "json").splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["topic", "stage"]
    assert _written([first, other], "tsv").split("\n\n") == [
        f"kind\ttopic\tpartitions\tnote\ntopic\t{LONG}\t3\ttab\\there",
        "kind\tstage\tlag\nstage\tnormalise\t0\n",
    ]


def test_status_picture_as_rows_of_every_table() -> None:
    picture = Picture(
        at=0.0,
        processes=[Endpoint(name="produce-binance", role="producer", pid=42, state="running")],
        connections=[ConnRow("binance", "binance.0", "live", 12.5, 0.1, 1000, 0, "a note in full " * 8)],
        books=[],
        stages=[StageRow("normalise", 3.0, 300, 0)],
        tables=[],
        notes=["no exchange reachable"],
    )
    lines = [json.loads(line) for line in _written(picture_rows(picture), "json").splitlines()]
    assert [line["kind"] for line in lines] == ["process", "connection", "stage", "note"]
    assert lines[1]["note"] == "a note in full " * 8 and lines[1]["frames_s"] == 12.5
    assert lines[0]["name"] == "produce-binance" and lines[0]["pid"] == 42


@pytest.mark.parametrize("fmt", ["table", "csv", "tsv", "json"])
def test_every_table_command_takes_the_same_format_option(fmt: str) -> None:
    ctx = click.Context(main)
    for path in (("topics", "list"), ("status",), ("sql",), ("exchanges",), ("symbols",), ("tail",)):
        command: click.Command | None = main
        for name in path:
            assert isinstance(command, click.Group)
            command = command.get_command(ctx, name)
        assert command is not None
        option = next(p for p in command.params if "--format" in p.opts)
        assert isinstance(option.type, click.Choice) and fmt in option.type.choices, path


def test_sim_help_names_all_ten_exchanges() -> None:
    from marketpipe.config import EXCHANGES

    result = CliRunner().invoke(main, ["sim", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "every supported exchange" in text
    assert all(exchange in text for exchange in EXCHANGES)
