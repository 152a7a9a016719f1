"""Helpers shared by the exchange modules: JSON decoding, timestamps, level lists, checksums."""

from __future__ import annotations

import calendar
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from marketpipe.raw import RawRecord
from marketpipe.records import Level
from marketpipe.wire import ParseError, decode_json, json_object, ms_to_us
from streams.book import BookSide, OrderBook
from streams.book_sync import BookSync
from streams.feed import (
    ClockWindow,
    ConnectionState,
    FeedCounters,
    FeedOutput,
    FeedProcessor,
)

__all__ = [
    "BookSync",
    "ClockWindow",
    "ConnectionState",
    "FeedCounters",
    "FeedOutput",
    "FeedProcessor",
    "ParseError",
    "apply_levels",
    "apply_text_levels",
    "decode_json",
    "interval_name",
    "interval_span_us",
    "json_object",
    "kraken_levels",
    "levels",
    "ms_to_us",
    "occurrences",
    "okx_levels",
    "opt_float",
    "rfc3339_to_us",
    "seconds_text_to_us",
    "url_param",
]

TextRows = list[tuple[Level, str]]
"""levels with their checksum tokens"""


def url_param(raw: RawRecord, name: str, what: str) -> str:
    """A query parameter of a REST record's URL (e.g. the symbol a depth snapshot is for)."""
    found = parse_qs(urlsplit(raw.url or "").query).get(name)
    if not found:
        raise ParseError(f"{what} url {raw.url!r} names no {name}")
    return found[0]


def occurrences(identities: list[str]) -> list[str]:
    """Trade identities built from content, for exchanges without trade ids: a repeat within one
    frame (equal fills of one taker order) gets ``#1``, ``#2``... (the first keeps its own)."""
    if len(identities) == len(set(identities)):
        return identities
    seen: dict[str, int] = {}
    numbered = []
    for identity in identities:
        count = seen.get(identity, 0)
        seen[identity] = count + 1
        numbered.append(f"{identity}#{count}" if count else identity)
    return numbered


# ---------------------------------------------------------------------------- timestamps


_minute_base: dict[str, int] = {}


def rfc3339_to_us(text: str) -> int:
    """``2026-08-09T21:05:48.228568804Z`` (or with a ``+HH:MM`` offset) -> µs since the epoch.

    Sub-microsecond digits are truncated. The date-to-minute part is cached: timestamps in
    a stream share it, so the hot path is two int() calls.
    """
    prefix = text[:16]
    base = _minute_base.get(prefix)
    if base is None:
        if len(text) < 19 or text[4] != "-" or text[7] != "-" or text[10] not in "Tt " or text[13] != ":":
            raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
        stamp = (int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13]), int(text[14:16]), 0)
        base = calendar.timegm(stamp) * 1_000_000
        if len(_minute_base) > 10_000:
            _minute_base.clear()
        _minute_base[prefix] = base
    rest = text[17:]
    offset_us = 0
    if rest[-1:] in ("Z", "z"):
        rest = rest[:-1]
    elif len(rest) > 6 and rest[-6] in "+-" and rest[-3] == ":":
        sign = 1 if rest[-6] == "+" else -1
        offset_us = sign * (int(rest[-5:-3]) * 3600 + int(rest[-2:]) * 60) * 1_000_000
        rest = rest[:-6]
    seconds, _, fraction = rest.partition(".")
    micros = int((fraction + "000000")[:6]) if fraction else 0
    return base + int(seconds) * 1_000_000 + micros - offset_us


def seconds_text_to_us(text: str) -> int:
    """``"1618678142.557535"`` (seconds with a decimal fraction, as text) -> µs."""
    seconds, _, fraction = text.partition(".")
    return int(seconds) * 1_000_000 + (int((fraction + "000000")[:6]) if fraction else 0)


# ----------------------------------------------------------------- tickers and klines

_UNITS = (("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


def interval_name(seconds: int) -> str:
    """A candle length in seconds -> marketpipe's spelling: 60 -> ``1m``, 14400 -> ``4h``,
    86400 -> ``1d``, 604800 -> ``1w`` (the largest unit that divides it). Months are ``1M``
    (see ``interval_span_us``); exchange modules map those themselves."""
    if seconds <= 0:
        raise ParseError(f"candle interval of {seconds} s is not positive")
    for unit, length in _UNITS:
        if seconds % length == 0:
            return f"{seconds // length}{unit}"
    raise AssertionError("1 s divides every whole number of seconds")


def interval_span_us(interval: str, open_time: int) -> int:
    """The close time (µs, exclusive) of a candle of ``interval`` (``interval_name`` spelling,
    or ``<n>M`` calendar months from a UTC month start) that opens at ``open_time``."""
    count, unit = int(interval[:-1]), interval[-1]
    if unit == "M":
        year, month = time_struct(open_time)
        month += count
        year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
        return calendar.timegm((year, month, 1, 0, 0, 0)) * 1_000_000
    seconds = dict(_UNITS).get(unit)
    if seconds is None:
        raise ParseError(f"unknown candle interval {interval!r}")
    return open_time + count * seconds * 1_000_000


def time_struct(ts_us: int) -> tuple[int, int]:
    """(year, month) of a µs timestamp, UTC."""
    found = datetime.fromtimestamp(ts_us / 1_000_000, tz=UTC)
    return found.year, found.month


def opt_float(value: object) -> float | None:
    """A numeric field an exchange may leave out or send empty (``""``, null) -> float or None."""
    if value is None or value == "":
        return None
    return float(value)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- levels


def levels(rows: Iterable[Sequence[Any]]) -> list[Level]:
    """``[[price, size, ...], ...]`` with string or number values -> Levels."""
    return [Level(float(row[0]), float(row[1])) for row in rows]


def okx_levels(rows: Iterable[Sequence[str]]) -> TextRows:
    """OKX ``[px, sz, ...]`` strings -> (Level, ``"px:sz"`` checksum token)."""
    return [(Level(float(row[0]), float(row[1])), f"{row[0]}:{row[1]}") for row in rows]


def _digits(text: str) -> str:
    return text.replace(".", "").lstrip("0")


def kraken_levels(rows: Iterable[tuple[Any, Any]]) -> TextRows:
    """Kraken (price, qty) as sent -> (Level, checksum token: both without the dot and leading zeros)."""
    found: TextRows = []
    for price, size in rows:
        price_text = price if isinstance(price, str) else str(price)
        size_text = size if isinstance(size, str) else str(size)
        found.append((Level(float(price_text), float(size_text)), _digits(price_text) + _digits(size_text)))
    return found


def apply_levels(side: BookSide, changes: list[Level]) -> None:
    side.apply(changes)


def apply_text_levels(side: BookSide, changes: TextRows) -> None:
    side.apply_tokens(changes)


def load_text_levels(side: BookSide, rows: TextRows) -> None:
    side.load_text((level.price, level.size, token) for level, token in rows)


def plain(rows: TextRows) -> list[Level]:
    return [row[0] for row in rows]


# ----------------------------------------------------------------------------- checksums


def _tokens(side: BookSide, depth: int) -> list[str]:
    texts = side.texts
    assert texts is not None, "checksum needs a book that keeps wire text"
    return [texts[price] for price in side.top_prices(depth)]


def kraken_checksum(book: OrderBook) -> int:
    """Kraken (v1 and v2): unsigned CRC32 of the top 10 asks (ascending) then the top 10 bids
    (descending), each level as its price then size wire text without the dot and leading zeros."""
    return zlib.crc32(("".join(_tokens(book.asks, 10)) + "".join(_tokens(book.bids, 10))).encode())


def okx_checksum(book: OrderBook) -> int:
    """OKX: signed CRC32 of ``bid1Px:bid1Sz:ask1Px:ask1Sz:...`` over the top 25 levels (wire text);
    when one side is shorter the rest of the other side follows."""
    bids = _tokens(book.bids, 25)
    asks = _tokens(book.asks, 25)
    common = min(len(bids), len(asks))
    parts = [token for pair in zip(bids[:common], asks[:common], strict=True) for token in pair]
    parts += bids[common:] or asks[common:]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc
