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
import logging
import os
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal, cast

import msgspec

from marketpipe.errors import UserError
from marketpipe.logs import log_event

log = logging.getLogger(__name__)

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

        Raises ValueError when they break the contract. Per frame on the stream's hot path:
        header texts come from a cache (a connection's names repeat in every record).
        """
        found = dict(headers) if headers else {}
        try:
            exchange, conn = _text(found["exchange"]), _text(found["conn"])
            seq, recv_ns, kind = found["seq"], found["recv_ns"], _text(found["kind"])
        except KeyError:
            missing = [name for name in _REQUIRED_HEADERS if name not in found]
            raise ValueError(f"raw record lacks header(s) {missing}") from None
        if kind not in KINDS:
            raise ValueError(f"raw record kind {kind!r} is not one of {KINDS}")
        url = found.get("url", None)
        shard = key.decode() if key else None
        return cls(
            exchange,
            conn,
            _integer("seq", seq),
            kind,  # type: ignore[arg-type]
            _integer("recv_ns", recv_ns),
            value,
            _text(url) if url is not None else None,
            shard if shard != conn else None,
        )

    def text(self) -> str:
        """The frame as text (binary frames are decoded as UTF-8; callers decompress first)."""
        if self.data is None:
            return ""
        return self.data if isinstance(self.data, str) else self.data.decode()


_REQUIRED_HEADERS = ("exchange", "conn", "seq", "recv_ns", "kind")
_texts: dict[bytes | None, str] = {}


def _text(raw: bytes | None) -> str:
    """A header value as text (a missing value reads as empty), remembered for repeats."""
    found = _texts.get(raw)
    if found is None:
        found = (raw or b"").decode()
        if len(_texts) >= 4096:
            _texts.clear()
        _texts[raw] = found
    return found


def _integer(name: str, raw: bytes | None) -> int:
    try:
        return int(raw or b"")
    except ValueError:
        raise ValueError(f"raw record header {name} is not an integer: {raw!r}") from None


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


_CHUNK_BYTES = 1 << 17
FLUSH_INTERVAL_S = 1.0
"""a capture writer makes what it has written readable from the file at least this often"""


class CaptureError(UserError, ValueError):
    """A capture file that cannot be read (not a capture file, or a bad record in the middle)."""


def _decompression_errors(path: Path) -> tuple[type[Exception], ...]:
    if path.suffix == ".zst":
        import zstandard

        return (zstandard.ZstdError, EOFError)
    if path.suffix == ".gz":
        return (EOFError, gzip.BadGzipFile, zlib.error)
    return ()


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as raw:
        if path.suffix == ".zst":
            yield from _zstd_chunks(raw)
            return
        handle = gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw
        while chunk := handle.read1(_CHUNK_BYTES):  # read() would lose what precedes a cut-off end
            yield chunk


def _zstd_chunks(raw: IO[bytes]) -> Iterator[bytes]:
    """A capture is a sequence of zstd frames, one per flush (CaptureWriter.flush); the last one
    cut off raises EOFError (zstandard's stream reader would end there silently)."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    frame, started = decompressor.decompressobj(), False
    while data := raw.read(_CHUNK_BYTES):
        while data:
            if out := frame.decompress(data):
                yield out
            started = True
            if not frame.eof:
                break
            data = frame.unused_data
            frame, started = decompressor.decompressobj(), False
    if started:
        raise EOFError("the last zstd frame is cut off")


def read_capture(path: str | Path) -> Iterator[RawRecord]:
    """Records of a capture file (.jsonl, .jsonl.gz or .jsonl.zst), in file order.

    A file cut off mid-record (its writer was killed) gives every complete record and a
    warning; a file that is not a capture at all, or a bad record before the end, raises
    ``CaptureError`` naming the file (and line).
    """
    path = Path(path)
    errors = _decompression_errors(path)
    chunks = _chunks(path)
    pending, number, records = b"", 0, 0
    while True:
        try:
            chunk = next(chunks, None)
        except errors as exc:
            _cut_off(path, records, f"{path.suffix[1:]}: {exc}")
            return
        if chunk is None:
            break
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            number += 1
            if not line.strip():
                continue
            try:
                record = from_capture_line(line)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                raise CaptureError(f"{path}:{number}: not a capture record: {exc}") from None
            records += 1
            yield record
    if pending.strip():
        try:
            record = from_capture_line(pending)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            _cut_off(path, records, f"line {number + 1} ends mid-record")
            return
        yield record


def _cut_off(path: Path, records: int, reason: str) -> None:
    if records == 0:
        raise CaptureError(f"{path}: not a readable capture file ({reason})")
    log_event(
        log,
        logging.WARNING,
        "capture cut off, the tail is skipped",
        path=path,
        complete_records=records,
        reason=reason,
    )


class CaptureWriter:
    """Appends raw records to a capture file; compression follows the file suffix.

    What is written becomes readable from the file at least every ``flush_interval_s`` (a
    closed zstd frame, a gzip sync point), so a writer killed mid-way leaves every record up to
    its last flush; with ``sync_on_flush`` each flush is also synced to disk (an event loop
    passes False and calls ``sync`` from a thread: fsync blocks).
    """

    def __init__(
        self, path: str | Path, flush_interval_s: float = FLUSH_INTERVAL_S, sync_on_flush: bool = True
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("wb")
        self._handle: IO[bytes] = self._file
        self._zstd_frame_end: int | None = None
        if self.path.suffix == ".gz":
            self._handle = cast(IO[bytes], gzip.GzipFile(fileobj=self._file, mode="wb"))
        elif self.path.suffix == ".zst":
            import zstandard

            self._handle = cast(IO[bytes], zstandard.ZstdCompressor(level=6).stream_writer(self._file))
            self._zstd_frame_end = zstandard.FLUSH_FRAME
        self.flush_interval_s = flush_interval_s
        self.sync_on_flush = sync_on_flush
        self._last_flush = time.monotonic()
        self._unflushed = 0
        self.count = 0

    def write(self, record: RawRecord) -> None:
        self._handle.write(to_capture_line(record))
        self.count += 1
        self._unflushed += 1
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Make everything written so far readable from the file (and, with ``sync_on_flush``,
        sync it to disk)."""
        self._last_flush = time.monotonic()
        if not self._unflushed:
            return
        self._unflushed = 0
        if self._zstd_frame_end is not None:
            cast(Any, self._handle).flush(self._zstd_frame_end)
        else:
            self._handle.flush()
        self._file.flush()
        if self.sync_on_flush:
            self.sync()

    def sync(self) -> None:
        """Sync what was flushed to disk (safe from another thread while writing goes on)."""
        if not self._file.closed:
            os.fsync(self._file.fileno())

    def write_all(self, records: Iterable[RawRecord]) -> None:
        for record in records:
            self.write(record)

    def close(self) -> None:
        if self._file.closed:
            return
        self._handle.close()  # ends the last zstd frame / the gzip stream
        self._file.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
