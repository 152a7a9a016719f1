"""Side by side with cryptofeed: the same simulated Binance feed, at rising rates, into cryptofeed
with its Kafka backend and into marketpipe (connector + stream worker), through one local broker.

    python -m bench cryptofeed [--rates 500,1000,2500,5000,10000,20000] [--seconds 15]
                               [--systems cryptofeed,marketpipe] [--label NAME] [--json OUT]
                               [--marketpipe-tree DIR --marketpipe-python PYTHON] [--refine N]
                               [--broker-warmup 60]
    make bench ARGS="cryptofeed --rates 500,1000"

docs/benchmarks.md explains the setup and holds the latest numbers.

Each round starts a fresh simulator (`marketpipe sim`, Binance dialect, 10 symbols, one trade per
five book updates by default) offering about the target frame rate, then the system under test:
- cryptofeed: its Binance feed (`trade` + `depth@100ms` streams, REST depth snapshots) with its
  endpoints pointed at the simulator, TradeKafka + BookKafka with their default settings, run from
  its own virtualenv (.marketpipe/bench/cryptofeed-venv, created here with pip);
- marketpipe: `marketpipe produce --exchange binance` pointed at the simulator plus `marketpipe
  stream`, the CLI commands a deployment runs (so this measures whichever stream worker is there).
First each system runs --broker-warmup seconds at the highest rate, not recorded, so that the
broker has compiled the request paths of both. Then, in each round, after a warm-up, a --seconds
window is measured by a read_committed consumer on the outputs
(cryptofeed's trades-* and book-* topics, marketpipe's md.trades and md.book):
- offered/s: frames the simulator queued for the system's connection (what it generated);
- out/s: normalised trade and book records that became visible in the window (marketpipe's
  md.book leaves out diffs that change nothing within its published depth, so this is no measure
  of keeping up);
- trades: of the trade frames generated in the window, the share whose record was in Kafka at most
  5 s after it (one record per trade frame in both systems, so comparable);
- latency: consumer receive time minus the record's exchange timestamp, which is the frame's
  Binance `E`/`T` field (ms) that the simulator stamps when it generates the frame; over every
  trade and a sample of book records stamped in the window;
- cpu-s/M: user+system CPU of the system's processes in the window per million offered frames
  (broker and simulator CPU shown apart).
A system keeps up when trades >= 97 %, the median latency of the window's last fifth is within
250 ms of its first fifth, the simulator never dropped it and it reported no dropped records.
Each system stops rising after the first rate it cannot keep up with; with --refine N, N more
rounds halve the gap between that rate and the last one it kept up with. The simulator says why it
dropped a connection: a slow client (its socket stopped taking frames) counts against the system;
its own overload (its send queue full while the socket took everything: the simulator could not
generate and send frames in time) is the simulator's limit, and the round and the summary say so.
Kafka: KAFKA_BOOTSTRAP_SERVERS when set, else a throwaway local broker under .marketpipe/bench.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench import caller_settings
from marketpipe.codec import AvroCodec
from marketpipe.config import LocalBrokerSettings
from marketpipe.kafka_local import LocalKafka, free_port
from marketpipe.topics import TopicSpec, Topology, apply_topology

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kafka_helpers import stop_process

CRYPTOFEED_VERSION = "3.0.1"  # needs Python 3.13+
# cryptofeed[kafka] asks for aiokafka>=0.7.0; pinned to the newest release so
# every run installs the same client. 0.10 and 0.14 both talk to the Kafka 4.3 broker.
AIOKAFKA_VERSION = "0.14.0"
SYMBOLS = ("BTC", "ETH", "SOL", "XRP", "DOGE", "LTC", "ADA", "DOT", "AVAX", "LINK", "ATOM", "UNI")
KEEP_UP_RATIO = 0.97
LATENCY_GROWTH_S = 0.25
REFINE_STEP = 500  # frames/s: --refine stops when the ceiling is known this closely
SETTLED_LATENCY_S = 1.0  # warm-up ends once the last second's median latency is below this
LATENCY_SAMPLES_PER_S = 1000  # book records decoded per second for latency (trades: all)
GRACE_S = 5.0  # after the window, how long its last records may take to arrive
STARTUP_TIMEOUT_S = 120.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes ------------------------------------------------------------------------------------


@dataclass
class Spawned:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def failure(self) -> str | None:
        """Why this process is no longer running, with the end of its log; None while it runs."""
        if self.process.poll() is None:
            return None
        tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        return f"{self.name} exited with {self.process.returncode}: " + " | ".join(tail)


def spawn(
    name: str, args: Sequence[str], env: dict[str, str], log_dir: Path, cwd: Path | None = None
) -> Spawned:
    """Start a process in its own session (so its CPU and its children's can be summed and stopped)."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(args), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Spawned(name, process, log)


def stop(spawned: Spawned, grace_s: float = 15.0) -> None:
    stop_process(spawned.process, grace_s)


def _stat_fields(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(") ", 1)[1].split()  # fields from 3 (state) on; comm may hold spaces


def sessions_cpu_s(session_ids: Sequence[int]) -> dict[int, float]:
    """User + system CPU seconds of every live process of each of these sessions (one pass
    over /proc)."""
    ticks = dict.fromkeys(session_ids, 0)
    for entry in filter(str.isdigit, os.listdir("/proc")):
        fields = _stat_fields(entry)
        if fields is not None and int(fields[3]) in ticks:  # field 6: session id
            ticks[int(fields[3])] += int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    return {session: count / CLK_TCK for session, count in ticks.items()}


def process_cpu_s(pid: int | None) -> float | None:
    fields = _stat_fields(str(pid)) if pid else None
    return None if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- simulator ------------------------------------------------------------------------------------


def marketpipe_cli(*args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "marketpipe.cli", *args]


def start_simulator(
    port: int, rate: float, symbols: Sequence[str], trade_ratio: float, log_dir: Path
) -> Spawned:
    """`marketpipe sim` offering about `rate` frames/s over all symbols: per symbol one depth
    frame per book step plus one frame per trade (`trade_ratio` trades per book step)."""
    steps = rate / len(symbols) / (1 + trade_ratio)
    sim = spawn(
        "simulator",
        marketpipe_cli(
            "sim",
            "--exchanges",
            "binance",
            "--symbols",
            ",".join(symbols),
            "--port",
            str(port),
            "--rate",
            f"{steps:.3f}",
            "--trade-rate",
            f"{steps * trade_ratio:.3f}",
        ),
        clean_env(),
        log_dir,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            simulator_stats(port)
            return sim
        if (why := sim.failure()) is not None:
            raise RuntimeError(why)
        time.sleep(0.1)
    raise RuntimeError(f"the simulator did not answer on port {port}")


def simulator_stats(port: int) -> tuple[float, dict[str, int]]:
    """(when the simulator counted, Binance counters). Every frame counted was stamped before
    that time and none after: the window's bounds even when a busy simulator answers late."""
    asked = time.time()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/stats", timeout=5) as response:
        body = json.load(response)
    stats = body["exchanges"]["binance"]
    return float(body.get("time", asked)), {k: v for k, v in stats.items() if isinstance(v, int)}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPIPE_")}
    return env | extra


# -- systems under test ------------------------------------------------------------------------------


@dataclass
class Endpoints:
    bootstrap: str
    prefix: str  # topic prefix of this round
    ws: str
    rest: str
    symbols: tuple[str, ...]
    work_dir: Path


class Cryptofeed:
    key = "cryptofeed"

    def __init__(self, python: Path, runner: Path, batch_interval: float | None) -> None:
        self.label = f"cryptofeed {CRYPTOFEED_VERSION}"
        self.python, self.runner, self.batch_interval = python, runner, batch_interval

    def output_topics(self, at: Endpoints) -> tuple[list[str], list[str]]:
        """(trade topics, book topics): cryptofeed writes one topic per kind and symbol."""
        trades, books = (
            [f"{at.prefix}{kind}-BINANCE-{s}" for s in at.symbols] for kind in ("trades", "book")
        )
        return trades, books

    def prepare(self, at: Endpoints) -> None:
        """Create cryptofeed's topics (the broker does not auto-create them), served before it writes."""
        trades, books = self.output_topics(at)
        specs = [TopicSpec(topic, 1, key="none", value="cryptofeed JSON") for topic in trades + books]
        apply_topology(AdminClient(admin_config(at.bootstrap)), specs)

    def start(self, at: Endpoints) -> list[Spawned]:
        args = [str(self.python), str(self.runner), "--ws", at.ws, "--rest", at.rest]
        args += ["--symbols", ",".join(at.symbols), "--bootstrap", at.bootstrap]
        args += ["--topic-prefix", at.prefix, "--log", str(at.work_dir / "feedhandler.log")]
        args += ["--stats", str(at.work_dir / "backend-stats.json")]
        if self.batch_interval is not None:
            args += ["--batch-interval", str(self.batch_interval)]
        # XDG_CACHE_HOME: cryptofeed caches symbol lists there; keep the simulator's out of ~/.cache
        return [spawn("cryptofeed", args, clean_env(XDG_CACHE_HOME=str(at.work_dir)), at.work_dir)]

    @staticmethod
    def source_ts_s(value: bytes) -> float:
        return float(orjson.loads(value)["timestamp"])

    def losses(self, at: Endpoints) -> tuple[int, str]:
        """Records the Kafka backends dropped over the round (their queues drop the oldest when full)."""
        path = at.work_dir / "backend-stats.json"
        if not path.exists():
            return 0, "no backend stats (it did not stop cleanly)"
        stats = json.loads(path.read_text())
        dropped = sum(
            s["dropped_overflow"] + s["dropped_failed"] for feed in stats.values() for s in feed.values()
        )
        return dropped, f"backends dropped {dropped:,} records" if dropped else ""


class Marketpipe:
    key = "marketpipe"

    def __init__(self, label: str, tree: Path | None, python: str | None, stages: str | None = None) -> None:
        self.label = label
        self.tree = tree  # another checkout of marketpipe to run (e.g. the commit before a change)
        self.python = python or sys.executable  # and the virtualenv with that checkout's lock
        self.stages = stages  # `marketpipe stream --stages`; None: every stage, as deployed
        self.codec = AvroCodec()

    @staticmethod
    def topology(at: Endpoints) -> Topology:
        return Topology(prefix=at.prefix, exchanges=("binance",))

    def env(self, at: Endpoints) -> dict[str, str]:
        tree = {"PYTHONPATH": str(self.tree)} if self.tree else {}
        return caller_settings() | clean_env(
            **tree,
            KAFKA_BOOTSTRAP_SERVERS=at.bootstrap,
            MARKETPIPE_KAFKA__TOPIC_PREFIX=at.prefix,
            MARKETPIPE_DATA_DIR=str(at.work_dir),
            MARKETPIPE_EXCHANGES="binance",
            MARKETPIPE_SYMBOLS=",".join(at.symbols),
            MARKETPIPE_METRICS_PORT="0",
            # what cryptofeed subscribes (trades and the diff depth), so both get the same frames
            MARKETPIPE_PRODUCERS__BINANCE__STREAMS='["trade","depth@100ms"]',
        )

    def output_topics(self, at: Endpoints) -> tuple[list[str], list[str]]:
        topology = self.topology(at)
        return [topology.trades], [topology.book]

    def prepare(self, at: Endpoints) -> None:
        subprocess.run(
            marketpipe_cli("topics", "apply", python=self.python),
            env=self.env(at),
            cwd=self.tree,
            check=True,
            capture_output=True,
        )

    def start(self, at: Endpoints) -> list[Spawned]:
        env = self.env(at)
        stages = ("--stages", self.stages) if self.stages else ()
        worker = spawn(
            "stream", marketpipe_cli("stream", *stages, python=self.python), env, at.work_dir, self.tree
        )
        producer = spawn(
            "produce",
            marketpipe_cli(
                "produce",
                "--exchange",
                "binance",
                "--symbols",
                ",".join(at.symbols),
                "--ws-url",
                at.ws,
                "--rest-url",
                at.rest,
                python=self.python,
            ),
            env,
            at.work_dir,
            self.tree,
        )
        return [worker, producer]

    def source_ts_s(self, value: bytes) -> float:
        return float(self.codec.decode(value).ts) / 1e6

    def losses(self, at: Endpoints) -> tuple[int, str]:
        return 0, ""  # nothing is dropped on purpose: raw frames wait in Kafka when the worker lags


System = Cryptofeed | Marketpipe


# -- measuring ----------------------------------------------------------------------------------------


class OutputReader:
    """A read_committed consumer on a round's output topics. Every trade record is decoded (trades
    are one record per frame in both systems, so they tell what share of the feed got through);
    book records are counted and a sample of them decoded for latency."""

    def __init__(
        self,
        bootstrap: str,
        trade_topics: list[str],
        book_topics: list[str],
        source_ts_s: Callable[[bytes], float],
        book_sample_every: int,
    ) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"cryptofeed-bench-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 20,
            }
        )
        metadata = self.consumer.list_topics(timeout=10).topics
        topics = trade_topics + book_topics
        self.consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in metadata[t].partitions]
        )
        self.trade_topics = frozenset(trade_topics)
        self.source_ts_s = source_ts_s
        self.book_sample_every = book_sample_every
        self.records = 0
        self.book_records = 0
        self.trades: list[tuple[float, float]] = []  # (received at, exchange timestamp), every trade
        self.books: list[tuple[float, float]] = []  # the same for a sample of book records

    def read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = self.consumer.consume(5000, timeout=0.05)
            now = time.time()
            for message in batch:
                if message.error() is not None:
                    continue
                self.records += 1
                if message.topic() in self.trade_topics:
                    self.trades.append((now, self.source_ts_s(message.value() or b"")))
                    continue
                self.book_records += 1
                if self.book_records % self.book_sample_every == 0:
                    self.books.append((now, self.source_ts_s(message.value() or b"")))

    def latencies_received_since(self, since: float) -> list[float]:
        return [at - ts for at, ts in self.trades + self.books if at >= since]

    def generated_between(self, start: float, end: float) -> tuple[list[tuple[float, float]], list[float]]:
        """(exchange timestamp, latency) of the decoded records stamped in [start, end), and the
        exchange timestamps of the trades among them."""
        stamped = [(ts, at - ts) for at, ts in self.trades + self.books if start <= ts < end]
        return stamped, [ts for _, ts in self.trades if start <= ts < end]

    def close(self) -> None:
        self.consumer.close()


@dataclass
class Snapshot:
    wall: float  # the simulator's clock when it counted (same machine, same clock as ours)
    sim: dict[str, int]
    records: int
    process_cpu_s: dict[str, float]  # the system's, by process name
    broker_cpu_s: float | None
    sim_cpu_s: float

    def offered(self) -> int:
        queued = sum(v for k, v in self.sim.items() if k.startswith("queued_"))
        return queued or self.sim.get("frames_sent", 0)  # queued_*: simulators since this benchmark

    def counted_since(self, before: Snapshot, counter: str) -> int:
        """How much the simulator's ``counter`` grew since ``before``."""
        return self.sim.get(counter, 0) - before.sim.get(counter, 0)


@dataclass
class Round:
    system: str
    target: int
    offered_per_s: float = 0.0
    out_per_s: float = 0.0  # trade + book records that became visible, per second
    ratio: float = 0.0  # trades stamped in the window and in Kafka / trade frames offered in it
    p50_ms: float | None = None
    p99_ms: float | None = None
    p50_first_ms: float | None = None
    p50_last_ms: float | None = None
    cpu_s_per_m: float | None = None
    cpu_s_per_m_by_process: dict[str, float] = field(default_factory=dict)
    broker_cpu_s_per_m: float | None = None
    sim_cpu_pct: float | None = None
    slow_disconnects: int = 0
    overload_disconnects: int = 0  # the simulator could not send in time: its limit, not the system's
    lost: int = 0  # records the system itself reported dropping
    load_1m: float | None = None  # the machine's load average at the window's end: others' work too
    kept_up: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def simulator_bound(self) -> bool:
        return self.overload_disconnects > 0


@dataclass
class Bench:
    bootstrap: str
    broker_pid: int | None
    symbols: tuple[str, ...]
    seconds: float
    warmup: float
    warmup_max: float
    trade_ratio: float
    work_dir: Path

    def run_round(self, system: System, rate: int, seconds: float | None = None) -> Round:
        prefix = f"cfb{uuid.uuid4().hex[:6]}."
        work = Path(tempfile.mkdtemp(prefix=f"{system.key}-{rate}-", dir=self.work_dir))
        port = free_port()
        base = f"127.0.0.1:{port}/binance"
        at = Endpoints(self.bootstrap, prefix, f"ws://{base}", f"http://{base}", self.symbols, work)
        system.prepare(at)
        processes: list[Spawned] = []
        reader: OutputReader | None = None
        try:
            processes.append(start_simulator(port, rate, self.symbols, self.trade_ratio, work))
            book_sample_every = max(1, rate // LATENCY_SAMPLES_PER_S)
            trade_topics, book_topics = system.output_topics(at)
            reader = OutputReader(
                self.bootstrap, trade_topics, book_topics, system.source_ts_s, book_sample_every
            )
            processes += system.start(at)
            result = self.measure(system.label, rate, reader, port, processes, seconds or self.seconds)
        finally:
            for spawned in reversed(processes):
                stop(spawned)
            if reader is not None:
                reader.close()
            delete_topics(self.bootstrap, prefix)
        result.lost, note = system.losses(at)
        if note:
            result.notes.append(note)
        result.kept_up = result.kept_up and not result.lost
        return result

    def measure(
        self, label: str, rate: int, reader: OutputReader, port: int, processes: list[Spawned], seconds: float
    ) -> Round:
        result = Round(label, rate)
        sim, system = processes[0], processes[1:]
        failure = self.warm_up(reader, processes)
        if failure is None:
            before = self.snapshot(reader, port, sim, system)
            failure = self.read_watching(reader, processes, seconds)
        if failure is not None:
            result.notes.append(failure)
            return result
        after = self.snapshot(reader, port, sim, system)
        reader.read_for(GRACE_S)  # the records of the window's last frames still on their way
        fill_round(result, before, after, reader)
        return result

    @staticmethod
    def read_watching(reader: OutputReader, processes: list[Spawned], seconds: float) -> str | None:
        """Read for `seconds`; the failure of any process that stopped meanwhile, if one did."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            reader.read_for(min(1.0, left))
            if failure := next(filter(None, (p.failure() for p in processes)), None):
                return failure
        return None

    def warm_up(self, reader: OutputReader, processes: list[Spawned]) -> str | None:
        """Until the first output, then at least --warmup s and until the latency has settled
        (a startup backlog drained), at most --warmup-max s. Returns a failure, if any."""
        started = time.monotonic()
        first_output: float | None = None
        while True:
            if failure := self.read_watching(reader, processes, 1.0):
                return failure
            now = time.monotonic()
            if first_output is None:
                if reader.records:
                    first_output = now
                elif now - started > STARTUP_TIMEOUT_S:
                    return f"no output within {STARTUP_TIMEOUT_S:.0f} s"
                continue
            waited = now - first_output
            recent = reader.latencies_received_since(time.time() - 1.0)
            settled = bool(recent) and statistics.median(recent) < SETTLED_LATENCY_S
            if (waited >= self.warmup and settled) or waited >= self.warmup_max:
                return None

    def snapshot(self, reader: OutputReader, port: int, sim: Spawned, system: list[Spawned]) -> Snapshot:
        wall, counters = simulator_stats(port)
        cpu = sessions_cpu_s([p.process.pid for p in (sim, *system)])  # each started its own session
        return Snapshot(
            wall=wall,
            sim=counters,
            records=reader.records,
            process_cpu_s={s.name: cpu[s.process.pid] for s in system},
            broker_cpu_s=process_cpu_s(self.broker_pid),
            sim_cpu_s=cpu[sim.process.pid],
        )


def fill_round(result: Round, before: Snapshot, after: Snapshot, reader: OutputReader) -> None:
    elapsed = after.wall - before.wall
    offered = after.offered() - before.offered()
    offered_trades = after.counted_since(before, "queued_trade")
    stamped, trades = reader.generated_between(before.wall, after.wall)
    result.offered_per_s = offered / elapsed
    result.out_per_s = (after.records - before.records) / elapsed
    result.ratio = len(trades) / offered_trades if offered_trades else 0.0
    result.slow_disconnects = after.counted_since(before, "slow_disconnects")
    result.overload_disconnects = after.counted_since(before, "overload_disconnects")
    if offered:
        per_m = 1e6 / offered
        result.cpu_s_per_m_by_process = {
            name: (cpu - before.process_cpu_s.get(name, 0.0)) * per_m
            for name, cpu in after.process_cpu_s.items()
        }
        result.cpu_s_per_m = sum(result.cpu_s_per_m_by_process.values())
        if before.broker_cpu_s is not None and after.broker_cpu_s is not None:
            result.broker_cpu_s_per_m = (after.broker_cpu_s - before.broker_cpu_s) * per_m
    result.sim_cpu_pct = 100 * (after.sim_cpu_s - before.sim_cpu_s) / elapsed
    result.load_1m = os.getloadavg()[0]
    fill_latency(result, stamped, before.wall, after.wall)
    growing = (
        result.p50_first_ms is None
        or result.p50_last_ms is None
        or result.p50_last_ms - result.p50_first_ms > 1000 * LATENCY_GROWTH_S
    )
    if growing:
        result.notes.append("latency growing")
    if result.ratio < KEEP_UP_RATIO:
        result.notes.append(f"{100 * result.ratio:.0f}% of the window's trades in Kafka")
    if result.slow_disconnects:
        result.notes.append("dropped as a slow client")
    if result.simulator_bound:
        result.notes.append(f"the simulator overloaded at {result.sim_cpu_pct:.0f}% of a core")
    result.kept_up = (
        not growing
        and result.ratio >= KEEP_UP_RATIO
        and not result.slow_disconnects
        and not result.simulator_bound
    )


def fill_latency(result: Round, stamped: list[tuple[float, float]], start: float, end: float) -> None:
    """p50/p99 over the records stamped in the window, and the p50 of its first and last fifth."""
    if not stamped:
        return
    latencies = sorted(latency for _, latency in stamped)
    result.p50_ms = 1000 * statistics.median(latencies)
    result.p99_ms = 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    fifth = (end - start) / 5
    first = [latency for ts, latency in stamped if ts < start + fifth]
    last = [latency for ts, latency in stamped if ts >= end - fifth]
    if first and last:
        result.p50_first_ms = 1000 * statistics.median(first)
        result.p50_last_ms = 1000 * statistics.median(last)


def admin_config(bootstrap: str) -> dict[str, str | int | float | bool]:
    return {"bootstrap.servers": bootstrap, "log_level": 4}  # not its notices into the table


def delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AdminClient(admin_config(bootstrap))
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(30)


# -- cryptofeed's virtualenv ----------------------------------------------------------------------


def _python_version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out[0]), int(out[1])


def find_python(wanted: tuple[int, int] = (3, 13)) -> str:
    """An interpreter cryptofeed 3.x installs on: this one if new enough, else python3.14/3.13."""
    if sys.version_info[:2] >= wanted:
        return sys.executable
    for name in ("python3.14", "python3.13"):
        path = shutil.which(name)
        version = _python_version(path) if path else None
        if path and version is not None and version >= wanted:
            return path
    raise SystemExit(
        f"cryptofeed {CRYPTOFEED_VERSION} needs Python {wanted[0]}.{wanted[1]}+, and none was found on "
        "PATH: install one (e.g. `pyenv install 3.13`) or pass --cryptofeed-python PATH"
    )


def installed_cryptofeed(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = "import importlib.metadata as m; print(m.version('cryptofeed'), m.version('aiokafka'))"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def cryptofeed_venv(venv: Path, interpreter: str | None) -> tuple[Path, Path]:
    """(python, runner script) of cryptofeed's own virtualenv, created with pip when missing."""
    python = venv / "bin" / "python"
    if installed_cryptofeed(python) != f"{CRYPTOFEED_VERSION} {AIOKAFKA_VERSION}":
        base = interpreter or find_python()
        print(f"installing cryptofeed {CRYPTOFEED_VERSION} into {venv} (Python: {base})", flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"cryptofeed[kafka]=={CRYPTOFEED_VERSION}",
                f"aiokafka=={AIOKAFKA_VERSION}",
            ],
            check=True,
        )
    runner = venv / "tmp" / "marketpipe_cryptofeed_runner.py"
    runner.parent.mkdir(exist_ok=True)
    runner.write_text(RUNNER)
    return python, runner


RUNNER = '''\
"""cryptofeed's Binance feed against the marketpipe simulator, into Kafka (written by
bench/cryptofeed_bench.py at each run; edit it there)."""

import argparse
import json
from decimal import Decimal

import cryptofeed.feed
from cryptofeed import FeedHandler, _json
from cryptofeed.backends.kafka import BookKafka, TradeKafka
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint, WSAsyncConn
from cryptofeed.defines import L2_BOOK, TRADES
from cryptofeed.exchanges import Binance


class PlainWebsocket(WSAsyncConn):
    """cryptofeed only accepts wss:// addresses; the simulator serves plain ws:// on localhost."""

    def __init__(self, address, conn_id, subscription=None, **kwargs):
        tls_looking = "wss://" + address.removeprefix("ws://")
        super().__init__(tls_looking, conn_id, subscription=subscription, **kwargs)
        self.address = address


cryptofeed.feed.WSAsyncConn = PlainWebsocket


def simulated_binance(ws_base, rest_base):
    routes = Routes("/api/v3/exchangeInfo", l2book="/api/v3/depth?symbol={}&limit={}")

    class SimulatedBinance(Binance):
        websocket_endpoints = [WebsocketEndpoint(ws_base)]
        rest_endpoints = [RestEndpoint(rest_base, routes=routes)]
        # the raw `trade` stream (as marketpipe's connector subscribes), not aggTrade: both
        # systems then read exactly the same frames
        websocket_channels = {**Binance.websocket_channels, TRADES: "trade"}

        async def message_handler(self, msg, conn, timestamp):
            if '"e":"trade"' not in msg:
                return await super().message_handler(msg, conn, timestamp)
            data = _json.loads(msg, parse_float=Decimal)["data"]
            data["a"] = data["t"]  # a trade event is an aggTrade with its id under "t"
            await self._trade(data, timestamp)

    return SimulatedBinance


def main():
    parser = argparse.ArgumentParser()
    for name in ("--ws", "--rest", "--symbols", "--bootstrap", "--topic-prefix", "--log", "--stats"):
        parser.add_argument(name, required=True)
    parser.add_argument("--batch-interval", type=float, default=None)
    args = parser.parse_args()
    kafka = {"bootstrap_servers": args.bootstrap}
    if args.batch_interval is not None:
        kafka["batch_interval"] = args.batch_interval
    handler = FeedHandler(config={"uvloop": True, "log": {"filename": args.log, "level": "WARNING"}})
    feed = simulated_binance(args.ws, args.rest)(
        symbols=args.symbols.split(","),
        channels=[TRADES, L2_BOOK],
        callbacks={
            TRADES: TradeKafka(key=f"{args.topic_prefix}trades", **kafka),
            L2_BOOK: BookKafka(key=f"{args.topic_prefix}book", **kafka),
        },
    )
    handler.add_feed(feed)
    handler.run()  # until SIGTERM: then the backends flush and stop
    stats = {f: {b: s.__dict__ for b, s in by.items()} for f, by in handler.backend_stats().items()}
    with open(args.stats, "w") as out:
        json.dump(stats, out, default=str)


if __name__ == "__main__":
    main()
'''


# -- report ---------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


HEADER = (
    f"{'system':<28} {'target/s':>8} {'offered/s':>9} {'out/s':>8} {'trades':>6} {'p50 ms':>7} "
    f"{'p99 ms':>7} {'p50 1st->last':>14} {'cpu-s/M':>8} {'broker/M':>8} {'sim cpu':>7} {'load':>5}  kept up"
)


def format_round(r: Round) -> str:
    """The round's line of the table; a second line splits cpu-s/M by process when it has several."""
    trend = f"{_num(r.p50_first_ms)}->{_num(r.p50_last_ms)}"
    sim = "-" if r.sim_cpu_pct is None else f"{r.sim_cpu_pct:.0f}%"
    verdict = "yes" if r.kept_up else "NO"
    notes = f" ({'; '.join(r.notes)})" if r.notes else ""
    return (
        f"{r.system:<28} {r.target:>8,} {r.offered_per_s:>9,.0f} {r.out_per_s:>8,.0f} {r.ratio:>6.1%} "
        f"{_num(r.p50_ms):>7} {_num(r.p99_ms):>7} {trend:>14} {_num(r.cpu_s_per_m, 1):>8} "
        f"{_num(r.broker_cpu_s_per_m, 1):>8} {sim:>7} {_num(r.load_1m, 1):>5}  {verdict}{notes}"
    ) + _by_process(r)


def _by_process(r: Round) -> str:
    if len(r.cpu_s_per_m_by_process) < 2:
        return ""
    split = ", ".join(f"{name} {cpu:,.1f}" for name, cpu in r.cpu_s_per_m_by_process.items())
    return f"\n{'':<28} cpu-s/M by process: {split}"


def summary(systems: list[System], rounds: list[Round]) -> list[str]:
    lines, best, bounded = [], {}, False
    for system in systems:
        kept = [r for r in rounds if r.system == system.label and r.kept_up]
        top = max(kept, key=lambda r: r.target, default=None)
        best[system.key] = top
        stopped_by_simulator = any(
            r.system == system.label and r.simulator_bound and not r.kept_up for r in rounds
        )
        limit = " (stopped where the simulator reached its own limit)" if stopped_by_simulator else ""
        bounded |= stopped_by_simulator
        if top is None:
            lines.append(f"{system.label}: kept up at none of the rates tried{limit}")
        else:
            lines.append(
                f"{system.label}: highest rate kept up {top.target:,}/s "
                f"(offered {top.offered_per_s:,.0f}/s), p50 {_num(top.p50_ms)} ms, "
                f"p99 {_num(top.p99_ms)} ms, {_num(top.cpu_s_per_m, 1)} CPU-s per million frames{limit}"
            )
    mp, cf = best.get("marketpipe"), best.get("cryptofeed")
    if mp is not None and cf is not None:
        caveat = " (the simulator reached its own limit: a bound, not a measure)" if bounded else ""
        lines.append(f"marketpipe / cryptofeed highest sustained rate: {mp.target / cf.target:.1f}x{caveat}")
    return lines


# -- main -------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="500,1000,2500,5000,10000,20000", help="frames/s, rising")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per round")
    parser.add_argument("--warmup", type=float, default=8.0, help="minimum warm-up after the first output")
    parser.add_argument("--warmup-max", type=float, default=30.0, help="longest warm-up before measuring")
    parser.add_argument(
        "--broker-warmup",
        type=float,
        default=60.0,
        help="seconds each system runs at the highest rate before the measured rounds, not "
        "recorded, so that the broker's CPU is that of a warm JVM (0: none)",
    )
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--trade-ratio", type=float, default=0.2, help="trades per book update")
    parser.add_argument("--systems", default="cryptofeed,marketpipe")
    parser.add_argument("--label", default="marketpipe", help="name of the marketpipe rows")
    parser.add_argument(
        "--marketpipe-tree",
        type=Path,
        default=None,
        help="run marketpipe's commands from this source tree (e.g. `git archive` of an older commit); "
        "the simulator always comes from this checkout",
    )
    parser.add_argument(
        "--marketpipe-python",
        default=None,
        help="interpreter for marketpipe's commands (a virtualenv synced to --marketpipe-tree's lock)",
    )
    parser.add_argument(
        "--marketpipe-stages",
        default=None,
        help="stream stages marketpipe runs (e.g. `normalise`, the work cryptofeed does); default: "
        "every stage, as a deployment runs them (normalise, ohlcv, consolidate)",
    )
    parser.add_argument("--cryptofeed-python", default=None, help="Python 3.13+ for cryptofeed's venv")
    parser.add_argument(
        "--cryptofeed-batch-interval",
        type=float,
        default=None,
        help="seconds cryptofeed's Kafka backend waits to fill a batch (default: its own, 0.5)",
    )
    parser.add_argument(
        "--refine",
        type=int,
        default=0,
        help=f"after a system's first failed rate, this many more rounds halving the gap to the last "
        f"rate it kept up with (to {REFINE_STEP:,} frames/s): its ceiling, not only the step below it",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rounds here")
    args = parser.parse_args(argv)
    if not 1 <= args.symbols <= len(SYMBOLS):
        parser.error(f"--symbols must be 1..{len(SYMBOLS)}")
    return args


def build_systems(args: argparse.Namespace, bench_dir: Path) -> list[System]:
    systems: list[System] = []
    for name in (s.strip() for s in args.systems.split(",") if s.strip()):
        if name == "cryptofeed":
            python, runner = cryptofeed_venv(bench_dir / "cryptofeed-venv", args.cryptofeed_python)
            systems.append(Cryptofeed(python, runner, args.cryptofeed_batch_interval))
        elif name == "marketpipe":
            tree = args.marketpipe_tree.resolve() if args.marketpipe_tree else None
            # abspath, not resolve: a virtualenv's python is a symlink out of the virtualenv
            interpreter = os.path.abspath(args.marketpipe_python) if args.marketpipe_python else None
            systems.append(Marketpipe(args.label, tree, interpreter, args.marketpipe_stages))
        else:
            raise SystemExit(f"unknown system {name!r}: choose from cryptofeed, marketpipe")
    return systems


def bench_round(bench: Bench, system: System, rate: int, rounds: list[Round]) -> bool:
    """One round, recorded and printed; whether the system kept up."""
    result = bench.run_round(system, rate)
    rounds.append(result)
    print(format_round(result), flush=True)
    return result.kept_up


def warm_broker(bench: Bench, systems: list[System], rate: int, seconds: float) -> None:
    """Each system once for ``seconds`` at ``rate``, not recorded. A fresh broker runs the request
    paths a system uses slowly until its JIT has compiled them: at 5,000 frames/s marketpipe's
    broker took 0.83 of a core in the first 10 s, 0.23 after two minutes at that rate, and 0.13
    after a minute at 20,000 (docs/benchmarks.md). A high rate warms it fastest."""
    if seconds <= 0:
        return
    names = " and ".join(system.label for system in systems)
    print(f"warming the broker up: {names}, {seconds:g} s each at {rate:,}/s, not recorded", flush=True)
    for system in systems:
        bench.run_round(system, rate, seconds)


def _stop_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: processes and broker stop


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # explicit handlers: a run started in the background (nohup, &) inherits SIGINT ignored
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_on_signal)
    rates = [int(r) for r in args.rates.split(",")]
    bench_dir = Path(os.environ.get("MARKETPIPE_DATA_DIR", ".marketpipe")).resolve() / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    systems = build_systems(args, bench_dir)
    # the rounds' logs stay here; the broker's data is removed at the end
    work_dir = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=bench_dir))
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker: LocalKafka | None = None
    if not bootstrap:
        settings = LocalBrokerSettings(port=free_port(), controller_port=free_port(), heap="1g")
        broker = LocalKafka(work_dir / "kafka", settings)
        broker.start()
        bootstrap = broker.bootstrap
    symbols = tuple(f"{base}-USDT" for base in SYMBOLS[: args.symbols])
    bench = Bench(
        bootstrap,
        broker.pid() if broker else None,
        symbols,
        args.seconds,
        args.warmup,
        args.warmup_max,
        args.trade_ratio,
        work_dir,
    )
    rounds: list[Round] = []
    try:
        print(
            f"binance dialect, {len(symbols)} symbols, {args.trade_ratio:g} trades per book update, "
            f"{args.seconds:g} s per round, Kafka {bootstrap}, {os.cpu_count()} CPUs",
            flush=True,
        )
        warm_broker(bench, systems, max(rates), args.broker_warmup)
        print(HEADER, flush=True)
        for system in systems:
            kept, failed = None, None
            for rate in rates:
                if not bench_round(bench, system, rate, rounds):
                    failed = rate
                    break
                kept = rate
            for _ in range(args.refine):
                if kept is None or failed is None or failed - kept <= REFINE_STEP:
                    break
                rate = kept + max(REFINE_STEP, round((failed - kept) / 2 / REFINE_STEP) * REFINE_STEP)
                if bench_round(bench, system, rate, rounds):
                    kept = rate
                else:
                    failed = rate
        print()
        print("\n".join(summary(systems, rounds)))
    finally:
        if broker is not None:
            broker.stop()
            shutil.rmtree(work_dir / "kafka", ignore_errors=True)
        results = json.dumps([asdict(r) for r in rounds], indent=2) + "\n"
        (work_dir / "results.json").write_text(results)
        if args.json is not None:
            args.json.write_text(results)
        print(f"logs and results.json in {work_dir}")


if __name__ == "__main__":
    main()
