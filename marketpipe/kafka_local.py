"""A real single-node Apache Kafka broker (KRaft, combined broker+controller), no Docker.

The broker jars are resolved from Maven's default repository with ``mvn`` through
``deploy/local/kafka/pom.xml`` (copy-dependencies into a cache directory, once per
Kafka version). Broker state lives under ``<data dir>/kafka/``: storage, config,
log file and pid file, so two deployments with different data dirs never share
anything but the jar cache.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marketpipe.config import LocalBrokerSettings

POM = Path(__file__).resolve().parents[1] / "deploy" / "local" / "kafka" / "pom.xml"
MIN_JAVA = 17


def new_cluster_id() -> str:
    """A random cluster id as Kafka makes them: URL-safe base64 of a UUID, never starting with
    "-" (the storage tool would read such an id as an option and refuse to format)."""
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not found.startswith("-"):
            return found


class LocalKafkaError(RuntimeError):
    """The local broker cannot be fetched, started or stopped; the message says why."""


def jar_cache_root() -> Path:
    base = os.environ.get("MARKETPIPE_JAR_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "marketpipe" if base else Path.home() / ".cache" / "marketpipe"


def check_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError(f"Java {MIN_JAVA}+ is required for the local Kafka broker: no `java` on PATH")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise LocalKafkaError(f"cannot read the Java version from `java -version`: {out.strip()!r}")
    major = int(match.group(1)) if match.group(1) != "1" else int(match.group(2) or 0)
    if major < MIN_JAVA:
        raise LocalKafkaError(f"Java {MIN_JAVA}+ is required for Kafka 4; found Java {major} at {java}")
    return java


def fetch_jars(version: str, quiet: bool = True) -> Path:
    """Resolve the broker jars with Maven (once per version) and return the libs directory."""
    libs = jar_cache_root() / f"kafka-{version}" / "libs"
    marker = libs.parent / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError("Maven (`mvn`) is required to resolve the Kafka broker jars; install it")
    if not POM.exists():
        raise LocalKafkaError(f"{POM} is missing; run marketpipe from a checkout of the repository")
    if libs.exists():
        shutil.rmtree(libs)
    cmd = [
        mvn,
        "-B",
        *(["-q"] if quiet else []),
        "-f",
        str(POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        errors = [line for line in result.stdout.splitlines() if "ERROR" in line][:5]
        raise LocalKafkaError(
            f"could not resolve Kafka {version} jars with Maven (exit {result.returncode}):\n"
            + "\n".join(errors or result.stdout.splitlines()[-10:] or result.stderr.splitlines()[-10:])
        )
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise LocalKafkaError(f"Maven finished but no kafka_2.13 jar is in {libs}")
    marker.write_text(version + "\n")
    return libs


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A port free now, for a server that binds it later (a broker, a child's metrics endpoint).

    It is picked below the kernel's ephemeral range: a port the kernel picked (``bind`` to 0)
    could be handed out again, to an outgoing connection or another ``bind`` to 0 (the
    sink's ClickHouse endpoint, say), before the server binds it. Ports this process handed
    out lately are not handed out again.
    """
    span = min(_ephemeral_low(), 32768) - _PICKED_FROM
    for _ in range(200 if span >= 1000 else 0):
        port = _PICKED_FROM + secrets.randbelow(span)
        if port not in _handed_out and port_free(port):
            _handed_out.append(port)
            return port
    with socket.socket() as sock:  # no room, or none free, below the ephemeral range
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PICKED_FROM = 20000
_handed_out: deque[int] = deque(maxlen=256)


@functools.cache
def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; macOS and Windows start higher


def port_free(port: int) -> bool:
    """Nothing listens on (or holds) ``port`` on the loopback interface now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    answering: bool
    log_file: Path

    def describe(self) -> str:
        if not self.running:
            return f"stopped (log: {self.log_file})"
        state = "answering metadata" if self.answering else "NOT answering metadata"
        return f"running pid {self.pid} on {self.bootstrap}, {state} (log: {self.log_file})"


class LocalKafka:
    """Start, stop and inspect the local broker for one data directory."""

    def __init__(self, data_dir: Path, settings: LocalBrokerSettings) -> None:
        self.settings = settings
        self.home = data_dir.resolve() / "kafka"
        self.storage = self.home / "data"
        self.config_file = self.home / "server.properties"
        self.log_config = self.home / "log4j2.yaml"
        self.log_file = self.home / "kafka.log"
        self.pid_file = self.home / "kafka.pid"
        self.tls_dir = self.home / "tls"
        self.ca_file = self.tls_dir / "ca.pem"
        self.secrets_file = self.home / "local-secrets.json"

    @property
    def bootstrap(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def secured(self) -> bool:
        return self.settings.security_protocol != "PLAINTEXT"

    def client_config(self, user: str | None = None, password: str | None = None) -> dict[str, str]:
        """librdkafka settings (`kafka.client`) that reach this broker's listener as `user`.

        ``password`` overrides the configured one (to try a wrong one); with no ``user`` the
        broker's own internal user is used, as the readiness probe does.
        """
        protocol = self.settings.security_protocol
        config = {"bootstrap.servers": self.bootstrap}
        if protocol == "PLAINTEXT":
            return config
        config["security.protocol"] = protocol
        if protocol.startswith("SASL_"):
            name, known = (user, self.settings.sasl_users[user]) if user else self._internal_user()
            config |= {"sasl.mechanism": "PLAIN", "sasl.username": name, "sasl.password": password or known}
        if protocol.endswith("SSL"):
            config["ssl.ca.location"] = str(self.ca_file)
        return config

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> float:
        """Start the broker unless it is running; return seconds until it answered metadata."""
        began = time.monotonic()
        if self.pid() is not None:
            self.wait_until_ready(began)
            return time.monotonic() - began
        java = check_java()
        libs = fetch_jars(self.settings.kafka_version)
        for port in (self.settings.port, self.settings.controller_port):
            if port_open(self.settings.host, port):
                raise LocalKafkaError(
                    f"port {port} on {self.settings.host} is already in use by another process; "
                    "choose others with MARKETPIPE_KAFKA__LOCAL__PORT / "
                    "MARKETPIPE_KAFKA__LOCAL__CONTROLLER_PORT"
                )
        self.home.mkdir(parents=True, exist_ok=True)
        if self.settings.security_protocol.endswith("SSL"):
            self._make_certificate(java)
        self._write_configs()
        classpath = f"{libs}/*"
        if not (self.storage / "meta.properties").exists():
            self._format(java, classpath)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                [
                    java,
                    f"-Xmx{self.settings.heap}",
                    f"-Xms{self.settings.heap}",
                    "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={self.log_config}",
                    f"-Dmarketpipe.home={self.home}",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(self.config_file),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{process.pid}\n")
        self.wait_until_ready(began, process)
        return time.monotonic() - began

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after `timeout`); False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process_alive(pid):
            time.sleep(0.1)
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while process_alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> BrokerStatus:
        pid = self.pid()
        answering = pid is not None and self._answers_metadata(1.0)
        return BrokerStatus(pid is not None, pid, self.bootstrap, answering, self.log_file)

    def pid(self) -> int | None:
        """The pid of this data dir's broker if it is alive (checks the command line, not just the pid)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return pid if process_alive(pid) else None
        ours = b"kafka.Kafka" in cmdline and f"-Dmarketpipe.home={self.home}".encode() in cmdline
        return pid if ours and process_alive(pid) else None

    def wait_until_ready(self, began: float, process: subprocess.Popen[bytes] | None = None) -> None:
        deadline = began + self.settings.start_timeout_s
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise LocalKafkaError(
                    f"Kafka exited with code {process.returncode} during start; "
                    f"last log lines:\n{self.log_tail()}"
                )
            if port_open(self.settings.host, self.settings.port, 0.2) and self._answers_metadata(2.0):
                return
            time.sleep(0.2)
        raise LocalKafkaError(
            f"Kafka did not answer metadata on {self.bootstrap} within {self.settings.start_timeout_s:.0f}s; "
            f"log tail:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- internals --------------------------------------------------------------------

    def _answers_metadata(self, timeout: float) -> bool:
        from confluent_kafka.admin import AdminClient

        config: dict[str, Any] = {
            **(self.client_config() if self.secured else {"bootstrap.servers": self.bootstrap}),
            "log_level": 0,
            "logger": _null_logger(),
        }
        admin = AdminClient(config)
        try:
            metadata = admin.list_topics(timeout=timeout)
        except Exception:
            return False
        return bool(metadata.brokers)

    def _format(self, java: str, classpath: str) -> None:
        cluster_id = new_cluster_id()
        result = subprocess.run(
            [
                java,
                f"-Dlog4j2.configurationFile={self.log_config}",
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.config_file),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LocalKafkaError(f"formatting Kafka storage failed:\n{result.stdout}\n{result.stderr}")

    def _write_configs(self) -> None:
        s = self.settings
        self.config_file.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{s.host}:{s.controller_port}",
                    *self._listener_lines(),
                    f"log.dirs={self.storage}",
                    "num.partitions=6",
                    # topics come from `marketpipe topics apply`; an auto-created topic would
                    # silently get the wrong partition count and config
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=6",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "message.max.bytes=16777216",
                    "replica.fetch.max.bytes=16777216",
                    "log.cleaner.enable=true",
                    "",
                ]
            )
        )
        if self.secured:
            self.config_file.chmod(0o600)  # it holds the SASL passwords and the keystore password
        self.log_config.write_text(LOG4J2_YAML)

    def _listener_lines(self) -> list[str]:
        s = self.settings
        name = s.security_protocol  # the listener is named after its protocol
        lines = [
            f"listeners={name}://{s.host}:{s.port},CONTROLLER://{s.host}:{s.controller_port}",
            f"advertised.listeners={name}://{s.host}:{s.port}",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{name}:{name}",
            f"inter.broker.listener.name={name}",
        ]
        if name.startswith("SASL_"):
            lines += self._sasl_lines(name.lower())
        if name.endswith("SSL"):
            lines += self._ssl_lines()
        return lines

    def _sasl_lines(self, listener: str) -> list[str]:
        internal, internal_password = self._internal_user()
        users = {**self.settings.sasl_users, internal: internal_password}
        accepted = " ".join(f'user_{user}="{password}"' for user, password in users.items())
        jaas = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{internal}" password="{internal_password}" {accepted};'
        )
        return [
            "sasl.enabled.mechanisms=PLAIN",
            "sasl.mechanism.inter.broker.protocol=PLAIN",
            f"listener.name.{listener}.plain.sasl.jaas.config={jaas}",
        ]

    def _ssl_lines(self) -> list[str]:
        password = self._secrets()["keystore_password"]
        return [
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={self.tls_dir / 'broker.p12'}",
            f"ssl.keystore.password={password}",
            f"ssl.key.password={password}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.ca_file}",
        ]

    def _internal_user(self) -> tuple[str, str]:
        """The broker's own SASL user (inter-broker and readiness probe), never one of the configured."""
        return "marketpipe-broker", self._secrets()["broker_password"]

    def _secrets(self) -> dict[str, str]:
        """Random passwords made once per data dir, kept beside the broker's config (mode 0600)."""
        try:
            found: dict[str, str] = json.loads(self.secrets_file.read_text())
            return found
        except (OSError, ValueError):
            pass
        made = {"broker_password": secrets.token_urlsafe(24), "keystore_password": secrets.token_urlsafe(24)}
        self.home.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(made, out)
        return made

    def _make_certificate(self, java: str) -> None:
        """A self-signed certificate for the TLS listener (once per data dir); clients trust ``ca.pem``."""
        keystore = self.tls_dir / "broker.p12"
        if keystore.exists() and self.ca_file.exists():
            return
        keytool = Path(java).resolve().parent / "keytool"
        if not keytool.exists():
            raise LocalKafkaError(f"`keytool` (beside {java}) is needed to make the TLS certificate")
        self.tls_dir.mkdir(parents=True, exist_ok=True)
        keystore.unlink(missing_ok=True)
        password = self._secrets()["keystore_password"]
        names = dict.fromkeys([_san_entry(self.settings.host), "dns:localhost", "ip:127.0.0.1"])
        store = ["-keystore", str(keystore), "-storetype", "PKCS12", "-storepass", password]
        _keytool(
            keytool,
            "-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650",
            "-dname", "CN=marketpipe local broker", "-ext", "SAN=" + ",".join(names),
            "-keypass", password, *store,
        )  # fmt: skip
        _keytool(keytool, "-exportcert", "-rfc", "-alias", "broker", "-file", str(self.ca_file), *store)
        keystore.chmod(0o600)


LOG4J2_YAML = """\
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka
        level: INFO
      - name: org.apache.kafka
        level: WARN
      - name: kafka.request.logger
        level: WARN
      - name: state.change.logger
        level: WARN
"""


def _san_entry(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"dns:{host}"
    return f"ip:{host}"


def _keytool(keytool: Path, *args: str) -> None:
    result = subprocess.run([str(keytool), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LocalKafkaError(f"keytool {args[0]} failed: {result.stdout}{result.stderr}".strip())


def process_alive(pid: int | None) -> bool:
    """Whether `pid` is a live process (a zombie child counts as gone)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
        if state == "Z":
            os.waitpid(pid, os.WNOHANG)
            return False
    except (OSError, IndexError, ChildProcessError):
        pass
    return True


def _null_logger() -> object:
    import logging

    logger = logging.getLogger("marketpipe.kafka_local.probe")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger
