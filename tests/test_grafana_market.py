"""The Grafana "marketpipe market" dashboard (deploy/grafana/dashboards/market.json): its
provisioning, and every SQL query in it run against the real tables and views in chDB after
loading records through the sink's own insert path, with the template variables and the
ClickHouse plugin's macros substituted as the plugin does."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from clickhouse_connect.driver.client import Client

from marketpipe.codec import AvroCodec
from marketpipe.config import DEFAULT_INTERVALS
from marketpipe.records import (
    BBO,
    BookBuckets,
    BookState,
    Bucket,
    Candle,
    DepthBand,
    Record,
    StatusEvent,
    Trade,
)
from sinks.clickhouse import connect
from sinks.migrate import migrate
from sinks.tables import BatchDecoder, sink_tables
from sinks.worker import ClickHouseLink

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy/grafana/dashboards/market.json"
DATASOURCE = ROOT / "deploy/grafana/provisioning/datasources/clickhouse.yml"
T0 = 1_714_560_000_000_000  # 2024-05-01T10:40:00Z in µs
T0_S = T0 // 1_000_000
MINUTE = 60_000_000
# the dashboard's time range and the variables' values while the queries run
TIME_FROM, TIME_TO = T0_S - 3600, T0_S + 3600
VARIABLES = {"exchange": "binance", "symbol": "BTC-USDT", "interval": "1m"}


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _targets() -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in _dashboard()["panels"] for target in panel["targets"]]


# -- the ClickHouse plugin's macros and Grafana's variables -----------------------------------

_MACROS = {
    # grafana-clickhouse-datasource 4.x: $__timeFilter(c) and $__timeInterval(c), seconds precision
    "timeFilter": lambda column: f"{column} >= toDateTime({TIME_FROM}) AND {column} <= toDateTime({TIME_TO})",
    "timeInterval": lambda column: f"toStartOfInterval(toDateTime({column}), INTERVAL 20 second)",
}


def _render(sql: str) -> str:
    def macro(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2)
        assert name in _MACROS, f"the test does not know the plugin macro $__{name}"
        return _MACROS[name](argument.strip())

    sql = re.sub(r"\$__(\w+)\(([^()]*)\)", macro, sql)
    assert "$__" not in sql, sql
    sql = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: VARIABLES[m.group(1) or m.group(2)], sql)
    return sql


# -- records, stored through the sink's insert path ------------------------------------------


def _trade(exchange: str, i: int) -> Trade:
    return Trade(
        exchange=exchange,
        symbol="BTC-USDT",
        exchange_symbol="BTCUSDT",
        trade_id=str(i),
        price=60_000.0 + i,
        size=0.1,
        side="buy",
        ts=T0 + i * 1_000_000,
        recv_ts=T0 + i * 1_000_000 + 500,
        conn=f"{exchange}.0",
        seq=i,
    )


def _candle(exchange: str, minute: int, version: int) -> Candle:
    open_time = T0 + minute * MINUTE
    return Candle(
        exchange=exchange,
        symbol="BTC-USDT",
        interval="1m",
        open_time=open_time,
        close_time=open_time + MINUTE,
        open=60_000.0,
        high=60_050.0,
        low=59_950.0,
        close=60_000.0 + version,
        volume=1.0,
        quote_volume=60_000.0,
        buy_volume=0.5,
        sell_volume=0.5,
        trades=3,
        vwap=60_000.0,
        first_trade_ts=open_time + 1,
        last_trade_ts=open_time + 2,
        closed=True,
        version=version,
    )


def _buckets(second: int) -> BookBuckets:
    return BookBuckets(
        exchange="binance",
        symbol="BTC-USDT",
        ts=T0 + second * 1_000_000,
        mid=60_000.5,
        best_bid=60_000.0,
        best_ask=60_001.0,
        spread=1.0,
        bucket_size=10.0,
        bids=[Bucket(60_000.0, 1.0 + second, 60_000.0), Bucket(59_990.0, 2.0, 119_980.0)],
        asks=[Bucket(60_010.0, 1.5, 90_015.0)],
        bands=[DepthBand(0.1, 3.0, 1.5, 0.33)],
    )


def _bbo(exchange: str, bid: float, ask: float) -> BBO:
    return BBO(
        exchange=exchange,
        symbol="BTC-USDT",
        exchange_symbol="BTCUSDT",
        bid_price=bid,
        bid_size=1.0,
        ask_price=ask,
        ask_size=1.0,
        ts=T0 + 100_000,
        recv_ts=T0 + 200_000,
    )


def _status(state: BookState, reason: str, offset: int) -> StatusEvent:
    return StatusEvent(exchange="okx", symbol="BTC-USDT", ts=T0 + offset, state=state, reason=reason, gaps=1)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    client = connect(f"chdb:///{tmp_path_factory.mktemp('grafana') / 'clickhouse'}")
    migrate(client)
    link = ClickHouseLink("unused")
    link.client = client
    codec = AvroCodec()
    tables = sink_tables(codec)
    records: dict[str, list[Record]] = {
        "trades": [_trade(e, i) for e in ("binance", "okx") for i in range(3)],
        "ohlcv": [_candle(e, m, v) for e in ("binance", "okx") for m in range(3) for v in (1, 2)],
        "book_buckets": [_buckets(s) for s in range(3)],
        "bbo": [_bbo("binance", 60_000.0, 60_001.0), _bbo("okx", 60_000.5, 60_002.0)],
        "status": [_status("unsynced", "gap", 0), _status("synced", "snapshot", 5)],
    }
    for name, rows in records.items():
        table = tables[name]
        decoded = BatchDecoder(codec, table.record_type).decode([codec.encode(r) for r in rows])
        assert not decoded.failures
        link.insert(table, table.to_columns(decoded.rows), f"grafana-{name}")
    yield client
    client.close()


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("title", "target"), _targets(), ids=[title for title, _ in _targets()])
def test_every_panel_query_answers_on_the_real_views(
    loaded: Client, title: str, target: dict[str, Any]
) -> None:
    result = loaded.query(_render(target["rawSql"]))
    assert result.result_rows, f"{title}: no rows for data inside the time range"
    if target["queryType"] == "timeseries":
        assert result.column_names[0] == "time", title


def test_panels_show_the_values_loaded(loaded: Client) -> None:
    queries = {title: _render(target["rawSql"]) for title, target in _targets()}
    [candles] = [sql for title, sql in queries.items() if title.startswith("Candles")]
    rows = loaded.query(candles).result_rows
    assert [row[4] for row in rows] == [60_002.0] * 3  # close of the final (highest) version
    [spread] = [sql for title, sql in queries.items() if title.startswith("Cross-exchange spread")]
    (_, avg_bps, _, exchanges) = loaded.query(spread).result_rows[0]
    assert exchanges == 2 and avg_bps == pytest.approx((60_001.0 - 60_000.5) / 60_000.75 * 10_000)
    [health] = [sql for title, sql in queries.items() if title.startswith("Feed health")]
    assert [row["exchange"] for row in loaded.query(health).named_results()] == ["okx"]
    [freshness] = [sql for title, sql in queries.items() if title.startswith("Feed freshness")]
    last_book = {row["exchange"]: row["last_book"] for row in loaded.query(freshness).named_results()}
    assert last_book["okx"] is None and last_book["binance"] is not None  # okx sent no book


def test_template_variables_list_what_is_stored(loaded: Client) -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert set(variables) == set(VARIABLES)
    exchanges = [row[0] for row in loaded.query(_render(variables["exchange"]["query"])).result_rows]
    assert exchanges == ["binance", "okx"]
    symbols = [row[0] for row in loaded.query(_render(variables["symbol"]["query"])).result_rows]
    assert symbols == ["BTC-USDT"]
    assert variables["interval"]["query"].split(",") == list(DEFAULT_INTERVALS)


def test_dashboard_uses_the_provisioned_clickhouse_datasource() -> None:
    source = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]
    assert source["type"] == "grafana-clickhouse-datasource"
    assert (
        source["jsonData"]["host"] == "clickhouse" and source["jsonData"]["defaultDatabase"] == "marketpipe"
    )
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana_env = compose["services"]["grafana"]["environment"]
    assert re.fullmatch(
        r"grafana-clickhouse-datasource@\d+\.\d+\.\d+", grafana_env["GF_PLUGINS_PREINSTALL_SYNC"]
    )
    for name in re.findall(r"\$(\w+)", json.dumps(source)):
        assert name in grafana_env, f"{name} is not in the grafana container's environment"
    dashboard = _dashboard()
    used = {t["datasource"]["uid"] for _, t in _targets()} | {
        v["datasource"]["uid"] for v in dashboard["templating"]["list"] if "datasource" in v
    }
    assert used == {source["uid"]}
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("candles", "order book", "spread", "feed health"):
        assert topic in titles
    assert {p["type"] for p in dashboard["panels"]} >= {"candlestick", "heatmap"}
