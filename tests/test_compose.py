"""docker-compose.yml cannot run here (no Docker engine): check it by parsing, against the code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from marketpipe.cli import COMMAND_MODULES
from marketpipe.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
INFRA = {"kafka", "schema-registry", "kafka-ui", "clickhouse", "prometheus", "grafana"}


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


def _exported_metric_names(tmp_path: Path) -> set[str]:
    """Sample names the code exports, read from the real collectors' exposition text."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    import sinks.metrics  # noqa: F401  (registers the sink's metrics in the default registry)
    from producers.metrics import ProducerCollector
    from producers.publisher import CaptureRawPublisher
    from streams.metrics import StreamCollector

    ours = CollectorRegistry()
    ours.register(ProducerCollector([], CaptureRawPublisher(tmp_path / "c.jsonl")))
    ours.register(StreamCollector(SimpleNamespace(loops={}, flushes=0)))  # a worker with no stage yet
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    for registry in (ours, REGISTRY):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return {name for name in names if name.startswith("marketpipe_")}


def test_prometheus_scrapes_every_marketpipe_service(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    scraped: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.split(":")
                scraped.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            scraped.update((name, int(dns["port"])) for name in dns["names"])
    services = _marketpipe_services(compose)
    for name, service in services.items():
        if name == "topics":
            continue
        port = int(service["environment"]["MARKETPIPE_METRICS_PORT"])
        assert (name, port) in scraped, name
    assert {host for host, _ in scraped} <= set(services)
    mount = "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    assert mount in compose["services"]["prometheus"]["volumes"]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    source = sources["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/marketpipe.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"] == path
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/marketpipe.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
    assert "GF_SECURITY_ADMIN_PASSWORD" in grafana["environment"]
    assert "${GRAFANA_ADMIN_PASSWORD" in grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]


def test_dashboard_queries_only_metrics_the_code_exports(tmp_path: Path) -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/marketpipe.json").read_text())
    exported = _exported_metric_names(tmp_path)
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"marketpipe_[a-z_]+", target["expr"])
    }
    assert used, "the dashboard queries nothing"
    assert used - exported == set()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("frames/s", "consumer lag", "books synced", "candles"):
        assert topic in titles
