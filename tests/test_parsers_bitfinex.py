"""Bitfinex WS v2 parser on the real 2021 frames (SEQ_ALL on, checksum flag off in that capture).

The sample holds no ``subscribed`` event for the book/trade channels it has frames of (only two
ticker ones) and no ``cs`` frame: the tests build the ``subscribed`` events naming those real
chanIds, and test the checksum on a book loaded from the real snapshot against a CRC32 computed
here from the documented string, plus the official client library's documented example string.
"""

from __future__ import annotations

import json
import zlib

import pytest
from feed_helpers import Feed, empty, published
from samples import messages

from marketpipe.exchanges.bitfinex import parse_instruments

CONF_URL = "https://api-pub.bitfinex.com/v2/conf/pub:list:pair:exchange,pub:map:currency:sym"
CONF = json.dumps([["BFTUSD", "BTCUSD", "BTCUST", "TESTBTC:TESTUSD"], [["UST", "USDt"], ["DSH", "DASH"]]])


def subscribed(channel: str, chan_id: int, symbol: str = "tBFTUSD") -> str:
    return json.dumps(
        {"event": "subscribed", "channel": channel, "chanId": chan_id, "symbol": symbol, "pair": symbol[1:]}
    )


def connected(*channels: tuple[str, int]) -> Feed:
    feed = Feed("bitfinex")
    feed.open("wss://api-pub.bitfinex.com/ws/2", ["tBFTUSD"])
    assert empty(feed.rest(CONF_URL, CONF))
    for channel, chan_id in channels:
        assert empty(feed.recv(subscribed(channel, chan_id)))
    return feed


def real_snapshot() -> str:
    return messages("bitfinex.json", "book_snapshot")[0]


def snapshot_chan() -> int:
    chan: int = json.loads(real_snapshot())[0]
    return chan


def signed_crc(text: str) -> int:
    value = zlib.crc32(text.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def test_instruments_split_by_the_documented_rule_and_map_currencies() -> None:
    assert parse_instruments(CONF.encode()) == {
        "tBFTUSD": "BFT-USD",
        "tBTCUSD": "BTC-USD",
        "tBTCUST": "BTC-USDT",
        "tTESTBTC:TESTUSD": "TESTBTC-TESTUSD",
    }


@pytest.mark.parametrize("body", ['["error",10020,"symbol: invalid"]', '[["BTCUSDT1"]]', "{}", "[]"])
def test_bad_instrument_responses_are_dead_lettered(body: str) -> None:
    feed = Feed("bitfinex")
    out = feed.rest(CONF_URL, body)
    assert len(out.errors) == 1 and "bitfinex" in out.errors[0][1]


def test_real_acks_are_understood() -> None:
    feed = Feed("bitfinex")
    out = feed.recv_all(messages("bitfinex.json", "ack"))
    assert out.errors == []
    assert feed.proc.counters.acks == 4


def test_real_book_snapshot_field_by_field() -> None:
    feed = connected(("book", snapshot_chan()))
    out = feed.recv(real_snapshot())
    assert out.errors == []
    (book,) = out.books
    rows = json.loads(real_snapshot())[1]
    bids = [r for r in rows if r[2] > 0]
    asks = [r for r in rows if r[2] < 0]
    assert book.snapshot and book.symbol == "BFT-USD" and book.exchange_symbol == "tBFTUSD"
    assert len(book.bids) == len(bids) == 96 and len(book.asks) == len(asks) == 100
    assert (book.bids[0].price, book.bids[0].size) == (0.068965, 6098.17017201)
    assert (book.asks[0].price, book.asks[0].size) == (0.0774, 6662.31867263)
    assert book.bids[-1].price == 2e-8 and book.asks[-1].price == 0.29
    assert [lv.price for lv in book.bids] == sorted((lv.price for lv in book.bids), reverse=True)
    (bbo,) = out.bbos
    assert (bbo.bid_price, bbo.ask_price, bbo.ask_size) == (0.068965, 0.0774, 6662.31867263)
    assert [s.state for s in out.status] == ["synced"]


def test_checksum_string_is_the_documented_interleaving_of_wire_text() -> None:
    feed = connected(("book", snapshot_chan()))
    feed.recv(real_snapshot())
    rows = json.loads(real_snapshot(), parse_float=str, parse_int=str)[1]
    bids = [r for r in rows if not r[2].startswith("-")][:25]
    asks = [r for r in rows if r[2].startswith("-")][:25]
    text = ":".join(f"{b[0]}:{b[2]}:{a[0]}:{a[2]}" for b, a in zip(bids, asks, strict=True))
    assert text.startswith("0.068965:6098.17017201:0.0774:-6662.31867263:0.068961:5727.49883167:")
    chan = snapshot_chan()
    good = feed.recv(f'[{chan},"cs",{signed_crc(text)},543]')
    assert good.errors == [] and good.status == [] and feed.proc.counters.checksums_verified == 1
    bad = feed.recv(f'[{chan},"cs",{signed_crc(text) ^ 1},544]')
    assert [s.reason for s in bad.status] == ["checksum"] and len(bad.control) == 1
    assert feed.proc.counters.checksum_failures == 1


def test_checksum_matches_the_official_client_example() -> None:
    # bfx-api-node-models' documented example: bids 6000/1 5900/2, asks 6100/-3 6200/-4 (an
    # exponent price is written positionally, e.g. 1.7e-8 -> 0.000000017)
    feed = connected(("book", 7))
    feed.recv("[7,[[6000,1,1],[1.7e-8,1,2],[6100,1,-3],[6200,1,-4]],1]")
    expected = signed_crc("6000:1:6100:-3:0.000000017:2:6200:-4")
    out = feed.recv(f'[7,"cs",{expected},2]')
    assert out.errors == [] and out.status == [] and feed.proc.counters.checksums_verified == 1


def test_real_updates_apply_and_a_missing_sequence_number_is_a_connection_gap() -> None:
    updates = messages("bitfinex.json", "book_update")  # seq 28, 29, then 41 (frames in between not sampled)
    chan = json.loads(updates[0])[0]
    feed = connected(("book", chan))
    snapshot = f"[{chan},[[0.001027,2,10],[0.0010273,1,-1],[0.0010275,1,-1]],27]"
    assert published(feed.recv(snapshot))
    first = feed.recv(updates[0])
    assert (
        first.errors == [] and first.books[0].asks[0].price == 0.0010273 and first.books[0].asks[0].size == 0
    )
    second = feed.recv(updates[1])
    assert (second.books[0].asks[0].price, second.books[0].asks[0].size) == (0.0010272, 8.0)
    assert second.bbos[-1].ask_price == 0.0010272
    third = feed.recv(updates[2])
    assert [s.reason for s in third.status] == ["gap"] and len(third.control) == 1
    assert feed.proc.counters.sequence_gaps == 1 and not published(third)


def test_real_heartbeats_of_two_channels_share_one_connection_sequence() -> None:
    beats = messages("bitfinex.json", "heartbeat")  # chan 204928 seq 127, chan 205046 seq 128
    feed = connected(("book", snapshot_chan()))
    out = feed.recv_all(beats)
    assert out.errors == [] and feed.proc.counters.heartbeats == 2
    assert feed.proc.counters.sequence_gaps == 0
    assert feed.recv(f'[{json.loads(beats[0])[0]},"hb",130]').status == [] and (
        feed.proc.counters.sequence_gaps == 1
    )


def test_real_trade_snapshot_publishes_each_trade_once_oldest_first() -> None:
    frame = messages("bitfinex.json", "trade")[0]
    chan, rows, seq = json.loads(frame)
    feed = connected(("trades", chan))
    out = feed.recv(frame)
    assert out.errors == [] and len(out.trades) == len(rows) == 30
    assert [t.ts for t in out.trades] == sorted(t.ts for t in out.trades)  # the snapshot is newest first
    newest = max(rows, key=lambda row: row[1])
    assert out.trades[-1].trade_id == str(newest[0])
    # the live te of a snapshot trade is the same trade: dropped; its tu is skipped
    buy, sell = rows[0], rows[4]
    te = feed.recv(json.dumps([chan, "te", buy, seq + 1]))
    tu = feed.recv(json.dumps([chan, "tu", buy, seq + 2]))
    assert te.trades == [] and tu.trades == [] and tu.errors == []
    assert feed.proc.counters.duplicates_dropped == 1 and feed.proc.skipped_trades == 1
    # a resubscribe re-sends the snapshot: nothing is published twice
    assert feed.recv(json.dumps([chan, rows, seq + 3])).trades == []
    assert feed.proc.counters.duplicates_dropped == 1 + 30
    # live frames rebuilt from real rows with new ids: published, taker side from the amount sign
    te = feed.recv(json.dumps([chan, "te", [buy[0] + 1000, buy[1] + 1, buy[2], buy[3]], seq + 4]))
    te_sell = feed.recv(json.dumps([chan, "te", [sell[0] + 1000, sell[1] + 1, sell[2], sell[3]], seq + 5]))
    (trade,) = te.trades
    assert (trade.trade_id, trade.price, trade.size, trade.side) == ("670087109", 282780.0, 0.018485, "buy")
    assert trade.ts == 1618677372579_000 and trade.symbol == "BFT-USD"
    assert (te_sell.trades[0].side, te_sell.trades[0].size) == ("sell", 0.00154)
    assert feed.proc.counters.trades == 32 and feed.proc.counters.sequence_gaps == 0


def test_update_before_snapshot_asks_for_one_resync() -> None:
    feed = connected(("book", 5))
    out = feed.recv("[5,[100.5,1,2],1]")
    assert [s.reason for s in out.status] == ["gap"] and len(out.control) == 1
    assert not published(feed.recv("[5,[100.5,1,3],2]"))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"event":"error","msg":"symbol: invalid","code":10300}', "bitfinex error 10300"),
        ("[999,[1,1,1],1]", "no subscribed event"),
        ('[5,"xx",1]', "unsupported bitfinex channel message"),
        ("[5,[1,1,1],1,2]", "4 elements"),
        ("[5,[1,1,0],1]", "zero amount"),
        ('[5,"hb","x"]', "not an integer"),
        ('{"event":"conf","status":"FAIL","flags":65536}', "conf rejected"),
        ('{"event":"nope"}', "unsupported bitfinex event"),
        ("[5,[1,1", "invalid JSON"),
        ('"x"', "neither an array nor an object"),
    ],
)
def test_garbage_is_dead_lettered_with_a_reason(frame: str, reason: str) -> None:
    feed = connected(("book", 5))
    out = feed.recv(frame)
    assert len(out.errors) == 1 and reason in out.errors[0][1], out.errors


def test_maintenance_and_restart_notices_are_counted() -> None:
    feed = connected()
    out = feed.recv_all(['{"event":"info","code":20051,"msg":"Stopping. Please try to reconnect"}'] * 2)
    assert out.errors == [] and feed.proc.counters.notices == 2


def test_resubscribe_gives_a_new_chan_id_and_snapshot_that_resyncs() -> None:
    feed = connected(("book", 5))
    feed.recv("[5,[[100,1,2],[101,1,-2]],1]")
    assert feed.recv("[5,[100,1,3],3]").status  # gap
    assert feed.recv('{"event":"unsubscribed","status":"OK","chanId":5}').errors == []
    feed.recv(subscribed("book", 6))
    out = feed.recv("[6,[[99,1,2],[101,1,-2]],4]")
    assert [s.state for s in out.status] == ["synced"] and out.books[0].bids[0].price == 99
    assert feed.recv("[5,[100,1,3],5]").errors  # the old chanId is gone


# -- ticker and candles (bitfinex_ticker_kline.json) -----------------------------------------------

TK = "bitfinex_ticker_kline.json"


def test_real_ticker_with_seq_all_field_by_field() -> None:
    feed = connected()
    assert empty(feed.recv_all(messages(TK, "ack")))
    out = feed.recv(messages(TK, "ticker")[0])  # [232949, [10 fields], 1]: the trailing 1 is SEQ_ALL
    assert out.errors == []
    (ticker,) = out.tickers
    assert (ticker.exchange, ticker.symbol, ticker.exchange_symbol) == ("bitfinex", "BFT-USD", "tBFTUSD")
    assert (ticker.bid_price, ticker.bid_size) == (0.068965, 60157.36709703)
    assert (ticker.ask_price, ticker.ask_size) == (0.0774, 48578.50804052)
    assert (ticker.last_price, ticker.high_24h, ticker.low_24h) == (0.076989, 0.0828, 0.068961)
    assert ticker.volume_24h == 101459.39453471
    assert ticker.open_24h == 0.07502, "LAST_PRICE - DAILY_CHANGE on the wire decimals (0.076989 - 0.001969)"
    assert ticker.last_size is None and ticker.quote_volume_24h is None and ticker.trades_24h is None
    assert ticker.ts == ticker.recv_ts == feed.recv_us(-1), "Bitfinex tickers carry no time"


def test_real_ticker_with_whole_number_prices() -> None:
    feed = connected(("ticker", 232950))
    feed.rest(CONF_URL, CONF)
    out = feed.recv(messages(TK, "ticker")[1])
    (ticker,) = out.tickers
    assert (ticker.bid_price, ticker.ask_price, ticker.last_price) == (278200.0, 282030.0, 282780.0)
    assert ticker.open_24h == 282780 + 66440


def rewrapped(frame: str, chan_id: int) -> str:
    """crypto-msg-parser's frames lead with ``{channel, key}`` instead of the chanId Bitfinex sends:
    the same body behind a real chanId (the ``source`` note of the sample file)."""
    return json.dumps([chan_id, json.loads(frame)[1]])


def candles_feed(chan_id: int = 77) -> Feed:
    feed = connected()
    feed.recv(
        json.dumps(
            {"event": "subscribed", "channel": "candles", "chanId": chan_id, "key": "trade:1m:tBTCUST"}
        )
    )
    return feed


def test_real_candle_snapshot_newest_first_and_close_before_high() -> None:
    feed = candles_feed()
    snapshot, update = messages(TK, "kline")
    out = feed.recv(rewrapped(snapshot, 77))
    assert out.errors == []
    newest, middle, oldest = out.exchange_candles
    assert [c.open_time for c in out.exchange_candles] == [
        1654074480000000,
        1654074420000000,
        1654074300000000,
    ]
    assert (newest.symbol, newest.interval, newest.closed) == ("BTC-USDT", "1m", False)
    assert middle.closed and oldest.closed, "rows older than the newest are final"
    # [MTS, OPEN, CLOSE, HIGH, LOW, VOLUME] = [1654074420000, 31633, 31631, 31640, 31631, 0.11289119]
    assert (middle.open, middle.high, middle.low, middle.close) == (31633.0, 31640.0, 31631.0, 31631.0)
    assert middle.volume == 0.11289119 and middle.close_time == 1654074480000000
    assert middle.quote_volume is None and middle.trades is None
    later = feed.recv(rewrapped(update, 77))
    final, current = later.exchange_candles
    assert (final.open_time, final.closed, final.close) == (1654074480000000, True, 31636.0)
    assert (current.open_time, current.closed, current.volume) == (1654075080000000, False, 0.00843875)


def test_candle_subscribed_event_and_heartbeat_are_understood() -> None:
    feed = candles_feed(78)
    assert feed.proc.counters.acks == 1
    out = feed.recv('[78,"hb"]')
    assert out.errors == [] and feed.proc.counters.heartbeats == 1


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("[77,[1654074480000,31636,31636,31636]]", "is not [MTS, OPEN, CLOSE, HIGH, LOW, VOLUME]"),
        ("[77,[1654074480000,31636,31630,31640,31641,1]]", "do not bound"),
        ("[77,[1654074480000,0,0,0,0,1]]", "not a positive finite"),
        ("[77,[1654074480000,31636,31636,31636,31636,-1]]", "not a finite number >= 0"),
        ('[77,"te",[1]]', "bitfinex"),
    ],
)
def test_bad_candles_are_dead_lettered_with_a_reason(frame: str, reason: str) -> None:
    feed = candles_feed()
    out = feed.recv(frame)
    assert len(out.errors) == 1 and reason in out.errors[0][1], out.errors
    assert out.exchange_candles == []


def test_bad_tickers_are_dead_lettered_with_a_reason() -> None:
    feed = connected(("ticker", 5))
    for frame, reason in {
        "[5,[1,2,3,4,5,6,7,8]]": "10-field",
        '[5,[1,2,3,4,5,6,"x",8,9,10]]': "not a number",
        "[5,[1,2,3,4,5,6,0,8,9,10]]": "not a positive finite",
    }.items():
        out = feed.recv(frame)
        assert len(out.errors) == 1 and reason in out.errors[0][1], (frame, out.errors)
        assert out.tickers == []


def test_unknown_candle_timeframe_is_unsupported() -> None:
    feed = connected()
    feed.recv(
        json.dumps({"event": "subscribed", "channel": "candles", "chanId": 9, "key": "trade:2m:tBTCUST"})
    )
    out = feed.recv("[9,[1654074480000,1,1,1,1,1]]")
    assert len(out.errors) == 1 and "unsupported bitfinex candles key" in out.errors[0][1]
