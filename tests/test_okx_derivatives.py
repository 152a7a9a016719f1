"""OKX SWAP and FUTURES on the real frames of one recorded session (2022-05-13, spot, swap and
futures instruments on one connection): each instrument is named from its metadata and keeps its
own trades and book; nothing comes out as ``-`` (the recorded failure merged UNI-USD-SWAP and
BTC-USD-220527 under ``-``, and later dead-lettered both)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from feed_helpers import Feed, okx_instruments
from samples import messages

from marketpipe.cli import main
from marketpipe.codec import AvroCodec
from marketpipe.raw import CaptureWriter
from streams.parsers.okx import parse_instruments

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


def test_derivative_tickers_are_dead_lettered_until_their_units_are_mapped() -> None:
    feed = Feed("okx", base_ns=OKX_AT)
    feed.open(WS_URL, SESSION_IDS)
    feed.rest(INSTRUMENTS_URL.format("ANY"), _answer(_spot_row(), *_rows().values()))
    out = feed.recv_all(messages("okx_derivatives.json", "ticker"))
    assert out.tickers == [] and len(out.errors) == 2
    assert all("derivative tickers are not mapped yet" in reason for _, reason in out.errors)
    assert feed.proc.counters.dead_letters == {"unsupported": 2}
    spot = feed.recv(messages("okx_ticker_kline.json", "ticker")[0])
    assert spot.errors == [] and spot.tickers[0].symbol == "BTC-USDT"


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
