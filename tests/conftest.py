"""Session fixtures on real components.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` when set; else a testcontainers broker when a Docker
engine answers; else the project's own local broker (marketpipe.kafka_local) on free
ports in a temporary data dir, stopped at the end of the session.
ClickHouse: embedded chDB in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from secured_kafka import SecuredKafka, start_secured_kafka

from marketpipe.config import EXCHANGES, LocalBrokerSettings
from marketpipe.kafka_local import LocalKafka, free_port
from marketpipe.topics import Topology, apply_topology

pytest_plugins = ["clickhouse_support"]  # the chDB `link` fixture

KAFKA_IMAGE = "apache/kafka:4.3.1"


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker for the whole session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    settings = LocalBrokerSettings(port=free_port(), controller_port=free_port(), heap="768m")
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), settings)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    """A broker of its own whose listener takes SASL/PLAIN only (tests/secured_kafka.py)."""
    secured = start_secured_kafka(tmp_path_factory.mktemp("sasl-kafka"), "SASL_PLAINTEXT")
    try:
        yield secured
    finally:
        secured.stop()


@pytest.fixture(scope="session")
def sasl_ssl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    """The same over TLS (SASL_SSL) with a self-signed certificate made at start."""
    secured = start_secured_kafka(tmp_path_factory.mktemp("sasl-ssl-kafka"), "SASL_SSL")
    try:
        yield secured
    finally:
        secured.stop()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def topics(kafka_admin: AdminClient) -> Topology:
    """A fresh topic namespace (unique prefix) with every declared topic created."""
    topology = Topology(prefix=f"t{uuid.uuid4().hex[:10]}.", exchanges=EXCHANGES, partitions=3)
    apply_topology(kafka_admin, topology.specs())
    return topology


@pytest.fixture
def chdb_dsn(tmp_path: Path) -> str:
    """DSN of a fresh embedded ClickHouse (chDB) database directory."""
    return f"chdb:///{tmp_path / 'clickhouse'}"
