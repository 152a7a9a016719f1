"""`marketpipe run`: the whole pipeline on one machine, supervised as child processes.

Starts the local Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS names a cluster), applies
the topology, then runs and supervises: one connector per exchange (or the capture
replayer), the exchange simulator for `--source sim`, the stream worker(s) and the
ClickHouse sink, each with its own Prometheus port. Shows a live view built from those
endpoints and Kafka (or key=value lines with --plain), and writes the ports to
``<data dir>/run-state.json`` for `marketpipe status`. Ctrl-C / SIGTERM stops every child
(and the broker, if this run started it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click
from confluent_kafka import KafkaException

from marketpipe.cli_support import settings_from
from marketpipe.config import ConfigError, Settings
from marketpipe.kafka_local import LocalKafka, LocalKafkaError, free_port, port_free, port_open
from marketpipe.kafka_security import KafkaAccessError, aiokafka_options, require_kafka_of
from marketpipe.logs import log_event
from marketpipe.supervisor import Child, Supervisor, signal_child
from marketpipe.topics import TopicsNotServed, Topology, apply_topology
from marketpipe.view import (
    VIEWS,
    Endpoint,
    KafkaLag,
    KeyReader,
    Observer,
    RunState,
    next_view,
    plain_lines,
    render_rich,
    total,
)

log = logging.getLogger(__name__)

DRAIN_STABLE_CHECKS = 3


def _marketpipe(settings: Settings, *args: str) -> list[str]:
    return [sys.executable, "-m", "marketpipe.cli", "--data-dir", str(settings.data_dir), *args]


class PortPlan:
    """Metrics ports: settings.metrics_port for the sink, the next ones for the other children.

    A port already taken (another deployment, a test) is replaced by a free one; with
    metrics_port = 0 every child gets a free port (the live view needs them all).
    """

    def __init__(self, base: int) -> None:
        self.next = base

    def take(self) -> int:
        port = self.next
        if port:
            self.next += 1
            if port < 65536 and port_free(port):
                return port
        return free_port()


def _child(settings: Settings, name: str, role: str, args: list[str], port: int, **kw: object) -> Child:
    env = {**os.environ, "MARKETPIPE_METRICS_PORT": str(port)}
    child = Child(name, _marketpipe(settings, *args), env=env, **kw)  # type: ignore[arg-type]
    child.role, child.metrics_port = role, port
    return child


def _producers(
    settings: Settings, ports: PortPlan, endpoints: dict[str, tuple[str, str]] | None
) -> list[Child]:
    """One connector process per exchange, so one dead exchange never stalls the others.

    Without --symbols a connector takes settings.symbols and skips those its exchange does
    not list (BTC-USDT on Coinbase, say), which is what a mixed default list needs.
    """
    children = []
    for exchange in settings.exchanges:
        args = ["produce", "--exchange", exchange]
        if endpoints is not None:
            ws, rest = endpoints[exchange]
            args += ["--ws-url", ws, "--rest-url", rest]
        child = _child(settings, f"produce-{exchange}", "producer", args, ports.take())
        child.exchange = exchange
        children.append(child)
    return children


def capture_paths(source: str) -> list[str]:
    paths = [p for p in source.removeprefix("capture:").split(",") if p]
    missing = [p for p in paths if not Path(p).is_file()]
    if not paths or missing:
        raise click.UsageError(f"--source capture:PATH[,PATH...] needs existing files; missing: {missing}")
    return paths


@dataclass
class Plan:
    simulator: Child | None
    children: list[Child]


def plan_children(settings: Settings, source: str, stream_workers: int) -> Plan:
    ports = PortPlan(settings.metrics_port)
    sink = _child(settings, "sink", "sink", ["sink"], ports.take())
    simulator = None
    children: list[Child] = []
    if source == "sim":
        from simulator import urls

        sim_port = free_port()
        exchanges = ",".join(settings.exchanges)
        simulator = Child(
            "simulator", _marketpipe(settings, "sim", "--exchanges", exchanges, "--port", str(sim_port))
        )
        simulator.role, simulator.metrics_port = "simulator", sim_port
        children += _producers(settings, ports, urls(sim_port))
    elif source == "live":
        children += _producers(settings, ports, None)
    elif source.startswith("capture:"):
        args = ["produce", "--from-capture", *capture_paths(source), "--speed", "0"]
        children.append(_child(settings, "replay", "replay", args, 0, restart=False))
    else:
        raise click.UsageError(f"--source must be live, sim or capture:PATH[,PATH...], not {source!r}")
    for index in range(stream_workers):
        name = f"stream-{index + 1}"
        children.append(_child(settings, name, "stream", ["stream", "--worker-id", name], ports.take()))
    children.append(sink)
    return Plan(simulator, children)


class Drain:
    """--exit-on-drain: after the replayer exited, wait for every stage to catch up, flush, settle.

    Drained = both consumer groups at lag 0 on all their inputs with end offsets unchanged
    for DRAIN_STABLE_CHECKS checks in a row. Then each streams worker gets SIGHUP (publish
    the open candles' last trades, see streams/worker.py); once every worker counted its
    flush, the same condition must hold again: those candles are in ClickHouse too.
    """

    def __init__(self, observer: Observer, workers: list[Child], timeout_s: float) -> None:
        self.observer = observer
        self.workers = workers
        self.deadline = time.monotonic() + timeout_s
        self.phase = "consume"
        self._stable = 0
        self._last_ends: dict[tuple[str, int], int] | None = None

    def caught_up(self) -> bool:
        try:
            return self._caught_up()
        except KafkaException as exc:
            # metadata can lag on a young broker (NOT_LEADER, ...): not drained yet, ask again
            log_event(log, logging.INFO, "drain check deferred", error=exc)
            self._stable = 0
            return False

    def _caught_up(self) -> bool:
        kafka, state = self.observer.kafka, self.observer.state
        assert kafka is not None
        stages = state.topology.stream_stages()
        md = list(state.topology.sink_tables())
        ends = kafka.end_offsets({*md, *(topic for _, topics in stages for topic in topics)})
        streams_done = all(sum(kafka.lag(group, topics).values()) == 0 for group, topics in stages)
        sink_done = sum(kafka.lag(state.sink_group, md).values()) == 0
        stable = streams_done and sink_done and ends == self._last_ends
        self._last_ends = ends
        self._stable = self._stable + 1 if stable else 0
        return self._stable >= DRAIN_STABLE_CHECKS

    def step(self) -> str | None:
        """Advance; returns "done" when drained, raises TimeoutError past the deadline."""
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"not drained in time (phase {self.phase})")
        if self.phase == "consume" and self.caught_up():
            for worker in self.workers:
                signal_child(worker, signal.SIGHUP)
            self.phase, self._stable = "flush", 0
        elif self.phase == "flush" and all(self._flushed(w) for w in self.workers):
            self.phase = "settle"
        elif self.phase == "settle" and self.caught_up():
            return "done"
        return None

    @staticmethod
    def _flushed(worker: Child) -> bool:
        from marketpipe.view import scrape

        return total(scrape(worker.metrics_port), "marketpipe_stream_flushes_total") >= 1


def restore_failures(workers: list[Child]) -> int:
    """Partitions the stream workers started with fresh state (checkpoint unreadable): what was
    derived from them until new connections re-taught the state may be missing."""
    from marketpipe.view import scrape

    counts = (scrape(worker.metrics_port) for worker in workers)
    return int(sum(total(samples, "marketpipe_stream_restore_failures_total") for samples in counts))


@contextlib.contextmanager
def _starting(plain: bool) -> Iterator[Callable[[str], None]]:
    """Until the first picture: on a terminal, a spinner line saying what the run waits for."""
    if plain:
        yield lambda text: None
        return
    from rich.console import Console

    with Console().status("starting") as status:
        yield status.update


def _start_broker(
    settings: Settings, say: Callable[[str], None], step: Callable[[str], None]
) -> LocalKafka | None:
    """The local broker when no cluster is configured; returned only if this run started it."""
    if not settings.uses_local_broker:
        return None
    broker = LocalKafka(settings.data_dir, settings.kafka.local)
    started = broker.pid() is None
    say(f"event=kafka_starting bootstrap={broker.bootstrap} started_here={started} log={broker.log_file}")
    if started:
        step(f"Starting Kafka on {broker.bootstrap} (a first start takes up to a minute) ...")
    else:
        step(f"Waiting for the local Kafka broker on {broker.bootstrap} ...")
    try:
        seconds = broker.start()
    except LocalKafkaError as exc:
        raise click.ClickException(str(exc)) from None
    say(f"event=kafka_ready bootstrap={broker.bootstrap} seconds={seconds:.1f} started_here={started}")
    return broker if started else None


def _run_state(settings: Settings, source: str, supervisor: Supervisor) -> RunState:
    return RunState(
        pid=os.getpid(),
        source=source,
        bootstrap=settings.bootstrap_servers,
        prefix=settings.kafka.topic_prefix,
        exchanges=list(settings.exchanges),
        log_dir=str(supervisor.log_dir),
        started_at=time.time(),
    )


def sync_endpoints(state: RunState, supervisor: Supervisor) -> None:
    state.endpoints = [
        Endpoint(
            name=c.name,
            role=c.role,
            port=c.metrics_port if c.role != "simulator" else 0,
            exchange=c.exchange,
            pid=c.process.pid if c.process is not None else None,
            state=c.state(supervisor.stopping),
            restarts=c.restarts,
            # why it is not (yet) useful: the last line it logged, while down or since a restart
            note=c.last_log_line() if c.restarts or not c.running else "",
        )
        for c in supervisor.children
    ]


@click.command()
@click.option(
    "--source",
    default="live",
    show_default=True,
    help="live (the exchanges), sim (built-in simulator) or capture:PATH[,PATH...]",
)
@click.option("--exit-on-drain", is_flag=True, help="capture: exit 0 once every frame is processed and sunk.")
@click.option("--plain", is_flag=True, help="Log the picture as key=value lines instead of a live view.")
@click.option(
    "--view",
    type=click.Choice(VIEWS),
    default="auto",
    show_default=True,
    help="Live view: compact (fits 80x24), full (every table) or auto (full when it fits). Keys: f / c.",
)
@click.option("--interval", type=float, default=None, help="Seconds between pictures (1 live, 5 plain).")
@click.option("--stream-workers", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option(
    "--drain-timeout", type=float, default=900.0, show_default=True, help="--exit-on-drain limit (s)."
)
@click.option(
    "--exchanges",
    default=None,
    metavar="A,B,...",
    help="Comma-separated exchanges to run (default: settings.exchanges, all of them).",
)
@click.option(
    "--symbols",
    default=None,
    metavar="BASE-QUOTE,...",
    help="Comma-separated symbols, e.g. BTC-USDT,ETH-USDT (default: settings.symbols).",
)
@click.pass_context
def run(
    ctx: click.Context,
    source: str,
    exit_on_drain: bool,
    plain: bool,
    view: str,
    interval: float | None,
    stream_workers: int,
    drain_timeout: float,
    exchanges: str | None,
    symbols: str | None,
) -> None:
    """Run the whole pipeline: broker, topics, connectors, streams, sink, metrics, live view."""
    _select(exchanges, symbols)
    settings = settings_from(ctx)
    if exit_on_drain and not source.startswith("capture:"):
        raise click.UsageError("--exit-on-drain needs --source capture:PATH[,PATH...]")
    plan = plan_children(settings, source, stream_workers)
    try:
        aiokafka_options(settings.kafka_client_config())  # what the producers' control listener can use
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    plain = plain or not sys.stdout.isatty()

    def say(line: str) -> None:
        click.echo(f"ts={time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())} {line}")

    signal.signal(signal.SIGTERM, _raise_interrupt)
    with _starting(plain) as step:
        broker = _start_broker(settings, say, step)
    supervisor = Supervisor(settings.data_dir / "logs")
    code = 1
    try:
        from confluent_kafka.admin import AdminClient

        require_kafka_of(settings, long_running=True)  # refused or unreachable: one line, no children
        admin = AdminClient(dict(settings.kafka_client_config()))
        apply_topology(admin, Topology.from_settings(settings).specs(), settings.kafka.replication_factor)
        del admin
        code = _supervise(
            settings, source, plan, supervisor, exit_on_drain, plain, interval, drain_timeout, say, view
        )
    except KeyboardInterrupt:
        code = 0
    except (KafkaAccessError, TopicsNotServed) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        say("event=stopping")
        supervisor.stop_all(timeout=15.0)
        (settings.data_dir / "run-state.json").unlink(missing_ok=True)
        if broker is not None:
            broker.stop()
        say(f"event=stopped exit_code={code}")
    ctx.exit(code)


def _select(exchanges: str | None, symbols: str | None) -> None:
    """--exchanges/--symbols: set as MARKETPIPE_EXCHANGES/MARKETPIPE_SYMBOLS, so they get the
    same validation as the variables and every child process (connectors, simulator, streams,
    sink) sees the same selection."""
    if exchanges is not None:
        os.environ["MARKETPIPE_EXCHANGES"] = exchanges.strip().lower()
    if symbols is not None:
        os.environ["MARKETPIPE_SYMBOLS"] = symbols.strip().upper()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _supervise(
    settings: Settings,
    source: str,
    plan: Plan,
    supervisor: Supervisor,
    exit_on_drain: bool,
    plain: bool,
    interval: float | None,
    drain_timeout: float,
    say: Callable[[str], None],
    view: str = "auto",
) -> int:
    if plan.simulator is not None:
        supervisor.add(plan.simulator)
        supervisor.start(plan.simulator)
        _wait_for_port(plan.simulator, timeout_s=20.0)
    for child in plan.children:
        supervisor.add(child)
    supervisor.start_all()
    state = _run_state(settings, source, supervisor)
    sync_endpoints(state, supervisor)
    state.write(settings.data_dir)
    say(f"event=started children={','.join(c.name for c in supervisor.children)} logs={supervisor.log_dir}")
    observer = Observer(state, KafkaLag(dict(settings.kafka_client_config())))
    workers = [c for c in supervisor.children if c.role == "stream"]
    drain: Drain | None = None
    every = interval or (5.0 if plain else 1.0)
    live = None
    keys = KeyReader(enabled=not plain)
    if not plain:
        from rich.live import Live

        # restarts show in the view; logged to the terminal they would scroll it away
        logging.getLogger("marketpipe.supervisor").setLevel(logging.ERROR)

        live = Live(auto_refresh=False, screen=False, transient=False)
        live.start()
    try:
        next_picture = 0.0
        while True:
            for child in supervisor.poll():
                say(f"event=child_exit name={child.name} code={child.last_exit}")
                if child.role == "replay":
                    if child.last_exit != 0:
                        return 1
                    if exit_on_drain:
                        drain = Drain(observer, workers, drain_timeout)
            if drain is not None:
                try:
                    if drain.step() == "done":
                        _show(observer, live, plain, view, keys.active)
                        lost = restore_failures(workers)
                        if lost:
                            say(f"event=drained_with_state_lost restore_failures={lost}")
                            return 1
                        say("event=drained")
                        return 0
                except TimeoutError as exc:
                    say(f'event=drain_failed reason="{exc}"')
                    return 1
            if time.monotonic() >= next_picture:
                sync_endpoints(state, supervisor)
                state.write(settings.data_dir)
                _show(observer, live, plain, view, keys.active)
                next_picture = time.monotonic() + every
            key = keys.read(0.5)
            if next_view(view, key) != view:
                view, next_picture = next_view(view, key), 0.0  # redraw now
    finally:
        keys.close()
        if live is not None:
            live.stop()
        observer.close()


def _show(observer: Observer, live: Any, plain: bool, view: str, keys: bool) -> None:
    picture = observer.collect()
    if plain or live is None:
        for line in plain_lines(picture):
            click.echo(line)
        sys.stdout.flush()
        return
    title = f"marketpipe run --source {observer.state.source}"
    size = live.console.size
    live.update(render_rich(picture, title, view, (size.width, size.height), keys), refresh=True)


def _wait_for_port(child: Child, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open("127.0.0.1", child.metrics_port):
            return
        if not child.running:
            raise click.ClickException(f"{child.name} exited: {child.last_log_line()}")
        time.sleep(0.1)
    raise click.ClickException(
        f"{child.name} did not listen on port {child.metrics_port} in {timeout_s:.0f}s"
    )
