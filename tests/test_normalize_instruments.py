"""Instrument metadata on real sample frames and constructed answers: one unreadable entry never
fails the map, every public form of each exchange's list is read, and no two instruments ever
share a normalised name (derivatives the metadata does not name are dead-lettered, never ``-``)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from feed_helpers import (
    KRAKEN_PAIRS_URL,
    OKX_INSTRUMENTS_URL,
    Feed,
    binance_info,
    bybit_instruments,
    coinbase_products,
    kraken_pairs,
    okx_instruments,
)
from samples import messages

from producers.connectors import connector_class
from producers.publisher import CaptureRawPublisher
from streams.parsers import EXCHANGES

BROKEN = {"symbol": "BROKEN", "status": "TRADING"}  # no base/quote fields at all


def _json(value: Any) -> str:
    return json.dumps(value)


def _without(row: dict[str, Any], field: str) -> dict[str, Any]:
    """A real entry missing one field it cannot be named without."""
    return {key: value for key, value in row.items() if key != field}


def _kucoin(*rows: dict[str, Any]) -> str:
    return _json({"code": "200000", "data": list(rows)})


def _htx(*rows: dict[str, Any]) -> str:
    return _json({"status": "ok", "data": list(rows)})


def answers() -> dict[str, tuple[str, str, tuple[str, str]]]:
    """exchange -> (instrument-list url, an answer with one good and one unreadable entry, the good entry)"""
    return {
        "binance": (
            "https://api.binance.com/api/v3/exchangeInfo",
            _json({"symbols": [json.loads(binance_info(("BTCUSDT", "BTC", "USDT")))["symbols"][0], BROKEN]}),
            ("BTCUSDT", "BTC-USDT"),
        ),
        "binance-futures": (
            "https://fapi.binance.com/fapi/v1/exchangeInfo",
            _json({"symbols": [json.loads(messages("binance_derivatives.json", "instrument")[0]), BROKEN]}),
            ("BTCUSDT", "BTC-USDT-PERP"),
        ),
        "coinbase": (
            "https://api.coinbase.com/api/v3/brokerage/market/products",
            _json(
                {
                    "products": [
                        *json.loads(coinbase_products(("BTC-USD", "BTC", "USD")))["products"],
                        {"product_id": "ETH-USD", "quote_currency_id": "USD"},
                    ]
                }
            ),
            ("BTC-USD", "BTC-USD"),
        ),
        "kraken": (
            KRAKEN_PAIRS_URL,
            _json(
                {
                    "error": [],
                    "result": {
                        **json.loads(kraken_pairs(("XXBTZUSD", "XBT/USD", "XXBT", "ZUSD", "")))["result"],
                        "XXBTZUSD.d": {"altname": "XBTUSD.d", "base": "XXBT", "quote": "ZUSD"},
                    },
                }
            ),
            ("XBT/USD", "BTC-USD"),
        ),
        "bybit": (
            "https://api.bybit.com/v5/market/instruments-info?category=spot",
            _json(
                {
                    "retCode": 0,
                    "result": {
                        "category": "spot",
                        "list": [{"symbol": "BTCUSDT", "baseCoin": "BTC", "quoteCoin": "USDT"}, BROKEN],
                    },
                }
            ),
            ("BTCUSDT", "BTC-USDT"),
        ),
        "deribit": (
            "https://www.deribit.com/api/v2/public/get_instruments?currency=BTC&kind=future&expired=false",
            _json(
                {
                    "jsonrpc": "2.0",
                    "result": [
                        json.loads(messages("deribit_derivatives.json", "instrument")[0]),
                        {"instrument_name": "BROKEN", "kind": "future"},
                    ],
                }
            ),
            ("BTC-PERPETUAL", "BTC-USD-PERP-INV"),
        ),
        "okx": (
            OKX_INSTRUMENTS_URL,
            _json(
                {
                    "code": "0",
                    "data": [
                        *json.loads(okx_instruments(("BTC-USDT", "BTC", "USDT")))["data"],
                        _without(json.loads(messages("okx_derivatives.json", "instrument")[0]), "uly"),
                    ],
                }
            ),
            ("BTC-USDT", "BTC-USDT"),
        ),
        "bitfinex": (
            "https://api-pub.bitfinex.com/v2/conf/pub:list:pair:exchange,pub:map:currency:sym",
            _json([["BTCUST", "BTCUSDT1"], [["UST", "USDt"]]]),
            ("tBTCUST", "BTC-USDT"),
        ),
        "kucoin": (
            "https://api.kucoin.com/api/v2/symbols",
            _kucoin(
                {"symbol": "BTC-USDT", "name": "BTC-USDT", "baseCurrency": "BTC", "quoteCurrency": "USDT"},
                {"symbol": "ETH-USDT", "name": "ETH-USDT", "baseCurrency": "ETH"},
            ),
            ("BTC-USDT", "BTC-USDT"),
        ),
        "gateio": (
            "https://api.gateio.ws/api/v4/spot/currency_pairs",
            _json([{"id": "BTC_USDT", "base": "BTC", "quote": "USDT"}, {"id": "ETH_USDT", "base": "ETH"}]),
            ("BTC_USDT", "BTC-USDT"),
        ),
        "htx": (
            "https://api.huobi.pro/v2/settings/common/symbols",
            _htx({"sc": "btcusdt", "bc": "btc", "qc": "usdt"}, {"sc": "ethusdt", "qc": "usdt"}),
            ("btcusdt", "BTC-USDT"),
        ),
        "mexc": (
            "https://api.mexc.com/api/v3/exchangeInfo",
            _json({"symbols": [{"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT"}, BROKEN]}),
            ("BTCUSDT", "BTC-USDT"),
        ),
    }


def test_every_exchange_has_an_answer_here() -> None:
    assert set(answers()) == set(EXCHANGES)


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_an_unreadable_entry_is_skipped_and_counted_never_fatal(exchange: str, tmp_path: Path) -> None:
    url, body, (exchange_symbol, name) = answers()[exchange]
    parse = importlib.import_module(f"streams.parsers.{exchange.replace('-', '_')}").parse_instruments
    found = parse(body.encode())
    assert found[exchange_symbol] == name
    assert len(found.skipped) == 1, found.skipped
    feed = Feed(exchange)
    out = feed.rest(url, body)
    assert out.errors == []
    assert feed.proc.instruments[exchange_symbol] == name
    assert feed.proc.counters.instruments_skipped == 1
    assert feed.proc.counters.report()["instruments_skipped"] == 1
    # the connector resolves symbols at start with the same function
    connector = connector_class(exchange)([name], CaptureRawPublisher(tmp_path / "unused.jsonl"))
    assert connector.parse_instruments(body.encode(), url)[exchange_symbol] == name


def test_kraken_dark_pool_pairs_do_not_cost_the_session_its_books_and_trades() -> None:
    """The recorded failure: ``XXBTZUSD.d`` had no wsname, the whole map was rejected, and every
    v1 frame of the session was dead-lettered."""
    pairs = json.loads(
        kraken_pairs(
            ("XXMRZUSD", "XMR/USD", "XXMR", "ZUSD", ""),
            ("GRTETH", "GRT/ETH", "GRT", "XETH", ""),
        )
    )
    pairs["result"]["XXBTZUSD.d"] = {"altname": "XBTUSD.d", "base": "XXBT", "quote": "ZUSD", "lot": "unit"}
    pairs["result"]["XETHZUSD.d"] = {"altname": "ETHUSD.d", "base": "XETH", "quote": "ZUSD", "lot": "unit"}
    feed = Feed("kraken")
    feed.open("wss://ws.kraken.com", ["XMR/USD", "GRT/ETH"])
    assert feed.rest(KRAKEN_PAIRS_URL, _json(pairs)).errors == []
    assert feed.proc.instruments["XMR/USD"] == "XMR-USD" and feed.proc.instruments["GRT/ETH"] == "GRT-ETH"
    assert feed.proc.counters.instruments_skipped == 2
    trades = feed.recv_all(messages("kraken_v1.json", "trade"))
    book = feed.recv(messages("kraken_v1.json", "book_snapshot")[0])
    assert trades.errors == [] and [t.symbol for t in trades.trades] == ["XMR-USD", "XMR-USD"]
    assert book.errors == [] and book.books[0].symbol == "GRT-ETH"


def _okx_with_derivatives() -> Feed:
    feed = Feed("okx")
    feed.open("wss://ws.okx.com:8443/ws/v5/public", ["BTC-USDT", "UNI-USD-SWAP", "BTC-USD-220527"])
    answer = {
        "code": "0",
        "data": [
            *json.loads(okx_instruments(("BTC-USDT", "BTC", "USDT")))["data"],
            *[json.loads(row) for row in messages("okx_derivatives.json", "instrument")],
        ],
    }
    assert feed.rest("https://www.okx.com/api/v5/public/instruments?instType=ANY", _json(answer)).errors == []
    return feed


def test_okx_swap_and_future_each_get_their_own_name_and_book_never_merged_as_dash() -> None:
    """The recorded failure: ``BTC-USD-220527`` and ``UNI-USD-SWAP`` came out as symbol ``-`` and
    shared one book, one status key and one candle."""
    feed = _okx_with_derivatives()
    assert feed.proc.counters.instruments_skipped == 0
    out = feed.recv_all(
        [
            *messages("okx_derivatives.json", "trade"),
            *messages("okx_derivatives.json", "book_snapshot"),
            *messages("okx_derivatives.json", "book_update"),
        ]
    )
    assert out.errors == []
    assert [(t.symbol, t.exchange_symbol) for t in out.trades] == [
        ("BTC-USD-20220527-INV", "BTC-USD-220527"),
        ("UNI-USD-PERP-INV", "UNI-USD-SWAP"),
    ]
    assert [(b.symbol, b.exchange_symbol, b.snapshot) for b in out.books] == [
        ("UNI-USD-PERP-INV", "UNI-USD-SWAP", True),
        ("BTC-USD-20220527-INV", "BTC-USD-220527", True),
        ("UNI-USD-PERP-INV", "UNI-USD-SWAP", False),
        ("UNI-USD-PERP-INV", "UNI-USD-SWAP", False),
    ]
    assert feed.proc.counters.checksums_verified == 4
    spot = feed.recv_all([*messages("okx.json", "book_snapshot"), *messages("okx.json", "trade")])
    assert spot.errors == [] and {t.symbol for t in spot.trades} == {"BTC-USDT"}
    assert spot.books[0].symbol == "BTC-USDT"
    assert feed.proc.counters.books_synced == {"BTC-USDT", "UNI-USD-PERP-INV", "BTC-USD-20220527-INV"}


def test_okx_derivatives_without_metadata_are_dead_lettered_spot_ids_read_by_the_rule() -> None:
    feed = Feed("okx")
    out = feed.recv_all(messages("okx_derivatives.json", "trade"))
    assert out.trades == [] and len(out.errors) == 2
    assert feed.proc.counters.dead_letters == {"unnamed_instrument": 2}
    (trade, *_) = feed.recv_all(messages("okx.json", "trade")).trades
    assert (trade.symbol, trade.exchange_symbol) == ("BTC-USDT", "BTC-USDT")


def test_bybit_spot_and_linear_btcusdt_are_never_merged_in_one_processor() -> None:
    spot = Feed("bybit", conn="bybit.t1.0")
    spot.open("wss://stream.bybit.com/v5/public/spot", ["BTCUSDT"])
    spot.rest(
        "https://api.bybit.com/v5/market/instruments-info?category=spot",
        bybit_instruments(("BTCUSDT", "BTC", "USDT")),
    )
    linear = Feed("bybit", conn="bybit.t1.1", processor=spot.proc)
    linear.open("wss://stream.bybit.com/v5/public/linear", ["BTCUSDT"])
    rows = [json.loads(row) for row in messages("bybit_derivatives.json", "instrument")]
    answer = {"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "list": rows}}
    linear.rest("https://api.bybit.com/v5/market/instruments-info?category=linear", _json(answer))
    spot_trades = spot.recv_all(messages("bybit.json", "trade"))
    linear_trades = linear.recv_all(messages("bybit_derivatives.json", "trade"))
    assert spot_trades.errors == [] and {t.symbol for t in spot_trades.trades} == {"BTC-USDT"}
    # linear BTCUSDT is the perpetual, named from its metadata: its own instrument, never spot's
    assert linear_trades.errors == [] and {t.symbol for t in linear_trades.trades} == {"BTC-USDT-PERP"}
    assert spot.proc.counters.dead_letters == {}


BITFINEX_FORMS = {
    # the connector's own request
    "/v2/conf/pub:list:pair:exchange,pub:map:currency:sym": [["BTCUSD", "BTCUST"], [["UST", "USDt"]]],
    # the pair list alone (recorded by other tools): Bitfinex's published currency map applies
    "/v2/conf/pub:list:pair:exchange": [["BTCUSD", "BTCUST"]],
    # the same lists asked in the other order
    "/v2/conf/pub:map:currency:sym,pub:list:pair:exchange": [[["UST", "USDt"]], ["BTCUSD", "BTCUST"]],
    "/v2/conf/pub:info:pair": [
        [["BTCUSD", [None, None, None, "0.0002"]], ["BTCUST", [None, None, None, "0.1"]]]
    ],
    "/v1/symbols": ["btcusd", "btcust"],
    "/v1/symbols_details": [{"pair": "btcusd", "price_precision": 5}, {"pair": "btcust"}],
}


@pytest.mark.parametrize("path", list(BITFINEX_FORMS))
def test_bitfinex_every_public_form_of_the_pair_list(path: str) -> None:
    frame = messages("bitfinex.json", "trade")[0]
    chan = json.loads(frame)[0]
    feed = Feed("bitfinex")
    feed.open("wss://api-pub.bitfinex.com/ws/2", ["tBTCUST"])
    out = feed.rest(f"https://api-pub.bitfinex.com{path}", _json(BITFINEX_FORMS[path]))
    assert out.errors == []
    assert feed.proc.instruments == {"tBTCUSD": "BTC-USD", "tBTCUST": "BTC-USDT"}
    subscribed = {
        "event": "subscribed",
        "channel": "trades",
        "chanId": chan,
        "symbol": "tBTCUST",
        "pair": "BTCUST",
    }
    feed.recv(_json(subscribed))
    trades = feed.recv(frame).trades
    assert trades and {t.symbol for t in trades} == {"BTC-USDT"}


def test_bitfinex_pair_without_metadata_is_read_by_the_naming_rule() -> None:
    feed = Feed("bitfinex")
    assert feed.proc.symbol_of("tBTCUST") == "BTC-USDT" and feed.proc.symbol_of("tTESTBTC:TESTUSD") == (
        "TESTBTC-TESTUSD"
    )


KUCOIN_V1 = _kucoin(
    {
        "symbol": "DAPPT-BTC",
        "name": "DAPPT-BTC",
        "baseCurrency": "DAPPT",
        "quoteCurrency": "BTC",
        "market": "BTC",
    }
)
HTX_FORMS = {
    "/v2/settings/common/symbols": _htx({"sc": "borusdt", "bc": "bor", "qc": "usdt", "state": "online"}),
    "/v1/settings/common/symbols": _htx({"symbol": "borusdt", "sn": "BOR/USDT", "bc": "bor", "qc": "usdt"}),
    "/v1/settings/common/market-symbols": _htx({"symbol": "borusdt", "bc": "bor", "qc": "usdt", "pp": 4}),
    "/v1/common/symbols": _htx(
        {"base-currency": "bor", "quote-currency": "usdt", "symbol": "borusdt", "state": "online"}
    ),
}


def test_kucoin_v1_symbols_answer_is_read() -> None:
    feed = Feed("kucoin")
    feed.open("wss://ws-api-spot.kucoin.com/", ["DAPPT-BTC"])
    assert feed.rest("https://api.kucoin.com/api/v1/symbols", KUCOIN_V1).errors == []
    assert feed.proc.instruments == {"DAPPT-BTC": "DAPPT-BTC"}
    out = feed.recv_all(messages("kucoin.json", "trade"))
    assert out.errors == [] and {t.symbol for t in out.trades} == {"DAPPT-BTC"}


@pytest.mark.parametrize("path", list(HTX_FORMS))
def test_htx_every_public_form_of_the_symbol_list(path: str) -> None:
    feed = Feed("htx")
    feed.open("wss://api.huobi.pro/feed", ["borusdt"])
    assert feed.rest(f"https://api.huobi.pro{path}", HTX_FORMS[path]).errors == []
    assert feed.proc.instruments == {"borusdt": "BOR-USDT"}
    out = feed.recv(messages("htx.json", "trade")[1])
    assert out.errors == [] and [t.symbol for t in out.trades] == ["BOR-USDT"]


def test_an_unnamed_symbol_is_dead_lettered_alone_never_the_whole_exchange() -> None:
    """HTX names are concatenated (``trioeth``): without metadata they cannot be split, so the
    frames of that symbol are dead-lettered while the named ones flow."""
    feed = Feed("htx")
    feed.rest("https://api.huobi.pro/v1/common/symbols", HTX_FORMS["/v1/common/symbols"])
    unnamed, named = messages("htx.json", "trade")[:2]
    out = feed.recv_all([unnamed, named])
    ((_, reason),) = out.errors
    assert "unknown htx symbol 'trioeth'" in reason
    assert [t.symbol for t in out.trades] == ["BOR-USDT"]
    assert feed.proc.counters.dead_letters == {"unknown_symbol": 1}


def test_a_name_belongs_to_one_instrument_metadata_over_a_fallback_rule() -> None:
    """Coinbase product ids are read without metadata; once metadata names another product
    ``BTC-USD``, the id the rule named is no longer read as that name."""
    feed = Feed("coinbase")
    assert feed.proc.symbol_of("BTC-USD") == "BTC-USD"
    feed.rest(
        "https://api.coinbase.com/api/v3/brokerage/market/products",
        _json(
            {"products": [{"product_id": "XBT-USD", "base_currency_id": "BTC", "quote_currency_id": "USD"}]}
        ),
    )
    assert feed.proc.symbol_of("XBT-USD") == "BTC-USD"
    out = feed.recv(messages("coinbase.json", "trade")[1])  # a BTC-USD trade
    ((_, reason),) = out.errors
    assert out.trades == [] and "already names XBT-USD" in reason
