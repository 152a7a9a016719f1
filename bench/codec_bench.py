"""Cost of Avro encoding and decoding one record: the compiled writers/readers against fastavro.

    python -m bench.codec_bench [--n N] [--repeat R]

For each record type, µs per ``AvroCodec.encode`` (single-object encoding) through
- fastavro: ``msgspec.to_builtins`` + ``fastavro.schemaless_writer`` (the codec before the
  compiled writers, and still its fallback for schemas they do not handle),
- python: the Python writer generated from the ``.avsc`` at codec construction (the
  fallback where the C writer is not built), and
- C: the C writer (``marketpipe/_avro_writer.c``) running the program compiled from the
  ``.avsc``; the speed-up is fastavro's time over it;
then µs per ``AvroCodec.decode`` through
- fastavro: ``fastavro.schemaless_reader`` + ``msgspec.convert`` (the codec before the
  compiled readers, and still the path for other writer schemas), and
- compiled: the reader compiled from the ``.avsc`` straight into the msgspec struct.
Both are timed interleaved in process CPU time, best of R rounds of N calls, so load
from other processes on the machine hits both alike. The outputs are checked to be
byte-identical (encode) and equal (decode) first.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable, Sequence
from typing import Any

import fastavro
import msgspec

from marketpipe.codec import SINGLE_OBJECT_MAGIC, AvroCodec, DecodeError, _write
from marketpipe.records import BBO, BookBuckets, BookChange, Bucket, Candle, DepthBand, Level, Record, Trade

TS = 1_786_310_822_605_000


def sample_records() -> list[Record]:
    return [
        Trade(
            exchange="binance",
            symbol="BTC-USDT",
            exchange_symbol="BTCUSDT",
            trade_id="4181559730",
            price=65140.5,
            size=0.002705,
            side="buy",
            ts=TS,
            recv_ts=TS + 6_234,
            conn="binance.k3.0",
            seq=123_456,
        ),
        BookChange(
            exchange="binance",
            symbol="BTC-USDT",
            exchange_symbol="BTCUSDT",
            snapshot=False,
            bids=[Level(65140.0 - i * 0.1, 0.25 + i) for i in range(20)],
            asks=[Level(65140.1 + i * 0.1, 0.5 + i) for i in range(20)],
            ts=TS,
            recv_ts=TS + 6_234,
            first_update_id=71_012_345_678,
            last_update_id=71_012_345_699,
            conn="binance.k3.0",
            seq=123_456,
        ),
        BBO(
            exchange="binance",
            symbol="BTC-USDT",
            exchange_symbol="BTCUSDT",
            bid_price=65140.0,
            bid_size=0.25,
            ask_price=65140.1,
            ask_size=0.5,
            ts=TS,
            recv_ts=TS + 6_234,
        ),
        Candle(
            exchange="binance",
            symbol="BTC-USDT",
            interval="1m",
            open_time=TS - TS % 60_000_000,
            close_time=TS - TS % 60_000_000 + 60_000_000,
            open=65100.0,
            high=65190.5,
            low=65090.0,
            close=65140.5,
            volume=12.5,
            quote_volume=814_256.25,
            buy_volume=7.0,
            sell_volume=5.5,
            trades=1_234,
            vwap=65140.5,
            first_trade_ts=TS - 59_000_000,
            last_trade_ts=TS,
            closed=False,
            version=57,
        ),
        BookBuckets(
            exchange="binance",
            symbol="BTC-USDT",
            ts=TS,
            mid=65140.05,
            best_bid=65140.0,
            best_ask=65140.1,
            spread=0.1,
            bucket_size=5.0,
            bids=[Bucket(65140.0 - 5 * i, 1.5 + i, (65140.0 - 5 * i) * (1.5 + i)) for i in range(20)],
            asks=[Bucket(65145.0 + 5 * i, 1.0 + i, (65145.0 + 5 * i) * (1.0 + i)) for i in range(20)],
            bands=[DepthBand(pct, 10.0 * pct, 8.0 * pct, 0.11) for pct in (0.1, 0.5, 1.0, 5.0)],
        ),
    ]


def label(record: Record) -> str:
    if isinstance(record, BookChange):
        return f"BookChange ({len(record.bids) + len(record.asks)} levels)"
    if isinstance(record, BookBuckets):
        return f"BookBuckets ({len(record.bids) + len(record.asks)} buckets, {len(record.bands)} bands)"
    return type(record).__name__


def fastavro_encoder(codec: AvroCodec) -> Callable[[Record], bytes]:
    def encode(record: Record) -> bytes:
        schema = codec.schema_for(type(record))
        body = _write(schema, msgspec.to_builtins(record, builtin_types=(bytes,)))
        return SINGLE_OBJECT_MAGIC + schema.fingerprint + body

    return encode


class FastavroDecodeCodec(AvroCodec):
    """The codec with decoding as it was before the compiled readers (fastavro + msgspec.convert)."""

    def decode(self, data: bytes | bytearray | memoryview, record_type: type[Any] | None = None) -> Any:
        writer, body = self._writer_of(data)
        target = record_type or self._type_by_name[writer.name]
        reader = self.schema_for(target)
        try:
            value = fastavro.schemaless_reader(io.BytesIO(body), writer.parsed, reader.parsed)
        except (EOFError, ValueError, IndexError) as exc:
            raise DecodeError(str(exc)) from exc
        return msgspec.convert(value, type=target)


def us_per_call(call: Callable[[Any], Any], arg: Any, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        call(arg)
    return (time.process_time() - start) / n * 1e6


def compare(label: str, calls: Sequence[Callable[[Any], Any]], arg: Any, args: Any) -> str:
    """µs per call of each (best of the rounds, interleaved), then the first over the last."""
    best = [float("inf")] * len(calls)
    for _ in range(args.repeat):
        for i, call in enumerate(calls):
            best[i] = min(best[i], us_per_call(call, arg, args.n))
    return f"{label:<40} " + " ".join(f"{us:9.2f}" for us in best) + f" {best[0] / best[-1]:8.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=5000, help="encodes per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best one counts")
    args = parser.parse_args()

    codec, python_codec = AvroCodec(), AvroCodec(native=False)
    via_fastavro = fastavro_encoder(codec)
    print(f"encode, µs per record (best of {args.repeat} x {args.n})")
    print(f"{'record':<40} {'fastavro':>9} {'python':>9} {'C':>9} {'speed-up':>9} {'bytes':>6}")
    for record in sample_records():
        data = codec.encode(record)
        if not data == python_codec.encode(record) == via_fastavro(record):
            raise SystemExit(f"{label(record)}: a compiled writer's output differs from fastavro")
        calls = (via_fastavro, python_codec.encode, codec.encode)
        print(compare(label(record), calls, record, args), f"{len(data):6d}")

    old_codec = FastavroDecodeCodec()
    print(f"\ndecode, µs per record (best of {args.repeat} x {args.n})")
    print(f"{'record':<40} {'fastavro':>9} {'compiled':>9} {'speed-up':>9}")
    for record in sample_records():
        data = codec.encode(record)
        if not codec.decode(data) == old_codec.decode(data) == record:
            raise SystemExit(f"{label(record)}: compiled reader output differs from fastavro")
        print(compare(label(record), (old_codec.decode, codec.decode), data, args))


if __name__ == "__main__":
    main()
