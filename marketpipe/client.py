"""marketpipe's public Python client: the pipeline's data as DataFrames and decoded records.

Two halves, documented with examples in ``docs/client.md``:

* ClickHouse, as pandas or polars DataFrames: :func:`candles`, :func:`trades` and
  :func:`book_heatmap` (one-shot functions), or a :class:`MarketData` for several queries
  over one connection. The database is found the way every marketpipe command finds it
  (``CLICKHOUSE_DSN``, ``marketpipe.toml``, or the embedded database of the data dir);
  while ``marketpipe run`` or ``marketpipe sink`` serves the embedded database, the
  client goes through that process's loopback endpoint (``marketpipe-endpoint.json``,
  read here so that nobody has to).
* Kafka: :func:`consume` iterates over the decoded records of an ``md.*`` topic (Avro
  single-object or Confluent wire format), reading committed transactions only.

Timestamps in DataFrames are UTC, microsecond precision; ``start``/``end`` take a
``datetime`` (naive means UTC), an ISO 8601 string or integer microseconds since the epoch.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from marketpipe.codec import AvroCodec
from marketpipe.config import EXCHANGES, SYMBOL_RE, SYMBOL_RULE, Settings, interval_to_us, load_settings
from marketpipe.records import Record

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client as ClickHouseClient

__all__ = [
    "ClientError",
    "Frame",
    "MarketData",
    "Received",
    "TimeBound",
    "book_heatmap",
    "candles",
    "consume",
    "trades",
]

Frame: TypeAlias = Literal["pandas", "polars"]
TimeBound: TypeAlias = datetime | str | int | None
"""A ``datetime`` (naive = UTC), an ISO 8601 string, integer µs since the epoch, or None (open)."""

CONSOLIDATED = "all"
"""the exchange name of the cross-exchange consolidated series"""


class ClientError(RuntimeError):
    """The client cannot do what was asked; the message says what and how to fix it."""


# -- ClickHouse ---------------------------------------------------------------------------

_CANDLES_SQL = """
SELECT open_time, close_time, open, high, low, close, volume, quote_volume, buy_volume,
       sell_volume, trades, vwap, closed, late
FROM ohlcv FINAL
WHERE exchange = {exchange:String} AND symbol = {symbol:String} AND interval = {interval:String}
  AND {time_filter}
ORDER BY open_time
"""

_TRADES_SQL = """
SELECT ts, price, size, side, trade_id, recv_ts
FROM trades FINAL
WHERE exchange = {exchange:String} AND symbol = {symbol:String} AND {time_filter}
ORDER BY ts, trade_id
"""

# book_heatmap (docs/sql.md) over book_buckets FINAL: a snapshot stored twice counts once
_BOOK_HEATMAP_SQL = """
SELECT ts, mid, bucket_size, level.1 AS side, level.2 AS price, level.3 AS size, level.4 AS notional
FROM book_buckets FINAL
ARRAY JOIN arrayConcat(
    arrayMap((p, s, n) -> ('bid', p, s, n), bids.price, bids.size, bids.notional),
    arrayMap((p, s, n) -> ('ask', p, s, n), asks.price, asks.size, asks.notional)
) AS level
WHERE exchange = {exchange:String} AND symbol = {symbol:String} AND {time_filter}
ORDER BY ts, side, price
"""


class MarketData:
    """A connection to the pipeline's ClickHouse; query methods return DataFrames.

    ``dsn`` overrides the configured database (``chdb:///path`` or
    ``http(s)://user:password@host:8123/db``); ``data_dir`` names the data dir of the
    deployment (default: ``MARKETPIPE_DATA_DIR`` or ``.marketpipe``). Use it as a context
    manager, or call :meth:`close`: with no pipeline running, an embedded database is
    opened in this process, and no ``marketpipe sink`` can open it until the client closes.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        data_dir: str | Path | None = None,
        settings: Settings | None = None,
        frame: Frame = "pandas",
    ) -> None:
        from sinks.clickhouse import ClickHouseUnavailable, DsnError, connect, is_embedded

        self.settings = settings or _settings(data_dir)
        self.dsn = dsn or self.settings.clickhouse_dsn
        self.frame = _check_frame(frame)
        try:
            self._client: ClickHouseClient = connect(self.dsn, wait_s=5.0)
        except (DsnError, ClickHouseUnavailable) as exc:
            raise ClientError(str(exc)) from None
        if is_embedded(self._client):
            from sinks.migrate import migrate

            migrate(self._client)  # a data dir no sink has written to yet still has the tables

    def __enter__(self) -> MarketData:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def candles(
        self,
        exchange: str,
        symbol: str,
        interval: str = "1m",
        start: TimeBound = None,
        end: TimeBound = None,
        *,
        frame: Frame | None = None,
    ) -> Any:
        """OHLCV candles of one market in ``[start, end)`` by open time, final versions only.

        ``exchange="all"`` gives the cross-exchange consolidated candles. Columns:
        open_time, close_time, open, high, low, close, volume, quote_volume, buy_volume,
        sell_volume, trades, vwap, closed (False for the candle still forming), late.
        """
        interval_to_us(interval)
        return self._select(_CANDLES_SQL, "open_time", exchange, symbol, start, end, frame, interval=interval)

    def trades(
        self,
        exchange: str,
        symbol: str,
        start: TimeBound = None,
        end: TimeBound = None,
        *,
        frame: Frame | None = None,
    ) -> Any:
        """Trades of one market in ``[start, end)`` by exchange time, each once, in time order.

        Columns: ts, price, size, side (buy/sell = the taker's side), trade_id, recv_ts.
        """
        return self._select(_TRADES_SQL, "ts", exchange, symbol, start, end, frame)

    def book_heatmap(
        self,
        exchange: str,
        symbol: str,
        start: TimeBound = None,
        end: TimeBound = None,
        *,
        frame: Frame | None = None,
    ) -> Any:
        """Order-book price buckets of one market in ``[start, end)``: one row per bucket and snapshot.

        Columns: ts, mid, bucket_size, side (bid/ask), price (the bucket's price), size,
        notional. Pivot ``ts`` x ``price`` on ``size`` for a heatmap.
        """
        return self._select(_BOOK_HEATMAP_SQL, "ts", exchange, symbol, start, end, frame)

    def query(
        self, sql: str, parameters: Mapping[str, Any] | None = None, *, frame: Frame | None = None
    ) -> Any:
        """Any SELECT as a DataFrame; bind values as ``{name:Type}`` placeholders in ``parameters``."""
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            table = self._client.query_arrow(sql, parameters=dict(parameters or {}))
        except ClickHouseError as exc:
            raise ClientError(f"ClickHouse refused the query: {exc}") from None
        return _to_frame(table, frame or self.frame)

    def _select(
        self,
        template: str,
        time_column: str,
        exchange: str,
        symbol: str,
        start: TimeBound,
        end: TimeBound,
        frame: Frame | None,
        **extra: str,
    ) -> Any:
        _check_market(exchange, symbol)
        time_filter, bounds = _time_filter(time_column, start, end)
        sql = template.replace("{time_filter}", time_filter)
        return self.query(sql, {"exchange": exchange, "symbol": symbol, **extra, **bounds}, frame=frame)


def candles(
    exchange: str,
    symbol: str,
    interval: str = "1m",
    start: TimeBound = None,
    end: TimeBound = None,
    *,
    frame: Frame = "pandas",
    dsn: str | None = None,
    data_dir: str | Path | None = None,
) -> Any:
    """OHLCV candles as a DataFrame (see :meth:`MarketData.candles`), over a connection of its own."""
    with MarketData(dsn, data_dir=data_dir) as market:
        return market.candles(exchange, symbol, interval, start, end, frame=frame)


def trades(
    exchange: str,
    symbol: str,
    start: TimeBound = None,
    end: TimeBound = None,
    *,
    frame: Frame = "pandas",
    dsn: str | None = None,
    data_dir: str | Path | None = None,
) -> Any:
    """Trades as a DataFrame (see :meth:`MarketData.trades`), over a connection of its own."""
    with MarketData(dsn, data_dir=data_dir) as market:
        return market.trades(exchange, symbol, start, end, frame=frame)


def book_heatmap(
    exchange: str,
    symbol: str,
    start: TimeBound = None,
    end: TimeBound = None,
    *,
    frame: Frame = "pandas",
    dsn: str | None = None,
    data_dir: str | Path | None = None,
) -> Any:
    """Order-book buckets as a DataFrame (see :meth:`MarketData.book_heatmap`), on a connection of its own."""
    with MarketData(dsn, data_dir=data_dir) as market:
        return market.book_heatmap(exchange, symbol, start, end, frame=frame)


def _settings(data_dir: str | Path | None) -> Settings:
    from marketpipe.config import ConfigError

    try:
        return load_settings(data_dir=Path(data_dir)) if data_dir is not None else load_settings()
    except ConfigError as exc:
        raise ClientError(str(exc)) from None


def _check_frame(frame: str) -> Frame:
    if frame == "pandas":
        return "pandas"
    if frame == "polars":
        return "polars"
    raise ValueError(f"frame must be 'pandas' or 'polars', not {frame!r}")


def _check_market(exchange: str, symbol: str) -> None:
    if exchange not in EXCHANGES and exchange != CONSOLIDATED:
        raise ValueError(f"unknown exchange {exchange!r}; choose from {', '.join(EXCHANGES)} or 'all'")
    if not SYMBOL_RE.match(symbol):
        raise ValueError(f"symbol {symbol!r}: {SYMBOL_RULE}")


def _time_filter(column: str, start: TimeBound, end: TimeBound) -> tuple[str, dict[str, int]]:
    """``start <= column < end`` with the bounds as bound microsecond parameters."""
    conditions, bounds = [], {}
    for name, value, operator in (("start_us", start, ">="), ("end_us", end, "<")):
        micros = to_micros(value)
        if micros is not None:
            conditions.append(f"{column} {operator} fromUnixTimestamp64Micro({{{name}:Int64}}, 'UTC')")
            bounds[name] = micros
    return " AND ".join(conditions) or "1", bounds


def to_micros(value: TimeBound) -> int | None:
    """Microseconds since the epoch of a time bound (naive datetimes and strings are UTC)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a time bound cannot be a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"time {value!r} is not ISO 8601, e.g. 2026-11-21T09:20:00Z") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise TypeError(
        f"a time bound is a datetime, an ISO 8601 string or integer µs, not {type(value).__name__}"
    )


def _to_frame(table: Any, frame: Frame) -> Any:
    if _check_frame(frame) == "pandas":
        return table.to_pandas()
    try:
        import polars
    except ImportError:
        raise ClientError("frame='polars' needs polars: pip install 'marketpipe[client]'") from None
    return polars.from_arrow(table)


# -- Kafka --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """One record of an ``md.*`` topic, decoded; ``value`` is a :mod:`marketpipe.records` struct.

    With ``errors="include"``, a record that does not decode comes with ``value=None`` and
    the reason in ``error``.
    """

    topic: str
    partition: int
    offset: int
    key: str | None
    timestamp_ms: int | None
    value: Record | None
    error: str | None = None


def consume(
    topic: str,
    *,
    group_id: str | None = None,
    from_beginning: bool = False,
    stop_at_end: bool = False,
    errors: Literal["raise", "include"] = "raise",
    poll_timeout_s: float = 1.0,
    data_dir: str | Path | None = None,
    settings: Settings | None = None,
    kafka_config: Mapping[str, str] | None = None,
    codec: AvroCodec | None = None,
) -> Iterator[Received]:
    """Iterate over the decoded records of an ``md.*`` topic (read_committed).

    ``topic`` may omit the configured topic prefix (``md.trades``). Kafka and the schema
    registry are those of the settings, or of the ``marketpipe run`` on ``data_dir`` when it
    runs its own broker; ``kafka_config`` adds or overrides librdkafka settings. ``codec``
    replaces the default decoder (e.g. one that knows older writer schemas:
    ``AvroCodec.add_writer_schema``).

    Without ``group_id``, every partition is read from the end (or the beginning with
    ``from_beginning``) and nothing is committed. With ``group_id``, the topic's partitions
    are shared with the group's other members and the offset of each record is committed
    once the next one is asked for (at least once: a consumer that stops mid-record sees it
    again); a group without committed offsets starts at the end, or the beginning with
    ``from_beginning``. ``stop_at_end`` ends the iteration once every assigned partition is
    read to its end. A record that does not decode raises :class:`ClientError`
    (``errors="raise"``) or is yielded with the reason (``errors="include"``).

    Close the iterator (``contextlib.closing``, or exhaust it) to leave the group at once.
    """
    from confluent_kafka import Consumer

    settings = settings or _settings(data_dir)
    config, prefix = _kafka_of(settings, kafka_config)
    consumer = Consumer(_consumer_config(config, group_id, from_beginning))
    try:
        name = _resolve_topic(consumer, config["bootstrap.servers"], topic, prefix)
        codec = codec or AvroCodec(settings.schema_registry_url)
        yield from _records(
            consumer, name, codec, group_id, from_beginning, stop_at_end, errors, poll_timeout_s
        )
    finally:
        consumer.close()


def _consumer_config(config: dict[str, str], group_id: str | None, from_beginning: bool) -> dict[str, Any]:
    return {
        "log_level": "0",  # an unreachable broker is one ClientError, not a flood of librdkafka lines
        **config,
        "group.id": group_id or f"marketpipe-client-{uuid.uuid4().hex[:12]}",
        "isolation.level": "read_committed",
        "enable.partition.eof": "true",
        "enable.auto.commit": "true" if group_id else "false",
        "enable.auto.offset.store": "false",  # stored by hand once the caller took the record
        "auto.offset.reset": "earliest" if from_beginning else "latest",
    }


def _kafka_of(settings: Settings, extra: Mapping[str, str] | None) -> tuple[dict[str, str], str]:
    """Client config and topic prefix: those of the `marketpipe run` on the data dir when it
    runs the local broker (its port may not be the default), else the settings'."""
    from marketpipe.kafka_local import process_alive
    from marketpipe.view import RunState

    config = dict(settings.kafka_client_config())
    prefix = settings.kafka.topic_prefix
    state = RunState.read(settings.data_dir)
    if state is not None and process_alive(state.pid) and settings.uses_local_broker:
        config["bootstrap.servers"] = state.bootstrap
        prefix = state.prefix
    return {**config, **(extra or {})}, prefix


def _resolve_topic(consumer: Any, bootstrap: str, topic: str, prefix: str) -> str:
    from confluent_kafka import KafkaException

    if not topic.startswith(("md.", prefix + "md.")):
        raise ClientError(
            f"consume reads the Avro md.* topics, not {topic!r}; raw.* frames: `marketpipe tail {topic}`"
        )
    try:
        metadata = consumer.list_topics(timeout=10)
    except KafkaException as exc:
        raise ClientError(
            f"Kafka at {bootstrap} did not answer ({exc.args[0]}); is the broker running "
            "(`marketpipe kafka status`) and KAFKA_BOOTSTRAP_SERVERS right?"
        ) from None
    for name in (topic, prefix + topic):
        if name in metadata.topics and metadata.topics[name].error is None:
            return name
    raise ClientError(f"topic {topic!r} does not exist at {bootstrap} (topic prefix {prefix!r})")


def _records(
    consumer: Any,
    topic: str,
    codec: Any,
    group_id: str | None,
    from_beginning: bool,
    stop_at_end: bool,
    errors: str,
    poll_timeout_s: float,
) -> Iterator[Received]:
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaError, TopicPartition

    if group_id:
        consumer.subscribe([topic])
    else:
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
    at_end: set[int] = set()
    while True:
        message = consumer.poll(poll_timeout_s)
        if message is None:
            continue
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                raise ClientError(f"consuming {topic}: {error.str()}")
            at_end.add(message.partition())
            assigned = {tp.partition for tp in consumer.assignment()}
            if stop_at_end and assigned and assigned <= at_end:
                return
            continue
        at_end.discard(message.partition())
        yield _received(message, codec, errors)
        if group_id:
            consumer.store_offsets(message=message)  # the caller asked for the next: this one is done


def _received(message: Any, codec: Any, errors: str) -> Received:
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from marketpipe.codec import DecodeError

    key = message.key()
    timestamp_type, timestamp = message.timestamp()
    value: Record | None = None
    problem: str | None = None
    try:
        value = codec.decode(message.value() or b"")
    except (DecodeError, SchemaRegistryError) as exc:
        problem = str(exc)
    where = f"{message.topic()} partition {message.partition()} offset {message.offset()}"
    if problem is not None and errors != "include":
        raise ClientError(f"{where}: {problem}")
    return Received(
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        key=key.decode(errors="replace") if key is not None else None,
        timestamp_ms=timestamp if timestamp_type else None,
        value=value,
        error=problem,
    )
