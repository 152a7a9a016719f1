"""`marketpipe run`: the whole pipeline on one machine, supervised as child processes.

Starts the local Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS names a cluster), applies
the topology, then runs and supervises: one connector per exchange (or the capture
replayer), the exchange simulator for `--source sim`, the Faust streams worker and the
ClickHouse sink. Ctrl-C / SIGTERM stops every child (and the broker it started).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import click

from marketpipe.cli import settings_from
from marketpipe.config import Settings
from marketpipe.kafka_local import LocalKafka, LocalKafkaError, free_port
from marketpipe.supervisor import Child, Supervisor
from marketpipe.topics import Topology, apply_topology

log = logging.getLogger(__name__)


def _marketpipe(settings: Settings, *args: str) -> list[str]:
    return [sys.executable, "-m", "marketpipe.cli", "--data-dir", str(settings.data_dir), *args]


def _metrics_env(port: int) -> dict[str, str]:
    return {**os.environ, "MARKETPIPE_METRICS_PORT": str(port)}


def _producers(settings: Settings, endpoints: dict[str, tuple[str, str]] | None) -> list[Child]:
    """One connector process per exchange, so one dead exchange never stalls the others.

    Without --symbols a connector takes settings.symbols and skips those its exchange does
    not list (BTC-USDT on Coinbase, say), which is what a mixed default list needs.
    """
    children = []
    for index, exchange in enumerate(settings.exchanges):
        args = ["produce", "--exchange", exchange]
        if endpoints is not None:
            ws, rest = endpoints[exchange]
            args += ["--ws-url", ws, "--rest-url", rest]
        port = settings.metrics_port + 1 + index if settings.metrics_port else 0
        children.append(Child(f"produce-{exchange}", _marketpipe(settings, *args), env=_metrics_env(port)))
    return children


def _children(settings: Settings, source: str) -> list[Child]:
    children: list[Child] = []
    if source == "sim":
        from simulator import urls

        port = free_port()
        exchanges = ",".join(settings.exchanges)
        children.append(
            Child("simulator", _marketpipe(settings, "sim", "--exchanges", exchanges, "--port", str(port)))
        )
        children += _producers(settings, urls(port))
    elif source == "live":
        children += _producers(settings, None)
    elif source.startswith("capture:"):
        paths = [p for p in source.removeprefix("capture:").split(",") if p]
        missing = [p for p in paths if not Path(p).is_file()]
        if not paths or missing:
            raise click.UsageError(
                f"--source capture:PATH[,PATH...] needs existing files; missing: {missing}"
            )
        children.append(
            Child(
                "replay",
                _marketpipe(settings, "produce", "--from-capture", *paths, "--speed", "0"),
                restart=False,
            )
        )
    else:
        raise click.UsageError(f"--source must be live, sim or capture:PATH[,PATH...], not {source!r}")
    children.append(Child("stream", _marketpipe(settings, "stream")))
    children.append(Child("sink", _marketpipe(settings, "sink"), env=_metrics_env(settings.metrics_port)))
    return children


@click.command()
@click.option(
    "--source",
    default="live",
    show_default=True,
    help="live (the exchanges), sim (built-in simulator) or capture:PATH[,PATH...]",
)
@click.pass_context
def run(ctx: click.Context, source: str) -> None:
    """Run the whole pipeline: broker, topics, connectors, streams, sink."""
    settings = settings_from(ctx)
    broker = LocalKafka(settings.data_dir, settings.kafka.local) if settings.uses_local_broker else None
    started_broker = False
    if broker is not None:
        started_broker = broker.pid() is None
        try:
            seconds = broker.start()
        except LocalKafkaError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"kafka ready on {broker.bootstrap} ({seconds:.1f}s)")
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(dict(settings.kafka_client_config()))
    apply_topology(admin, Topology.from_settings(settings).specs(), settings.kafka.replication_factor)

    supervisor = Supervisor(settings.data_dir / "logs")
    for child in _children(settings, source):
        supervisor.add(child)

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    supervisor.start_all()
    click.echo(f"running {', '.join(c.name for c in supervisor.children)}; logs in {supervisor.log_dir}")
    try:
        while True:
            for child in supervisor.poll():
                click.echo(f"{child.name} finished with exit code {child.last_exit}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("stopping...")
    finally:
        supervisor.stop_all()
        if broker is not None and started_broker:
            broker.stop()
        click.echo("stopped")
