"""`marketpipe produce` (live or from capture files, into Kafka) and `marketpipe capture` (to a file)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from marketpipe.cli_support import settings_from
from marketpipe.config import Settings, check_symbols
from marketpipe.errors import UserError
from marketpipe.kafka_security import require_kafka_of
from marketpipe.topics import Topology
from producers.base import RestError, SymbolError
from producers.connectors import EXCHANGES
from producers.publisher import CaptureRawPublisher, KafkaRawPublisher, RawPublisher
from producers.replay import replay_captures
from producers.runner import ProducerPlan, build_connectors, run_producers


def _connection_options(command: Any) -> Any:
    options = [
        click.option(
            "--exchange",
            "exchanges",
            multiple=True,
            type=click.Choice(EXCHANGES),
            help="Exchange to connect (repeatable; default: settings.exchanges).",
        ),
        click.option(
            "--symbols",
            default=None,
            help="Comma-separated BASE-QUOTE symbols (default: settings.symbols, unlisted ones skipped).",
        ),
        click.option("--ws-url", default=None, help="Websocket base URL (one exchange only)."),
        click.option("--rest-url", default=None, help="REST base URL (one exchange only)."),
        click.option("--protocol", type=click.Choice(["v1", "v2"]), default=None, help="Kraken protocol."),
        click.option(
            "--category",
            "categories",
            multiple=True,
            type=click.Choice(["spot", "linear", "inverse"]),
            help="Bybit categories to serve (repeatable; default: all three).",
        ),
        click.option("--duration", type=float, default=None, help="Stop after this many seconds."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _plan(
    settings: Settings, exchanges: tuple[str, ...], symbols: str | None, **overrides: Any
) -> ProducerPlan:
    chosen = list(exchanges) or list(settings.exchanges)
    if (overrides.get("ws_url") or overrides.get("rest_url")) and len(chosen) != 1:
        raise click.UsageError("--ws-url/--rest-url need exactly one --exchange")
    names = (
        check_symbols([s.strip().upper() for s in symbols.split(",") if s.strip()], "--symbols")
        if symbols
        else list(settings.symbols)
    )
    if not names:
        raise click.UsageError("no symbols given")
    per_exchange = {exchange: dict(overrides) for exchange in chosen}
    return ProducerPlan(chosen, names, strict_symbols=symbols is not None, overrides=per_exchange)


def _run(
    settings: Settings, plan: ProducerPlan, publisher: RawPublisher, control: bool, duration: float | None
) -> None:
    connectors = build_connectors(settings, plan, publisher)
    try:
        asyncio.run(run_producers(settings, connectors, publisher, control=control, duration_s=duration))
    except* (SymbolError, RestError) as group:
        raise UserError("; ".join(str(exc) for exc in group.exceptions)) from None
    # ConfigError and KafkaAccessError are UserErrors: the command's error path prints them


@click.command()
@_connection_options
@click.option(
    "--from-capture",
    "captures",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Publish capture file(s) into Kafka instead of connecting (more files may follow).",
)
@click.argument("more_captures", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--speed",
    type=float,
    default=0.0,
    show_default=True,
    help="Replay pace: 0 = as fast as possible, 1.0 = real time, N = N times faster.",
)
@click.option("--no-control", is_flag=True, help="Do not listen for resync requests on md.control.")
@click.pass_context
def produce(
    ctx: click.Context,
    exchanges: tuple[str, ...],
    symbols: str | None,
    ws_url: str | None,
    rest_url: str | None,
    protocol: str | None,
    categories: tuple[str, ...],
    duration: float | None,
    captures: tuple[str, ...],
    more_captures: tuple[str, ...],
    speed: float,
    no_control: bool,
) -> None:
    """Stream raw exchange frames into Kafka topics raw.<exchange>."""
    settings = settings_from(ctx)
    if captures:
        files = [*captures, *more_captures]
        require_kafka_of(settings, long_running=True)
        publisher = KafkaRawPublisher.from_settings(settings, Topology.from_settings(settings))
        count = asyncio.run(_replay(files, publisher, speed))
        undelivered = publisher.stats.dropped + publisher.stats.unsent
        if undelivered:
            raise UserError(
                f"{undelivered} of {count} records from {len(files)} capture file(s) were not delivered "
                f"to Kafka at {settings.bootstrap_servers} ({publisher.stats.dropped} dropped, "
                f"{publisher.stats.unsent} still unsent after {publisher.close_timeout_s:.0f}s)"
            )
        click.echo(f"published {count} records from {len(files)} capture file(s)")
        return
    if more_captures:
        raise click.UsageError(
            f"unexpected arguments {' '.join(more_captures)} (did you mean --from-capture?)"
        )
    plan = _plan(
        settings,
        exchanges,
        symbols,
        ws_url=ws_url,
        rest_url=rest_url,
        protocol=protocol,
        categories=list(categories) or None,
    )
    require_kafka_of(settings, long_running=True)
    publisher = KafkaRawPublisher.from_settings(settings, Topology.from_settings(settings))
    _run(settings, plan, publisher, control=not no_control, duration=duration)


async def _replay(files: list[str], publisher: KafkaRawPublisher, speed: float) -> int:
    await publisher.start()
    try:
        return await replay_captures(files, publisher, speed)
    finally:
        await publisher.close()


@click.command()
@_connection_options
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Capture file (.jsonl, .jsonl.gz or .jsonl.zst).",
)
@click.pass_context
def capture(
    ctx: click.Context,
    exchanges: tuple[str, ...],
    symbols: str | None,
    ws_url: str | None,
    rest_url: str | None,
    protocol: str | None,
    categories: tuple[str, ...],
    duration: float | None,
    out: Path,
) -> None:
    """Record a live session to a capture file instead of Kafka."""
    settings = settings_from(ctx)
    plan = _plan(
        settings,
        exchanges,
        symbols,
        ws_url=ws_url,
        rest_url=rest_url,
        protocol=protocol,
        categories=list(categories) or None,
    )
    publisher = CaptureRawPublisher(out)
    _run(settings, plan, publisher, control=False, duration=duration)
    click.echo(f"captured {publisher.stats.published} records to {out}")
