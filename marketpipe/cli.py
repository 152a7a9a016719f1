"""The ``marketpipe`` command. Each part of the product registers its own commands:
``marketpipe.kafka_cli`` (kafka, topics), ``producers.cli`` (produce, capture),
``simulator.cli`` (sim), ``streams.cli`` (stream, normalize), ``sinks.cli`` (sink, sql, replay).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path

import click

from marketpipe.config import ConfigError, Settings, load_settings

# module path -> names of the click commands it defines
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "marketpipe.kafka_cli": ("kafka", "topics"),
    "marketpipe.run_cli": ("run",),
    "marketpipe.status_cli": ("status", "tail"),
    "producers.cli": ("produce", "capture"),
    "simulator.cli": ("sim",),
    "streams.cli": ("stream", "normalize"),
    "sinks.cli": ("sink", "sql", "replay"),
}


class _Group(click.Group):
    """Loads a command's module only when that command runs (keeps `marketpipe --help` fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        for module, commands in COMMAND_MODULES.items():
            if importlib.util.find_spec(module) is not None:
                names.update(commands)
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        for module, commands in COMMAND_MODULES.items():
            if name in commands and importlib.util.find_spec(module) is not None:
                found = getattr(importlib.import_module(module), name, None)
                return found if isinstance(found, click.Command) else None
        return None


def settings_from(ctx: click.Context) -> Settings:
    """The validated settings for this invocation (loaded once, on first use)."""
    root = ctx.find_root()
    root.ensure_object(dict)
    if "settings" not in root.obj:
        try:
            root.obj["settings"] = load_settings(**root.obj.get("overrides", {}))
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
    settings: Settings = root.obj["settings"]
    return settings


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
