"""`marketpipe run` end to end, checked from outside: Kafka topics, ClickHouse via `marketpipe sql`,
the children's metrics endpoints, `marketpipe status`/`tail`, and /proc after shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketpipe.codec import AvroCodec
from marketpipe.config import EXCHANGES
from marketpipe.kafka_local import free_port
from marketpipe.records import StatusEvent
from marketpipe.topics import Topology
from tests.kafka_helpers import consume, stop_process, worker_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _marketpipe(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marketpipe.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _sql(query: str, env: dict[str, str]) -> list[dict[str, object]]:
    done = _marketpipe("sql", query, "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, object]] = [json.loads(line) for line in done.stdout.splitlines()]  # JSON lines
    return rows


def _processes_of(data_dir: Path, groups: set[int]) -> list[str]:
    """Live processes in one of `groups` or with `data_dir` on their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if state[0] == "Z":
            continue
        if int(state[2]) in groups or str(data_dir) in cmdline:
            found.append(f"{proc.name}: {cmdline[:160]}")
    return found


@contextlib.contextmanager
def _run(args: list[str], env: dict[str, str], out: Path) -> Iterator[subprocess.Popen[bytes]]:
    with out.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "marketpipe.cli", "run", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process(process, grace_s=40)


def _picture(out: Path) -> dict[str, list[dict[str, str]]]:
    """The latest key=value line per row of the --plain output, grouped by kind."""
    latest: dict[tuple[str, ...], dict[str, str]] = {}
    for line in out.read_text(errors="replace").splitlines():
        fields = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
        kind = fields.get("kind")
        if kind:
            ident = (kind, fields.get("name", ""), fields.get("exchange", ""), fields.get("symbol", ""))
            ident += (fields.get("stage", ""), fields.get("table", ""), fields.get("shard", ""))
            latest[ident] = fields
    grouped: dict[str, list[dict[str, str]]] = {}
    for (kind, *_), fields in latest.items():
        grouped.setdefault(kind, []).append(fields)
    return grouped


def _healthy(picture: dict[str, list[dict[str, str]]]) -> bool:
    synced = {b["exchange"] for b in picture.get("book", []) if b["state"] == "synced"}
    rows = {t["table"]: int(t["rows"]) for t in picture.get("table", [])}
    return synced == set(EXCHANGES) and all(rows.get(t, 0) > 0 for t in ("trades", "ohlcv", "book_buckets"))


def test_run_sim_end_to_end(kafka_bootstrap: str, tmp_path: Path) -> None:
    topology = Topology(prefix=f"run{uuid.uuid4().hex[:8]}.", exchanges=EXCHANGES)
    data_dir = tmp_path / "data"
    env = worker_env(kafka_bootstrap, topology, data_dir)
    out = tmp_path / "run.out"
    with _run(["--source", "sim", "--plain", "--interval", "2"], env, out) as process:
        deadline = time.monotonic() + 120
        while not _healthy(_picture(out)):
            assert process.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(1)
        state = json.loads((data_dir / "run-state.json").read_text())
        children = {e["name"]: e for e in state["endpoints"]}
        assert set(children) >= {f"produce-{e}" for e in EXCHANGES} | {"simulator", "stream-1", "sink"}

        # every child with a metrics port answers with its own metrics
        expected = {
            "producer": "marketpipe_producer_frames_total",
            "stream": "marketpipe_stream_frames_total",
        }
        expected["sink"] = "marketpipe_sink_rows_total"
        for endpoint in state["endpoints"]:
            if endpoint["role"] in expected:
                url = f"http://127.0.0.1:{endpoint['port']}/metrics"
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert expected[endpoint["role"]] in response.read().decode(), endpoint

        # books synced on every exchange, as md.status says
        codec = AvroCodec()
        messages = consume(kafka_bootstrap, topology.status, expected=2 * len(EXCHANGES), timeout_s=30)
        statuses = [codec.decode(m.value() or b"", StatusEvent) for m in messages]
        assert {s.exchange for s in statuses if s.state == "synced"} == set(EXCHANGES)

        # ClickHouse through `marketpipe sql` (served by the running sink)
        trades = _sql("SELECT exchange, count() AS n FROM trades FINAL GROUP BY exchange", env)
        assert {row["exchange"] for row in trades} == set(EXCHANGES)
        candles = _sql("SELECT count() AS n FROM ohlcv_final WHERE interval = '1s'", env)
        assert int(str(candles[0]["n"])) > 0
        buckets = _sql("SELECT DISTINCT exchange FROM book_buckets", env)
        assert {row["exchange"] for row in buckets} >= set(EXCHANGES)

        # `status` shows the same picture; `tail` decodes Avro
        status = _marketpipe("status", "--plain", env=env)
        assert status.returncode == 0, status.stderr
        assert "kind=book exchange=okx" in status.stdout and "state=synced" in status.stdout
        tail = _marketpipe("tail", "md.trades", "--from-beginning", "-n", "3", env=env)
        assert tail.returncode == 0, tail.stderr
        records = [json.loads(line) for line in tail.stdout.splitlines()]
        assert len(records) == 3 and all(r["value"]["exchange"] in EXCHANGES for r in records)

        groups = {int(e["pid"]) for e in state["endpoints"] if e["pid"]}
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(45) == 0, out.read_text()[-3000:]
    time.sleep(0.5)
    assert _processes_of(data_dir, groups) == []
    assert not (data_dir / "run-state.json").exists()


@pytest.fixture(scope="module")
def sim_captures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five capture files recorded with `marketpipe capture` against `marketpipe sim`."""
    from simulator import urls

    folder = tmp_path_factory.mktemp("captures")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETPIPE_", "KAFKA_"))}
    env |= {"MARKETPIPE_METRICS_PORT": "0", "MARKETPIPE_DATA_DIR": str(folder / "data")}
    port = free_port()
    command = [sys.executable, "-m", "marketpipe.cli"]
    sim = subprocess.Popen([*command, "sim", "--port", str(port)], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not _answers(port):
            assert time.monotonic() < deadline and sim.poll() is None, "simulator did not start"
            time.sleep(0.1)
        captures = []
        for exchange, (ws, rest) in urls(port).items():
            path = folder / f"{exchange}.jsonl.zst"
            args = ["capture", "--exchange", exchange, "--ws-url", ws, "--rest-url", rest]
            args += ["--out", str(path), "--duration", "6"]
            captures.append((path, subprocess.Popen([*command, *args], env=env)))
        for path, process in captures:
            assert process.wait(60) == 0, path
    finally:
        stop_process(sim)
    return [path for path, _ in captures]


def _answers(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_run_capture_exits_on_drain(sim_captures: list[Path], tmp_path: Path) -> None:
    normalized = subprocess.run(
        [sys.executable, "-m", "marketpipe.cli", "normalize", *map(str, sim_captures)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    expected = sum(1 for line in normalized.stdout.splitlines() if json.loads(line)["type"] == "trade")
    assert expected > 50
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETPIPE_", "KAFKA_"))}
    env |= {
        "MARKETPIPE_DATA_DIR": str(data_dir),
        "MARKETPIPE_METRICS_PORT": "0",
        "MARKETPIPE_KAFKA__LOCAL__PORT": str(free_port()),
        "MARKETPIPE_KAFKA__LOCAL__CONTROLLER_PORT": str(free_port()),
    }
    source = "capture:" + ",".join(map(str, sim_captures))
    out = tmp_path / "run.out"
    with _run(["--source", source, "--exit-on-drain", "--plain"], env, out) as process:
        assert process.wait(240) == 0, out.read_text()[-3000:]
    text = out.read_text()
    assert "event=drained" in text and "started_here=True" in text
    assert _processes_of(data_dir, set()) == []  # children and the broker this run started are gone

    # ClickHouse holds every trade of the capture, and the open candles' last trades were
    # flushed: the 1 s candles of the exchanges add up to the same number of trades
    assert int(str(_sql("SELECT count() AS n FROM trades FINAL", env)[0]["n"])) == expected
    candles = _sql(
        "SELECT sum(trades) AS n FROM ohlcv_final WHERE interval = '1s' AND exchange != 'all'", env
    )
    assert int(str(candles[0]["n"])) == expected
    assert _sql("SELECT count() AS n FROM ohlcv_final WHERE NOT closed", env)[0]["n"] != 0

    # the same run again on the same data directory: it restores every stage's state, drains,
    # exits 0 and changes no count (the replayed frames are the same trades)
    counts = _counts(env)
    for again in range(2):
        out = tmp_path / f"run.{again}.out"
        with _run(["--source", source, "--exit-on-drain", "--plain"], env, out) as process:
            assert process.wait(240) == 0, out.read_text()[-3000:]
        assert "event=drained" in out.read_text()
        assert _counts(env) == counts


def _counts(env: dict[str, str]) -> dict[str, int]:
    found = _sql(
        "SELECT (SELECT count() FROM trades) AS trades,"
        " (SELECT count() FROM trades FINAL) AS distinct_trades,"
        " (SELECT sum(trades) FROM ohlcv_final WHERE interval = '1m' AND exchange != 'all') AS candle_trades",
        env,
    )[0]
    return {name: int(str(value)) for name, value in found.items()}
