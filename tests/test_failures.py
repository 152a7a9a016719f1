"""Failures say one clear thing: a Kafka that does not answer, records not delivered, bad
settings. Each is one ``Error:`` line and a non-zero exit, whatever the command."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from marketpipe.cli import main
from marketpipe.config import SYMBOL_RULE, load_settings
from marketpipe.errors import UserError, user_errors_in
from marketpipe.kafka_logs import LOGGER_NAME, RepeatFilter, librdkafka_logger
from marketpipe.raw import CaptureWriter, RawRecord
from marketpipe.topics import Topology

REPO = Path(__file__).resolve().parents[1]
_OWN_VARIABLES = ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "CLICKHOUSE_DSN", "MARKETPIPE_CONFIG")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_environ() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MARKETPIPE_") and name not in _OWN_VARIABLES
    }


def _marketpipe(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marketpipe.cli", "--data-dir", str(data_dir), *args],
        cwd=REPO,
        env={**_clean_environ(), "MARKETPIPE_METRICS_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _capture(path: Path, *payloads: bytes) -> Path:
    with CaptureWriter(path) as writer:
        writer.write(RawRecord("binance", "binance.x.0", 0, "open", time.time_ns(), b'{"symbols":[]}'))
        for seq, payload in enumerate(payloads, start=1):
            writer.write(RawRecord("binance", "binance.x.0", seq, "recv", time.time_ns(), payload))
    return path


# -- a Kafka that does not answer -----------------------------------------------------------


def test_every_command_against_an_unreachable_kafka_says_one_line_and_exits_1(tmp_path: Path) -> None:
    port = _closed_port()
    capture = _capture(tmp_path / "one.jsonl", b'{"e":"trade"}')
    nowhere = "127.0.0.1:9/binance"  # the producers fail on Kafka before they connect anywhere
    commands = {
        "topics list": ["topics", "list"],
        "topics apply": ["topics", "apply"],
        "replay --dry-run": ["replay", "--group", "marketpipe-sink", "--to-earliest", "--dry-run"],
        "tail": ["tail", "md.trades", "-e"],
        "stream": ["stream"],
        "sink": ["sink", "--metrics-port", "0"],
        "produce": ["produce", "--exchange", "binance", "--no-control", "--ws-url", f"ws://{nowhere}"],
        "produce --from-capture": ["produce", "--from-capture", str(capture)],
    }
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "MARKETPIPE_KAFKA__CONNECT_TIMEOUT_S": "3",
        "CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'clickhouse'}",
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(
            zip(
                commands,
                pool.map(lambda args: _marketpipe(tmp_path / "data", env, *args), commands.values()),
                strict=True,
            )
        )
    expected = (
        f"Error: Kafka at 127.0.0.1:{port} did not answer within 3s "
        f"(Connect to ipv4#127.0.0.1:{port} failed: Connection refused); check that a broker runs at "
        "that address (KAFKA_BOOTSTRAP_SERVERS) and is reachable"
    )
    for name, result in results.items():
        assert (result.returncode, _lines(result.stderr)) == (1, [expected]), (name, result.stderr[-3000:])
        assert "published" not in result.stdout, name


def test_an_unreachable_local_broker_says_how_to_start_it(tmp_path: Path) -> None:
    env = {"MARKETPIPE_KAFKA__LOCAL__PORT": str(_closed_port()), "MARKETPIPE_KAFKA__CONNECT_TIMEOUT_S": "2"}
    result = _marketpipe(tmp_path / "data", env, "stream")
    assert result.returncode == 1
    [line] = _lines(result.stderr)
    assert line.endswith("is the local broker running? `marketpipe kafka start` starts it"), line


def test_librdkafka_logs_go_through_logging_and_a_repeated_line_shows_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{_closed_port()}")
    fresh = RepeatFilter()
    monkeypatch.setattr(librdkafka_logger(), "filters", [fresh])
    config = load_settings().kafka_client_config()
    assert config["logger"] is librdkafka_logger()
    producer = Producer({**config, "reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 50})
    deadline = time.monotonic() + 60
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        while sum(held for _, held in fresh._seen.values()) < 5 and time.monotonic() < deadline:
            producer.poll(0.1)
    refused = [r for r in caplog.records if r.name == LOGGER_NAME and "Connection refused" in r.getMessage()]
    assert sum(held for _, held in fresh._seen.values()) >= 5, "librdkafka did not log its retries"
    assert len(refused) == 1, [r.getMessage() for r in refused]


def test_the_repeat_filter_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    repeat = RepeatFilter(60.0, clock=lambda: now[0])

    def record(ms: int) -> logging.LogRecord:
        args = ("FAIL", f"rdkafka#producer-{ms}", f"Connect failed: refused (after {ms}ms in state CONNECT)")
        return logging.LogRecord(LOGGER_NAME, logging.ERROR, __file__, 1, "%s [%s] %s", args, None)

    passed = [repeat.filter(record(ms)) for ms in range(10)]
    assert passed == [True] + [False] * 9
    now[0] = 61.0
    again = record(99)
    assert repeat.filter(again)
    assert again.getMessage().endswith("(9 more like it in the last 61 s not shown)")


# -- records that were not delivered ----------------------------------------------------------


@pytest.mark.kafka
def test_produce_from_capture_fails_naming_the_records_not_delivered(
    kafka_bootstrap: str, topics: Topology, tmp_path: Path
) -> None:
    capture = _capture(tmp_path / "big.jsonl", b'{"e":"trade"}', b"x" * 4096, b'{"e":"trade"}')
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MARKETPIPE_KAFKA__TOPIC_PREFIX": topics.prefix,
        "MARKETPIPE_PRODUCERS__MAX_MESSAGE_BYTES": "1024",  # the 4 KiB frame cannot be produced
    }
    result = _marketpipe(tmp_path / "data", env, "produce", "--from-capture", str(capture))
    assert result.returncode == 1, result.stderr
    lines = _lines(result.stderr)  # a fresh broker may add librdkafka's own (rate-limited) warnings
    [reason] = [line for line in lines if "record not published" in line]
    assert "too large" in reason.lower(), reason
    assert lines[-1] == (
        f"Error: 1 of 4 records from 1 capture file(s) were not delivered to Kafka at {kafka_bootstrap} "
        "(1 dropped, 0 still unsent after 30s)"
    )
    assert "published" not in result.stdout


# -- configuration ------------------------------------------------------------------------------


def _invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    # `--config` sets MARKETPIPE_CONFIG: naming it here makes the runner restore it afterwards
    unset: dict[str, str | None] = {name: None for name in (*os.environ, *_OWN_VARIABLES)}
    result = CliRunner().invoke(main, list(args), env={**unset, **(env or {})})
    return result.exit_code, _lines(result.stderr)


def test_a_toml_syntax_error_is_one_usage_error_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[kafka]\nlinger_ms = = 5\n")
    code, lines = _invoke("--config", str(config), "topics", "list")
    assert code == 2
    assert lines == [f"Error: {config}:2:13: not valid TOML: Invalid value"]


def test_unknown_keys_in_tables_are_usage_errors_naming_the_closest_key(tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text('[kafka]\nlingerms = 5\n\n[producers.binanse]\nws_url = "ws://x"\n')
    code, lines = _invoke("--config", str(config), "topics", "list")
    assert code == 2
    assert lines == [
        "Error: invalid configuration:",
        f"  - {config}:2: unknown key 'lingerms' in [kafka]; did you mean 'linger_ms'?",
        f"  - {config}:4: unknown key 'binanse' in [producers]; did you mean 'binance'?",
    ]


def test_a_bad_variable_is_one_usage_error_naming_it() -> None:
    code, lines = _invoke("topics", "list", env={"MARKETPIPE_STREAMS__OHLCV_INTERVALS": "1m,7x"})
    assert code == 2
    assert lines == [
        "Error: invalid configuration: streams.ohlcv_intervals: interval '7x' must look like 1s, 5m, 1h "
        "or 1d (MARKETPIPE_STREAMS__OHLCV_INTERVALS)"
    ]


def test_symbols_on_the_command_line_get_the_base_quote_check() -> None:
    code, lines = _invoke("produce", "--exchange", "binance", "--symbols", "btcusdt")
    assert code == 2
    assert lines == [f"Error: --symbols: BTCUSDT: {SYMBOL_RULE}"]


# -- the one error path --------------------------------------------------------------------------


def test_user_errors_inside_exception_groups_are_shown_as_one() -> None:
    single = user_errors_in(ExceptionGroup("tasks", [UserError("broker gone")]))
    assert single is not None and single.message == "broker gone"
    nested = ExceptionGroup("tasks", [UserError("a"), ExceptionGroup("inner", [UserError("b", exit_code=2)])])
    both = user_errors_in(nested)
    assert both is not None and (both.message, both.exit_code) == ("a; b", 2)
    assert user_errors_in(ExceptionGroup("tasks", [UserError("a"), RuntimeError("bug")])) is None
