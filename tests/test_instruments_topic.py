"""md.instruments: the normalise stage publishes the Instrument of every name an instrument-list
answer gives, keyed exchange:symbol; the ClickHouse ``instruments`` table (real chDB) keeps the
latest metadata per name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from clickhouse_connect.driver.client import Client
from feed_helpers import Feed, okx_instruments
from samples import messages

from marketpipe.codec import AvroCodec
from marketpipe.records import Instrument
from marketpipe.topics import Topology
from sinks.clickhouse import connect
from sinks.migrate import migrate
from sinks.tables import BatchDecoder, sink_tables
from sinks.worker import ClickHouseLink
from streams.app import NormaliseStage
from streams.consolidate import SymbolMap
from streams.feed import ClockWindow, FeedOutput

WS_URL = "wss://ws.okx.com:8443/ws/v5/public"
URL = "https://www.okx.com/api/v5/public/instruments?instType=ANY"


def _answer(*rows: dict[str, Any]) -> str:
    return json.dumps({"code": "0", "msg": "", "data": list(rows)})


def _okx_rows() -> list[dict[str, Any]]:
    spot = json.loads(okx_instruments(("BTC-USDT", "BTC", "USDT")))["data"]
    return [*spot, *(json.loads(row) for row in messages("okx_derivatives.json", "instrument"))]


def test_every_name_an_answer_gives_is_published_with_its_metadata_at_the_receive_time() -> None:
    rows = _okx_rows()
    option = {**rows[-1], "instId": "BTC-USD-220624-50000-C", "instType": "OPTION"}
    # a second contract claiming the future's name loses it: its metadata is not published
    twin = {**rows[-1], "instId": "BTC-USD-220527-B"}
    feed = Feed("okx")
    feed.open(WS_URL, ["BTC-USDT"])
    out = feed.rest(URL, _answer(*rows, option, twin))
    assert out.errors == []
    assert [(r.exchange_symbol, r.symbol) for r in out.instruments] == [
        ("BTC-USDT", "BTC-USDT"),
        ("UNI-USD-SWAP", "UNI-USD-PERP-INV"),
        ("BTC-USDT-SWAP", "BTC-USDT-PERP"),
        ("BTC-USD-220527", "BTC-USD-20220527-INV"),
    ]
    assert {r.ts for r in out.instruments} == {feed.recv_us(1)}
    assert feed.proc.counters.instruments_skipped == 2  # the option and the twin


def test_normalise_stage_publishes_them_to_md_instruments_keyed_by_exchange_and_symbol() -> None:
    feed = Feed("okx")
    feed.open(WS_URL, ["BTC-USDT"])
    out = feed.rest(URL, _answer(*_okx_rows()))
    topology = Topology(prefix="t.", exchanges=("okx",))
    codec = AvroCodec()
    stage = NormaliseStage(topology, codec, ["okx"], None, SymbolMap(), ClockWindow())
    emitted: list[tuple[str, bytes, bytes]] = []
    stage._publish(out, lambda topic, key, value: emitted.append((topic, key, value)))
    assert {topic for topic, _, _ in emitted} == {"t.md.instruments"}
    assert [key.decode() for _, key, _ in emitted] == [f"okx:{r.symbol}" for r in out.instruments]
    assert [codec.decode(value, Instrument) for _, _, value in emitted] == out.instruments


@pytest.fixture
def client(chdb_dsn: str) -> Iterator[Client]:
    client = connect(chdb_dsn)
    migrate(client)
    yield client
    client.close()


def _insert(client: Client, records: list[Instrument], token: str) -> None:
    link = ClickHouseLink("unused")
    link.client = client
    codec = AvroCodec()
    table = sink_tables(codec)["instruments"]
    decoded = BatchDecoder(codec, Instrument).decode([codec.encode(r) for r in records])
    assert not decoded.failures
    link.insert(table, table.to_columns(decoded.rows), token)


def test_instruments_table_keeps_the_latest_metadata_per_name(client: Client) -> None:
    out = FeedOutput()
    feed = Feed("okx")
    feed.proc.process(feed.record("rest", _answer(*_okx_rows()), URL), out)
    first = out.instruments
    later = [msgspec.structs.replace(r, ts=r.ts + 60_000_000, tick_size=0.5) for r in first]
    _insert(client, first, "a")
    _insert(client, first, "a")  # a retried insert is stored once
    _insert(client, later, "b")
    rows = client.query(
        "SELECT symbol, exchange_symbol, kind, contract_type, settle_currency, contract_size, "
        "contract_size_currency, toUnixTimestamp64Micro(expiry_ts), tick_size "
        "FROM instruments FINAL ORDER BY symbol"
    ).result_rows
    assert rows == [
        (
            "BTC-USD-20220527-INV",
            "BTC-USD-220527",
            "future",
            "inverse",
            "BTC",
            100.0,
            "USD",
            1653638400000000,
            0.5,
        ),
        ("BTC-USDT", "BTC-USDT", "spot", None, None, 1.0, "BTC", None, 0.5),
        ("BTC-USDT-PERP", "BTC-USDT-SWAP", "perpetual", "linear", "USDT", 0.01, "BTC", None, 0.5),
        ("UNI-USD-PERP-INV", "UNI-USD-SWAP", "perpetual", "inverse", "UNI", 10.0, "USD", None, 0.5),
    ]
