"""HTX parser: the real 2021 frames (trade.detail, depth.step0 full books, pings, sub acks; stored
decoded, gzip-compressed here as the wire sends them) and the MBP sequence rules on frames built
in the documented shapes (no real MBP frames were captured)."""

from __future__ import annotations

import gzip
import json
from typing import Any

from feed_helpers import Feed, empty, published
from samples import messages

from marketpipe.exchanges.htx import parse_instruments
from marketpipe.records import Level

INFO_URL = "https://api.huobi.pro/v2/settings/common/symbols?symbols=trioeth,borusdt,btcusdt"


def symbols_body(*rows: tuple[str, str, str]) -> str:
    data = [{"sc": sc, "bc": bc, "qc": qc, "bcdn": bc.upper(), "state": "online"} for sc, bc, qc in rows]
    return json.dumps({"status": "ok", "data": data, "ts": "1618678000000", "full": 1})


INFO = symbols_body(("trioeth", "trio", "eth"), ("borusdt", "bor", "usdt"), ("btcusdt", "btc", "usdt"))


def gz(frame: str | dict[str, Any]) -> bytes:
    text = frame if isinstance(frame, str) else json.dumps(frame)
    return gzip.compress(text.encode())


def connected() -> Feed:
    feed = Feed("htx")
    feed.open("wss://api.huobi.pro/feed", ["trioeth", "borusdt", "btcusdt"])
    feed.rest(INFO_URL, INFO)
    return feed


def real(kind: str) -> list[bytes]:
    return [gz(frame) for frame in messages("htx.json", kind)]


def test_instruments_map_base_and_quote_fields() -> None:
    assert parse_instruments(INFO.encode()) == {
        "trioeth": "TRIO-ETH",
        "borusdt": "BOR-USDT",
        "btcusdt": "BTC-USDT",
    }
    feed = Feed("htx")
    out = feed.rest(INFO_URL, json.dumps({"status": "error", "err-code": "x", "err-msg": "no"}))
    assert out.errors and "htx symbols error" in out.errors[0][1]


def test_real_trades_field_by_field() -> None:
    feed = connected()
    out = feed.recv_all(real("trade"))  # type: ignore[arg-type]
    assert not out.errors and len(out.trades) == 2
    first, second = out.trades
    assert (first.exchange, first.symbol, first.exchange_symbol) == ("htx", "TRIO-ETH", "trioeth")
    assert (first.trade_id, first.price, first.size, first.side) == ("100045088885", 9.2e-7, 20995.88, "buy")
    assert first.ts == 1618678027940 * 1000
    assert (second.symbol, second.trade_id, second.price, second.size, second.side) == (
        "BOR-USDT",
        "1311318",
        716.0,
        0.078924,
        "sell",
    )


def test_real_depth_step0_frame_is_a_full_snapshot() -> None:
    feed = connected()
    (frame,) = messages("htx.json", "book_snapshot")
    tick = json.loads(frame)["tick"]
    out = feed.recv(gz(frame))
    assert not out.errors and not out.control
    (book,) = out.books
    assert book.snapshot and book.symbol == "TRIO-ETH" and book.last_update_id == tick["version"]
    assert book.bids == [Level(p, s) for p, s in tick["bids"]]
    assert book.asks == [Level(p, s) for p, s in tick["asks"]]
    assert book.ts == json.loads(frame)["ts"] * 1000
    assert [s.state for s in out.status] == ["synced"]
    (bbo,) = out.bbos
    assert (bbo.bid_price, bbo.ask_price) == (tick["bids"][0][0], tick["asks"][0][0])
    assert bbo.bid_price < bbo.ask_price


def test_every_full_book_replaces_the_last_and_older_versions_are_dropped() -> None:
    feed = connected()
    (frame,) = messages("htx.json", "book_snapshot")
    msg = json.loads(frame)
    feed.recv(gz(frame))
    newer = json.loads(frame)
    newer["tick"].update(version=msg["tick"]["version"] + 5, bids=msg["tick"]["bids"][1:3])
    out = feed.recv(gz(newer))
    assert out.books[0].bids == [Level(p, s) for p, s in msg["tick"]["bids"][1:3]]
    assert out.bbos[0].bid_price == msg["tick"]["bids"][1][0]
    older = json.loads(frame)
    older["tick"]["version"] = msg["tick"]["version"] - 1
    out = feed.recv(gz(older))
    assert empty(out) and feed.proc.counters.stale_updates == 1


def test_real_pings_and_acks_are_counted_and_publish_nothing() -> None:
    feed = connected()
    out = feed.recv_all([*real("heartbeat"), *real("ack")])  # type: ignore[list-item]
    assert empty(out)
    assert feed.proc.counters.heartbeats == 2 and feed.proc.counters.acks == 2


def test_decoded_text_frames_parse_too() -> None:
    feed = connected()
    out = feed.recv_all(messages("htx.json", "trade"))
    assert len(out.trades) == 2 and not out.errors


# -- MBP incremental (documented shapes: Sample A refresh reply, incremental push) --------------

SNAP_SEQ = 100020142010


def snapshot(seq: int = SNAP_SEQ, bids: Any = None, asks: Any = None, req_id: str = "id21") -> bytes:
    data = {
        "seqNum": seq,
        "bids": bids if bids is not None else [[618.37, 71.594], [423.33, 77.726]],
        "asks": asks if asks is not None else [[650.59, 14.909733438349803], [650.63, 97.996]],
    }
    return gz({"id": req_id, "rep": "market.btcusdt.mbp.150", "status": "ok", "data": data})


def update(prev: int, seq: int, bids: Any = (), asks: Any = (), levels: int = 150) -> bytes:
    tick = {"seqNum": seq, "prevSeqNum": prev, "bids": list(bids), "asks": list(asks)}
    return gz({"ch": f"market.btcusdt.mbp.{levels}", "ts": 1573199608679, "tick": tick})


def test_updates_wait_for_the_snapshot_then_bridge_and_chain() -> None:
    feed = connected()
    assert empty(feed.recv(update(SNAP_SEQ - 5, SNAP_SEQ - 2, bids=[[600.0, 1.0]])))
    assert empty(feed.recv(update(SNAP_SEQ - 2, SNAP_SEQ, bids=[[601.0, 1.0]])))
    assert empty(feed.recv(update(SNAP_SEQ, SNAP_SEQ + 4, asks=[[650.59, 0]])))  # size 0 deletes
    out = feed.recv(snapshot())
    assert [b.snapshot for b in out.books] == [True, False]
    assert out.books[0].last_update_id == SNAP_SEQ
    assert out.books[1].first_update_id == SNAP_SEQ + 1 and out.books[1].last_update_id == SNAP_SEQ + 4
    assert out.bbos[-1].ask_price == 650.63, "the straddling update deleted the best ask"
    assert not any(b.bids and b.bids[0].price in (600.0, 601.0) for b in out.books[1:])
    out = feed.recv(update(SNAP_SEQ + 4, SNAP_SEQ + 9, bids=[[620.0, 2.0]]))
    assert published(out) and out.bbos[0].bid_price == 620.0
    assert feed.proc.counters.stale_updates == 0, "buffered updates at or before the snapshot are dropped"


def test_first_update_may_straddle_the_snapshot_seq() -> None:
    feed = connected()
    feed.recv(snapshot())
    out = feed.recv(update(SNAP_SEQ - 3, SNAP_SEQ + 2, bids=[[619.0, 1.0]]))
    assert published(out) and not out.control
    out = feed.recv(update(SNAP_SEQ + 1, SNAP_SEQ + 3, bids=[[619.5, 1.0]]))  # no longer
    assert [c.reason for c in out.control] == ["gap"]


def test_gap_unsyncs_once_and_a_new_snapshot_resyncs() -> None:
    feed = connected()
    feed.recv(snapshot())
    feed.recv(update(SNAP_SEQ, SNAP_SEQ + 1, bids=[[619.0, 1.0]]))
    out = feed.recv(update(SNAP_SEQ + 2, SNAP_SEQ + 3, bids=[[619.5, 1.0]]))  # SNAP_SEQ+1 -> +2 lost
    assert [(s.state, s.reason) for s in out.status] == [("unsynced", "gap")]
    assert [(c.action, c.reason, c.exchange_symbol) for c in out.control] == [("resync", "gap", "btcusdt")]
    assert "does not follow" in out.status[0].detail and not published(out)
    out = feed.recv(update(SNAP_SEQ + 3, SNAP_SEQ + 4, asks=[[640.0, 1.0]]))
    assert empty(out), "nothing is published, and no second resync request, until a snapshot"
    out = feed.recv(snapshot(SNAP_SEQ + 3, bids=[[610.0, 1.0]], asks=[[650.0, 1.0]], req_id="id22"))
    assert [s.state for s in out.status] == ["synced"]
    assert [b.snapshot for b in out.books] == [True, False]
    assert out.bbos[-1].ask_price == 640.0, "the buffered update after the snapshot was applied"
    assert feed.proc.counters.sequence_gaps == 1 and feed.proc.counters.resyncs == 1


def test_snapshot_older_than_the_buffer_is_a_gap() -> None:
    feed = connected()
    feed.recv(update(SNAP_SEQ + 10, SNAP_SEQ + 12))
    out = feed.recv(snapshot())
    assert [c.reason for c in out.control] == ["gap"] and not published(out)


def test_stale_snapshot_and_updates_are_dropped_while_synced() -> None:
    feed = connected()
    feed.recv(snapshot())
    feed.recv(update(SNAP_SEQ, SNAP_SEQ + 2))
    assert empty(feed.recv(update(SNAP_SEQ, SNAP_SEQ + 1)))
    assert empty(feed.recv(snapshot(SNAP_SEQ + 1)))
    assert feed.proc.counters.stale_updates == 2


def test_book_keeps_the_channel_depth() -> None:
    feed = connected()
    feed.recv(snapshot(bids=[[600.0 - i, 1.0] for i in range(5)], asks=[[700.0 + i, 1.0] for i in range(5)]))
    out = feed.recv(update(SNAP_SEQ, SNAP_SEQ + 1, bids=[[605.0, 1.0]], levels=5))
    assert published(out)
    state = feed.proc._connections[feed.conn].books["btcusdt"]
    assert len(state.book.bids) == 5 and state.book.bids.best() == (605.0, 1.0)
    assert 596.0 not in state.book.bids.sizes, "the level pushed beyond 5 levels is gone"


def test_bad_frames_are_dead_lettered_with_a_reason() -> None:
    feed = connected()
    cases = {
        b"\x1f\x8b\x08\x00garbage": "not valid gzip",
        gz("{not json"): "invalid JSON",
        gz(
            {"id": "1", "status": "error", "err-code": "bad-request", "err-msg": "invalid topic x"}
        ): "invalid topic",
        gz({"ch": "market.btcusdt.bbo", "ts": 1, "tick": {}}): "unsupported htx channel",
        gz(
            {"ch": "market.nope.mbp.150", "ts": 1, "tick": {"seqNum": 2, "prevSeqNum": 1}}
        ): "unknown htx symbol",
        gz({"id": "2", "rep": "market.btcusdt.mbp.150", "status": "error", "err-msg": "x"}): "failed",
        gz({"ch": "market.btcusdt.mbp.150", "ts": 1, "tick": {"seqNum": 1}}): "prevSeqNum",
        gz({"hello": 1}): "unrecognised htx frame",
    }
    for frame, reason in cases.items():
        out = feed.recv(frame)
        assert len(out.errors) == 1 and reason in out.errors[0][1], (reason, out.errors)
    assert feed.proc.counters.parse_errors == len(cases)


# -- tickers and klines (htx_ticker_kline.json) -----------------------------------------------------

TK = "htx_ticker_kline.json"


def ticker_feed() -> Feed:
    feed = connected()
    feed.rest(INFO_URL, symbols_body(("btcusdt", "btc", "usdt"), ("ethbtc", "eth", "btc")))
    return feed


def test_real_detail_is_a_24h_ticker() -> None:
    feed = ticker_feed()
    out = feed.recv(gz(messages(TK, "ticker")[0]))
    assert out.errors == []
    (ticker,) = out.tickers
    assert (ticker.symbol, ticker.exchange_symbol, ticker.ts) == ("BTC-USDT", "btcusdt", 1654164208520000)
    assert (ticker.open_24h, ticker.high_24h, ticker.low_24h, ticker.last_price) == (
        31666.3,
        31899.51,
        29326.15,
        29952.31,
    )
    assert (ticker.volume_24h, ticker.quote_volume_24h) == (26897.159881877742, 818158859.8785326)
    assert ticker.trades_24h == 699452
    assert ticker.bid_price is None and ticker.last_size is None


def test_doc_ticker_has_the_book_and_last_trade() -> None:
    feed = ticker_feed()
    (ticker,) = feed.recv(gz(messages(TK, "ticker")[1])).tickers
    assert (ticker.bid_price, ticker.bid_size, ticker.ask_price, ticker.ask_size) == (
        52732.88,
        0.036,
        52732.89,
        0.583653,
    )
    assert (ticker.last_price, ticker.last_size, ticker.open_24h, ticker.trades_24h) == (
        52735.63,
        0.03,
        51732.0,
        448737,
    )
    assert (ticker.volume_24h, ticker.quote_volume_24h) == (13259.24137056181, 687640987.4125315)


def test_real_and_doc_klines_with_trade_count() -> None:
    feed = ticker_feed()
    outs = [feed.recv(gz(frame)) for frame in messages(TK, "kline")]
    assert [out.errors for out in outs] == [[], []]
    ((real,), (doc,)) = (out.exchange_candles for out in outs)
    assert (real.symbol, real.interval, real.open_time, real.close_time) == (
        "BTC-USDT",
        "1m",
        1654081320_000000,
        1654081380_000000,
    )
    assert (real.open, real.high, real.low, real.close) == (31545.71, 31545.72, 31545.71, 31545.72)
    assert (real.volume, real.quote_volume, real.trades, real.closed) == (
        0.015443758717188892,
        487.1844552,
        4,
        False,
    )
    assert real.ts == 1654081322624000
    assert (doc.symbol, doc.trades, doc.volume, doc.quote_volume) == ("ETH-BTC", 3, 2.4448, 0.1829884187)


def test_kline_is_final_once_a_later_window_arrives() -> None:
    feed = ticker_feed()
    frame = json.loads(messages(TK, "kline")[0])
    feed.recv(gz(frame))
    frame["tick"].update(id=frame["tick"]["id"] + 60, count=1)
    final, current = feed.recv(gz(frame)).exchange_candles
    assert (final.open_time, final.trades, final.closed) == (1654081320_000000, 4, True)
    assert (current.open_time, current.trades, current.closed) == (1654081380_000000, 1, False)


def test_bad_tickers_and_klines_are_dead_lettered_with_a_reason() -> None:
    feed = ticker_feed()
    kline = json.loads(messages(TK, "kline")[0])
    ticker = json.loads(messages(TK, "ticker")[1])
    cases = [
        ({**kline, "ch": "market.btcusdt.kline.2min"}, "unsupported htx kline period"),
        ({**kline, "tick": {**kline["tick"], "count": 1.5}}, "trade count 1.5 is not an integer"),
        ({**kline, "tick": {**kline["tick"], "low": 40000}}, "do not bound"),
        ({**ticker, "tick": {**ticker["tick"], "bid": -1}}, "not a positive finite"),
        ({**ticker, "tick": {**ticker["tick"], "amount": "x"}}, "could not convert"),
    ]
    for frame, reason in cases:
        out = feed.recv(gz(frame))
        assert len(out.errors) == 1 and reason in out.errors[0][1], (reason, out.errors)
        assert out.tickers == [] and out.exchange_candles == []
