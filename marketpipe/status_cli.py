"""`marketpipe status` (the run's picture, once) and `marketpipe tail` (decoded records of a topic)."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from marketpipe.cli import settings_from


@click.command()
@click.option("--plain", is_flag=True, help="key=value lines instead of tables.")
@click.pass_context
def status(ctx: click.Context, plain: bool) -> None:
    """Print the picture of the `marketpipe run` using this data dir (ports from its state file)."""
    from marketpipe.kafka_local import process_alive
    from marketpipe.view import KafkaLag, Observer, RunState, plain_lines, render_rich

    settings = settings_from(ctx)
    state = RunState.read(settings.data_dir)
    if state is None or not process_alive(state.pid):
        raise click.ClickException(f"no marketpipe run is running with data dir {settings.data_dir}")
    for endpoint in state.endpoints:
        if endpoint.state == "running" and not process_alive(endpoint.pid):
            endpoint.state = "gone"
    client_config = dict(settings.kafka_client_config(), **{"bootstrap.servers": state.bootstrap})
    _require_kafka_access(client_config, unreachable_ok=True)  # lag shows as unknown while Kafka is away
    observer = Observer(state, KafkaLag(client_config))
    try:
        observer.collect()  # a first sample, so the second one has rates
        time.sleep(1.0)
        picture = observer.collect()
    finally:
        observer.close()
    if plain:
        for line in plain_lines(picture):
            click.echo(line)
    else:
        from rich.console import Console

        Console().print(render_rich(picture, f"marketpipe run --source {state.source} (pid {state.pid})"))


def _require_kafka_access(client_config: dict[str, Any], *, unreachable_ok: bool = False) -> None:
    from marketpipe.kafka_security import KafkaAccessError, check_access

    try:
        check_access(client_config, 10.0, unreachable_ok=unreachable_ok)
    except KafkaAccessError as exc:
        raise click.ClickException(str(exc)) from None


def _kafka_of_run(settings: Any) -> tuple[dict[str, Any], str]:
    """Client config and topic prefix: those of the `marketpipe run` on this data dir, if one runs.

    So `marketpipe tail` finds a run's local broker (its port may differ from the default)
    unless KAFKA_BOOTSTRAP_SERVERS says otherwise.
    """
    from marketpipe.kafka_local import process_alive
    from marketpipe.view import RunState

    config: dict[str, Any] = dict(settings.kafka_client_config())
    prefix = settings.kafka.topic_prefix
    state = RunState.read(settings.data_dir)
    if state is not None and process_alive(state.pid) and settings.uses_local_broker:
        config["bootstrap.servers"] = state.bootstrap
        prefix = state.prefix
    return config, prefix


def _decode(codec: Any, topic: str, message: Any) -> Any:
    from marketpipe.raw import RawRecord

    value = message.value()
    if ".raw." in f".{topic}":
        raw = RawRecord.from_kafka(value, message.headers())
        return {
            "conn": raw.conn,
            "seq": raw.seq,
            "kind": raw.kind,
            "recv_ns": raw.recv_ns,
            "url": raw.url,
            "data": raw.text(),
        }
    return codec.decode(value)


@click.command()
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record (default: only new ones).")
@click.option("-n", "count", type=int, default=None, help="Stop after N records.")
@click.option("--key", default=None, help="Only records with this key (e.g. binance:BTC-USDT).")
@click.option("-e", "--exit-at-end", is_flag=True, help="Stop at the end of the topic instead of following.")
@click.pass_context
def tail(
    ctx: click.Context,
    topic: str,
    from_beginning: bool,
    count: int | None,
    key: str | None,
    exit_at_end: bool,
) -> None:
    """Print the records of TOPIC (md.*, raw.*) as JSON lines, Avro decoded, like kcat.

    TOPIC may omit the configured topic prefix.
    """
    import msgspec
    from confluent_kafka import (
        OFFSET_BEGINNING,
        OFFSET_END,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    from marketpipe.codec import AvroCodec, DecodeError

    settings = settings_from(ctx)
    client_config, prefix = _kafka_of_run(settings)
    _require_kafka_access(client_config)
    consumer = Consumer(
        {
            **client_config,
            "log_level": "0",  # a dead broker shows as one clear error, not a log flood
            "group.id": "marketpipe-tail",
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
        }
    )
    try:
        try:
            metadata = consumer.list_topics(timeout=10)
        except KafkaException as exc:
            raise click.ClickException(f"Kafka at {client_config['bootstrap.servers']}: {exc}") from None
        name = next((t for t in (topic, prefix + topic) if t in metadata.topics), None)
        if name is None:
            raise click.ClickException(f"topic {topic!r} does not exist")
        partitions = list(metadata.topics[name].partitions)
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(name, p, start) for p in partitions])
        codec = AvroCodec(settings.schema_registry_url)
        printed, at_end = 0, set()
        out = sys.stdout
        while count is None or printed < count:
            message = consumer.poll(1.0)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    if exit_at_end and len(at_end) == len(partitions):
                        break
                    continue
                raise click.ClickException(str(error))
            message_key = (message.key() or b"").decode(errors="replace")
            if key is not None and message_key != key:
                continue
            try:
                value: Any = _decode(codec, name, message)
            except (DecodeError, ValueError, KeyError) as exc:
                value = {"undecodable": str(exc)}
            line = {
                "topic": name,
                "partition": message.partition(),
                "offset": message.offset(),
                "key": message_key,
                "value": value,
            }
            out.write(msgspec.json.encode(line).decode() + "\n")
            out.flush()
            printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
