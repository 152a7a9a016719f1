"""`marketpipe normalize` on a capture built from the real sample frames."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from feed_helpers import (
    BINANCE_INFO_URL,
    BYBIT_INFO_URL,
    KRAKEN_PAIRS_URL,
    OKX_INSTRUMENTS_URL,
    Feed,
    binance_info,
    bybit_instruments,
    kraken_pairs,
    okx_instruments,
)
from samples import messages

from marketpipe.cli import main
from marketpipe.raw import CaptureWriter, RawRecord

MS = 1_000_000
# receive times near the exchange times of each sample (the CLI checks the clock window)
BINANCE_AT = 1633998510000 * MS
BYBIT_AT = 1786310815000 * MS
OKX_AT = 1652459220000 * MS
KRAKEN_BOOK_AT = 1746523040000 * MS  # 2025-05-06T09:17:20Z
KRAKEN_TRADE_AT = 1722114955000 * MS  # 2024-07-27T21:15:55Z


def capture_records() -> list[RawRecord]:
    binance = Feed("binance", conn="binance.t1.0", base_ns=BINANCE_AT)
    binance.open("wss://stream.binance.com:9443/stream", ["NKNUSDT"])
    binance.rest(BINANCE_INFO_URL, binance_info(("NKNUSDT", "NKN", "USDT"), ("LRCBTC", "LRC", "BTC")))
    binance.feed("sent", '{"method":"SUBSCRIBE","params":["nknusdt@depth@100ms"],"id":1}')
    binance.recv(messages("binance.json", "ack")[0])
    diffs = messages("binance.json", "book_update")
    binance.recv(diffs[0])
    binance.rest(
        "https://api.binance.com/api/v3/depth?symbol=NKNUSDT&limit=1000",
        messages("binance.json", "book_snapshot")[0],
    )
    binance.recv_all([*diffs[1:], *messages("binance.json", "trade")])
    binance.close(1000, "bye")

    bybit = Feed("bybit", conn="bybit.t1.0", base_ns=BYBIT_AT)
    bybit.open("wss://stream.bybit.com/v5/public/spot", ["BTCUSDT"])
    bybit.rest(BYBIT_INFO_URL, bybit_instruments(("BTCUSDT", "BTC", "USDT")))
    bybit.recv_all([*messages("bybit.json", "ack"), *messages("bybit.json", "book_snapshot")])
    bybit.recv_all([*messages("bybit.json", "book_update"), *messages("bybit.json", "trade")])
    bybit.recv("{broken")

    okx = Feed("okx", conn="okx.t1.0", base_ns=OKX_AT)
    okx.open("wss://ws.okx.com:8443/ws/v5/public", ["BTC-USDT"])
    okx.rest(OKX_INSTRUMENTS_URL, okx_instruments(("BTC-USDT", "BTC", "USDT")))
    okx.recv_all([*messages("okx.json", "book_snapshot"), *messages("okx.json", "book_update"), "pong"])

    kraken = Feed("kraken", conn="kraken.t1.0", base_ns=KRAKEN_BOOK_AT)
    kraken.open("wss://ws.kraken.com/v2", ["ETH/USD"])
    kraken.rest(KRAKEN_PAIRS_URL, kraken_pairs(("XETHZUSD", "ETH/USD", "XETH", "ZUSD", "")))
    kraken.recv_all([messages("kraken.json", "book_snapshot")[0], messages("kraken.json", "book_update")[0]])
    # the trade sample was recorded nine months earlier: another connection, another time
    kraken_trades = Feed("kraken", conn="kraken.t0.0", base_ns=KRAKEN_TRADE_AT)
    kraken_trades.open("wss://ws.kraken.com/v2", ["BTC/USD"])
    kraken_trades.recv(messages("kraken.json", "trade")[0])
    return [*binance.records, *bybit.records, *okx.records, *kraken.records, *kraken_trades.records]


def run(tmp_path: Path, *extra: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    capture = tmp_path / "session.jsonl.zst"
    with CaptureWriter(capture) as writer:
        writer.write_all(capture_records())
    report_path = tmp_path / "out" / "report.json"
    result = CliRunner().invoke(main, ["normalize", str(capture), "--report", str(report_path), *extra])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return lines, json.loads(report_path.read_text())


def test_normalize_writes_trades_books_and_bbos(tmp_path: Path) -> None:
    lines, report = run(tmp_path)
    trades = [line for line in lines if line["type"] == "trade"]
    books = [line for line in lines if line["type"] == "book"]
    bbos = [line for line in lines if line["type"] == "bbo"]
    assert {line["type"] for line in lines} == {"trade", "book", "bbo"}
    nkn = next(t for t in trades if t["exchange"] == "binance")
    assert list(nkn) == [
        "type",
        "exchange",
        "symbol",
        "exchange_symbol",
        "trade_id",
        "price",
        "size",
        "side",
        "ts",
        "recv_ts",
    ]
    assert (
        nkn["symbol"],
        nkn["exchange_symbol"],
        nkn["trade_id"],
        nkn["price"],
        nkn["size"],
        nkn["side"],
    ) == (
        "NKN-USDT",
        "NKNUSDT",
        "15683430",
        0.3528,
        58.0,
        "buy",
    )
    assert nkn["ts"] == 1633998523963000 and isinstance(nkn["recv_ts"], int)
    assert len(trades) == 2 + 3 + 1  # binance aggTrades, bybit publicTrade, kraken trade
    first_book = books[0]
    assert list(first_book) == ["type", "exchange", "symbol", "snapshot", "bids", "asks", "ts", "recv_ts"]
    assert first_book["snapshot"] is True and first_book["exchange"] == "binance"
    assert first_book["bids"][0] == [0.3521, 672.0]
    by_exchange = {
        ex: sum(1 for b in books if b["exchange"] == ex) for ex in ("binance", "bybit", "okx", "kraken")
    }
    assert by_exchange == {"binance": 1 + 7, "bybit": 1 + 5, "okx": 1 + 4, "kraken": 2}
    last_nkn_bbo = [b for b in bbos if b["symbol"] == "NKN-USDT"][-1]
    assert list(last_nkn_bbo) == [
        "type", "exchange", "symbol", "bid_price", "bid_size", "ask_price", "ask_size", "ts", "recv_ts"
    ]  # fmt: skip
    assert (last_nkn_bbo["bid_price"], last_nkn_bbo["ask_price"], last_nkn_bbo["ask_size"]) == (
        0.3521,
        0.3525,
        1123.0,
    )

    stats = report["exchanges"]
    assert set(stats) == {"binance", "bybit", "okx", "kraken"}
    assert stats["binance"] == {
        "frames": 1 + 8 + 2,
        "trades": 2,
        "duplicates_dropped": 0,
        "book_messages": 8 + 1,
        "checksums_verified": 0,
        "checksum_failures": 0,
        "sequence_gaps": 0,
        "resyncs": 1,  # the close at the end of the session
        "parse_errors": 0,
        "derivatives": 0,
        "repeats_dropped": 0,
        "dead_letters": {},
        "instruments_skipped": 0,
        "books_synced": ["NKN-USDT"],
    }
    assert stats["okx"]["checksums_verified"] == 5 and stats["kraken"]["checksums_verified"] == 2
    assert stats["bybit"]["parse_errors"] == 1 and stats["bybit"]["book_messages"] == 6
    assert stats["bybit"]["dead_letters"] == {"undecodable": 1}
    assert stats["kraken"]["books_synced"] == ["ETH-USD"]


def test_errors_file_keeps_the_frame_and_reason(tmp_path: Path) -> None:
    errors = tmp_path / "errors.jsonl"
    run(tmp_path, "--errors", str(errors))
    (line,) = [json.loads(row) for row in errors.read_text().splitlines()]
    assert (line["exchange"], line["data"], line["kind"]) == ("bybit", "{broken", "recv")
    assert line["reason"].startswith("invalid JSON")


def test_unreadable_capture_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not a capture line\n")
    result = CliRunner().invoke(main, ["normalize", str(bad)])
    assert result.exit_code != 0 and "bad.jsonl:1" in result.output


def test_report_counts_dead_letters_by_category_and_dropped_duplicates(tmp_path: Path) -> None:
    okx = Feed("okx", conn="okx.r.0", base_ns=OKX_AT)
    okx.open("wss://ws.okx.com:8443/ws/v5/public", ["BTC-USDT"])
    okx.rest(OKX_INSTRUMENTS_URL, okx_instruments(("BTC-USDT", "BTC", "USDT")))
    trades = messages("okx.json", "trade")
    okx.recv_all([*trades, trades[-1]])  # the latest trade again, as a resubscribe sends it
    okx.recv_all(messages("okx_derivatives.json", "trade"))  # a swap and a future: no name yet
    okx.recv('{"arg":{"channel":"price-limit","instId":"BTC-USDT"},"data":[]}')
    okx.recv("{not json")
    capture = tmp_path / "session.jsonl"
    with CaptureWriter(capture) as writer:
        writer.write_all(okx.records)
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["normalize", str(capture), "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    assert sum(1 for line in result.stdout.splitlines() if '"type":"trade"' in line) == 3
    stats = json.loads(report_path.read_text())["exchanges"]["okx"]
    assert stats["trades"] == 3 and stats["duplicates_dropped"] == 1
    assert stats["dead_letters"] == {"undecodable": 1, "unnamed_instrument": 2, "unsupported": 1}
    assert stats["parse_errors"] == 4 and stats["instruments_skipped"] == 0
