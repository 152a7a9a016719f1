"""The ``marketpipe`` command. Each part of the product defines its own commands in its own
module (``marketpipe.kafka_cli``, ``producers.cli``, ``sinks.cli``, ...); ``COMMANDS`` below names
the module and the short help of each, so a new command is one entry there.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click
from click.utils import make_default_short_help

# command name -> (module that defines it, its short help). The short help is kept here so
# that `marketpipe --help` lists the commands without importing them (tests/test_cli.py checks
# each one against the first sentence of the real command's help).
COMMANDS: dict[str, tuple[str, str]] = {
    "capture": ("producers.cli", "Record a live session to a capture file instead of Kafka."),
    "exchanges": (
        "marketpipe.catalog_cli",
        "List the supported exchanges, their channels and default symbols.",
    ),
    "export": ("sinks.export_cli", "Write a table or query result from ClickHouse to a Parquet or CSV file."),
    "kafka": ("marketpipe.kafka_cli", "Run the local single-node Kafka broker (KRaft, jars from Maven)."),
    "normalize": (
        "streams.cli",
        "Normalise capture files (.jsonl, .jsonl.gz, .jsonl.zst) to JSON Lines on stdout.",
    ),
    "produce": ("producers.cli", "Stream raw exchange frames into Kafka topics raw.<exchange>."),
    "replay": ("sinks.cli", "Reset GROUP's committed offsets so its consumers re-read (replay) from there."),
    "run": (
        "marketpipe.run_cli",
        "Run the whole pipeline: broker, topics, connectors, streams, sink, metrics, live view.",
    ),
    "sim": ("simulator.cli", "Serve simulated feeds of every supported exchange on one local port."),
    "sink": (
        "sinks.cli",
        "Stream the md.* topics (trades, candles, books, tickers, instruments, derivatives) into ClickHouse.",
    ),
    "sql": ("sinks.cli", "Run QUERY on ClickHouse and print the result (works while the pipeline runs)."),
    "status": (
        "marketpipe.status_cli",
        "Print the picture of the `marketpipe run` using this data dir (ports from its state file).",
    ),
    "stream": (
        "streams.cli",
        "Run a stream worker: raw frames to md.* and candles, exactly once; workers share the partitions.",
    ),
    "symbols": ("marketpipe.catalog_cli", "List the symbols an exchange offers for subscription."),
    "tail": ("marketpipe.status_cli", "Print the records of TOPIC (md.*, raw.*) decoded, like kcat."),
    "topics": ("marketpipe.kafka_cli", "Provision and inspect the declared topics."),
}


class _Group(click.Group):
    """Loads a command's module only when that command runs; lists them from COMMANDS.

    Keeps `marketpipe --help` fast: importing every command module costs seconds.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None or name not in COMMANDS:
            return command
        found = getattr(importlib.import_module(COMMANDS[name][0]), name, None)
        return found if isinstance(found, click.Command) else None

    def invoke(self, ctx: click.Context) -> object:
        """The one error path: a ``marketpipe.errors.UserError`` (a ClickException) is printed by
        click as one ``Error:`` line with its exit code, also when asyncio wraps it in a group;
        anything else keeps its traceback."""
        from marketpipe.errors import user_errors_in

        try:
            return super().invoke(ctx)
        except BaseExceptionGroup as group:
            found = user_errors_in(group)
            if found is None:
                raise
            raise found from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in COMMANDS:
                rows.append((name, make_default_short_help(COMMANDS[name][1], limit)))
            else:
                command = super().get_command(ctx, name)
                rows.append((name, command.get_short_help_str(limit) if command else ""))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="marketpipe", prog_name="marketpipe")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    envvar="MARKETPIPE_DATA_DIR",
    default=None,
    help="State directory (broker data, embedded ClickHouse, logs). Default .marketpipe/",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="TOML settings file (default: marketpipe.toml when present).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None, config_file: str | None, verbose: int) -> None:
    """marketpipe: crypto market data on Kafka, from exchange frames to ClickHouse."""
    import os

    if config_file:
        os.environ["MARKETPIPE_CONFIG"] = config_file
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    ctx.ensure_object(dict)
    ctx.obj["overrides"] = {"data_dir": data_dir} if data_dir else {}


if __name__ == "__main__":
    main()
