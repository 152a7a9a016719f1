"""The picture of a running pipeline: what `marketpipe run` shows live and `marketpipe status` prints.

Built from the outside, the way an operator would look: each child's Prometheus endpoint
(connectors, streams workers, sink) plus Kafka itself for consumer lag. Rendered as rich
tables (``render_rich``) or as structured ``key=value`` lines (``render_plain``).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from marketpipe.topics import Topology

STATE_FILE = "run-state.json"
LIVE_FRAME_AGE_S = 10.0
"""a connection whose last frame is older than this is shown as stalled"""

Samples = dict[str, list[tuple[dict[str, str], float]]]


# ------------------------------------------------------------------------ state file


@dataclass
class Endpoint:
    """One supervised child as the view knows it."""

    name: str
    role: str  # simulator | producer | replay | stream | sink
    port: int = 0
    exchange: str = ""
    pid: int | None = None
    state: str = "starting"
    restarts: int = 0
    note: str = ""


@dataclass
class RunState:
    """Written by `marketpipe run` under the data dir; read by `marketpipe status`."""

    pid: int
    source: str
    bootstrap: str
    prefix: str
    exchanges: list[str]
    log_dir: str
    started_at: float
    endpoints: list[Endpoint] = field(default_factory=list)

    @property
    def topology(self) -> Topology:
        return Topology(prefix=self.prefix, exchanges=tuple(self.exchanges))

    @property
    def sink_group(self) -> str:
        return f"{self.prefix}marketpipe-sink"

    def write(self, data_dir: Path) -> None:
        path = data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def read(cls, data_dir: Path) -> RunState | None:
        path = data_dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        data["endpoints"] = [Endpoint(**e) for e in data.get("endpoints", [])]
        return cls(**data)


# ------------------------------------------------------------------------ scraping


def scrape(port: int, timeout: float = 0.8) -> Samples | None:
    """Every sample of a Prometheus endpoint on loopback, by sample name; None if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), float(sample.value)))
    return samples


def total(samples: Samples | None, name: str, **labels: str) -> float:
    if not samples:
        return 0.0
    return sum(v for found, v in samples.get(name, []) if all(found.get(k) == x for k, x in labels.items()))


class KafkaLag:
    """Consumer-group lag read from Kafka: end offsets (AdminClient) minus committed offsets.

    Committed offsets come from ``Consumer.committed()`` on a consumer of the group that
    never subscribes (so it never joins the group): librdkafka 2.16's
    ``AdminClient.list_consumer_group_offsets`` can crash the process while a fresh
    broker's group coordinator is still loading.
    """

    def __init__(self, client_config: dict[str, str]) -> None:
        from confluent_kafka.admin import AdminClient

        # quiet: failures surface as exceptions (shown in the picture), not as librdkafka log lines
        self.config = {**client_config, "log_level": "0"}
        self.admin = AdminClient(dict(self.config))
        self._consumers: dict[str, Any] = {}

    def end_offsets(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec

        metadata = self.admin.list_topics(timeout=5)
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            if topic in metadata.topics
            for p in metadata.topics[topic].partitions
        ]
        if not partitions:
            return {}
        futures = self.admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}, request_timeout=5)
        return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}

    def committed(self, group: str, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        from confluent_kafka import Consumer, TopicPartition

        consumer = self._consumers.get(group)
        if consumer is None:
            config = {**self.config, "group.id": group, "enable.auto.commit": "false"}
            consumer = self._consumers[group] = Consumer(config)
        wanted = [TopicPartition(topic, partition) for topic, partition in partitions]
        if not wanted:
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(wanted, timeout=5)}

    def lag(self, group: str, topics: Iterable[str]) -> dict[str, int]:
        """Messages behind the end per topic (a partition with no commit counts from 0)."""
        ends = self.end_offsets(topics)
        committed = self.committed(group, ends)
        behind: dict[str, int] = defaultdict(int)
        for tp, end in ends.items():
            done = committed.get(tp, -1)
            behind[tp[0]] += max(0, end - max(done, 0))
        return dict(behind)

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers.clear()


# ------------------------------------------------------------------------ the picture


@dataclass
class ConnRow:
    exchange: str
    shard: str
    state: str
    frames_s: float | None
    age_s: float | None
    frames: int
    reconnects: int
    note: str = ""


@dataclass
class BookRow:
    exchange: str
    symbol: str
    state: str
    gaps: int
    checksum_failures: int
    resyncs: int


@dataclass
class StageRow:
    stage: str
    rate_s: float | None
    total: int
    lag: int | None


@dataclass
class TableRow:
    table: str
    rows: int
    rows_s: float | None


@dataclass
class Picture:
    at: float
    processes: list[Endpoint]
    connections: list[ConnRow]
    books: list[BookRow]
    stages: list[StageRow]
    tables: list[TableRow]
    notes: list[str] = field(default_factory=list)


SINK_TABLES = ("trades", "ohlcv", "book_buckets", "bbo", "status")


class Observer:
    """Collects pictures; remembers the previous counters to turn them into rates."""

    def __init__(self, state: RunState, kafka: KafkaLag | None) -> None:
        self.state = state
        self.kafka = kafka
        self._previous: dict[str, tuple[float, float]] = {}
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="scrape")

    def _rate(self, key: str, value: float, now: float) -> float | None:
        before = self._previous.get(key)
        self._previous[key] = (now, value)
        if before is None or now <= before[0] or value < before[1]:
            return None
        return (value - before[1]) / (now - before[0])

    def collect(self) -> Picture:
        now = time.monotonic()
        endpoints = [e for e in self.state.endpoints if e.port]
        scraped = dict(
            zip([e.name for e in endpoints], self._pool.map(lambda e: scrape(e.port), endpoints), strict=True)
        )
        picture = Picture(time.time(), list(self.state.endpoints), [], [], [], [])
        for endpoint in self.state.endpoints:
            if endpoint.role == "producer":
                picture.connections += self._connections(endpoint, scraped.get(endpoint.name), now)
        streams = [scraped.get(e.name) for e in self.state.endpoints if e.role == "stream"]
        sink = next((scraped.get(e.name) for e in self.state.endpoints if e.role == "sink"), None)
        picture.books = _books(streams)
        lags = self._lags(picture)
        picture.stages = self._stages(scraped, streams, sink, lags, now)
        picture.tables = [
            TableRow(
                t,
                int(rows := total(sink, "marketpipe_sink_rows_total", table=t)),
                self._rate(f"t:{t}", rows, now),
            )
            for t in SINK_TABLES
        ]
        return picture

    def _connections(self, endpoint: Endpoint, samples: Samples | None, now: float) -> list[ConnRow]:
        down = endpoint.state not in ("running", "starting")
        if samples is None or down:
            state = endpoint.state if down else "connecting"
            return [ConnRow(endpoint.exchange, "-", state, None, None, 0, 0, endpoint.note)]
        rows = []
        ages = {
            (labels["exchange"], labels["shard"]): v
            for labels, v in samples.get("marketpipe_producer_last_frame_age_seconds", [])
        }
        for labels, frames in samples.get("marketpipe_producer_frames_total", []):
            shard = (labels["exchange"], labels["shard"])
            connections = total(
                samples, "marketpipe_producer_connections_total", exchange=shard[0], shard=shard[1]
            )
            age = ages.get(shard)
            if connections == 0:
                state = "connecting"
            elif age is not None and age <= LIVE_FRAME_AGE_S:
                state = "live"
            else:
                state = "stalled"
            rows.append(
                ConnRow(
                    shard[0],
                    shard[1],
                    state,
                    self._rate(f"c:{shard}", frames, now),
                    age,
                    int(frames),
                    int(
                        total(
                            samples, "marketpipe_producer_reconnects_total", exchange=shard[0], shard=shard[1]
                        )
                    ),
                )
            )
        return rows or [ConnRow(endpoint.exchange, "-", "connecting", None, None, 0, 0)]

    def _lags(self, picture: Picture) -> dict[str, dict[str, int]]:
        if self.kafka is None:
            return {}
        prefix = self.state.prefix
        md = {name: f"{prefix}md.{name}" for name in ("trades", "ohlcv", "book-buckets", "bbo", "status")}
        try:
            streams: dict[str, int] = {}
            for group, inputs in self.state.topology.stream_stages():
                streams |= self.kafka.lag(group, inputs)
            sink = self.kafka.lag(self.state.sink_group, md.values())
        except Exception as exc:  # broker down or restarting: show it, keep going
            picture.notes.append(f"kafka lag unavailable: {type(exc).__name__}: {exc}")
            return {}
        return {"streams": streams, "sink": sink}

    def _stages(
        self,
        scraped: dict[str, Samples | None],
        streams: list[Samples | None],
        sink: Samples | None,
        lags: dict[str, dict[str, int]],
        now: float,
    ) -> list[StageRow]:
        prefix = self.state.prefix
        stream_lag = lags.get("streams")
        sink_lag = lags.get("sink")

        def lag_of(group: dict[str, int] | None, match: Any) -> int | None:
            return None if group is None else sum(v for t, v in group.items() if match(t))

        published = sum(
            total(scraped.get(e.name), "marketpipe_producer_published_total")
            for e in self.state.endpoints
            if e.role in ("producer", "replay")
        )
        frames = sum(total(s, "marketpipe_stream_frames_total") for s in streams)
        trades_in = sum(
            total(s, "marketpipe_stream_messages_received_total", topic=f"{prefix}md.trades") for s in streams
        )
        consolidated = sum(
            total(
                s,
                "marketpipe_stream_messages_received_total",
                topic=self.state.topology.consolidate,
            )
            for s in streams
        )
        rows = total(sink, "marketpipe_sink_rows_total")
        stages = [
            ("connect -> raw", published, None),
            ("normalise raw -> md", frames, lag_of(stream_lag, lambda t: t.startswith(f"{prefix}raw."))),
            (
                "ohlcv md.trades -> md.ohlcv",
                trades_in,
                lag_of(stream_lag, lambda t: t == f"{prefix}md.trades"),
            ),
            (
                "consolidate",
                consolidated,
                lag_of(stream_lag, lambda t: not t.startswith((f"{prefix}raw.", f"{prefix}md.trades"))),
            ),
            ("sink md -> clickhouse", rows, lag_of(sink_lag, lambda t: True)),
        ]
        return [
            StageRow(
                name, None if count is None else self._rate(f"s:{name}", count, now), int(count or 0), lag
            )
            for name, count, lag in stages
        ]

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        if self.kafka is not None:
            self.kafka.close()


def _books(streams: list[Samples | None]) -> list[BookRow]:
    synced: dict[tuple[str, str], float] = {}
    for samples in streams:
        for labels, value in (samples or {}).get("marketpipe_stream_book_synced", []):
            key = (labels["exchange"], labels["symbol"])
            synced[key] = max(synced.get(key, 0.0), value)

    def counter(name: str, exchange: str) -> int:
        return int(sum(total(s, name, exchange=exchange) for s in streams))

    return [
        BookRow(
            exchange,
            symbol,
            "synced" if value else "resyncing",
            counter("marketpipe_stream_sequence_gaps_total", exchange),
            counter("marketpipe_stream_checksum_failures_total", exchange),
            counter("marketpipe_stream_resyncs_total", exchange),
        )
        for (exchange, symbol), value in sorted(synced.items())
    ]


# ------------------------------------------------------------------------ rendering


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plain_lines(picture: Picture) -> Iterator[str]:
    """The picture as structured key=value lines (one per row), for logs and tests."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(picture.at))
    for p in picture.processes:
        note = f' note="{_quote(p.note)}"' if p.note else ""
        yield (
            f"ts={stamp} kind=process name={p.name} state={_token(p.state)} pid={p.pid or '-'} "
            f"restarts={p.restarts}{note}"
        )
    for c in picture.connections:
        yield (
            f"ts={stamp} kind=connection exchange={c.exchange} shard={c.shard} state={_token(c.state)} "
            f"frames_per_s={_num(c.frames_s)} last_frame_age_s={_num(c.age_s, 2)} frames={c.frames} "
            f"reconnects={c.reconnects}" + (f' note="{_quote(c.note)}"' if c.note else "")
        )
    for b in picture.books:
        yield (
            f"ts={stamp} kind=book exchange={b.exchange} symbol={b.symbol} state={b.state} "
            f"gaps={b.gaps} checksum_failures={b.checksum_failures} resyncs={b.resyncs}"
        )
    for s in picture.stages:
        yield (
            f'ts={stamp} kind=stage stage="{s.stage}" per_s={_num(s.rate_s)} total={s.total} '
            f"lag={'-' if s.lag is None else s.lag}"
        )
    for t in picture.tables:
        yield f"ts={stamp} kind=table table={t.table} rows={t.rows} rows_per_s={_num(t.rows_s)}"
    for note in picture.notes:
        yield f'ts={stamp} kind=note note="{note}"'


def _quote(text: str) -> str:
    return text.replace('"', "'")


def _token(text: str) -> str:
    return text.replace(" ", "_").replace(",", "")


_STATE_STYLE = {
    "live": "green",
    "synced": "green",
    "running": "green",
    "connecting": "yellow",
    "resyncing": "yellow",
}


def render_rich(picture: Picture, title: str = "marketpipe") -> Any:
    """The picture as a rich renderable (tables side by side where they fit)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def styled(state: str) -> Text:
        return Text(state, style=_STATE_STYLE.get(state.split(" ")[0], "red"))

    processes = Table(title="processes", title_justify="left", expand=False)
    for column in ("process", "state", "pid", "restarts", "note"):
        processes.add_column(column)
    for p in picture.processes:
        processes.add_row(p.name, styled(p.state), str(p.pid or "-"), str(p.restarts), p.note[:60])

    connections = Table(title="connections", title_justify="left")
    for column in ("exchange", "shard", "state", "frames/s", "last frame", "frames", "reconnects", "note"):
        connections.add_column(column, justify="right" if column[0] in "flr" else "left")
    for c in picture.connections:
        age = "-" if c.age_s is None else f"{c.age_s:.1f}s"
        connections.add_row(
            c.exchange,
            c.shard,
            styled(c.state),
            _num(c.frames_s),
            age,
            str(c.frames),
            str(c.reconnects),
            c.note[-70:],
        )

    books = Table(title="books", title_justify="left")
    for column in ("exchange", "symbol", "state", "gaps", "checksum fails", "resyncs"):
        books.add_column(column)
    for b in picture.books:
        books.add_row(
            b.exchange, b.symbol, styled(b.state), str(b.gaps), str(b.checksum_failures), str(b.resyncs)
        )

    stages = Table(title="stages", title_justify="left")
    for column in ("stage", "per s", "total", "consumer lag"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for s in picture.stages:
        stages.add_row(s.stage, _num(s.rate_s), str(s.total), "-" if s.lag is None else str(s.lag))

    tables = Table(title="clickhouse rows written", title_justify="left")
    for column in ("table", "rows", "rows/s"):
        tables.add_column(column, justify="left" if column == "table" else "right")
    for t in picture.tables:
        tables.add_row(t.table, str(t.rows), _num(t.rows_s))

    stamp = time.strftime("%H:%M:%S", time.localtime(picture.at))
    parts: list[Any] = [Text(f"{title}  {stamp}  (Ctrl-C stops everything)", style="bold")]
    parts += [processes, connections, books, stages, tables]
    parts += [Text(note, style="yellow") for note in picture.notes]
    return Group(*parts)
