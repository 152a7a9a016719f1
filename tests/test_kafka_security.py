"""Every Kafka client against brokers that authenticate (SASL/PLAIN, and SASL over TLS), with the
credentials only in `kafka.client`: topics apply, the producers and their control listener, the
sink, replay, tail and the lag view; a wrong password is one clear error from each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from secured_kafka import SecuredKafka

from marketpipe.codec import AvroCodec
from marketpipe.config import ConfigError, load_settings
from marketpipe.kafka_security import KafkaAccessError, aiokafka_options
from marketpipe.raw import CaptureWriter, RawRecord
from marketpipe.records import ControlRequest, Trade
from marketpipe.topics import Topology
from marketpipe.view import KafkaLag
from producers.control import ControlListener
from producers.publisher import KafkaRawPublisher
from producers.runner import ProducerPlan, build_connectors, run_producers
from sinks.clickhouse import connect
from sinks.worker import group_id

REPO = Path(__file__).resolve().parents[1]
CODEC = AvroCodec()
WRONG = "not-the-password"
TRADES = 40


def _marketpipe(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marketpipe.cli", "--data-dir", str(data_dir), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _env(secured: SecuredKafka, prefix: str, password: str | None = None, **extra: str) -> dict[str, str]:
    return secured.env(prefix, password) | {"MARKETPIPE_EXCHANGES": "binance", **extra}


def _trade(i: int) -> Trade:
    ts = 1_714_560_000_000_000 + i * 1000
    return Trade(
        exchange="binance",
        symbol="BTC-USDT",
        exchange_symbol="BTCUSDT",
        trade_id=str(i),
        price=60_000.0 + i,
        size=0.01,
        side="buy",
        ts=ts,
        recv_ts=ts + 500,
        conn="binance.0",
        seq=i,
    )


def _until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(params=["sasl_kafka", "sasl_ssl_kafka"])
def secured(request: pytest.FixtureRequest) -> SecuredKafka:
    found: SecuredKafka = request.getfixturevalue(request.param)
    return found


# -- against the brokers -----------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.slow
async def test_every_client_authenticates_with_credentials_only_in_kafka_client(
    secured: SecuredKafka, tmp_path: Path
) -> None:
    prefix = f"sec{uuid.uuid4().hex[:8]}."
    env = _env(secured, prefix)
    topology = Topology.from_settings(secured.settings(prefix, exchanges=["binance"]))

    applied = _marketpipe(tmp_path, env, "topics", "apply")
    assert applied.returncode == 0, applied.stderr
    assert f"created      {topology.raw('binance')}" in applied.stdout

    await _producers_publish_and_serve_a_resync(secured, prefix, topology)

    raw = _marketpipe(tmp_path, env, "tail", "raw.binance", "--from-beginning", "-e", "-n", "3")
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout.splitlines()[0])["value"]["kind"] == "open"

    _sink_stores_trades(secured, prefix, topology, tmp_path, env)

    trades = _marketpipe(tmp_path, env, "tail", "md.trades", "--from-beginning", "-e")
    assert trades.returncode == 0, trades.stderr
    ids = sorted(int(json.loads(line)["value"]["trade_id"]) for line in trades.stdout.splitlines())
    assert ids == list(range(TRADES))

    replayed = _marketpipe(
        tmp_path, env, "replay", "--group", group_id(topology), "--to-earliest", "--topics", topology.trades
    )
    assert replayed.returncode == 0, replayed.stderr
    assert f"of group {group_id(topology)}" in replayed.stdout
    lag = KafkaLag(secured.librdkafka_config())
    try:
        assert lag.lag(group_id(topology), [topology.trades]) == {topology.trades: TRADES}
    finally:
        lag.close()

    # last: the worker adds the simulator's trades to md.trades
    _stream_worker_normalises_the_raw_topic(secured, topology, tmp_path, env)
    books = _marketpipe(tmp_path, env, "tail", "md.book", "--from-beginning", "-e", "-n", "1")
    assert books.returncode == 0, books.stderr
    assert json.loads(books.stdout.splitlines()[0])["value"]["exchange"] == "binance"


async def _producers_publish_and_serve_a_resync(
    secured: SecuredKafka, prefix: str, topology: Topology
) -> None:
    """`run_producers` as `marketpipe produce` runs it: publisher and control listener from settings."""
    import simulator

    sim = await simulator.start_simulator(seed=3, exchanges=("binance",), book_rate=3.0, trade_rate=1.0)
    try:
        ws, rest = sim.urls()["binance"]
        settings = secured.settings(prefix, exchanges=["binance"], metrics_port=0)
        override = {"ws_url": ws, "rest_url": rest, "rest_min_interval_s": 0, "connect_interval_s": 0}
        plan = ProducerPlan(["binance"], ["BTC-USDT"], overrides={"binance": override})
        publisher = KafkaRawPublisher.from_settings(settings, topology)
        connector = build_connectors(settings, plan, publisher)["binance"]
        running = asyncio.create_task(
            run_producers(settings, {"binance": connector}, publisher, topology=topology)
        )
        await _wait(lambda: publisher.stats.published >= 5 and _live(connector), running, "raw records")
        shard = connector.shards[0]
        snapshots = shard.stats.rest
        # the listener starts reading at the end once assigned: ask again until a request lands
        sender = Producer(secured.librdkafka_config())
        deadline = time.monotonic() + 40
        while shard.stats.rest == snapshots:
            assert time.monotonic() < deadline, "the resync request was never served"
            assert not running.done(), running.exception()
            assert shard.current is not None
            request = ControlRequest(
                exchange="binance",
                symbol="BTC-USDT",
                exchange_symbol="BTCUSDT",
                action="resync",
                reason="test",
                ts=time.time_ns() // 1000,
                conn=shard.current.id,
            )
            sender.produce(topology.control, CODEC.encode(request, topology.control), key=request.key())
            assert sender.flush(10) == 0
            await asyncio.sleep(1.0)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        assert publisher.stats.dropped == 0 and publisher.stats.delivery_errors == 0
    finally:
        await sim.stop()


def _live(connector: Any) -> bool:
    return bool(connector.shards) and connector.shards[0].current is not None


async def _wait(predicate: Any, running: asyncio.Task[None], what: str) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert not running.done(), running.exception()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _stream_worker_normalises_the_raw_topic(
    secured: SecuredKafka, topology: Topology, tmp_path: Path, env: dict[str, str]
) -> None:
    """The transactional stream worker (consumer, transactional producer, admin) over the secured
    listener: it commits every raw record it read and stops cleanly."""
    command = ["stream", "--stages", "normalise", "--worker-id", "secured-1"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "marketpipe.cli", "--data-dir", str(tmp_path), *command],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    raw = topology.raw("binance")
    lag = KafkaLag(secured.librdkafka_config())
    try:
        _until(
            lambda: worker.poll() is None and lag.lag(topology.streams_group, [raw]) == {raw: 0},
            90,
            "the stream worker to commit every raw record",
        )
    finally:
        lag.close()
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr


def _sink_stores_trades(
    secured: SecuredKafka, prefix: str, topology: Topology, tmp_path: Path, env: dict[str, str]
) -> None:
    producer = Producer(secured.librdkafka_config())
    for trade in map(_trade, range(TRADES)):
        producer.produce(topology.trades, CODEC.encode(trade, topology.trades), key=trade.key())
    assert producer.flush(10) == 0
    dsn = f"chdb:///{tmp_path / 'clickhouse'}"
    sink = subprocess.Popen(
        [sys.executable, "-m", "marketpipe.cli", "--data-dir", str(tmp_path), "sink", "--metrics-port", "0"],
        cwd=REPO,
        env=env | {"CLICKHOUSE_DSN": dsn},
        stderr=subprocess.PIPE,
        text=True,
    )
    lag = KafkaLag(secured.librdkafka_config())
    try:
        _until(
            lambda: (
                sink.poll() is None and lag.lag(group_id(topology), [topology.trades]) == {topology.trades: 0}
            ),
            60,
            "the sink to commit every trade",
        )
    finally:
        lag.close()
        sink.send_signal(signal.SIGTERM)
        _, stderr = sink.communicate(timeout=30)
    assert sink.returncode == 0, stderr
    client = connect(dsn)
    try:
        assert client.query("SELECT count() FROM trades").result_rows[0][0] == TRADES
    finally:
        client.close()


@pytest.mark.kafka
@pytest.mark.slow
def test_a_wrong_password_is_one_clear_error_from_every_client(
    sasl_kafka: SecuredKafka, tmp_path: Path
) -> None:
    prefix = f"bad{uuid.uuid4().hex[:8]}."
    applied = _marketpipe(tmp_path, _env(sasl_kafka, prefix), "topics", "apply")
    assert applied.returncode == 0, applied.stderr  # the topics exist: only the password is wrong
    refused = (
        f"Error: Kafka at {sasl_kafka.bootstrap} refused the credentials in kafka.client: "
        "SASL authentication error: Authentication failed: Invalid username or password "
        "(check sasl.mechanism, sasl.username and sasl.password)"
    )
    capture = tmp_path / "one.jsonl"
    with CaptureWriter(capture) as writer:
        writer.write(
            RawRecord("binance", "binance.x.0", 0, "open", time.time_ns(), b'{"symbols":["BTCUSDT"]}')
        )
    bad_env = _env(sasl_kafka, prefix, WRONG, CLICKHOUSE_DSN=f"chdb:///{tmp_path / 'clickhouse'}")
    commands = {
        "topics apply": ["topics", "apply"],
        "produce": ["produce", "--from-capture", str(capture)],
        "sink": ["sink", "--metrics-port", "0"],
        "replay": ["replay", "--group", "any", "--to-earliest"],
        "tail": ["tail", "md.trades", "-e"],
        "stream": ["stream"],
    }
    for name, args in commands.items():
        result = _marketpipe(tmp_path, bad_env, *args)
        assert result.returncode == 1, (name, result.stdout, result.stderr)
        assert [line for line in result.stderr.splitlines() if line.strip()] == [refused], name

    bad = sasl_kafka.settings(prefix, WRONG, exchanges=["binance"], metrics_port=0)
    topology = Topology.from_settings(bad)
    listener = ControlListener({}, bad.kafka_client_config(), topology, CODEC)
    with pytest.raises(KafkaAccessError, match="refused the credentials in kafka"):
        asyncio.run(listener.run())
    # run_producers stops before any connector starts (their REST endpoint here is unreachable)
    plan = ProducerPlan(
        ["binance"], ["BTC-USDT"], overrides={"binance": {"rest_url": "http://127.0.0.1:9/x"}}
    )
    publisher = KafkaRawPublisher.from_settings(bad, topology)
    with pytest.raises(KafkaAccessError, match="refused the credentials"):
        asyncio.run(run_producers(bad, build_connectors(bad, plan, publisher), publisher, topology=topology))


@pytest.mark.kafka
@pytest.mark.slow
def test_tls_without_the_brokers_ca_is_one_clear_error(sasl_ssl_kafka: SecuredKafka, tmp_path: Path) -> None:
    env = _env(sasl_ssl_kafka, "noca.")
    client = json.loads(env["MARKETPIPE_KAFKA__CLIENT"])
    del client["ssl.ca.location"]
    result = _marketpipe(tmp_path, env | {"MARKETPIPE_KAFKA__CLIENT": json.dumps(client)}, "topics", "apply")
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"Error: Kafka at {sasl_ssl_kafka.bootstrap} failed the TLS handshake:"), line
    assert "certificate verify failed" in line


# -- settings, without a broker ------------------------------------------------------------------

SCRAM_SSL = {
    "security.protocol": "sasl_ssl",
    "sasl.mechanisms": "SCRAM-SHA-512",
    "sasl.username": "app",
    "sasl.password": "secret",
}


def test_aiokafka_gets_sasl_and_an_ssl_context_verifying_the_configured_ca(tmp_path: Path) -> None:
    ca = _self_signed(tmp_path, "ca")[0]
    options = aiokafka_options(
        {"bootstrap.servers": "b:9093", "client.id": "mp", **SCRAM_SSL, "ssl.ca.location": ca}
    )
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "b:9093",
        "client_id": "mp",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "app",
        "sasl_plain_password": "secret",
    }
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [cert["subject"] for cert in context.get_ca_certs()] == [((("commonName", "ca"),),)]
    relaxed = aiokafka_options({**SCRAM_SSL, "ssl.endpoint.identification.algorithm": "none"})["ssl_context"]
    assert relaxed.verify_mode == ssl.CERT_REQUIRED and not relaxed.check_hostname
    unverified = aiokafka_options({**SCRAM_SSL, "enable.ssl.certificate.verification": "false"})[
        "ssl_context"
    ]
    assert unverified.verify_mode == ssl.CERT_NONE


def test_aiokafka_client_certificate_with_an_encrypted_key(tmp_path: Path) -> None:
    certificate, key = _self_signed(tmp_path, "client", key_password="key-pass")
    mutual = {"security.protocol": "SSL", "ssl.certificate.location": certificate, "ssl.key.location": key}
    assert isinstance(
        aiokafka_options({**mutual, "ssl.key.password": "key-pass"})["ssl_context"], ssl.SSLContext
    )
    with pytest.raises(ConfigError, match=r"ssl\.certificate\.location / ssl\.key\.location"):
        aiokafka_options({**mutual, "ssl.key.password": "wrong"})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"sasl.mechanism": "OAUTHBEARER"},
            "sasl.mechanism OAUTHBEARER cannot be used by the producers' control",
        ),
        (
            {"ssl.keystore.location": "/k.p12"},
            "ssl.keystore.location cannot be used by the producers' control",
        ),
        ({"ssl.ca.location": "/no/such/ca.pem"}, "ssl.ca.location /no/such/ca.pem is not a readable file"),
    ],
)
def test_what_aiokafka_cannot_honour_is_a_config_error(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        aiokafka_options({**SCRAM_SSL, **extra})


@pytest.mark.parametrize(
    ("client", "message"),
    [
        (
            {"security.protocol": "SASL_SSL", "sasl.username": "a", "sasl.password": "b"},
            "needs sasl.mechanism",
        ),
        (
            {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"},
            "needs sasl.username and sasl.password",
        ),
        ({"sasl.username": "a", "sasl.password": "b"}, "need security.protocol SASL_SSL or SASL_PLAINTEXT"),
        ({"security.protocol": "TLS"}, "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        ({"bootstrap.servers": "x:9092"}, "belongs in kafka.bootstrap_servers"),
    ],
)
def test_kafka_client_that_cannot_connect_fails_at_load(
    client: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("MARKETPIPE_KAFKA__CLIENT", json.dumps(client))
    with pytest.raises(ConfigError, match=f"kafka.client: .*{message}.*MARKETPIPE_KAFKA__CLIENT"):
        load_settings()


def test_toml_kafka_client_booleans_reach_librdkafka_as_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "secured.toml"
    config.write_text(
        '[kafka]\nbootstrap_servers = "k:9093"\n[kafka.client]\n"security.protocol" = "SSL"\n'
        '"enable.ssl.certificate.verification" = false\n"socket.keepalive.enable" = true\n'
    )
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("MARKETPIPE_CONFIG", str(config))
    config = load_settings().kafka_client_config()
    del config["logger"]  # librdkafka's log lines through logging (marketpipe.kafka_logs)
    assert config == {
        "bootstrap.servers": "k:9093",
        "security.protocol": "SSL",
        "enable.ssl.certificate.verification": "false",
        "socket.keepalive.enable": "true",
    }


def test_an_unquoted_dotted_toml_key_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "dotted.toml"
    config.write_text('[kafka.client]\nssl.ca.location = "/etc/ssl/ca.pem"\n')
    monkeypatch.setenv("MARKETPIPE_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"kafka\.client\.ssl is a table: quote"):
        load_settings()


def _self_signed(directory: Path, name: str, key_password: str | None = None) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    certificate, key = directory / f"{name}.pem", directory / f"{name}.key"
    secrecy = ["-passout", f"pass:{key_password}"] if key_password else ["-noenc"]
    request = ["req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", f"/CN={name}"]
    files = ["-keyout", str(key), "-out", str(certificate)]
    subprocess.run([openssl, *request, *files, *secrecy], capture_output=True, check=True)
    return str(certificate), str(key)
