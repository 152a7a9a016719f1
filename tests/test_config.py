"""Settings: defaults, TOML, environment overrides, and errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketpipe.config import ConfigError, interval_to_us, load_settings
from marketpipe.exchanges import EXCHANGES


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MARKETPIPE_") or name in (
            "KAFKA_BOOTSTRAP_SERVERS",
            "SCHEMA_REGISTRY_URL",
            "CLICKHOUSE_DSN",
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_use_local_broker_and_embedded_clickhouse(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.uses_local_broker and settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.clickhouse_dsn == f"chdb:///{tmp_path / '.marketpipe' / 'clickhouse'}"
    assert settings.exchanges == list(EXCHANGES)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-a:9092,broker-b:9092")
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "http://registry:8081")
    monkeypatch.setenv("MARKETPIPE_DATA_DIR", "/srv/mp")
    monkeypatch.setenv("MARKETPIPE_SYMBOLS", "BTC-USDT, SOL-USDT")
    monkeypatch.setenv("MARKETPIPE_KAFKA__TOPIC_PREFIX", "staging.")
    monkeypatch.setenv(
        "MARKETPIPE_KAFKA__CLIENT",
        '{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "mp", '
        '"sasl.password": "secret"}',
    )
    settings = load_settings()
    assert not settings.uses_local_broker
    assert settings.bootstrap_servers == "broker-a:9092,broker-b:9092"
    assert settings.schema_registry_url == "http://registry:8081"
    assert settings.data_dir == Path("/srv/mp")
    assert settings.symbols == ["BTC-USDT", "SOL-USDT"]
    assert settings.kafka.topic_prefix == "staging."
    assert settings.kafka_client_config()["security.protocol"] == "SASL_SSL"


def test_toml_file_and_env_priority(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "marketpipe.toml").write_text(
        'exchanges = ["okx", "bybit"]\n[kafka]\nlinger_ms = 5\n[streams]\nohlcv_intervals = ["1m", "1h"]\n'
    )
    monkeypatch.setenv("MARKETPIPE_KAFKA__LINGER_MS", "50")
    settings = load_settings()
    assert settings.exchanges == ["okx", "bybit"]
    assert settings.streams.ohlcv_intervals == ["1m", "1h"]
    assert settings.kafka.linger_ms == 50  # the environment wins over the file


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("MARKETPIPE_EXCHANGES", "binance,ftx", "unknown exchange"),
        ("MARKETPIPE_SYMBOLS", "btcusdt", "BASE-QUOTE"),
        ("MARKETPIPE_KAFKA__LOCAL__PORT", "99999", "MARKETPIPE_KAFKA__LOCAL__PORT"),
        ("MARKETPIPE_STREAMS__OHLCV_INTERVALS", '["1m", "7x"]', "1s, 5m, 1h or 1d"),
        ("MARKETPIPE_KAFKA__TOPIC_PREFIX", "bad prefix!", "topic_prefix"),
        ("MARKETPIPE_STREAMS__COMMIT_INTERVAL_MS", "500", r"commit_max_interval_ms \(100\) is below"),
    ],
)
def test_bad_config_fails_with_a_message_that_says_what_to_fix(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_missing_config_file_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKETPIPE_CONFIG", "/nonexistent/marketpipe.toml")
    with pytest.raises(ConfigError, match="not a file"):
        load_settings()


def test_interval_parsing() -> None:
    assert interval_to_us("1s") == 1_000_000
    assert interval_to_us("4h") == 4 * 3_600_000_000
    with pytest.raises(ValueError):
        interval_to_us("0m")


def test_nested_list_variables_take_comma_separated_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKETPIPE_STREAMS__OHLCV_INTERVALS", "1m, 5m")
    assert load_settings().streams.ohlcv_intervals == ["1m", "5m"]
    monkeypatch.setenv("MARKETPIPE_STREAMS__OHLCV_INTERVALS", '["1h"]')  # JSON still works
    assert load_settings().streams.ohlcv_intervals == ["1h"]


def test_a_variable_that_takes_json_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKETPIPE_STREAMS__QUOTE_EQUIVALENTS", "USD,USDT")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "MARKETPIPE_STREAMS__QUOTE_EQUIVALENTS='USD,USDT' is not JSON; this setting takes JSON, "
        'e.g. [["USD", "USDT"]]'
    )
    assert caught.value.exit_code == 2


def test_a_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "marketpipe.toml").write_text('symbols = ["BTC-USDT"]\n[kafka]\nlinger_ms = = 5\n')
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == "marketpipe.toml:3:13: not valid TOML: Invalid value"
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[kafka]\nlingerms = 5\n",
            "marketpipe.toml:2: unknown key 'lingerms' in [kafka]; did you mean 'linger_ms'?",
        ),
        (
            '[producers.binanse]\nws_url = "ws://x"\n',
            "marketpipe.toml:1: unknown key 'binanse' in [producers]; did you mean 'binance'?",
        ),
        (
            "[kafka.local]\nporrt = 9\n",
            "marketpipe.toml:2: unknown key 'porrt' in [kafka.local]; did you mean 'port'?",
        ),
        (
            'symbol = ["BTC-USDT"]\n',
            "marketpipe.toml:1: unknown key 'symbol' in the top level; did you mean 'symbols'?",
        ),
        ("[clickhouse]\nzzz = 1\n", "marketpipe.toml:2: unknown key 'zzz' in [clickhouse]; known keys: dsn"),
    ],
)
def test_unknown_keys_are_errors_naming_the_closest_known_key(
    tmp_path: Path, toml: str, message: str
) -> None:
    (tmp_path / "marketpipe.toml").write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == f"invalid configuration: {message}"


def test_misspelt_variables_are_warnings_naming_the_closest_known_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import marketpipe.config

    monkeypatch.setattr(marketpipe.config, "_warned", set())
    monkeypatch.setenv("MARKETPIPE_KAFKA__LINGERMS", "5")
    monkeypatch.setenv("MARKETPIPE_SYMBOL", "BTC-USDT")
    monkeypatch.setenv("MARKETPIPE_SCHEMA_REGISTRY_URL", "http://registry:8081")
    monkeypatch.setenv("MARKETPIPE_PRODUCERS__BINANCE__WS_URL", "ws://x")  # known: no warning
    monkeypatch.setenv("MARKETPIPE_KAFKA__CLIENT", "{}")  # known: no warning
    with caplog.at_level("WARNING", logger="marketpipe.config"):
        settings = load_settings()
    assert settings.kafka.linger_ms == 20 and settings.producers.binance.ws_url == "ws://x"
    assert sorted(record.getMessage() for record in caplog.records) == [
        "not a marketpipe setting, ignored variable=MARKETPIPE_KAFKA__LINGERMS "
        "did_you_mean=MARKETPIPE_KAFKA__LINGER_MS",
        "not a marketpipe setting, ignored variable=MARKETPIPE_SCHEMA_REGISTRY_URL "
        "did_you_mean=SCHEMA_REGISTRY_URL",
        "not a marketpipe setting, ignored variable=MARKETPIPE_SYMBOL did_you_mean=MARKETPIPE_SYMBOLS",
    ]
