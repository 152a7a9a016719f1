"""What both sides of an exchange's wire share: the error a frame or an instrument list that
cannot be read raises (its message is the dead-letter reason), and the JSON helpers the
exchange wire modules (``marketpipe/exchanges/<exchange>.py``) and the parsers decode with.

Core module: imports nothing from producers, streams, sinks or simulator.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


class ParseError(Exception):
    """The frame cannot be normalised; the message is the dead-letter reason.

    ``category`` is the short stable name the reason is counted under (``normalize --report``
    ``dead_letters``); without one it is read from the message's wording.
    """

    def __init__(self, message: str, category: str | None = None) -> None:
        super().__init__(message)
        self.explicit_category = category

    @property
    def category(self) -> str:
        return self.explicit_category or categorise(str(self))


_WORDING: tuple[tuple[str, str], ...] = (
    ("invalid JSON", "undecodable"),
    ("empty", "undecodable"),
    ("not a JSON object", "undecodable"),
    ("gzip", "undecodable"),
    ("protobuf", "undecodable"),
    ("unsupported", "unsupported"),
    ("unrecognised", "unsupported"),
    ("unknown raw record kind", "unsupported"),
    ("rejected", "exchange_error"),
    (" error", "exchange_error"),
    ("failed", "exchange_error"),
    ("not successful", "exchange_error"),
)
DEAD_LETTER_CATEGORIES = (
    "undecodable",  # not JSON / gzip / protobuf at all
    "unsupported",  # a channel, event or message type no parser reads
    "exchange_error",  # the exchange answered with an error or a rejection
    "malformed",  # readable but not the documented shape (missing field, wrong type)
    "unknown_symbol",  # no metadata names the symbol and no documented rule reads it
    "unnamed_instrument",  # metadata lists it, but it has no normalised name (derivatives)
    "ambiguous_symbol",  # its name already belongs to another instrument
    "instruments_unreadable",  # a whole instrument-list answer could not be read
    "invalid_value",  # NaN/inf/non-positive price, non-positive trade size, negative level size
    "ts_out_of_range",  # timestamp too far from the receive time
    "dedup_horizon",  # a trade older than the dedup memory: cannot tell whether it was published
    "internal",  # a parser bug (an unexpected exception)
)


def categorise(message: str) -> str:
    """The dead-letter category of a reason given without one."""
    for words, category in _WORDING:
        if words in message:
            return category
    return "malformed"


_decoder = msgspec.json.Decoder()


def decode_json(data: bytes | str | None, decoder: msgspec.json.Decoder[Any] = _decoder) -> Any:
    if not data:
        raise ParseError("empty frame")
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ParseError(f"invalid JSON: {exc}") from None


def json_object(
    data: bytes | str | None, what: str, decoder: msgspec.json.Decoder[Any] = _decoder
) -> dict[str, Any]:
    found = decode_json(data, decoder)
    if not isinstance(found, dict):
        raise ParseError(f"{what} is not a JSON object")
    return found


def ms_to_us(value: int | str) -> int:
    return int(value) * 1000


def decode_struct(
    decoder: msgspec.json.Decoder[T], data: bytes | str | msgspec.Raw | None, what: str | None = None
) -> T:
    """``data`` decoded by a typed decoder. A missing field raises ``KeyError(name)`` and a wrong
    type the ValidationError (a ValueError): ``FeedProcessor.process`` dead-letters both as
    malformed, as it did the dict lookups; not JSON is "invalid JSON". A whole frame (``what``
    names it) that is not an object is "<what> is not a JSON object"; a nested value (``what``
    None) of the wrong type is malformed like any other."""
    if not data:
        raise ParseError("empty frame")
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if text.startswith("Object missing required field `"):
            raise KeyError(text.split("`")[1]) from None
        if what is not None and text.startswith("Expected `object`, got") and " - at `" not in text:
            raise ParseError(f"{what} is not a JSON object") from None
        raise
    except msgspec.DecodeError as exc:
        raise ParseError(f"invalid JSON: {exc}") from None
