"""ClickHouse (chDB): funding, open_interest, mark_price, liquidations and the views over them
(trades_notional, funding_latest, perp_basis_1m, open_interest_1m, liquidations_1m)."""

from __future__ import annotations

from clickhouse_support import insert, rows

from marketpipe.records import (
    Candle,
    FundingRate,
    Instrument,
    Liquidation,
    MarkPrice,
    OpenInterest,
    Side,
    Trade,
)
from sinks.worker import ClickHouseLink

T0 = 1_714_560_000_000_000  # 2024-05-01T10:40:00Z in µs
MIN = 60_000_000
PERP = "BTC-USDT-PERP"
INVERSE = "BTC-USD-PERP-INV"


def common(symbol: str, ts: int, seq: int) -> dict[str, object]:
    return {
        "exchange": "okx",
        "symbol": symbol,
        "exchange_symbol": symbol,
        "ts": ts,
        "recv_ts": ts + 50,
        "conn": "okx.0",
        "seq": seq,
    }


def liquidation(ts: int, side: Side, size: float, seq: int) -> Liquidation:
    return Liquidation(side=side, price=60_000.0, size=size, **common(PERP, ts, seq))  # type: ignore[arg-type]


def test_derivative_tables_store_each_record_once_and_the_views_add_up(link: ClickHouseLink) -> None:
    client = link.client
    assert client is not None
    funding = [
        FundingRate(rate=0.0001, next_funding_ts=T0 + 8 * 60 * MIN, interval_s=28_800, **common(PERP, T0, 1)),  # type: ignore[arg-type]
        FundingRate(
            rate=-0.0002, next_funding_ts=T0 + 8 * 60 * MIN, interval_s=28_800, **common(PERP, T0 + MIN, 2)
        ),  # type: ignore[arg-type]
    ]
    insert(link, "funding", funding, "f1")
    insert(link, "funding", funding, "f1-replayed")  # a replay: other token, same rows
    assert rows(client, "SELECT count() FROM funding FINAL") == [(2,)]
    assert rows(client, "SELECT symbol, rate, interval_s FROM funding_latest") == [(PERP, -0.0002, 28_800)]

    insert(
        link,
        "open_interest",
        [OpenInterest(open_interest=1000.0 + i, **common(PERP, T0 + i * 20_000_000, i)) for i in range(4)],
        "oi",
    )  # type: ignore[arg-type]
    assert rows(client, "SELECT minute, open_interest FROM open_interest_1m ORDER BY minute") == [
        (rows(client, f"SELECT toStartOfMinute(fromUnixTimestamp64Micro({T0}, 'UTC'))")[0][0], 1002.0),
        (rows(client, f"SELECT toStartOfMinute(fromUnixTimestamp64Micro({T0 + MIN}, 'UTC'))")[0][0], 1003.0),
    ]

    liquidations = [
        liquidation(T0, "sell", 2.0, 1),
        liquidation(T0 + 1, "sell", 3.0, 2),
        liquidation(T0 + 2, "buy", 1.0, 3),
    ]
    insert(link, "liquidations", liquidations, "l1")
    insert(link, "liquidations", [liquidations[0]], "l1-again")
    assert rows(
        client,
        "SELECT longs_liquidated, long_contracts, shorts_liquidated, short_contracts FROM liquidations_1m",
    ) == [(2, 5.0, 1, 1.0)]

    marks = [MarkPrice(mark_price=60_060.0, index_price=60_000.0, **common(PERP, T0 + 1_000_000, 1))]  # type: ignore[arg-type]
    insert(link, "mark_price", marks, "m1")
    spot = [spot_candle(exchange, close) for exchange, close in (("binance", 59_990.0), ("bybit", 60_010.0))]
    insert(link, "ohlcv", spot, "c1")
    basis = rows(
        client,
        "SELECT symbol, round(mark_index_bps, 3), spot_close, round(mark_spot_bps, 3) FROM perp_basis_1m",
    )
    assert basis == [(PERP, 10.0, 60_000.0, 10.0)]


def spot_candle(exchange: str, close: float) -> Candle:
    return Candle(
        exchange=exchange,
        symbol="BTC-USDT",
        interval="1m",
        open_time=T0,
        close_time=T0 + MIN,
        open=close,
        high=close,
        low=close,
        close=close,
        volume=1.0,
        quote_volume=close,
        buy_volume=1.0,
        sell_volume=0.0,
        trades=1,
        vwap=close,
        first_trade_ts=T0,
        last_trade_ts=T0,
        closed=True,
        version=1,
    )


def instrument(symbol: str, quote: str, contract_type: str, size: float, currency: str) -> Instrument:
    return Instrument(
        exchange="okx",
        symbol=symbol,
        exchange_symbol=symbol,
        kind="perpetual",
        contract_type=contract_type,  # type: ignore[arg-type]
        base="BTC",
        quote=quote,
        settle_currency="BTC" if contract_type == "inverse" else quote,
        contract_size=size,
        contract_size_currency=currency,
        ts=T0,
    )


def trade(symbol: str, size: float, trade_id: str) -> Trade:
    return Trade(
        exchange="okx",
        symbol=symbol,
        exchange_symbol=symbol,
        trade_id=trade_id,
        price=50_000.0,
        size=size,
        side="buy",
        ts=T0,
        recv_ts=T0,
        conn="okx.0",
        seq=1,
    )


def test_trades_notional_converts_contracts_by_the_contract_size(link: ClickHouseLink) -> None:
    client = link.client
    assert client is not None
    insert(
        link,
        "instruments",
        [
            instrument(PERP, "USDT", "linear", 0.01, "BTC"),
            instrument(INVERSE, "USD", "inverse", 100.0, "USD"),
        ],
        "i",
    )
    insert(
        link, "trades", [trade(PERP, 3.0, "1"), trade(INVERSE, 5.0, "2"), trade("BTC-USDT", 0.5, "3")], "t"
    )
    got = rows(client, "SELECT symbol, contracts, base_size, notional FROM trades_notional ORDER BY symbol")
    assert got == [
        (INVERSE, 5.0, 0.01, 500.0),  # 5 contracts of 100 USD at 50,000
        ("BTC-USDT", 0.5, 0.5, 25_000.0),  # spot: no metadata, 1 contract = 1 base
        (PERP, 3.0, 0.03, 1_500.0),  # 3 contracts of 0.01 BTC
    ]
    volumes = rows(
        client, "SELECT base, kind, exchanges, trades, base_volume, notional FROM volume_by_underlying_1m"
    )
    assert volumes == [
        ("BTC", "perpetual", ["okx"], 2, 0.04, 2_000.0),
        ("BTC", "spot", ["okx"], 1, 0.5, 25_000.0),
    ]
