"""The base rules of funding, open-interest, mark-price and liquidation records (streams/feed.py):
values validated once for every venue, repeats dropped, and that memory kept in the checkpoint.
The venues' own frames are tested in their parser and feed tests."""

from __future__ import annotations

import pickle

from feed_helpers import OKX_INSTRUMENTS_URL, Feed, okx_instruments

from marketpipe.raw import RawRecord
from streams.feed import ClockWindow, FeedOutput

MS = 1_000_000
AT_NS = 1652459224000 * MS
TS = AT_NS // 1000


def okx() -> Feed:
    feed = Feed("okx", conn="okx.d.0", clock=ClockWindow(), base_ns=AT_NS)
    feed.open("wss://ws.okx.com:8443/ws/v5/public", ["BTC-USDT"])
    feed.rest(OKX_INSTRUMENTS_URL, okx_instruments(("BTC-USDT", "BTC", "USDT")))
    return feed


def frame(feed: Feed) -> RawRecord:
    return feed.record("recv", b"{}")


def test_funding_is_published_when_it_changes_and_bad_rates_are_dead_lettered() -> None:
    feed, out = okx(), FeedOutput()
    funding = feed.proc.funding
    assert funding(frame(feed), out, "BTC-USDT", TS, rate=0.0001, next_funding_ts=TS + 10, interval_s=28_800)
    funding(frame(feed), out, "BTC-USDT", TS + 1, rate=0.0001, next_funding_ts=TS + 10, interval_s=28_800)
    funding(frame(feed), out, "BTC-USDT", TS + 2, rate=0.0002, next_funding_ts=TS + 10, interval_s=28_800)
    assert [(f.symbol, f.rate, f.ts) for f in out.funding] == [
        ("BTC-USDT", 0.0001, TS),
        ("BTC-USDT", 0.0002, TS + 2),
    ]
    assert feed.proc.counters.repeats_dropped == 1

    assert not funding(frame(feed), out, "BTC-USDT", TS, rate=float("nan"))
    assert not funding(frame(feed), out, "BTC-USDT", TS, rate=0.001, interval_s=0)
    assert not funding(frame(feed), out, "BTCUSDTX", TS, rate=0.001)
    reasons = [reason for _, reason in out.errors]
    assert "okx funding of BTC-USDT: funding rate nan is not a finite fraction within +-1" in reasons
    assert "okx funding of BTC-USDT: funding interval 0 s is not positive" in reasons
    assert len(reasons) == 3 and len(out.funding) == 2


def test_open_interest_and_mark_prices_are_validated_and_repeats_dropped() -> None:
    feed, out = okx(), FeedOutput()
    proc = feed.proc
    assert proc.open_interest(frame(feed), out, "BTC-USDT", TS, open_interest=10.0, value=600_000.0)
    proc.open_interest(frame(feed), out, "BTC-USDT", TS + 5, open_interest=10.0, value=600_000.0)
    assert not proc.open_interest(frame(feed), out, "BTC-USDT", TS, open_interest=-1.0)
    assert [o.open_interest for o in out.open_interest] == [10.0]

    assert proc.mark_price(frame(feed), out, "BTC-USDT", TS, mark_price=60_000.0, index_price=59_990.0)
    proc.mark_price(frame(feed), out, "BTC-USDT", TS, mark_price=60_000.0, index_price=59_990.0)
    assert proc.mark_price(frame(feed), out, "BTC-USDT", None, mark_price=60_001.0)
    assert not proc.mark_price(frame(feed), out, "BTC-USDT", TS)
    assert not proc.mark_price(frame(feed), out, "BTC-USDT", TS + 86_400 * 10**6, mark_price=1.0)
    marks = out.mark_prices
    assert [(m.mark_price, m.index_price) for m in marks] == [(60_000.0, 59_990.0), (60_001.0, None)]
    assert marks[1].ts == marks[1].recv_ts  # no exchange time: the receive time stands in
    assert [category for category in proc.counters.dead_letters] == ["invalid_value", "ts_out_of_range"]


def test_a_liquidation_is_published_once_also_after_a_restart_from_the_checkpoint() -> None:
    feed, out = okx(), FeedOutput()
    proc = feed.proc
    assert proc.liquidation(frame(feed), out, "BTC-USDT", TS, side="sell", price=60_000.0, size=2.0)
    assert proc.liquidation(frame(feed), out, "BTC-USDT", TS, side="buy", price=60_000.0, size=2.0)
    restored = pickle.loads(pickle.dumps(proc))
    feed.proc = restored
    restored.liquidation(frame(feed), out, "BTC-USDT", TS, side="sell", price=60_000.0, size=2.0)
    assert not restored.liquidation(frame(feed), out, "BTC-USDT", TS, side="sell", price=0.0, size=2.0)
    assert [(liq.side, liq.size) for liq in out.liquidations] == [("sell", 2.0), ("buy", 2.0)]
    assert restored.counters.repeats_dropped == 1
    assert restored.counters.derivatives == 2


def test_processors_from_older_checkpoints_get_the_new_state() -> None:
    proc = okx().proc
    state = proc.__dict__.copy()
    for name in ("_instrument_records", "_last_published", "_liquidations_seen"):
        del state[name]
    old = type(proc).__new__(type(proc))
    old.__setstate__(state)
    feed, out = okx(), FeedOutput()
    feed.proc = old
    assert old.funding(frame(feed), out, "BTC-USDT", TS, rate=0.0)
    assert old.liquidation(frame(feed), out, "BTC-USDT", TS, side="sell", price=1.0, size=1.0)
