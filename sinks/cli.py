"""``marketpipe sink``, ``marketpipe sql`` and ``marketpipe replay``."""

from __future__ import annotations

import logging
import re
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import click

from marketpipe.cli_support import settings_from
from marketpipe.kafka_security import require_kafka_of
from marketpipe.output import Rows, chosen_format, format_option, write

log = logging.getLogger(__name__)

_RESULT_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "(")


@click.command()
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="Flush when this many records are buffered.",
)
@click.option(
    "--batch-seconds",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Flush when the oldest buffered record is this old.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Prometheus port (default: settings.metrics_port; 0 disables).",
)
@click.option(
    "--session-timeout",
    type=click.FloatRange(min=6),
    default=None,
    help="Seconds after which a killed sink's partitions move to the others or to its restart "
    "(default: settings.streams.session_timeout_s).",
)
@click.option("--migrate-only", is_flag=True, help="Apply the ClickHouse migrations and exit.")
@click.pass_context
def sink(
    ctx: click.Context,
    batch_rows: int,
    batch_seconds: float,
    metrics_port: int | None,
    session_timeout: float | None,
    migrate_only: bool,
) -> None:
    """Stream the md.* topics (trades, candles, books, tickers, instruments, derivatives) into ClickHouse.

    Every topic of Topology.sink_tables() goes into its table.

    Run several for more throughput (one consumer group). With the embedded engine the
    first one owns the database and serves it on loopback; the others and `marketpipe sql`
    go through it.
    """
    from marketpipe.topics import Topology
    from sinks.clickhouse import ClickHouseUnavailable, DsnError, connect
    from sinks.migrate import migrate
    from sinks.worker import SinkConfig, SinkWorker

    settings = settings_from(ctx)
    if migrate_only:
        try:
            client = connect(settings.clickhouse_dsn, create_database=True)
        except (DsnError, ClickHouseUnavailable) as exc:
            raise click.ClickException(str(exc)) from None
        try:
            applied = migrate(client)
        finally:
            client.close()
        click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
        return
    require_kafka_of(settings, long_running=True)  # a Kafka lost later is waited for by the worker
    port = settings.metrics_port if metrics_port is None else metrics_port
    _start_metrics(port)
    worker = SinkWorker(
        settings.kafka_client_config(),
        Topology.from_settings(settings),
        settings.clickhouse_dsn,
        SinkConfig(
            batch_rows=batch_rows,
            batch_seconds=batch_seconds,
            session_timeout_s=session_timeout or settings.streams.session_timeout_s,
        ),
        codec=_codec(settings.schema_registry_url),
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: worker.stop())
    try:
        worker.run()
    except DsnError as exc:
        raise click.ClickException(str(exc)) from None


def _codec(registry_url: str | None) -> Any:
    from marketpipe.codec import AvroCodec

    return AvroCodec(registry_url)


def _start_metrics(port: int) -> None:
    from marketpipe.metrics import serve_metrics_endpoint

    serve_metrics_endpoint(port)


@click.command()
@click.argument("query")
@format_option
@click.pass_context
def sql(ctx: click.Context, query: str, fmt: str | None) -> None:
    """Run QUERY on ClickHouse and print the result (works while the pipeline runs).

    As with clickhouse-client, a trailing FORMAT clause (`... FORMAT JSONEachRow`,
    `FORMAT Parquet`, `FORMAT CSVWithNames`) is run as written and the server's bytes are
    printed unchanged. Otherwise --format chooses: table on a terminal, tsv when piped,
    csv, or json (JSON lines, one object per row).
    """
    from clickhouse_connect.driver.exceptions import ClickHouseError

    clause = trailing_format(query)
    if clause and fmt:
        raise click.UsageError(f"the query ends with FORMAT {clause}; leave out --format {fmt}")
    client = open_clickhouse(ctx)
    try:
        if clause:
            copy_out(client.raw_stream(query), sys.stdout.buffer)
            return
        columns, rows = run_query(client, query)
    except ClickHouseError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()
    render(columns, rows, fmt)


_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z][A-Za-z0-9_]*)\s*;?\s*\Z", re.IGNORECASE)


def trailing_format(query: str) -> str | None:
    """The format named by the query's own trailing FORMAT clause, if it has one."""
    match = _TRAILING_FORMAT.search(query)
    return match.group(1) if match else None


def open_clickhouse(ctx: click.Context) -> Any:
    """A client for settings.clickhouse_dsn; a fresh embedded database gets the schema first."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from sinks.clickhouse import ClickHouseUnavailable, DsnError, connect, is_embedded
    from sinks.migrate import migrate

    settings = settings_from(ctx)
    try:
        client = connect(settings.clickhouse_dsn)
    except (DsnError, ClickHouseUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    if is_embedded(client):
        try:
            migrate(client)  # a fresh data dir still offers the documented tables and views
        except ClickHouseError as exc:
            client.close()
            raise click.ClickException(str(exc)) from None
    return client


def copy_out(source: Any, sink: BinaryIO) -> None:
    """Write a raw result (a file-like object or an iterator of byte chunks) to sink."""
    if hasattr(source, "read"):
        shutil.copyfileobj(source, sink)
    else:
        for chunk in source:
            sink.write(chunk)
    sink.flush()


def run_query(client: Any, query: str) -> tuple[list[str], list[Sequence[Any]]]:
    statement = query.lstrip().upper()
    if statement.startswith(_RESULT_STATEMENTS):
        result = client.query(query)
        return list(result.column_names), list(result.result_rows)
    from clickhouse_connect.driver.summary import QuerySummary

    answer = client.command(query)
    if answer is None or answer == "" or isinstance(answer, QuerySummary):
        return [], []  # a statement without a result (TRUNCATE, INSERT, ...)
    return ["result"], [[answer]]


def render(columns: list[str], rows: list[Sequence[Any]], fmt: str | None) -> None:
    if not columns:
        return
    write(Rows(columns, rows), fmt)
    if chosen_format(fmt) == "table":
        click.echo(f"{len(rows)} row(s)", err=True)


@click.command()
@click.option("--group", help="Consumer group to reset, e.g. marketpipe-sink.")
@click.option("--to-earliest", is_flag=True, help="Reset to the earliest retained offsets.")
@click.option("--to-latest", is_flag=True, help="Reset to the end (skip everything not yet read).")
@click.option(
    "--to-datetime", "to_datetime", metavar="ISO", help="Reset to the first offsets at/after ISO time."
)
@click.option(
    "--to-offsets",
    "offsets_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON file {"topic": {"partition": offset}}.',
)
@click.option(
    "--topics",
    "topics",
    multiple=True,
    help="Topic(s) to reset (repeat or comma-separate); default: those the group has offsets for.",
)
@click.option(
    "--streams",
    "streams_app",
    is_flag=True,
    help="Recompute everything from the raw topics: the streams app's group to the start of "
    "raw.<exchange>, the aggregation stages' groups to the end of their derived inputs.",
)
@click.option("--dry-run", is_flag=True, help="Print old and new offsets without changing anything.")
@click.option("--force", is_flag=True, help="Do not refuse when the group has active members.")
@click.pass_context
def replay(
    ctx: click.Context,
    group: str | None,
    to_earliest: bool,
    to_latest: bool,
    to_datetime: str | None,
    offsets_file: Path | None,
    topics: tuple[str, ...],
    streams_app: bool,
    dry_run: bool,
    force: bool,
) -> None:
    """Reset GROUP's committed offsets so its consumers re-read (replay) from there.

    With --streams (and no target): prepare the stopped streams app to recompute every
    derived topic from the raw topics (see docs/replay.md).
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from marketpipe.topics import Topology
    from sinks.replay import OffsetResetter, ReplayError, Target, load_offsets_file, parse_datetime

    chosen = [flag for flag in (to_earliest, to_latest, to_datetime, offsets_file) if flag]
    if streams_app and (chosen or group or topics):
        raise click.UsageError("--streams takes no --group, --topics or --to-* target")
    if not streams_app and (len(chosen) != 1 or not group):
        raise click.UsageError(
            "give --group and exactly one of --to-earliest, --to-latest, --to-datetime ISO, "
            "--to-offsets FILE (or --streams)"
        )
    settings = settings_from(ctx)
    topic_list = [t.strip() for item in topics for t in item.split(",") if t.strip()] or None
    require_kafka_of(settings)
    try:
        resetter = OffsetResetter(AdminClient(dict(settings.kafka_client_config())))
        if streams_app:
            plan = resetter.plan_streams(Topology.from_settings(settings))
            for stage_group, changes in plan.groups:
                _print_changes(stage_group, changes, dry_run)
            if not dry_run:
                # stopped workers keep their static group membership until their session times out
                resetter.apply_streams(plan, force=force, wait_s=settings.streams.session_timeout_s + 5)
                for stage_group, changes in plan.groups:
                    click.echo(f"reset {len(changes)} partition(s) of group {stage_group}")
            return
        assert group is not None
        target = Target(
            earliest=to_earliest,
            latest=to_latest,
            at=parse_datetime(to_datetime) if to_datetime else None,
            offsets=load_offsets_file(offsets_file) if offsets_file else None,
        )
        changes = resetter.plan(group, target, topic_list)
        _print_changes(group, changes, dry_run)
        if not dry_run:
            resetter.apply(group, changes, force=force)
            click.echo(f"reset {len(changes)} partition(s) of group {group}")
    except (ReplayError, KafkaException) as exc:
        raise click.ClickException(str(exc)) from None


def _print_changes(group: str, changes: Sequence[Any], dry_run: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"{'DRY RUN: ' if dry_run else ''}offsets of group {group}"
    table = Table("topic", "partition", "old", "new", "delta", title=title)
    for change in changes:
        old = "-" if change.old is None else str(change.old)
        delta = "" if change.delta is None else f"{change.delta:+d}"
        table.add_row(change.topic, str(change.partition), old, str(change.new), delta)
    Console(width=200).print(table)
