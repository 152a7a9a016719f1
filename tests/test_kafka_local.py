"""`marketpipe kafka start|status|stop` as a user runs it: idempotent start, clean stop, no leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from marketpipe.kafka_local import free_port, new_cluster_id, port_free, port_open

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _marketpipe(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marketpipe.cli", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _broker_pids(data_dir: Path) -> list[int]:
    marker = f"-Dmarketpipe.home={(data_dir / 'kafka').resolve()}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(
    not EPHEMERAL_RANGE.exists(), reason="needs Linux's /proc/sys/net/ipv4/ip_local_port_range"
)
def test_free_ports_cannot_be_taken_by_the_kernels_own_picks() -> None:
    """A port chosen now and bound later by a server (a broker, a child's metrics endpoint of
    `marketpipe run`) must not be one the kernel can hand to an outgoing connection or to a
    bind to port 0 meanwhile (seen: a metrics port answered by the sink's ClickHouse endpoint)."""
    ephemeral_low = int(EPHEMERAL_RANGE.read_text().split()[0])
    ports = [free_port() for _ in range(100)]
    assert len(set(ports)) == len(ports), "a port handed out twice"
    assert all(p < ephemeral_low for p in ports), [p for p in ports if p >= ephemeral_low]
    assert all(port_free(p) for p in ports)


@pytest.mark.slow
def test_start_twice_is_one_broker_and_stop_leaves_nothing(tmp_path: Path) -> None:
    port, controller = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env |= {
        "MARKETPIPE_KAFKA__LOCAL__PORT": str(port),
        "MARKETPIPE_KAFKA__LOCAL__CONTROLLER_PORT": str(controller),
        "MARKETPIPE_KAFKA__LOCAL__HEAP": "512m",
    }
    try:
        first = _marketpipe(tmp_path, env, "kafka", "start")
        assert first.returncode == 0, first.stderr
        assert "started" in first.stdout
        second = _marketpipe(tmp_path, env, "kafka", "start")
        assert second.returncode == 0 and "already running" in second.stdout
        assert len(_broker_pids(tmp_path)) == 1

        status = _marketpipe(tmp_path, env, "kafka", "status")
        assert status.returncode == 0 and "answering metadata" in status.stdout
        assert (tmp_path / "kafka" / "data" / "meta.properties").exists()
        assert (tmp_path / "kafka" / "kafka.log").stat().st_size > 0
    finally:
        stopped = _marketpipe(tmp_path, env, "kafka", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert _broker_pids(tmp_path) == []
    assert not port_open("127.0.0.1", port)
    after = _marketpipe(tmp_path, env, "kafka", "status")
    assert after.returncode == 1 and "stopped" in after.stdout


def test_port_in_use_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
        env |= {
            "MARKETPIPE_KAFKA__LOCAL__PORT": str(busy.getsockname()[1]),
            "MARKETPIPE_KAFKA__LOCAL__CONTROLLER_PORT": str(free_port()),
        }
        result = _marketpipe(tmp_path, env, "kafka", "start")
    assert result.returncode != 0
    assert "already in use" in result.stderr
    assert _broker_pids(tmp_path) == []


def test_cluster_ids_never_read_as_an_option() -> None:
    # about one URL-safe base64 UUID in 64 starts with "-", which kafka-storage took for an option
    ids = [new_cluster_id() for _ in range(2000)]
    assert all(len(found) == 22 and not found.startswith("-") for found in ids)
    assert len(set(ids)) == len(ids)
