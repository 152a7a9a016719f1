"""docker-compose.yml cannot run here (no Docker engine): check it by parsing, against the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from marketpipe.cli import COMMAND_MODULES
from marketpipe.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
INFRA = {"kafka", "schema-registry", "kafka-ui", "clickhouse"}


def _expand(value: str) -> str:
    """Docker Compose's ${VAR:-default} interpolation, with defaults only."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _marketpipe_services(compose: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in compose["services"].items() if s.get("image") == "marketpipe:local"}


def test_infrastructure_services_have_healthchecks_and_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= INFRA
    for name in INFRA:
        assert "healthcheck" in services[name], name
        assert services[name].get("ports"), name
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["kafka-ui"]["image"].startswith("kafbat/kafka-ui")
    ui_env = services["kafka-ui"]["environment"]
    assert ui_env["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] == "kafka:19092"
    assert ui_env["KAFKA_CLUSTERS_0_SCHEMAREGISTRY"] == "http://schema-registry:8081"


def test_marketpipe_services_run_real_commands(compose: dict[str, Any]) -> None:
    commands = {c for names in COMMAND_MODULES.values() for c in names}
    services = _marketpipe_services(compose)
    assert {"topics", "streams", "sink"} <= set(services)
    producers = [name for name in services if name.startswith("producer-")]
    assert sorted(producers) == [
        f"producer-{e}" for e in sorted(["binance", "coinbase", "kraken", "bybit", "okx"])
    ]
    for name, service in services.items():
        assert service["command"][0] in commands, name
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"


def test_marketpipe_environment_is_valid_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in _marketpipe_services(compose).items():
        env = {k: _expand(str(v)) for k, v in service["environment"].items()}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        assert settings.bootstrap_servers == "kafka:19092", name
        assert settings.schema_registry_url == "http://schema-registry:8081", name
        assert (
            settings.clickhouse_dsn.startswith("http://") and "@clickhouse:8123/" in settings.clickhouse_dsn
        )
        assert str(settings.data_dir) == "/data"


def test_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, (name, source)


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (ROOT / source).exists(), source


def test_env_example_has_no_real_secrets() -> None:
    text = (ROOT / ".env.example").read_text()
    assert "CLICKHOUSE_PASSWORD=change-me" in text
