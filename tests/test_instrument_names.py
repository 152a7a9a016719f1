"""The one normalised naming scheme (``marketpipe/instruments.py``): every name comes from
instrument metadata fields, a linear and an inverse contract on one pair never share a name,
dates are the UTC day of the expiry, strikes plain decimals."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from marketpipe.instruments import (
    expiry_date,
    future_name,
    instrument_name,
    named,
    option_name,
    perpetual_name,
    plain_decimal,
    spot_name,
)
from marketpipe.records import Instrument
from marketpipe.wire import ParseError


def _us(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()) * 1_000_000


def test_linear_and_inverse_perpetuals_on_one_pair_have_different_names() -> None:
    assert perpetual_name("BTC", "USDT", "linear") == "BTC-USDT-PERP"
    assert perpetual_name("BTC", "USD", "linear") == "BTC-USD-PERP"
    assert perpetual_name("BTC", "USD", "inverse") == "BTC-USD-PERP-INV"
    assert perpetual_name("ETH", "USD", "quanto") == "ETH-USD-PERP-QUANTO"
    assert spot_name("BTC", "USD") == "BTC-USD"  # and neither is the spot pair's name


def test_dated_future_is_named_by_the_utc_day_of_its_expiry() -> None:
    okx_quarterly = 1653638400000 * 1000  # BTC-USD-220527, 08:00 UTC
    assert future_name("BTC", "USD", okx_quarterly, "inverse") == "BTC-USD-20220527-INV"
    assert future_name("BTC", "USDT", okx_quarterly, "linear") == "BTC-USDT-20220527"
    # the day in UTC, not local time: 23:30 UTC on the 25th is still the 25th
    assert future_name("ETH", "USDC", _us(2026, 9, 25, 23, 30), "linear") == "ETH-USDC-20260925"
    assert future_name("ETH", "USDC", _us(2026, 9, 26, 0, 0), "linear") == "ETH-USDC-20260926"


def test_option_names_carry_date_strike_as_plain_decimal_and_c_or_p() -> None:
    expiry = _us(2026, 9, 25, 8)
    assert option_name("BTC", "USD", expiry, "60000", "call", "linear") == "BTC-USD-20260925-60000-C"
    assert option_name("BTC", "USD", expiry, "60000", "put", "inverse") == "BTC-USD-20260925-60000-P-INV"
    assert option_name("MATIC", "USDC", expiry, "1.020", "call", "linear") == "MATIC-USDC-20260925-1.02-C"
    assert plain_decimal("6E+4") == "60000" and plain_decimal("0.00001") == "0.00001"


@pytest.mark.parametrize("strike", ["", "1d02", "-5", "0", "nan", "inf"])
def test_a_strike_that_is_not_a_positive_decimal_is_refused(strike: str) -> None:
    with pytest.raises(ParseError, match="strike"):
        plain_decimal(strike)


def test_expiry_must_be_a_time() -> None:
    with pytest.raises(ParseError, match="expiry"):
        expiry_date(0)


def _record(**fields: object) -> Instrument:
    base: dict[str, object] = {
        "exchange": "x",
        "symbol": "",
        "exchange_symbol": "X1",
        "kind": "perpetual",
        "contract_type": "linear",
        "base": "BTC",
        "quote": "USD",
        "contract_size": 1.0,
        "contract_size_currency": "BTC",
        "ts": 0,
    }
    return Instrument(**{**base, **fields})  # type: ignore[arg-type]


def test_the_name_comes_from_the_metadata_record_never_the_exchange_symbol() -> None:
    assert named(_record(exchange_symbol="BTC-USD-SWAP")).symbol == "BTC-USD-PERP"
    inverse = _record(exchange_symbol="BTC-USD-SWAP", contract_type="inverse")
    assert named(inverse).symbol == "BTC-USD-PERP-INV"
    expiry = _us(2026, 12, 25, 8)
    assert instrument_name(_record(kind="future", expiry_ts=expiry)) == "BTC-USD-20261225"
    option = _record(kind="option", expiry_ts=expiry, strike=1.02, option_type="put")
    assert instrument_name(option) == "BTC-USD-20261225-1.02-P"
    assert instrument_name(_record(kind="spot", contract_type=None)) == "BTC-USD"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"contract_type": None}, "contract type"),
        ({"kind": "future"}, "expiry"),
        ({"kind": "option", "expiry_ts": 1}, "strike or option type"),
        ({"base": ""}, "no base/quote"),
        ({"quote": "USD-X"}, "cannot form BASE-QUOTE"),
    ],
)
def test_metadata_that_cannot_name_the_instrument_is_refused(fields: dict[str, object], reason: str) -> None:
    with pytest.raises(ParseError, match=reason):
        instrument_name(_record(**fields))
