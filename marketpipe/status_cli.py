"""`marketpipe status` (the run's picture, once) and `marketpipe tail` (decoded records of a topic)."""

from __future__ import annotations

import sys
import time
from dataclasses import fields, is_dataclass
from datetime import datetime
from typing import Any

import click

from marketpipe.cli_support import settings_from
from marketpipe.errors import UserError
from marketpipe.output import FORMATS, Rows, chosen_format, format_option, write
from marketpipe.times import parse_time


@click.command()
@click.option("--plain", is_flag=True, help="key=value lines instead of tables.")
@format_option
@click.pass_context
def status(ctx: click.Context, plain: bool, fmt: str | None) -> None:
    """Print the picture of the `marketpipe run` using this data dir (ports from its state file).

    On a terminal: the tables of the live view. Piped, or with --format csv|tsv|json: every
    row of every table in full, labelled with its kind (process, connection, book, stage,
    table).
    """
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
    elif chosen_format(fmt) == "table":
        from rich.console import Console

        Console().print(render_rich(picture, f"marketpipe run --source {state.source} (pid {state.pid})"))
    else:
        write(picture_rows(picture), fmt)


def picture_rows(picture: Any) -> list[Rows]:
    """Each list in the picture (processes, connections, ..., notes, alerts) as rows of its
    items' fields, labelled with the singular of its name (for csv, tsv and json)."""
    tables = []
    for section in fields(picture):
        items = getattr(picture, section.name)
        if not isinstance(items, list) or not items:
            continue
        kind = section.name[:-2] if section.name.endswith("sses") else section.name.removesuffix("s")
        if is_dataclass(items[0]):
            columns = [f.name for f in fields(items[0])]
            rows = [[getattr(item, c) for c in columns] for item in items]
        else:
            columns, rows = [kind], [[item] for item in items]
        tables.append(Rows(columns, rows, title=kind))
    return tables


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


TAIL_COLUMNS = ("topic", "partition", "offset", "timestamp", "key", "value")


@click.command()
@click.argument("topic")
@click.option(
    "-p",
    "--partition",
    "partitions",
    type=click.IntRange(min=0),
    multiple=True,
    help="Only this partition (repeatable; default: all).",
)
@click.option(
    "-o",
    "--offset",
    default=None,
    metavar="beginning|end|N|-N",
    help="Where to start in each partition: the oldest record, only new ones (default), "
    "absolute offset N, or from N offsets before the end (md.* topics are transactional: their "
    "commit markers take offsets too, so -N can show fewer than N records).",
)
@click.option("--from-beginning", is_flag=True, help="Same as --offset beginning.")
@click.option(
    "--from-time",
    default=None,
    metavar="ISO|MS",
    help="Start at the first record at/after this time (ISO 8601, UTC unless given, or epoch ms).",
)
@click.option(
    "-n", "--count", "count", type=click.IntRange(min=1), default=None, help="Stop after N records."
)
@click.option("--key", default=None, help="Only records with this key (e.g. binance:BTC-USDT).")
@click.option("-e", "--exit-at-end", is_flag=True, help="Stop at the end of the topic instead of following.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="json",
    show_default=True,
    help="json: one JSON object per line (like kcat -J); tsv/csv: a header, then a line per record "
    "with the value as JSON; table: aligned, printed at the end (needs -n or -e).",
)
@click.pass_context
def tail(
    ctx: click.Context,
    topic: str,
    partitions: tuple[int, ...],
    offset: str | None,
    from_beginning: bool,
    from_time: str | None,
    count: int | None,
    key: str | None,
    exit_at_end: bool,
    fmt: str,
) -> None:
    """Print the records of TOPIC (md.*, raw.*) decoded, like kcat.

    Avro values are decoded, raw.* frames shown as text. TOPIC may omit the configured
    topic prefix. Each record carries topic, partition, offset, timestamp (ms) and key.
    """
    from confluent_kafka import Consumer, KafkaException

    start = _start_position(offset, from_beginning, from_time)
    if fmt == "table" and count is None and not exit_at_end:
        raise click.UsageError("--format table prints when done: give -n/--count or -e/--exit-at-end")
    settings = settings_from(ctx)
    client_config, prefix = _kafka_of_run(settings)
    from marketpipe.kafka_security import require_kafka_of

    require_kafka_of(settings, config=client_config)
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
        existing = sorted(metadata.topics[name].partitions)
        unknown = sorted(set(partitions) - set(existing))
        if unknown:
            raise click.BadParameter(
                f"{name} has partitions {existing[0]}..{existing[-1]}, not {unknown}",
                param_hint="--partition",
            )
        chosen = sorted(set(partitions)) or existing
        consumer.assign(_assignment(consumer, name, chosen, start))
        _print_records(consumer, settings, name, len(chosen), count, key, exit_at_end, fmt)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def _start_position(offset: str | None, from_beginning: bool, from_time: str | None) -> str | int | datetime:
    """ "beginning", "end", an absolute offset (int >= 0), a count from the end (int < 0) or a time."""
    given = [flag for flag in (offset, from_beginning, from_time) if flag]
    if len(given) > 1:
        raise click.UsageError("give one of --offset, --from-beginning, --from-time")
    if from_time is not None:
        return parse_time(from_time, "--from-time")
    if from_beginning or offset == "beginning":
        return "beginning"
    if offset is None or offset == "end":
        return "end"
    try:
        return int(offset)
    except ValueError:
        raise click.BadParameter(
            f"{offset!r}: use beginning, end, N (an offset) or -N (the last N records)", param_hint="--offset"
        ) from None


def _assignment(consumer: Any, topic: str, partitions: list[int], start: str | int | datetime) -> list[Any]:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

    from marketpipe.topics import watermarks

    if start == "beginning" or start == "end":
        at = OFFSET_BEGINNING if start == "beginning" else OFFSET_END
        return [TopicPartition(topic, p, at) for p in partitions]
    if isinstance(start, datetime):
        wanted = [TopicPartition(topic, p, int(start.timestamp() * 1000)) for p in partitions]
        found = consumer.offsets_for_times(wanted, timeout=10)
        for _ in range(20):  # a partition's lookup can fail (leader moving, broker loading): ask again
            failed = [tp for tp in found if tp.error is not None]
            if not failed:
                break
            time.sleep(0.5)
            found = consumer.offsets_for_times(wanted, timeout=10)
        else:
            raise UserError(f"{topic}: offsets at {start.isoformat()} not available: {failed[0].error}")
        # -1: no record at or after that time in this partition yet, so only new ones
        return [
            TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END) for tp in found
        ]
    assert isinstance(start, int)
    if start >= 0:
        return [TopicPartition(topic, p, start) for p in partitions]
    assignment = []
    for p in partitions:
        low, high = watermarks(consumer, TopicPartition(topic, p))
        assignment.append(TopicPartition(topic, p, max(low, high + start)))
    return assignment


def _print_records(
    consumer: Any,
    settings: Any,
    name: str,
    partition_count: int,
    count: int | None,
    key: str | None,
    exit_at_end: bool,
    fmt: str,
) -> None:
    from confluent_kafka import KafkaError

    from marketpipe.codec import AvroCodec, DecodeError

    codec = AvroCodec(settings.schema_registry_url)
    sink = _RecordSink(fmt)
    printed, at_end = 0, set()
    try:
        while count is None or printed < count:
            message = consumer.poll(1.0)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    if exit_at_end and len(at_end) == partition_count:
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
            _, timestamp = message.timestamp()
            sink.add((name, message.partition(), message.offset(), timestamp, message_key, value))
            printed += 1
    finally:
        sink.close()


class _RecordSink:
    """Prints records as they arrive (json, csv, tsv) or all at the end (table)."""

    def __init__(self, fmt: str) -> None:
        import msgspec

        self.fmt = fmt
        self.encode = msgspec.json.Encoder()
        self.held: list[tuple[Any, ...]] = []
        self.started = False

    def add(self, record: tuple[Any, ...]) -> None:
        if self.fmt == "json":
            line = dict(zip(TAIL_COLUMNS, record, strict=True))
            sys.stdout.write(self.encode.encode(line).decode() + "\n")
            sys.stdout.flush()
            return
        as_text = (*record[:-1], self.encode.encode(record[-1]).decode())
        if self.fmt == "table":
            self.held.append(as_text)
            return
        write(Rows(TAIL_COLUMNS, [as_text]), self.fmt, header=not self.started)  # csv/tsv: header once
        self.started = True

    def close(self) -> None:
        if self.fmt == "table":
            write(Rows(TAIL_COLUMNS, self.held), "table")
