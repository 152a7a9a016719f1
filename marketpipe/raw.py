"""The raw record contract shared by producers, streams, replay and capture files.

A raw record is one websocket frame (or REST response, or connection event) exactly
as received. In Kafka: key = the shard key (``kafka_key``), value = the frame bytes,
headers = exchange, conn, seq, recv_ns, kind and (for open/rest) url. In a capture file:
one JSON object per line with the same fields plus ``shard`` (see docs/producers.md).

The shard key (``<exchange>:<hash of the shard's sorted symbols>``) is the same for every
connection of one symbol set: successive and overlapping (make-before-break) connections and
connections of a restarted producer land in one raw partition, in order, so the stream side
sees a connection's close and its successor's snapshot in the order they happened and
deduplicates the trades both delivered. Records without a shard (older captures) are keyed
by their connection id.
"""

from __future__ import annotations

import base64
import gzip
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal, cast

import msgspec

Kind = Literal["open", "sent", "recv", "rest", "close"]
KINDS: tuple[str, ...] = ("open", "sent", "recv", "rest", "close")


class RawRecord(msgspec.Struct, frozen=True):
    exchange: str
    conn: str
    seq: int
    kind: Kind
    recv_ns: int
    data: bytes | str | None
    url: str | None = None
    shard: str | None = None
    """the shard key of the connection (None: keyed by the connection id)"""

    @property
    def kafka_key(self) -> str:
        return self.shard or self.conn

    @property
    def payload(self) -> bytes:
        """The Kafka value: text frames as UTF-8 bytes, binary frames as is."""
        if self.data is None:
            return b""
        return self.data.encode() if isinstance(self.data, str) else self.data

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        headers = [
            ("exchange", self.exchange.encode()),
            ("conn", self.conn.encode()),
            ("seq", str(self.seq).encode()),
            ("recv_ns", str(self.recv_ns).encode()),
            ("kind", self.kind.encode()),
        ]
        if self.url is not None:
            headers.append(("url", self.url.encode()))
        return headers

    @classmethod
    def from_kafka(
        cls,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
        key: bytes | None = None,
    ) -> RawRecord:
        """Rebuild a raw record from a Kafka value and headers (and key, to keep the shard).

        Raises ValueError when they break the contract.
        """
        found = {name: (raw or b"").decode() for name, raw in headers or ()}
        missing = [name for name in ("exchange", "conn", "seq", "recv_ns", "kind") if name not in found]
        if missing:
            raise ValueError(f"raw record lacks header(s) {missing}")
        kind = found["kind"]
        if kind not in KINDS:
            raise ValueError(f"raw record kind {kind!r} is not one of {KINDS}")
        shard = key.decode() if key else None
        return cls(
            exchange=found["exchange"],
            conn=found["conn"],
            seq=int(found["seq"]),
            kind=kind,  # type: ignore[arg-type]
            recv_ns=int(found["recv_ns"]),
            data=value,
            url=found.get("url"),
            shard=shard if shard != found["conn"] else None,
        )

    def text(self) -> str:
        """The frame as text (binary frames are decoded as UTF-8; callers decompress first)."""
        if self.data is None:
            return ""
        return self.data if isinstance(self.data, str) else self.data.decode()


class _CaptureLine(msgspec.Struct, omit_defaults=False):
    recv_ns: int
    exchange: str
    conn: str
    seq: int
    kind: Kind
    url: str | None
    data: str | None
    b64: bool
    shard: str | None = None


_line_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(_CaptureLine)


def to_capture_line(record: RawRecord) -> bytes:
    if isinstance(record.data, bytes):
        try:
            data: str | None = record.data.decode()
            b64 = False
        except UnicodeDecodeError:
            data, b64 = base64.b64encode(record.data).decode(), True
    else:
        data, b64 = record.data, False
    line = _CaptureLine(
        record.recv_ns,
        record.exchange,
        record.conn,
        record.seq,
        record.kind,
        record.url,
        data,
        b64,
        record.shard,
    )
    return _line_encoder.encode(line) + b"\n"


def from_capture_line(line: bytes | str) -> RawRecord:
    parsed = _line_decoder.decode(line)
    data: bytes | str | None = parsed.data
    if parsed.b64 and parsed.data is not None:
        data = base64.b64decode(parsed.data)
    return RawRecord(
        parsed.exchange, parsed.conn, parsed.seq, parsed.kind, parsed.recv_ns, data, parsed.url, parsed.shard
    )


def _open(path: Path, mode: Literal["rb", "wb"]) -> IO[bytes]:
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, mode))
    if path.suffix == ".zst":
        import zstandard

        raw = path.open(mode)
        if mode == "rb":
            return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
        return cast(IO[bytes], zstandard.ZstdCompressor(level=6).stream_writer(raw, closefd=True))
    return path.open(mode)


def read_capture(path: str | Path) -> Iterator[RawRecord]:
    """Records of a capture file (.jsonl, .jsonl.gz or .jsonl.zst), in file order."""
    path = Path(path)
    with _open(path, "rb") as handle:
        for number, line in enumerate(io.BufferedReader(cast(Any, handle)), start=1):
            if not line.strip():
                continue
            try:
                yield from_capture_line(line)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: not a capture record: {exc}") from exc


class CaptureWriter:
    """Appends raw records to a capture file; compression follows the file suffix."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = _open(self.path, "wb")
        self.count = 0

    def write(self, record: RawRecord) -> None:
        self._handle.write(to_capture_line(record))
        self.count += 1

    def write_all(self, records: Iterable[RawRecord]) -> None:
        for record in records:
            self.write(record)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
