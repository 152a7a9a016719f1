"""`marketpipe kafka start|stop|status|fetch` and `marketpipe topics apply|list`."""

from __future__ import annotations

from typing import Any

import click
from confluent_kafka.admin import AdminClient

from marketpipe.cli_support import settings_from
from marketpipe.config import Settings
from marketpipe.kafka_local import LocalKafka, LocalKafkaError, fetch_jars
from marketpipe.kafka_security import require_kafka_of
from marketpipe.output import Rows, format_option, write
from marketpipe.topics import Topology, apply_topology, describe_configs


def local_broker(settings: Settings) -> LocalKafka:
    return LocalKafka(settings.data_dir, settings.kafka.local)


@click.group()
def kafka() -> None:
    """Run the local single-node Kafka broker (KRaft, jars from Maven)."""


@kafka.command()
@click.pass_context
def start(ctx: click.Context) -> None:
    """Start the local broker (idempotent) and wait until it answers metadata."""
    settings = settings_from(ctx)
    if not settings.uses_local_broker:
        raise click.UsageError(
            f"KAFKA_BOOTSTRAP_SERVERS points at {settings.bootstrap_servers}; "
            "unset it to use the local broker"
        )
    broker = local_broker(settings)
    was_running = broker.pid() is not None
    try:
        seconds = broker.start()
    except LocalKafkaError as exc:
        raise click.ClickException(str(exc)) from None
    verb = "already running" if was_running else f"started in {seconds:.1f}s"
    click.echo(
        f"kafka {settings.kafka.local.kafka_version} {verb} on {broker.bootstrap} (log: {broker.log_file})"
    )
    protocol = settings.kafka.local.security_protocol
    if protocol != "PLAINTEXT":
        needs = [f"security.protocol={protocol}"]
        if protocol.startswith("SASL_"):
            needs.append("sasl.mechanism=PLAIN, sasl.username/sasl.password of kafka.local.sasl_users")
        if protocol.endswith("SSL"):
            needs.append(f"ssl.ca.location={broker.ca_file}")
        click.echo(f"clients need in kafka.client: {'; '.join(needs)}")


@kafka.command()
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop the local broker cleanly."""
    broker = local_broker(settings_from(ctx))
    click.echo("kafka stopped" if broker.stop() else "kafka was not running")


@kafka.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Show whether the local broker runs and answers."""
    state = local_broker(settings_from(ctx)).status()
    click.echo(f"kafka {state.describe()}")
    ctx.exit(0 if state.answering else 1)


@kafka.command()
@click.pass_context
def fetch(ctx: click.Context) -> None:
    """Resolve the broker jars with Maven into the cache (done by `make` bootstrap)."""
    version = settings_from(ctx).kafka.local.kafka_version
    try:
        libs = fetch_jars(version)
    except LocalKafkaError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"kafka {version} jars in {libs}")


@click.group()
def topics() -> None:
    """Provision and inspect the declared topics."""


def _admin(settings: Settings) -> AdminClient:
    require_kafka_of(settings)
    config: dict[str, Any] = dict(settings.kafka_client_config())
    return AdminClient(config)


@topics.command("apply")
@click.pass_context
def apply_cmd(ctx: click.Context) -> None:
    """Create missing topics and reconcile configs (idempotent)."""
    settings = settings_from(ctx)
    topology = Topology.from_settings(settings)
    admin = _admin(settings)
    try:
        report = apply_topology(admin, topology.specs(), settings.kafka.replication_factor)
    except Exception as exc:
        raise click.ClickException(
            f"topics apply failed against {settings.bootstrap_servers}: {exc}"
        ) from None
    for name in report.created:
        click.echo(f"created      {name}")
    for name, partitions in report.repartitioned.items():
        click.echo(f"partitions   {name} -> {partitions}")
    for name, diff in report.reconfigured.items():
        click.echo(f"reconfigured {name}: " + ", ".join(f"{k}={v}" for k, v in sorted(diff.items())))
    if report.unchanged:
        click.echo(f"unchanged    {len(report.unchanged)} topic(s)")


@topics.command("list")
@format_option
@click.pass_context
def list_cmd(ctx: click.Context, fmt: str | None) -> None:
    """Show the declared topics as they are on the cluster."""
    settings = settings_from(ctx)
    topology = Topology.from_settings(settings)
    admin = _admin(settings)
    try:
        existing = admin.list_topics(timeout=10).topics
    except Exception as exc:
        raise click.ClickException(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from None
    specs = topology.specs()
    configs = describe_configs(admin, [s.name for s in specs if s.name in existing])
    rows = []
    for spec in specs:
        if spec.name not in existing:
            cleanup, partitions = spec.configs()["cleanup.policy"], spec.partitions
            rows.append((spec.name, partitions, cleanup, "", spec.key, spec.value, "missing"))
            continue
        config = configs[spec.name]
        drift = any(config.get(k) != v for k, v in spec.configs().items())
        rows.append(
            (
                spec.name,
                len(existing[spec.name].partitions),
                config.get("cleanup.policy", ""),
                config.get("retention.ms", ""),
                spec.key,
                spec.value,
                "drift" if drift else "ok",
            )
        )
    columns = ("topic", "partitions", "cleanup", "retention.ms", "key", "value", "state")
    write(Rows(columns, rows, styles={"state": _STATE_STYLE.get}), fmt)


_STATE_STYLE = {"missing": "red", "drift": "yellow"}
