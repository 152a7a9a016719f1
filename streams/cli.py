"""``marketpipe normalize`` (offline) and, added by the stream agents' owner, ``marketpipe stream``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command("stream")
@click.option(
    "--stages",
    default=",".join(("normalise", "ohlcv", "consolidate")),
    show_default=True,
    help="Comma-separated stages this process runs (run them in separate processes for more CPU).",
)
@click.option(
    "--worker-id",
    default=None,
    help="Stable name of this worker, distinct per worker (default: streams.worker_id, else the host name).",
)
@click.option("--loglevel", type=click.Choice(["crit", "error", "warn", "info", "debug"]), default="warn")
@click.pass_context
def stream(ctx: click.Context, stages: str, worker_id: str | None, loglevel: str) -> None:
    """Run a stream worker: raw frames to md.* and candles, exactly once; workers share the partitions."""
    import logging

    from marketpipe.cli_support import settings_from
    from marketpipe.kafka_security import require_kafka_of
    from streams.worker import STAGES, run_worker

    chosen = [name.strip() for name in stages.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown or not chosen:
        raise click.BadParameter(
            f"{unknown or stages!r}: choose from {', '.join(STAGES)}", param_hint="--stages"
        )
    levels = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO}
    logging.getLogger().setLevel(levels.get(loglevel, logging.DEBUG))
    settings = settings_from(ctx)
    # refused credentials or no Kafka within kafka.connect_timeout_s: one clear error, not
    # clients retrying and logging; a Kafka lost later is the runtime's to wait for
    require_kafka_of(settings, long_running=True)
    run_worker(settings, chosen, worker_id)


@click.command("normalize")
@click.argument(
    "captures", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write per-exchange counters (frames, trades, checksums, gaps, ...) as JSON here.",
)
@click.option(
    "--errors",
    "errors_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write frames that could not be normalised (capture lines plus 'reason') here.",
)
@click.pass_context
def normalize(
    ctx: click.Context, captures: tuple[Path, ...], report_path: Path | None, errors_path: Path | None
) -> None:
    """Normalise capture files (.jsonl, .jsonl.gz, .jsonl.zst) to JSON Lines on stdout.

    One line per trade, validated book change and BBO change, in frame order, using the
    same parsers and book validation as the stream processors.
    """
    from marketpipe.cli_support import settings_from
    from streams.feed import ClockWindow
    from streams.normalize import normalize_captures

    settings = settings_from(ctx)

    sink = sys.stdout.buffer
    errors = errors_path.open("wb") if errors_path else None
    try:
        report = normalize_captures(captures, sink, errors, ClockWindow.from_settings(settings.streams))
    except ValueError as exc:  # an unreadable capture line (read_capture names file and line)
        raise click.ClickException(str(exc)) from None
    finally:
        sink.flush()
        if errors is not None:
            errors.close()
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n")
    failed = sum(int(stats["parse_errors"]) for stats in report["exchanges"].values())
    if failed:
        hint = f" (see {errors_path})" if errors_path else " (use --errors FILE to keep them)"
        click.echo(f"normalize: {failed} frame(s) could not be normalised{hint}", err=True)
