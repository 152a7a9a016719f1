"""Capture files survive their writer: flushed as they are written, read up to a cut-off tail
(with a warning), and a file that is no capture at all is one clear error."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka_helpers import stop_process
from producers_support import read_topic

from marketpipe.kafka_local import free_port, port_open
from marketpipe.raw import CaptureError, CaptureWriter, RawRecord, read_capture
from marketpipe.topics import Topology

REPO = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "marketpipe.cli"]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETPIPE_", "KAFKA_"))}
    return env | {"MARKETPIPE_METRICS_PORT": "0", "MARKETPIPE_DATA_DIR": str(data_dir)}


def _records(count: int, start: int = 0) -> list[RawRecord]:
    return [
        RawRecord("binance", "binance.x.0", seq, "recv", 1_700_000_000_000_000_000 + seq, f'{{"n":{seq}}}')
        for seq in range(start, start + count)
    ]


def _count(path: Path) -> int:
    try:
        return sum(1 for _ in read_capture(path))
    except (CaptureError, FileNotFoundError):  # nothing readable yet
        return 0


@pytest.fixture
def sim_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    sim = subprocess.Popen(
        [*COMMAND, "sim", "--exchanges", "binance", "--port", str(port), "--trade-rate", "20"],
        env=_env(tmp_path / "data"),
        cwd=REPO,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            assert time.monotonic() < deadline and sim.poll() is None, "the simulator did not start"
            time.sleep(0.1)
        yield port
    finally:
        stop_process(sim)


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_a_capture_killed_with_sigkill_keeps_what_it_flushed(
    sim_port: int, tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / f"killed{suffix}"
    ws, rest = f"ws://127.0.0.1:{sim_port}/binance", f"http://127.0.0.1:{sim_port}/binance"
    args = ["capture", "--exchange", "binance", "--ws-url", ws, "--rest-url", rest, "--out", str(path)]
    capture = subprocess.Popen([*COMMAND, *args], env=_env(tmp_path / "data"), cwd=REPO)
    try:
        # the records become readable while the capture runs (before: nothing until ~128 KiB
        # of compressed output, or the end)
        deadline = time.monotonic() + 90
        while (seen := _count(path)) < 50:
            assert capture.poll() is None, "capture exited"
            assert time.monotonic() < deadline, f"only {seen} records readable from the running capture"
            time.sleep(0.5)
    finally:
        capture.send_signal(signal.SIGKILL)
        capture.wait()
    with caplog.at_level(logging.WARNING, logger="marketpipe.raw"):
        records = list(read_capture(path))
    assert len(records) >= seen
    assert records[0].kind == "open" and [r.seq for r in records[:3]] == [0, 1, 2]
    normalized = subprocess.run(
        [*COMMAND, "normalize", str(path)], env=_env(tmp_path / "data"), cwd=REPO, capture_output=True
    )
    assert normalized.returncode == 0, normalized.stderr
    assert b'"type":"trade"' in normalized.stdout


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_a_cut_off_tail_gives_every_complete_record_and_a_warning(
    tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / f"cut{suffix}"
    written = _records(40)
    with CaptureWriter(path) as writer:
        writer.write_all(written[:30])
        writer.flush()
        writer.write_all(written[30:])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # what a crash mid-write leaves
    with caplog.at_level(logging.WARNING, logger="marketpipe.raw"):
        back = list(read_capture(path))
    assert len(back) >= 30  # all that was flushed; maybe some of the tail
    assert back == written[: len(back)]
    [warning] = [r.getMessage() for r in caplog.records if r.name == "marketpipe.raw"]
    assert f"capture cut off, the tail is skipped path={path} complete_records={len(back)} " in warning


def test_a_complete_last_line_without_newline_is_a_record(tmp_path: Path) -> None:
    path = tmp_path / "hand-made.jsonl"
    with CaptureWriter(path) as writer:
        writer.write_all(_records(3))
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert list(read_capture(path)) == _records(3)


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz", ".jsonl"])
def test_a_file_of_random_bytes_is_one_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"random{suffix}"
    path.write_bytes(os.urandom(5000).replace(b"\n", b" "))
    with pytest.raises(CaptureError, match=f"^{path}"):
        list(read_capture(path))
    result = subprocess.run(
        [*COMMAND, "normalize", str(path)],
        env=_env(tmp_path / "data"),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"Error: {path}"), line


def test_a_bad_record_before_the_end_is_still_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "middle.jsonl"
    with CaptureWriter(path) as writer:
        writer.write_all(_records(3))
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b'{"not": "a record"}\n' + b"".join(lines[1:]))
    with pytest.raises(CaptureError, match=f"{path}:2: not a capture record"):
        list(read_capture(path))


@pytest.mark.kafka
def test_produce_from_a_cut_off_capture_publishes_the_complete_records_and_warns(
    kafka_bootstrap: str, topics: Topology, tmp_path: Path
) -> None:
    path = tmp_path / "cut.jsonl"
    with CaptureWriter(path) as writer:
        writer.write_all(_records(5))
    path.write_bytes(path.read_bytes()[:-9])  # the fifth record cut short
    env = _env(tmp_path / "data") | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MARKETPIPE_KAFKA__TOPIC_PREFIX": topics.prefix,
    }
    result = subprocess.run(
        [*COMMAND, "produce", "--from-capture", str(path)], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "published 4 records from 1 capture file(s)"
    assert (
        f"capture cut off, the tail is skipped path={path} complete_records=4 reason=line 5 ends mid-record"
        in result.stderr
    )
    assert [c.record.seq for c in read_topic(kafka_bootstrap, topics.raw("binance"))] == [0, 1, 2, 3]
