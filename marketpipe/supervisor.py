"""Child-process supervision for `marketpipe run`: restart with backoff, clean shutdown, no orphans."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from marketpipe.logs import log_event

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child that ran this long gets its backoff reset


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: dict[str, str] | None = None
    restart: bool = True
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = 1.0
    next_start_at: float = 0.0
    last_exit: int | None = None
    log_path: Path | None = None
    role: str = ""
    exchange: str = ""
    metrics_port: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def state(self, stopping: bool = False) -> str:
        if self.running:
            return "running"
        if self.last_exit is None:
            return "starting"
        if self.restart and not stopping:
            wait = max(0.0, self.next_start_at - time.monotonic())
            return f"backing off {wait:.0f}s (exit {self.last_exit})"
        return f"exited {self.last_exit}"

    def last_log_line(self, max_bytes: int = 4096) -> str:
        """The last non-empty line the child wrote (its latest error, usually)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1][:1000] if lines else ""  # the view shows failure reasons in full


@dataclass
class Supervisor:
    log_dir: Path
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def add(self, child: Child) -> Child:
        child.log_path = self.log_dir / f"{child.name}.log"
        self.children.append(child)
        return child

    def start_all(self) -> None:
        for child in self.children:
            if child.process is None:
                self.start(child)

    def start(self, child: Child) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(child)

    def _spawn(self, child: Child) -> None:
        assert child.log_path is not None
        with child.log_path.open("ab") as out:
            child.process = subprocess.Popen(
                list(child.argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child.env,
                start_new_session=True,  # its own process group: we signal the whole group
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        child.started_at = time.monotonic()
        log_event(log, logging.INFO, "started", child=child.name, pid=child.process.pid)

    def poll(self) -> list[Child]:
        """Reap exited children and restart them when due; returns children that exited for good."""
        finished: list[Child] = []
        now = time.monotonic()
        for child in self.children:
            if child.process is None:
                if not self.stopping and child.restart and now >= child.next_start_at:
                    self._spawn(child)
                continue
            code = child.process.poll()
            if code is None:
                if now - child.started_at > HEALTHY_AFTER_S:
                    child.backoff_s = 1.0
                continue
            child.last_exit = code
            child.process = None
            if self.stopping:
                continue
            if child.restart:
                child.restarts += 1
                child.next_start_at = now + child.backoff_s
                log_event(
                    log,
                    logging.WARNING,
                    "exited, restarting",
                    child=child.name,
                    code=code,
                    backoff_s=round(child.backoff_s),
                )
                child.backoff_s = min(child.backoff_s * 2, MAX_BACKOFF_S)
            else:
                finished.append(child)
        return finished

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM every child's process group, then SIGKILL what is left after `timeout`."""
        self.stopping = True
        for child in self.children:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log_event(
                    log,
                    logging.WARNING,
                    "did not stop in time, killing it",
                    child=child.name,
                    timeout_s=round(timeout),
                )
                _signal_group(child, signal.SIGKILL)
                child.process.wait()
            else:
                _signal_group(child, signal.SIGKILL)  # leftovers of its group, if any
            child.last_exit = child.process.returncode
            child.process = None


def _die_with_parent() -> None:
    """In the forked child: die if the supervisor dies (even by SIGKILL), so no orphans.

    SIGKILL, not SIGTERM: this is the last resort (the normal path is SIGTERM to the
    group plus a grace period), and a child stuck in a native call can ignore SIGTERM.
    """
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def signal_child(child: Child, sig: signal.Signals) -> bool:
    """Send ``sig`` to the child's process only (not its group); False when it is not running."""
    if child.process is None or child.process.poll() is not None:
        return False
    try:
        os.kill(child.process.pid, sig)
    except ProcessLookupError:
        return False
    return True


def _signal_group(child: Child, sig: signal.Signals) -> None:
    if child.process is None:
        return
    try:
        os.killpg(child.process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
