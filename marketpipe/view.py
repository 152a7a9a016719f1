"""The picture of a running pipeline: what `marketpipe run` shows live and `marketpipe status` prints.

Built from the outside, the way an operator would look: each child's Prometheus endpoint
(connectors, streams workers, sink) plus Kafka itself for consumer lag. Rendered as rich
tables (``render_rich``) or as structured ``key=value`` lines (``render_plain``).
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import sys
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
        return self.topology.sink_group

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

    def progress(self, group: str, topics: Iterable[str]) -> GroupProgress:
        """End and committed offsets of the group's inputs, summed (no commit counts as 0)."""
        ends = self.end_offsets(topics)
        committed = self.committed(group, ends)
        done = sum(min(end, max(committed.get(tp, -1), 0)) for tp, end in ends.items())
        return GroupProgress(sum(ends.values()), done)

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


@dataclass(frozen=True)
class GroupProgress:
    end: int
    committed: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


STALL_AFTER_S = 30.0
"""a consumer stage behind its input whose committed offsets stand still this long is `stalled`"""


@dataclass
class StageWatch:
    """Tells a stalled consumer stage from a busy one, from its group's offsets over time.

    ``stalled``: messages wait (lag > 0) and for STALL_AFTER_S neither the committed offsets
    (every stage commits at least once a second while it consumes) nor the count of what it
    processed (its metrics, when they answer) moved; ``running``: one of them moved since the
    last look, or messages wait for less than that; ``idle``: nothing to consume. ``now`` is
    any monotonic clock, passed in so that tests need no sleep.
    """

    committed: int | None = None
    processed: float | None = None
    behind: bool = False
    still_since: float = 0.0

    def observe(self, now: float, progress: GroupProgress, processed: float | None = None) -> str:
        first = self.committed is None
        moved = progress.committed != self.committed or (processed or 0) > (self.processed or 0)
        started_waiting = progress.lag > 0 and not self.behind
        self.committed, self.processed, self.behind = progress.committed, processed, progress.lag > 0
        if first or moved or started_waiting or not self.behind:
            self.still_since = now  # the stall clock runs while messages wait and nothing moves
            return "idle" if not self.behind and (first or not moved) else "running"
        return "stalled" if now - self.still_since >= STALL_AFTER_S else "running"


# ------------------------------------------------------------------------ the picture


@dataclass
class ConnRow:
    exchange: str
    shard: str
    state: str  # connecting | live | stalled | failing | the process state while it is down
    frames_s: float | None
    age_s: float | None
    frames: int
    reconnects: int
    note: str = ""  # why it is failing, in full
    failures: int = 0  # consecutive failed attempts


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
    state: str = "-"  # running | idle | stalled | - (unknown)


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
    alerts: list[str] = field(default_factory=list)  # what the operator must act on, in plain words


STAGE_NAMES = (
    "connect -> raw",
    "normalise raw -> md",
    "ohlcv md.trades -> md.ohlcv",
    "consolidate",
    "sink md -> clickhouse",
)
NO_EXCHANGE_REACHABLE = (
    "No exchange is reachable ({n} of {n} failing, see below): check the network, DNS or proxy. "
    "`make demo` runs the pipeline on the built-in exchange simulator."
)


def _error_text(line: str) -> str:
    """A child's last log line as a reason (click prefixes its one-line errors with "Error: ")."""
    return line.removeprefix("Error: ").strip()


class Observer:
    """Collects pictures; remembers the previous counters to turn them into rates, each
    exchange's latest failure (its connector may be between restarts) and each consumer
    stage's committed offsets (to tell a stalled stage)."""

    def __init__(self, state: RunState, kafka: KafkaLag | None) -> None:
        self.state = state
        self.kafka = kafka
        self._previous: dict[str, tuple[float, float]] = {}
        self._failing: dict[str, tuple[str, int]] = {}  # exchange -> (reason, failures)
        self._watches: dict[str, StageWatch] = {}
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="scrape")

    def _rate(self, key: str, value: float, now: float) -> float | None:
        before = self._previous.get(key)
        self._previous[key] = (now, value)
        if before is None or now <= before[0] or value < before[1]:
            return None
        return (value - before[1]) / (now - before[0])

    def collect(self, now: float | None = None) -> Picture:
        """One picture; ``now`` (monotonic seconds) is the clock rates and stall times use."""
        now = time.monotonic() if now is None else now
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
        progress = self._progress(picture)
        picture.stages = self._stages(scraped, streams, sink, progress, now)
        picture.tables = [
            TableRow(
                t,
                int(rows := total(sink, "marketpipe_sink_rows_total", table=t)),
                self._rate(f"t:{t}", rows, now),
            )
            for t in self.state.topology.sink_tables().values()
        ]
        picture.alerts = alerts(self.state.source, picture.connections)
        return picture

    # -- connections

    def _connections(self, endpoint: Endpoint, samples: Samples | None, now: float) -> list[ConnRow]:
        down = endpoint.state not in ("running", "starting")
        if samples is None or down:
            return [self._unserved(endpoint, down)]
        failures = _by_shard(samples, "marketpipe_producer_connect_failures")
        reasons = {
            (labels["exchange"], labels["shard"]): labels["reason"]
            for labels, _ in samples.get("marketpipe_producer_failure", [])
        }
        ages = _by_shard(samples, "marketpipe_producer_last_frame_age_seconds")
        rows = []
        for labels, frames in samples.get("marketpipe_producer_frames_total", []):
            exchange, shard = key = (labels["exchange"], labels["shard"])
            labelled = {"exchange": exchange, "shard": shard}
            connections = total(samples, "marketpipe_producer_connections_total", **labelled)
            age = ages.get(key)
            failed = int(failures.get(key, 0))
            if failed:
                state = "failing"
            elif connections == 0:
                state = "connecting"
            elif age is not None and age <= LIVE_FRAME_AGE_S:
                state = "live"
            else:
                state = "stalled"
            reconnects = total(samples, "marketpipe_producer_reconnects_total", **labelled)
            rows.append(
                ConnRow(
                    exchange,
                    shard,
                    state,
                    self._rate(f"c:{key}", frames, now),
                    age,
                    int(frames),
                    int(reconnects),
                    reasons.get(key, "") if failed else "",
                    failed,
                )
            )
        if not rows:  # still fetching the instrument list: shard "-"
            failed = int(failures.get((endpoint.exchange, "-"), 0))
            reason = reasons.get((endpoint.exchange, "-"), "")
            if failed:
                rows = [ConnRow(endpoint.exchange, "-", "failing", None, None, 0, 0, reason, failed)]
            else:
                rows = [self._unserved(endpoint, down=False)]
        self._remember(endpoint.exchange, rows)
        return rows

    def _unserved(self, endpoint: Endpoint, down: bool) -> ConnRow:
        """No metrics from the connector: starting, or down (between restarts, or exited)."""
        reason, failures = self._failing.get(endpoint.exchange, ("", 0))
        if down and endpoint.restarts and not endpoint.state.startswith("exited"):
            reason = _error_text(endpoint.note) or reason
            return ConnRow(endpoint.exchange, "-", "failing", None, None, 0, 0, reason, max(failures, 1))
        if down:
            return ConnRow(endpoint.exchange, "-", endpoint.state, None, None, 0, 0, endpoint.note)
        if reason:  # restarted after failing: failing until a connection opens
            return ConnRow(endpoint.exchange, "-", "failing", None, None, 0, 0, reason, failures)
        return ConnRow(endpoint.exchange, "-", "connecting", None, None, 0, 0)

    def _remember(self, exchange: str, rows: list[ConnRow]) -> None:
        failing = [r for r in rows if r.state == "failing" and r.note]
        if failing:
            self._failing[exchange] = (failing[0].note, failing[0].failures)
        elif any(r.state in ("live", "stalled") for r in rows):
            self._failing.pop(exchange, None)

    # -- stages

    def _progress(self, picture: Picture) -> dict[str, GroupProgress]:
        """Each consumer stage's offsets from Kafka, by stage name ({} while Kafka does not answer)."""
        if self.kafka is None:
            return {}
        topology = self.state.topology
        groups = dict(zip(STAGE_NAMES[1:4], topology.stream_stages(), strict=True))
        groups[STAGE_NAMES[4]] = (self.state.sink_group, list(topology.sink_tables()))
        try:
            return {stage: self.kafka.progress(group, topics) for stage, (group, topics) in groups.items()}
        except Exception as exc:  # broker down or restarting: show it, keep going
            picture.notes.append(f"kafka lag unavailable: {type(exc).__name__}: {exc}")
            return {}

    def _stages(
        self,
        scraped: dict[str, Samples | None],
        streams: list[Samples | None],
        sink: Samples | None,
        progress: dict[str, GroupProgress],
        now: float,
    ) -> list[StageRow]:
        topology = self.state.topology
        published = sum(
            total(scraped.get(e.name), "marketpipe_producer_published_total")
            for e in self.state.endpoints
            if e.role in ("producer", "replay")
        )

        def received(topic: str) -> float:
            return sum(total(s, "marketpipe_stream_messages_received_total", topic=topic) for s in streams)

        counts = (
            published,
            sum(total(s, "marketpipe_stream_frames_total") for s in streams),
            received(topology.trades),
            received(topology.consolidate),
            total(sink, "marketpipe_sink_rows_total"),
        )
        rows = []
        for name, count in zip(STAGE_NAMES, counts, strict=True):
            rate = self._rate(f"s:{name}", count, now)
            offsets = progress.get(name)
            if offsets is not None:
                state = self._watches.setdefault(name, StageWatch()).observe(now, offsets, count)
            else:
                state = "-" if rate is None else "running" if rate > 0 else "idle"
            rows.append(StageRow(name, rate, int(count), None if offsets is None else offsets.lag, state))
        return rows

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        if self.kafka is not None:
            self.kafka.close()


def _by_shard(samples: Samples, name: str) -> dict[tuple[str, str], float]:
    return {(labels["exchange"], labels["shard"]): v for labels, v in samples.get(name, [])}


def alerts(source: str, connections: list[ConnRow]) -> list[str]:
    """What needs the operator, in plain words: today, a live run that reaches no exchange."""
    if source == "live" and connections and all(c.state == "failing" for c in connections):
        return [NO_EXCHANGE_REACHABLE.format(n=len({c.exchange for c in connections}))]
    return []


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
    for alert in picture.alerts:
        yield f'ts={stamp} kind=alert text="{_quote(alert)}"'
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
            f"reconnects={c.reconnects} failures={c.failures}"
            + (f' note="{_quote(c.note)}"' if c.note else "")
        )
    for b in picture.books:
        yield (
            f"ts={stamp} kind=book exchange={b.exchange} symbol={b.symbol} state={b.state} "
            f"gaps={b.gaps} checksum_failures={b.checksum_failures} resyncs={b.resyncs}"
        )
    for s in picture.stages:
        yield (
            f'ts={stamp} kind=stage stage="{s.stage}" state={s.state} per_s={_num(s.rate_s)} '
            f"total={s.total} lag={'-' if s.lag is None else s.lag}"
        )
    for t in picture.tables:
        yield f"ts={stamp} kind=table table={t.table} rows={t.rows} rows_per_s={_num(t.rows_s)}"
    for note in picture.notes:
        yield f'ts={stamp} kind=note note="{_quote(note)}"'


def _quote(text: str) -> str:
    return text.replace('"', "'")


def _token(text: str) -> str:
    return text.replace(" ", "_").replace(",", "")


_STATE_STYLE = {
    "live": "green",
    "synced": "green",
    "running": "green",
    "idle": "dim",
    "connecting": "yellow",
    "resyncing": "yellow",
    "starting": "yellow",
}
# worst first: an exchange's line in the compact view shows its worst shard
_BADNESS = ("failing", "stalled", "connecting", "live")

VIEWS = ("auto", "compact", "full")
"""--view: compact fits 80x24; full shows every table; auto = full when it fits the terminal"""


def render_rich(
    picture: Picture,
    title: str = "marketpipe",
    view: str = "full",
    size: tuple[int, int] | None = None,
    keys: bool = False,
) -> Any:
    """The picture as a rich renderable for a terminal of ``size`` (columns, rows).

    ``keys``: the caller reads keys (f / c switch the view), so the header says so.
    """
    if view == "compact":
        return render_compact(picture, title, size or (80, 24), keys)
    full = render_full(picture, title, keys)
    if view == "auto" and size is not None and _height(full, size[0]) > size[1] - 1:
        return render_compact(picture, title, size, keys)
    return full


def _height(renderable: Any, width: int) -> int:
    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), force_terminal=True)
    return len(console.render_lines(renderable, console.options, pad=False))


def _styled(state: str) -> Any:
    from rich.text import Text

    return Text(state, style=_STATE_STYLE.get(state.split(" ")[0], "red"))


def _header(picture: Picture, title: str, hint: str) -> Any:
    from rich.text import Text

    stamp = time.strftime("%H:%M:%S", time.localtime(picture.at))
    return Text(f"{title}  {stamp}  Ctrl-C stops{hint}", style="bold", no_wrap=True, overflow="ellipsis")


def _alert_texts(picture: Picture) -> list[Any]:
    from rich.text import Text

    return [Text(alert, style="bold red") for alert in picture.alerts]


def render_full(picture: Picture, title: str = "marketpipe", keys: bool = False) -> Any:
    """Every table: processes, connections (failure reasons in full below it), books, stages, rows."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    processes = Table(title="processes", title_justify="left", expand=False)
    for column in ("process", "state", "pid", "restarts", "note"):
        processes.add_column(column)
    for p in picture.processes:
        processes.add_row(p.name, _styled(p.state), str(p.pid or "-"), str(p.restarts), _cut(p.note, 60))

    connections = Table(title="connections", title_justify="left")
    for column in ("exchange", "shard", "state", "frames/s", "last frame", "frames", "reconnects", "fails"):
        connections.add_column(column, justify="right" if column[0] in "flr" else "left")
    for c in picture.connections:
        age = "-" if c.age_s is None else f"{c.age_s:.1f}s"
        connections.add_row(
            c.exchange,
            c.shard,
            _styled(c.state),
            _num(c.frames_s),
            age,
            str(c.frames),
            str(c.reconnects),
            str(c.failures),
        )
    reasons = [
        Text.assemble((f"{c.exchange}/{c.shard} failing: ", "bold red"), c.note)
        for c in picture.connections
        if c.state == "failing"
    ]

    books = Table(title="books", title_justify="left")
    for column in ("exchange", "symbol", "state", "gaps", "checksum fails", "resyncs"):
        books.add_column(column)
    for b in picture.books:
        books.add_row(
            b.exchange, b.symbol, _styled(b.state), str(b.gaps), str(b.checksum_failures), str(b.resyncs)
        )

    tables = Table(title="clickhouse rows written", title_justify="left")
    for column in ("table", "rows", "rows/s"):
        tables.add_column(column, justify="left" if column == "table" else "right")
    for t in picture.tables:
        tables.add_row(t.table, str(t.rows), _num(t.rows_s))

    parts: list[Any] = [_header(picture, title, "  ·  c: compact view" if keys else "")]
    parts += _alert_texts(picture)
    parts += [processes, connections, *reasons, books, _stage_table(picture, boxed=True), tables]
    parts += [Text(note, style="yellow") for note in picture.notes]
    return Group(*parts)


def _stage_table(picture: Picture, boxed: bool) -> Any:
    from rich.table import Table

    if boxed:
        stages = Table(title="stages", title_justify="left")
    else:
        stages = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("stage", "state", "per s", "total", "consumer lag"):
        stages.add_column(column, justify="left" if column in ("stage", "state") else "right")
    for s in picture.stages:
        lag = "-" if s.lag is None else str(s.lag)
        stages.add_row(s.stage, _styled(s.state), _num(s.rate_s), str(s.total), lag)
    return stages


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ------------------------------------------------------------------------ the compact view


@dataclass
class ExchangeLine:
    """One exchange in the compact view: its worst shard's state, summed rates."""

    exchange: str
    state: str
    shards: int
    in_state: int
    frames_s: float | None
    age_s: float | None
    reason: str


def exchange_lines(connections: list[ConnRow]) -> list[ExchangeLine]:
    by_exchange: dict[str, list[ConnRow]] = {}
    for c in connections:
        by_exchange.setdefault(c.exchange, []).append(c)
    lines = []
    for exchange, rows in by_exchange.items():
        worst = min(rows, key=lambda r: _BADNESS.index(r.state) if r.state in _BADNESS else -1)
        rates = [r.frames_s for r in rows if r.frames_s is not None]
        ages = [r.age_s for r in rows if r.age_s is not None]
        lines.append(
            ExchangeLine(
                exchange,
                worst.state,
                len(rows),
                sum(r.state == worst.state for r in rows),
                sum(rates) if rates else None,
                max(ages) if ages else None,
                worst.note,
            )
        )
    return lines


_HOSTISH = re.compile(r"\w+://\S+|\b[\w-]+(?:\.[\w-]+)+(?::\d+)?")
_ERROR_NAME = re.compile(r"\b\w+(?:Error|Exception)\b: ")


def _reason_shape(reason: str) -> str:
    """The error a reason ends with, without URLs and host names: the same failure on every
    exchange (no DNS, say) reads as one, whatever request it failed."""
    starts = [m.start() for m in _ERROR_NAME.finditer(reason)]
    return _HOSTISH.sub("<host>", reason[starts[-1] :] if starts else reason)


def _exchange_cell(line: ExchangeLine) -> Any:
    from rich.text import Text

    state = line.state if line.shards == 1 else f"{line.state} {line.in_state}/{line.shards}"
    rate = "-" if line.frames_s is None else f"{line.frames_s:.1f}/s"
    age = "-" if line.age_s is None else f"{line.age_s:.1f}s"
    cell = Text(f"{line.exchange[:9]:<10}")
    cell.append(f"{state[:12]:<13}", style=_STATE_STYLE.get(line.state, "red"))
    cell.append(f"{rate:>8}{age:>7}")
    return cell


_CELL_WIDTH = 38


def _exchange_grid(lines: list[ExchangeLine], width: int) -> Any:
    from rich.table import Table
    from rich.text import Text

    per_row = max(1, min(2, (width + 3) // (_CELL_WIDTH + 3)))
    grid = Table.grid(padding=(0, 3))
    for _ in range(per_row):
        grid.add_column(no_wrap=True, overflow="ellipsis")
    head = Text(f"{'exchange':<10}{'state':<13}{'frames':>8}{'last':>7}", style="bold")
    grid.add_row(*[head] * per_row)
    for start in range(0, len(lines), per_row):
        cells = [_exchange_cell(line) for line in lines[start : start + per_row]]
        grid.add_row(*cells, *[""] * (per_row - len(cells)))
    return grid


def _failure_groups(lines: list[ExchangeLine]) -> list[Any]:
    """Failing exchanges grouped by the shape of their reason; each group's first reason in full."""
    from rich.text import Text

    groups: dict[str, list[ExchangeLine]] = {}
    for line in lines:
        if line.state == "failing":
            groups.setdefault(_reason_shape(line.reason), []).append(line)
    texts = []
    for members in groups.values():
        first = members[0]
        reason = first.reason or f"no reason reported yet; see logs/produce-{first.exchange}.log"
        if len(members) == 1:
            texts.append(Text.assemble((f"{first.exchange} failing: ", "bold red"), reason))
            continue
        names = (
            f"all {len(members)} exchanges"
            if len(members) == len(lines)
            else ", ".join(m.exchange for m in members)
        )
        texts.append(Text.assemble((f"{names} failing alike; {first.exchange}: ", "bold red"), reason))
    return texts


def _processes_line(processes: list[Endpoint]) -> Any:
    from rich.text import Text

    states: dict[str, list[str]] = {}
    for p in processes:
        state = "backing off" if p.state.startswith("backing") else p.state
        states.setdefault(state, []).append(p.name)
    text = Text("processes: ", style="bold", no_wrap=True, overflow="ellipsis")
    running = len(states.pop("running", []))
    text.append(f"{running} running", style="green")
    for state, names in states.items():
        text.append(f" · {len(names)} {state}: {', '.join(names)}", style=_STATE_STYLE.get(state, "red"))
    return text


def _books_line(books: list[BookRow]) -> Any:
    from rich.text import Text

    text = Text("books: ", style="bold", no_wrap=True, overflow="ellipsis")
    if not books:
        return text.append("none yet")
    synced = sum(b.state == "synced" for b in books)
    text.append(f"{synced}/{len(books)} synced", style="green" if synced == len(books) else "yellow")
    gaps, fails = sum(b.gaps for b in books), sum(b.checksum_failures for b in books)
    text.append(f" (gaps {gaps}, checksum fails {fails}, resyncs {sum(b.resyncs for b in books)})")
    waiting = [f"{b.exchange} {b.symbol}" for b in books if b.state != "synced"]
    if waiting:
        text.append(" · resyncing: " + ", ".join(waiting), style="yellow")
    return text


def _sink_line(tables: list[TableRow], width: int) -> Any:
    """One line: the tables with rows, as many as fit, then how many are left out or empty."""
    from rich.text import Text

    rates = [t.rows_s for t in tables if t.rows_s is not None]
    rate = f" · {sum(rates):.0f}/s" if rates else ""
    shown = [f"{t.table} {t.rows}" for t in tables if t.rows]
    while True:
        left = len(tables) - len(shown)
        if shown:
            body = " · ".join(shown) + (f" · {left} more (empty or in f)" if left else "")
        else:
            body = f"none yet ({len(tables)} tables)"
        if len("clickhouse rows: ") + len(body + rate) <= width or not shown:
            break
        shown.pop()
    text = Text("clickhouse rows: ", style="bold")
    text.append(body + rate)
    return text


def render_compact(picture: Picture, title: str, size: tuple[int, int], keys: bool = False) -> Any:
    """The picture in one screen of ``size`` (columns, rows), 80x24 and up: per exchange one
    cell, stages with their state, one line each for processes, books and the sink; failure
    reasons in full, grouped when alike. What does not fit (more reasons, notes) is announced
    with the way to the full view."""
    from rich.console import Group
    from rich.text import Text

    width, height = size
    lines = exchange_lines(picture.connections)
    parts: list[Any] = [_header(picture, title, "  ·  f: full tables" if keys else "")]
    parts += _alert_texts(picture)
    parts += [_processes_line(picture.processes), _exchange_grid(lines, width)]
    tail = [_books_line(picture.books), _stage_table(picture, boxed=False), _sink_line(picture.tables, width)]
    extras = _failure_groups(lines)
    notes = [Text(note, style="yellow", no_wrap=True, overflow="ellipsis") for note in picture.notes]
    room = height - 1 - _height(Group(*parts, *tail), width)  # Live keeps the last row for the cursor
    shown = _what_fits([*extras, *notes], room, width, "press f" if keys else "run with --view full")
    return Group(*parts, *shown, *tail)


def _what_fits(items: list[Any], room: int, width: int, where: str) -> list[Any]:
    """The leading items that fit in ``room`` lines, then one line saying how many did not."""
    from rich.text import Text

    shown: list[Any] = []
    for index, item in enumerate(items):
        need = _height(item, width)
        if need > room:
            left = len(items) - index
            if room < 1 and shown:  # make room for the line that says so
                shown.pop()
                left += 1
            return [*shown, Text(f"… {left} more (failure reasons, notes): {where}", style="yellow")]
        shown.append(item)
        room -= need
    return shown


class KeyReader:
    """Single key presses from a terminal's stdin, without Enter (cbreak mode; Ctrl-C still
    interrupts); the terminal's mode is restored by ``close``. Off when stdin is no terminal."""

    def __init__(self, enabled: bool = True) -> None:
        self._fd: int | None = None
        self._saved: Any = None
        # only in the foreground: changing the terminal's mode from the background stops us (SIGTTOU)
        if enabled and sys.stdin.isatty() and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp():
            import termios
            import tty

            self._fd = sys.stdin.fileno()
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)

    @property
    def active(self) -> bool:
        return self._fd is not None

    def read(self, timeout_s: float) -> str | None:
        """The last key pressed within ``timeout_s`` (waits that long when none is)."""
        if self._fd is None:
            time.sleep(timeout_s)
            return None
        ready, _, _ = select.select([self._fd], [], [], timeout_s)
        if not ready:
            return None
        return os.read(self._fd, 32).decode(errors="ignore")[-1:] or None

    def close(self) -> None:
        if self._fd is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._fd = None


def next_view(view: str, key: str | None) -> str:
    """The view after a key press: f full, c compact, v or space toggles."""
    if key in ("f", "F"):
        return "full"
    if key in ("c", "C"):
        return "compact"
    if key in ("v", " "):
        return "compact" if view == "full" else "full"
    return view
