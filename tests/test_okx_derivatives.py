"""OKX SWAP and FUTURES on the real frames of one recorded session (2022-05-13, spot, swap and
futures instruments on one connection): each instrument is named from its metadata and keeps its
own trades and book; nothing comes out as ``-`` (the recorded failure merged UNI-USD-SWAP and
BTC-USD-220527 under ``-``, and later dead-lettered both)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from feed_helpers import Feed, okx_instruments
from producers_support import sim_settings
from samples import messages
from websockets.asyncio.client import connect

import simulator
from marketpipe.cli import main
from marketpipe.codec import AvroCodec
from marketpipe.exchanges.okx import parse_instruments
from marketpipe.raw import CaptureWriter
from producers.base import Connection, Shard
from producers.connectors.okx import SPOT_CHANNELS as SPOT
from producers.connectors.okx import CandleShard, OkxConnector, PublicShard
from producers.publisher import CaptureRawPublisher
from simulator.okx import futures_expiry
from streams.parsers.okx import OkxProcessor

MS = 1_000_000
OKX_AT = 1652459220000 * MS  # receive times near the session's exchange times
WS_URL = "wss://ws.okx.com:8443/ws/v5/public"
INSTRUMENTS_URL = "https://www.okx.com/api/v5/public/instruments?instType={}"
SESSION_IDS = ["BTC-USDT", "UNI-USD-SWAP", "BTC-USD-220527"]
NAMES = {
    "BTC-USDT": "BTC-USDT",
    "UNI-USD-SWAP": "UNI-USD-PERP-INV",
    "BTC-USDT-SWAP": "BTC-USDT-PERP",
    "BTC-USD-220527": "BTC-USD-20220527-INV",
}


def _rows() -> dict[str, dict[str, Any]]:
    """The captured instrument entries (REST array elements), by instId."""
    rows = [json.loads(row) for row in messages("okx_derivatives.json", "instrument")]
    return {row["instId"]: row for row in rows}


def _answer(*rows: dict[str, Any]) -> str:
    return json.dumps({"code": "0", "msg": "", "data": list(rows)})


def _spot_row() -> dict[str, Any]:
    row: dict[str, Any] = json.loads(okx_instruments(("BTC-USDT", "BTC", "USDT")))["data"][0]
    return row


def test_swap_and_futures_entries_are_named_from_their_metadata() -> None:
    found = parse_instruments(_answer(_spot_row(), *_rows().values()).encode())
    assert dict(found) == NAMES and found.skipped == {}
    uni, btc_usdt, future = (found.records[i] for i in ("UNI-USD-SWAP", "BTC-USDT-SWAP", "BTC-USD-220527"))
    assert (uni.kind, uni.contract_type, uni.base, uni.quote, uni.settle_currency) == (
        "perpetual",
        "inverse",
        "UNI",
        "USD",
        "UNI",
    )
    assert (uni.contract_size, uni.contract_size_currency, uni.expiry_ts) == (10.0, "USD", None)
    assert (btc_usdt.contract_type, btc_usdt.settle_currency) == ("linear", "USDT")
    assert (btc_usdt.contract_size, btc_usdt.contract_size_currency) == (0.01, "BTC")
    assert (btc_usdt.tick_size, btc_usdt.lot_size) == (0.1, 1.0)
    assert (future.kind, future.contract_type, future.settle_currency) == ("future", "inverse", "BTC")
    assert (future.expiry_ts, future.contract_size, future.contract_size_currency) == (
        1653638400000 * 1000,
        100.0,
        "USD",
    )
    spot = found.records["BTC-USDT"]
    assert (spot.kind, spot.contract_type, spot.contract_size, spot.contract_size_currency) == (
        "spot",
        None,
        1.0,
        "BTC",
    )


def test_parsed_instrument_records_cross_the_wire_unchanged() -> None:
    found = parse_instruments(_answer(_spot_row(), *_rows().values()).encode())
    codec = AvroCodec()
    records = found.stamped(OKX_AT // 1000)
    assert {r.ts for r in records} == {OKX_AT // 1000}
    assert [codec.decode(codec.encode(r)) for r in records] == records
    assert [r.key() for r in records] == [f"okx:{name}" for name in NAMES.values()]


def test_a_linear_and_an_inverse_contract_on_one_pair_keep_apart() -> None:
    """OKX BTC-USD-SWAP is inverse; a linear BTC-USD contract (constructed from the captured
    linear entry) must not take its name, its book or its trades."""
    rows = _rows()
    inverse = {**rows["UNI-USD-SWAP"], "instId": "BTC-USD-SWAP", "uly": "BTC-USD", "settleCcy": "BTC"}
    linear = {**rows["BTC-USDT-SWAP"], "instId": "BTC-USD_UM-SWAP", "uly": "BTC-USD", "settleCcy": "USD"}
    feed = Feed("okx", base_ns=OKX_AT)
    feed.open(WS_URL, ["BTC-USD-SWAP", "BTC-USD_UM-SWAP"])
    assert feed.rest(INSTRUMENTS_URL.format("SWAP"), _answer(inverse, linear)).errors == []
    assert feed.proc.instruments == {"BTC-USD-SWAP": "BTC-USD-PERP-INV", "BTC-USD_UM-SWAP": "BTC-USD-PERP"}
    trade = messages("okx_derivatives.json", "trade")[1]  # UNI-USD-SWAP
    out = feed.recv_all([trade.replace("UNI-USD-SWAP", inst) for inst in ("BTC-USD-SWAP", "BTC-USD_UM-SWAP")])
    assert out.errors == []
    assert [(t.symbol, t.exchange_symbol) for t in out.trades] == [
        ("BTC-USD-PERP-INV", "BTC-USD-SWAP"),
        ("BTC-USD-PERP", "BTC-USD_UM-SWAP"),
    ]


def test_options_and_unknown_types_are_dead_lettered_with_the_reason_never_named_dash() -> None:
    rows = _rows()
    option = {**rows["BTC-USD-220527"], "instId": "BTC-USD-220624-50000-C", "instType": "OPTION"}
    option.update({"stk": "50000", "optType": "C"})
    unknown = {**rows["UNI-USD-SWAP"], "instId": "UNI-USD-EVENT", "instType": "EVENTS"}
    feed = Feed("okx", base_ns=OKX_AT)
    feed.open(WS_URL, ["BTC-USD-220624-50000-C", "UNI-USD-EVENT"])
    feed.rest(INSTRUMENTS_URL.format("OPTION"), _answer(option, unknown))
    assert feed.proc.counters.instruments_skipped == 2 and feed.proc.instruments == {}
    trade = messages("okx_derivatives.json", "trade")[1]
    ids = ("BTC-USD-220624-50000-C", "UNI-USD-EVENT")
    out = feed.recv_all([trade.replace("UNI-USD-SWAP", inst) for inst in ids])
    assert out.trades == []
    (_, option_reason), (_, unknown_reason) = out.errors
    assert "OPTION instrument: okx options are not normalised yet" in option_reason
    assert "unknown okx instType 'EVENTS'" in unknown_reason
    assert feed.proc.counters.dead_letters == {"unnamed_instrument": 2}


def test_an_entry_without_underlying_or_contract_type_is_skipped_alone() -> None:
    rows = _rows()
    no_underlying = {k: v for k, v in rows["UNI-USD-SWAP"].items() if k != "uly"}
    odd_type = {**rows["BTC-USDT-SWAP"], "ctType": "quanto-ish"}
    found = parse_instruments(_answer(no_underlying, odd_type, rows["BTC-USD-220527"]).encode())
    assert dict(found) == {"BTC-USD-220527": "BTC-USD-20220527-INV"}
    assert "is not BASE-QUOTE" in found.skipped["UNI-USD-SWAP"]
    assert "neither linear nor inverse" in found.skipped["BTC-USDT-SWAP"]


def test_derivative_tickers_keep_contract_units_and_have_no_quote_volume() -> None:
    """FUTURES/SWAP ``lastSz``/``bidSz``/``askSz``/``vol24h`` are contracts, ``volCcy24h`` base
    coin (BTC-USD-220527: 779573 contracts = 2620.289 BTC): no quote volume is sent."""
    feed = Feed("okx", base_ns=OKX_AT)
    feed.open(WS_URL, SESSION_IDS)
    feed.rest(INSTRUMENTS_URL.format("ANY"), _answer(_spot_row(), *_rows().values()))
    out = feed.recv_all(messages("okx_derivatives.json", "ticker"))
    assert out.errors == []
    future, swap = out.tickers
    assert (future.symbol, future.exchange_symbol) == ("BTC-USD-20220527-INV", "BTC-USD-220527")
    assert (future.last_price, future.last_size, future.bid_size, future.ask_size) == (30218.8, 1.0, 4.0, 3.0)
    assert (future.volume_24h, future.quote_volume_24h, future.ts) == (779573.0, None, 1652459223003000)
    assert (swap.symbol, swap.volume_24h, swap.quote_volume_24h) == ("UNI-USD-PERP-INV", 289425.0, None)
    spot = feed.recv(messages("okx_ticker_kline.json", "ticker")[0])
    assert spot.errors == [] and spot.tickers[0].symbol == "BTC-USDT"
    assert spot.tickers[0].quote_volume_24h is not None


def test_derivative_candles_take_contracts_and_the_quote_volume_column() -> None:
    """A 9-field row of a contract: ``vol`` contracts, ``volCcy`` base coin, ``volCcyQuote`` quote
    (the doc example's numbers under the captured swap's id: no derivative candle was captured)."""
    feed = Feed("okx", base_ns=OKX_AT)
    feed.open(WS_URL, SESSION_IDS)
    feed.rest(INSTRUMENTS_URL.format("SWAP"), _answer(*_rows().values()))
    spot_frame = messages("okx_ticker_kline.json", "kline")[0]
    out = feed.recv(spot_frame.replace('"instId":"BTC-USDT"', '"instId":"UNI-USD-SWAP"'))
    assert out.errors == []
    (candle,) = out.exchange_candles
    assert (candle.symbol, candle.volume, candle.quote_volume) == ("UNI-USD-PERP-INV", 45247.0, 5529.5858061)
    seven = json.loads(spot_frame.replace('"instId":"BTC-USDT"', '"instId":"UNI-USD-SWAP"'))
    seven["data"][0] = seven["data"][0][:7]
    (old_form,) = feed.recv(json.dumps(seven)).exchange_candles
    assert (old_form.volume, old_form.quote_volume) == (45247.0, None)  # volCcy is base coin there


# -- funding, mark, index, open interest, liquidations (the real frames of the samples) -------------

XPERP_EXPIRY_MS = 1933056000000  # 2031-04-04 08:00 UTC: BTC-USD_UM_XPERP-310404 (a linear FUTURES)


def _derivative_rows() -> list[dict[str, Any]]:
    """The captured entries plus, built from them, the contracts the fixture frames name (their
    own metadata was not captured): WNCG-USDT-SWAP, FIL-USDT-220325, XRP-USD-230929 and the 2026
    X-Perp BTC-USD_UM_XPERP-310404 (instType FUTURES, with funding)."""
    rows = _rows()
    linear_swap, inverse_future = rows["BTC-USDT-SWAP"], rows["BTC-USD-220527"]
    wncg = {**linear_swap, "instId": "WNCG-USDT-SWAP", "uly": "WNCG-USDT", "ctVal": "1", "ctValCcy": "WNCG"}
    fil = {
        **linear_swap,
        "instId": "FIL-USDT-220325",
        "instType": "FUTURES",
        "uly": "FIL-USDT",
        "ctVal": "0.1",
        "ctValCcy": "FIL",
        "expTime": "1648195200000",
    }
    xrp = {
        **inverse_future,
        "instId": "XRP-USD-230929",
        "uly": "XRP-USD",
        "settleCcy": "XRP",
        "expTime": "1695974400000",
    }
    xperp = {
        **inverse_future,
        "instId": "BTC-USD_UM_XPERP-310404",
        "ctType": "linear",
        "ctVal": "0.0001",
        "ctValCcy": "BTC",
        "settleCcy": "USD",
        "expTime": str(XPERP_EXPIRY_MS),
    }
    return [*rows.values(), wncg, fil, xrp, xperp]


def _derivatives_feed() -> Feed:
    feed = Feed("okx", base_ns=OKX_AT)
    feed.open(WS_URL, [row["instId"] for row in _derivative_rows()])
    assert feed.rest(INSTRUMENTS_URL.format("SWAP"), _answer(*_derivative_rows())).errors == []
    return feed


def test_funding_rate_frames_give_the_rate_the_settlement_time_and_the_interval() -> None:
    feed = _derivatives_feed()
    out = feed.recv_all(messages("okx_derivatives.json", "funding_rate"))
    assert out.errors == []
    current, old_btc, old_wncg = out.funding
    # 2026: every current field; nextFundingRate "" (no forecast), 8 h between settlements
    assert (current.symbol, current.exchange_symbol) == ("BTC-USD-20310404", "BTC-USD_UM_XPERP-310404")
    assert (current.rate, current.predicted_rate) == (-0.0004270396398519, None)
    assert (current.next_funding_ts, current.interval_s) == (1785888000000 * 1000, 8 * 3600)
    assert current.ts == 1785870855692 * 1000
    # 2021/2022: no ts (the receive time stands in), no nextFundingTime, the forecast of the time
    assert (old_btc.symbol, old_btc.rate, old_btc.predicted_rate) == (
        "BTC-USDT-PERP",
        0.0001534702159002,
        0.0001542145319804,
    )
    assert (old_btc.next_funding_ts, old_btc.interval_s) == (1646323200000 * 1000, None)
    assert old_btc.ts == old_btc.recv_ts == feed.recv_us(3)
    assert (old_wncg.symbol, old_wncg.rate) == ("WNCG-USDT-PERP", 0.00048105)
    again = feed.recv_all(messages("okx_derivatives.json", "funding_rate"))
    assert again.funding == [] and again.errors == []  # published only when a value changed


def test_mark_price_frames() -> None:
    out = _derivatives_feed().recv_all(messages("okx_derivatives.json", "mark_price"))
    assert out.errors == []
    assert [(m.symbol, m.mark_price, m.index_price, m.settle_price, m.ts) for m in out.mark_prices] == [
        ("FIL-USDT-20220325", 36.232, None, None, 1640131204676 * 1000),
        ("WNCG-USDT-PERP", 2.1729, None, None, 1640131259180 * 1000),
    ]


def test_index_tickers_give_the_index_price_of_every_contract_on_the_index() -> None:
    """``index-tickers`` is keyed by the index: FIL-USDT is FIL-USDT-220325's underlying, BTC-USD
    that of the inverse future BTC-USD-220527 and (uly BTC-USD) of the X-Perp."""
    out = _derivatives_feed().recv_all(messages("okx_derivatives.json", "index_price"))
    assert out.errors == []
    assert [(m.symbol, m.index_price, m.mark_price, m.ts) for m in out.mark_prices] == [
        ("FIL-USDT-20220325", 35.583, None, 1640140200581 * 1000),
        ("BTC-USD-20220527-INV", 64280.0, None, 1785870839964 * 1000),
        ("BTC-USD-20310404", 64280.0, None, 1785870839964 * 1000),
    ]


def test_an_index_no_contract_is_on_is_dead_lettered() -> None:
    feed = Feed("okx", base_ns=OKX_AT)
    out = feed.recv(messages("okx_derivatives.json", "index_price")[0])
    assert out.mark_prices == [] and "no contract's metadata" in out.errors[0][1]
    assert feed.proc.counters.dead_letters == {"unknown_symbol": 1}


def test_open_interest_frames_in_contracts() -> None:
    """Websocket frames: ``oi`` contracts (FIL-USDT-220325: 236870 contracts of 0.1 FIL = oiCcy
    23687 FIL), no notional; the REST answer's form (``code``, no ``arg``) is not a push."""
    feed = _derivatives_feed()
    fil, wncg, rest_form = messages("okx_derivatives.json", "open_interest")
    out = feed.recv_all([fil, wncg])
    assert out.errors == []
    assert [(o.symbol, o.open_interest, o.value, o.ts) for o in out.open_interest] == [
        ("FIL-USDT-20220325", 236870.0, None, 1640131202886 * 1000),
        ("WNCG-USDT-PERP", 644195.0, None, 1640131258756 * 1000),
    ]
    assert "neither an event nor a push" in feed.recv(rest_form).errors[0][1]
    with_usd = fil.replace('"oiCcy":"23687"', '"oiCcy":"23687","oiUsd":"850000.5"')
    assert [o.value for o in feed.recv(with_usd).open_interest] == [850000.5]


def test_liquidation_orders_give_the_order_side_the_bankruptcy_price_and_contracts() -> None:
    feed = _derivatives_feed()
    (frame,) = messages("okx_derivatives.json", "liquidation")
    out = feed.recv(frame)
    assert out.errors == []
    (liquidation,) = out.liquidations
    assert (liquidation.symbol, liquidation.exchange_symbol) == ("XRP-USD-20230929-INV", "XRP-USD-230929")
    # posSide short: a short position was liquidated by a buy order
    assert (liquidation.side, liquidation.price, liquidation.size) == ("buy", 0.55205, 39.0)
    assert (liquidation.ts, liquidation.liquidation_id) == (1680173247614 * 1000, None)
    assert feed.recv(frame).liquidations == []  # the same one again is not published twice


def test_liquidations_of_contracts_not_followed_are_counted_not_dead_lettered() -> None:
    """The channel is per instType: it reports contracts no connection subscribed."""
    feed = Feed("okx", base_ns=OKX_AT)
    out = feed.recv(messages("okx_derivatives.json", "liquidation")[0])
    assert out.liquidations == [] and out.errors == []
    proc = feed.proc
    assert isinstance(proc, OkxProcessor) and proc.liquidations_unfollowed == 1


def test_bad_derivative_values_are_dead_lettered_with_the_reason() -> None:
    feed = _derivatives_feed()
    mark = messages("okx_derivatives.json", "mark_price")[0]
    liquidation = messages("okx_derivatives.json", "liquidation")[0]
    funding = messages("okx_derivatives.json", "funding_rate")[1]
    out = feed.recv_all(
        [
            mark.replace('"markPx":"36.232"', '"markPx":"-1"'),
            liquidation.replace('"side":"buy"', '"side":"long"'),
            funding.replace('"fundingRate":"0.0001534702159002"', '"fundingRate":"nan"'),
        ]
    )
    assert out.mark_prices == [] and out.liquidations == [] and out.funding == []
    reasons = [reason for _, reason in out.errors]
    assert "not a positive finite" in reasons[0]
    assert "side 'long'" in reasons[1]
    assert "funding rate nan" in reasons[2]


def _session(tmp_path: Path) -> Path:
    """One connection of the recorded session, as a connector writes it: open, the instrument
    lists of the three types, acks, then the spot, swap and futures trades and books."""
    rows = _rows()
    feed = Feed("okx", conn="okx.t1.0", base_ns=OKX_AT)
    feed.open(WS_URL, SESSION_IDS)
    feed.rest(INSTRUMENTS_URL.format("SPOT"), _answer(_spot_row()))
    feed.rest(INSTRUMENTS_URL.format("SWAP"), _answer(rows["UNI-USD-SWAP"], rows["BTC-USDT-SWAP"]))
    feed.rest(INSTRUMENTS_URL.format("FUTURES"), _answer(rows["BTC-USD-220527"]))
    feed.recv_all(messages("okx_derivatives.json", "ack"))
    feed.recv_all(
        [
            *messages("okx_derivatives.json", "book_snapshot"),
            *messages("okx.json", "book_snapshot"),
            *messages("okx_derivatives.json", "trade"),
            *messages("okx_derivatives.json", "book_update"),
            *messages("okx.json", "book_update"),
            *messages("okx.json", "trade"),
        ]
    )
    capture = tmp_path / "okx-session.jsonl.zst"
    with CaptureWriter(capture) as writer:
        writer.write_all(feed.records)
    return capture


def test_normalize_gives_each_instrument_of_a_mixed_session_its_own_name_and_book(tmp_path: Path) -> None:
    capture = _session(tmp_path)
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["normalize", str(capture), "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert all(line["symbol"] != "-" and line["symbol"] for line in lines)
    trades = {(t["symbol"], t["exchange_symbol"]) for t in lines if t["type"] == "trade"}
    assert trades == {
        ("BTC-USD-20220527-INV", "BTC-USD-220527"),
        ("UNI-USD-PERP-INV", "UNI-USD-SWAP"),
        ("BTC-USDT", "BTC-USDT"),
    }
    books: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if line["type"] == "book":
            books.setdefault(line["symbol"], []).append(line)
    assert {symbol: len(changes) for symbol, changes in books.items()} == {
        "UNI-USD-PERP-INV": 1 + 2,
        "BTC-USD-20220527-INV": 1,
        "BTC-USDT": 1 + 4,
    }
    # each book is its own: the swap's best bid is the swap's, the future's the future's
    assert books["UNI-USD-PERP-INV"][0]["bids"][0][0] < 10 < books["BTC-USD-20220527-INV"][0]["bids"][0][0]
    stats = json.loads(report_path.read_text())["exchanges"]["okx"]
    assert stats["books_synced"] == ["BTC-USD-20220527-INV", "BTC-USDT", "UNI-USD-PERP-INV"]
    assert stats["checksums_verified"] == 2 + 2 + 5  # the derivatives' books and spot's
    assert (stats["checksum_failures"], stats["sequence_gaps"]) == (0, 0)
    assert (stats["parse_errors"], stats["dead_letters"], stats["instruments_skipped"]) == (0, {}, 0)


# -- the connector: instrument lists per instType, channels per kind, < 30 channels per connection ---


async def test_connector_resolves_derivative_names_and_packs_their_channels(tmp_path: Path) -> None:
    """Six bases: 6 spot pairs and 18 contracts (linear and inverse swaps, inverse futures) from
    the simulator's instrument lists. Every public connection stays under 30 channels; each index
    and each instType's liquidations are subscribed once for the whole connector."""
    bases = ("BTC", "ETH", "SOL", "XRP", "DOGE", "LTC")
    spot = tuple(f"{base}-USDT" for base in bases)
    expiry = futures_expiry()
    names = {
        **{pair: pair for pair in spot},
        **{f"{b}-USDT-PERP": f"{b}-USDT-SWAP" for b in bases},
        **{f"{b}-USD-PERP-INV": f"{b}-USD-SWAP" for b in bases},
        **{f"{b}-USD-{expiry:%Y%m%d}-INV": f"{b}-USD-{expiry:%y%m%d}" for b in bases},
    }
    server = await simulator.start_simulator(seed=1, exchanges=("okx",), listings={"okx": spot})
    connector = OkxConnector(
        list(names), CaptureRawPublisher(tmp_path / "okx.jsonl"), sim_settings(server.urls(), "okx")
    )
    try:
        assert connector.listed_types() == ("SPOT", "SWAP", "FUTURES")
        await connector.start()
    finally:
        await connector.stop()
        await server.stop()
    assert connector.exchange_symbols == names
    public = [s for s in connector.shards if isinstance(s, PublicShard)]
    candles = [s for s in connector.shards if isinstance(s, CandleShard)]
    assert [s.symbols for s in candles] == [s.symbols for s in public]
    assert sorted(symbol for s in public for symbol in s.symbols) == sorted(names.values())
    shared: list[dict[str, str]] = []
    for shard in public:
        args = [arg for message in _subscribed(connector, shard) for arg in message["args"]]
        assert len(args) < 30, shard.symbols
        shared += [arg for arg in args if arg["channel"] in ("index-tickers", "liquidation-orders")]
        for arg in args:
            if arg["channel"] == "funding-rate":
                assert arg["instId"].endswith("-SWAP")
    indexes = sorted(arg["instId"] for arg in shared if arg["channel"] == "index-tickers")
    assert indexes == sorted([f"{b}-USDT" for b in bases] + [f"{b}-USD" for b in bases])
    assert sorted(arg["instType"] for arg in shared if "instType" in arg) == ["FUTURES", "SWAP"]
    urls = connector.instrument_urls(["BTC-USDT", "BTC-USDT-SWAP", f"BTC-USD-{expiry:%y%m%d}"])
    assert [url.split("?", 1)[1] for url in urls] == [
        "instType=SPOT&instId=BTC-USDT",
        "instType=SWAP&instId=BTC-USDT-SWAP",
        f"instType=FUTURES&instId=BTC-USD-{expiry:%y%m%d}",
    ]


def _subscribed(connector: OkxConnector, shard: Shard) -> list[dict[str, Any]]:
    conn = Connection(connector, shard)
    return [json.loads(message) for message in connector.connection_subscribe_messages(conn)]


def test_a_spot_only_configuration_asks_for_spot_instruments_only(tmp_path: Path) -> None:
    connector = OkxConnector(["BTC-USDT", "ETH-USDT"], CaptureRawPublisher(tmp_path / "okx.jsonl"))
    assert connector.listed_types() == ("SPOT",)
    (public, _) = connector.build_shards(["BTC-USDT", "ETH-USDT"])
    assert _subscribed(connector, public) == [
        {
            "op": "subscribe",
            "args": [{"channel": c, "instId": s} for s in ("BTC-USDT", "ETH-USDT") for c in SPOT],
        }
    ]


# -- the simulator's derivative frames have the real frames' shapes ----------------------------------

SAMPLE_KINDS = {  # channel -> (sample kind, index of the frame with the current field set)
    "funding-rate": ("funding_rate", 0),
    "mark-price": ("mark_price", 1),
    "open-interest": ("open_interest", 1),
    "index-tickers": ("index_price", 1),
    "liquidation-orders": ("liquidation", 0),
    "tickers": ("ticker", 1),
    "books": ("book_snapshot", 0),
}


def _keys(frame: dict[str, Any]) -> tuple[set[str], set[str]]:
    data = frame["data"][0]
    details = data.get("details") or [{}]
    return set(frame["arg"]) | set(data), set(details[0])


async def test_simulated_swap_frames_have_the_fields_of_the_real_ones() -> None:
    server = await simulator.start_simulator(seed=2, exchanges=("okx",), book_rate=40.0, trade_rate=20.0)
    try:
        args: list[dict[str, str]] = [
            {"channel": channel, "instId": "BTC-USD-SWAP"}
            for channel in ("books", "trades", "tickers", "funding-rate", "mark-price", "open-interest")
        ]
        args += [
            {"channel": "index-tickers", "instId": "BTC-USD"},
            {"channel": "liquidation-orders", "instType": "SWAP"},
        ]
        seen: dict[str, dict[str, Any]] = {}
        async with connect(f"{server.urls()['okx'][0]}/ws/v5/public") as ws:
            await ws.send(json.dumps({"op": "subscribe", "args": args}))
            while set(SAMPLE_KINDS) - set(seen):
                async with asyncio.timeout(10):
                    frame = json.loads(await ws.recv())
                if "data" in frame:
                    seen.setdefault(frame["arg"]["channel"], frame)
    finally:
        await server.stop()
    for channel, (kind, index) in SAMPLE_KINDS.items():
        sample = json.loads(messages("okx_derivatives.json", kind)[index])
        got, want = _keys(seen[channel]), _keys(sample)
        assert want[0] - {"checksum"} <= got[0] and want[1] <= got[1], (channel, want, got)
    assert seen["tickers"]["data"][0]["instType"] == "SWAP"
    funding = seen["funding-rate"]["data"][0]
    assert funding["nextFundingRate"] == "" and funding["method"] == "current_period"
    assert int(funding["nextFundingTime"]) - int(funding["fundingTime"]) == 8 * 3600 * 1000
    book = seen["books"]["data"][0]
    assert book["prevSeqId"] == -1 and all(float(size) == int(float(size)) for _, size, *_ in book["bids"])
