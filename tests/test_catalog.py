"""`marketpipe exchanges`, `marketpipe symbols` and run's --exchanges/--symbols."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from marketpipe.catalog_cli import CHANNELS, connector_for
from marketpipe.cli import main
from marketpipe.config import EXCHANGES, load_settings
from marketpipe.run_cli import plan_children
from producers.connectors import EXCHANGES as CONNECTORS
from simulator import SimConfig, Simulator

# one exchange symbol per exchange, as its subscribe messages spell it
EXCHANGE_SYMBOL = {
    "binance": "BTCUSDT",
    "binance-futures": "BTCUSDT",
    "coinbase": "BTC-USD",
    "kraken": "BTC/USD",
    "bybit": "BTCUSDT",
    "okx": "BTC-USDT",
    "bitfinex": "tBTCUSD",
    "kucoin": "BTC-USDT",
    "gateio": "BTC_USDT",
    "htx": "btcusdt",
    "mexc": "BTCUSDT",
    "deribit": "BTC-PERPETUAL",
}


def _run(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def _json_lines(result: Result) -> list[dict[str, str]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_the_listed_channels_are_those_the_connectors_subscribe_to() -> None:
    assert set(CHANNELS) == set(CONNECTORS) == set(EXCHANGES)
    settings = load_settings()
    for exchange, channels in CHANNELS.items():
        messages = " ".join(connector_for(settings, exchange).subscribe_messages([EXCHANGE_SYMBOL[exchange]]))
        assert all(channel in messages for channel in channels if channel), (exchange, messages)


def test_exchanges_lists_every_exchange_with_channels_and_which_are_enabled() -> None:
    rows = _json_lines(
        _run(
            "exchanges",
            "--format",
            "json",
            env={"MARKETPIPE_EXCHANGES": "okx,kraken", "MARKETPIPE_SYMBOLS": None},
        )
    )
    assert [row["exchange"] for row in rows] == list(EXCHANGES)
    okx = next(row for row in rows if row["exchange"] == "okx")
    assert (okx["book"], okx["trades"], okx["ticker"], okx["candles"]) == ("books", "trades", "tickers", "-")
    assert okx["enabled"] == "yes"
    assert okx["default symbols"] == (
        "BTC-USDT,ETH-USDT,BTC-USD,ETH-USD,BTC-USDT-PERP,ETH-USDT-PERP,BTC-USD-PERP-INV,ETH-USD-PERP-INV"
    )
    assert okx["instruments"].endswith("/api/v5/public/instruments?instType=SPOT")
    assert [row["exchange"] for row in rows if row["enabled"] == "yes"] == ["kraken", "okx"]


def test_symbols_from_the_simulator_read_like_the_connector_reads_them() -> None:
    result = _run(
        "symbols",
        "--exchange",
        "kraken",
        "--source",
        "sim",
        "--format",
        "json",
        env={"MARKETPIPE_SYMBOLS": None},
    )
    rows = _json_lines(result)
    assert {row["symbol"] for row in rows} == {"BTC-USD", "ETH-USD"}
    assert {"symbol": "BTC-USD", "exchange symbol": "BTC/USD"} in rows
    assert "built-in simulator" in result.stderr


async def test_symbols_through_a_rest_url_with_a_quote_filter() -> None:
    simulator = await Simulator(SimConfig(exchanges=("binance",), levels=30)).start("127.0.0.1", 0)
    try:
        _, rest = simulator.urls()["binance"]
        # the CLI runs its own event loop: call it from a worker thread
        result = await asyncio.to_thread(
            _run, "symbols", "--exchange", "binance", "--rest-url", rest, "--quote", "usdt", "--format", "tsv"
        )
    finally:
        await simulator.stop()
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["symbol\texchange symbol", "BTC-USDT\tBTCUSDT", "ETH-USDT\tETHUSDT"]


def test_symbols_without_a_reachable_exchange_says_so_in_one_line() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _run("symbols", "--exchange", "okx", "--rest-url", f"http://127.0.0.1:{port}")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1, result.output
    assert f"127.0.0.1:{port}" in result.output and "--source sim" in result.output


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--exchanges", "binance,nasdaq"], "nasdaq"),
        (["--symbols", "btcusdt"], "BASE-QUOTE"),
    ],
)
def test_run_rejects_unknown_exchanges_and_malformed_symbols(
    args: list[str], complaint: str, tmp_path: Path
) -> None:
    env: dict[str, str | None] = {"MARKETPIPE_EXCHANGES": None, "MARKETPIPE_SYMBOLS": None}
    result = _run("--data-dir", str(tmp_path), "run", "--source", "sim", *args, env=env)
    assert result.exit_code == 2 and complaint in result.output, result.output
    assert not (tmp_path / "kafka").exists()  # refused before anything started


def test_run_exchanges_and_symbols_reach_every_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from marketpipe.run_cli import _select

    for name in ("MARKETPIPE_EXCHANGES", "MARKETPIPE_SYMBOLS"):
        monkeypatch.setenv(name, "")  # so monkeypatch restores what was there before _select
    monkeypatch.setenv("MARKETPIPE_DATA_DIR", str(tmp_path))
    _select("okx,Kraken", "btc-usd")
    settings = load_settings()
    assert settings.exchanges == ["okx", "kraken"] and settings.symbols == ["BTC-USD"]
    plan = plan_children(settings, "sim", 1)
    assert plan.simulator is not None and "okx,kraken" in plan.simulator.argv
    producers = [child for child in plan.children if child.role == "producer"]
    assert [child.name for child in producers] == ["produce-okx", "produce-kraken"]
    for child in plan.children:  # the simulator inherits this process's environment
        assert child.env is not None and child.env["MARKETPIPE_SYMBOLS"] == "BTC-USD", child.name
        assert child.env["MARKETPIPE_EXCHANGES"] == "okx,kraken", child.name
