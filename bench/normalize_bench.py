"""Throughput and per-frame latency of the normalisation layer (no Kafka).

    python -m bench.normalize_bench [--frames N] [--levels L] [--seed S]

Scenarios (frames generated up front, then timed through ``FeedProcessor.process``):
- binance-book: a busy book (L levels a side, REST snapshot) with 100 ms diff-depth events
  of 5-40 changed levels clustered near the touch;
- okx-book: the same busy book as OKX ``books`` updates with seqId/prevSeqId and checksum 0
  (the production format since the June 2026 deprecation);
- okx-book-crc: the same with a real checksum (CRC32 over the top 25, verified on every
  frame), as OKX sent before the deprecation;
- bybit-book: orderbook.200 deltas;
- trades: aggTrade / publicTrade / market_trades / trades frames of 1-3 trades.

    python -m bench.normalize_bench --capture FILE [--capture FILE ...]

times the records of capture files instead (``marketpipe capture``, against an exchange or the
simulator), one scenario per exchange: any exchange, binary frames (HTX, MEXC) included.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from marketpipe.raw import RawRecord, read_capture
from streams.book import OrderBook
from streams.feed import FeedOutput, FeedProcessor
from streams.parsers import processor_for
from streams.parsers.base import okx_checksum

Frame = tuple[str, str, str | None]  # kind, data, url
T0_NS = 1_700_000_000_000_000_000
"""receive time of the first frame; the generated exchange times start there too (the feed
dead-letters timestamps far from the receive time)"""
RECV_STEP_NS = 100_000_000
"""receive-time step per frame: the book scenarios' 100 ms event-time step"""


class Market:
    """A random-walk book around a mid price, producing absolute level changes."""

    def __init__(self, rng: random.Random, levels: int, tick: float = 0.1, mid: float = 65000.0) -> None:
        self.rng = rng
        self.tick = tick
        self.mid_ticks = int(mid / tick)
        self.bids = {self.mid_ticks - 1 - i: self._size() for i in range(levels)}
        self.asks = {self.mid_ticks + 1 + i: self._size() for i in range(levels)}

    def _size(self) -> str:
        return f"{self.rng.uniform(0.0001, 5):.6f}"

    def price(self, ticks: int) -> str:
        return f"{ticks * self.tick:.1f}"

    def changes(self) -> tuple[list[list[str]], list[list[str]]]:
        """One diff: 5-40 changed levels, mostly near the touch; sides never cross."""
        bids: list[list[str]] = []
        asks: list[list[str]] = []
        best_bid, best_ask = max(self.bids), min(self.asks)
        for _ in range(self.rng.randint(5, 40)):
            is_bid = self.rng.random() < 0.5
            offset = int(self.rng.expovariate(1 / 15))
            ticks = best_bid - offset if is_bid else best_ask + offset
            book = self.bids if is_bid else self.asks
            if ticks in book and len(book) > 50 and self.rng.random() < 0.3:
                del book[ticks]
                size = "0"
            else:
                size = book[ticks] = self._size()
            (bids if is_bid else asks).append([self.price(ticks), size])
        return bids, asks

    def snapshot(self) -> tuple[list[list[str]], list[list[str]]]:
        bids = [[self.price(t), s] for t, s in sorted(self.bids.items(), reverse=True)]
        asks = [[self.price(t), s] for t, s in sorted(self.asks.items())]
        return bids, asks


def binance_book(rng: random.Random, frames: int, levels: int) -> Iterator[Frame]:
    market = Market(rng, levels)
    yield (
        "rest",
        json.dumps({"symbols": [{"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT"}]}),
        ("https://api.binance.com/api/v3/exchangeInfo"),
    )
    bids, asks = market.snapshot()
    yield (
        "rest",
        json.dumps({"lastUpdateId": 1000, "bids": bids, "asks": asks}),
        ("https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=1000"),
    )
    update_id = 1000
    for index in range(frames):
        bids, asks = market.changes()
        first, update_id = update_id + 1, update_id + rng.randint(1, 5)
        data = {
            "e": "depthUpdate",
            "E": 1700000000000 + index * 100,
            "s": "BTCUSDT",
            "U": first,
            "u": update_id,
            "b": bids,
            "a": asks,
        }
        yield "recv", json.dumps({"stream": "btcusdt@depth@100ms", "data": data}, separators=(",", ":")), None


def okx_book(rng: random.Random, frames: int, levels: int, with_checksum: bool = True) -> Iterator[Frame]:
    market = Market(rng, levels)
    mirror = OrderBook(keep_text=True)
    bids, asks = market.snapshot()
    for side, rows in ((mirror.bids, bids), (mirror.asks, asks)):
        side.load_text((float(p), float(s), f"{p}:{s}") for p, s in rows)

    def frame(action: str, bids: list[list[str]], asks: list[list[str]], prev: int, seq: int, ts: int) -> str:
        data = {
            "asks": [[p, s, "0", "1"] for p, s in asks],
            "bids": [[p, s, "0", "1"] for p, s in bids],
            "ts": str(ts),
            "checksum": okx_checksum(mirror) if with_checksum else 0,
            "prevSeqId": prev,
            "seqId": seq,
        }
        return json.dumps(
            {"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": action, "data": [data]}
        )

    yield "recv", frame("snapshot", bids, asks, -1, 10, 1700000000000), None
    for index in range(frames):
        bids, asks = market.changes()
        for side, rows in ((mirror.bids, bids), (mirror.asks, asks)):
            for p, s in rows:
                side.set_text(float(p), float(s), f"{p}:{s}")
        yield "recv", frame("update", bids, asks, 10 + index, 11 + index, 1700000000000 + index * 100), None


def bybit_book(rng: random.Random, frames: int, levels: int) -> Iterator[Frame]:
    market = Market(rng, min(levels, 200))
    yield (
        "rest",
        json.dumps(
            {
                "retCode": 0,
                "result": {"list": [{"symbol": "BTCUSDT", "baseCoin": "BTC", "quoteCoin": "USDT"}]},
            }
        ),
        "https://api.bybit.com/v5/market/instruments-info",
    )
    bids, asks = market.snapshot()

    def frame(kind: str, bids: list[list[str]], asks: list[list[str]], u: int) -> str:
        data = {"s": "BTCUSDT", "b": bids, "a": asks, "u": u, "seq": u * 7}
        return json.dumps(
            {
                "topic": "orderbook.200.BTCUSDT",
                "ts": 1700000000000 + u,
                "type": kind,
                "data": data,
                "cts": 1700000000000 + u,
            }
        )

    yield "recv", frame("snapshot", bids, asks, 100), None
    for index in range(frames):
        bids, asks = market.changes()
        yield "recv", frame("delta", bids, asks, 101 + index), None


def trades(rng: random.Random, frames: int) -> Iterator[tuple[str, Frame]]:
    yield (
        "binance",
        (
            "rest",
            json.dumps({"symbols": [{"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT"}]}),
            "https://api.binance.com/api/v3/exchangeInfo",
        ),
    )
    yield (
        "bybit",
        (
            "rest",
            json.dumps(
                {
                    "retCode": 0,
                    "result": {"list": [{"symbol": "BTCUSDT", "baseCoin": "BTC", "quoteCoin": "USDT"}]},
                }
            ),
            "https://api.bybit.com/v5/market/instruments-info",
        ),
    )
    for index in range(frames):
        price, size, ts = (
            f"{65000 + rng.uniform(-50, 50):.2f}",
            f"{rng.uniform(0.0001, 1):.8f}",
            1700000000000 + index,
        )
        which = index % 4
        if which == 0:
            data = {
                "e": "aggTrade",
                "E": ts,
                "s": "BTCUSDT",
                "a": index,
                "p": price,
                "q": size,
                "f": index,
                "l": index,
                "T": ts,
                "m": rng.random() < 0.5,
                "M": True,
            }
            yield "binance", ("recv", json.dumps({"stream": "btcusdt@aggTrade", "data": data}), None)
        elif which == 1:
            rows = [
                {
                    "i": str(index * 3 + k),
                    "T": ts,
                    "p": price,
                    "v": size,
                    "S": "Buy",
                    "s": "BTCUSDT",
                    "BT": False,
                    "seq": index,
                }
                for k in range(rng.randint(1, 3))
            ]
            yield (
                "bybit",
                (
                    "recv",
                    json.dumps({"topic": "publicTrade.BTCUSDT", "ts": ts, "type": "snapshot", "data": rows}),
                    None,
                ),
            )
        elif which == 2:
            trade = {
                "product_id": "BTC-USD",
                "trade_id": str(index),
                "price": price,
                "size": size,
                "time": datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
                "side": "SELL",
            }
            msg = {
                "channel": "market_trades",
                "timestamp": datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
                "sequence_num": index // 4,
                "events": [{"type": "update", "trades": [trade]}],
            }
            yield "coinbase", ("recv", json.dumps(msg), None)
        else:
            row = {
                "instId": "BTC-USDT",
                "tradeId": str(index),
                "px": price,
                "sz": size,
                "side": "buy",
                "ts": str(ts),
            }
            yield (
                "okx",
                (
                    "recv",
                    json.dumps({"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [row]}),
                    None,
                ),
            )


def _records(frames: list[tuple[str, Frame]]) -> list[RawRecord]:
    return [
        RawRecord(exchange, f"{exchange}.bench.0", seq, kind, T0_NS + seq * RECV_STEP_NS, data.encode(), url)  # type: ignore[arg-type]
        for seq, (exchange, (kind, data, url)) in enumerate(frames)
    ]


def _throughput(records: list[RawRecord]) -> tuple[float, dict[str, FeedProcessor]]:
    processors = {exchange: processor_for(exchange) for exchange in {raw.exchange for raw in records}}
    out = FeedOutput()
    start = time.perf_counter()
    for raw in records:
        processors[raw.exchange].process(raw, out)
        out.clear()
    return len(records) / (time.perf_counter() - start), processors


def _latencies(records: list[RawRecord]) -> list[int]:
    processors = {exchange: processor_for(exchange) for exchange in {raw.exchange for raw in records}}
    out = FeedOutput()
    clock = time.perf_counter_ns
    found = []
    for raw in records:
        before = clock()
        processors[raw.exchange].process(raw, out)
        found.append(clock() - before)
        out.clear()
    return sorted(found)


def run(name: str, frames: list[tuple[str, Frame]]) -> None:
    """Throughput from an untimed-per-frame pass; latency percentiles from a second, fresh pass."""
    size = sum(len(data) for _, (_, data, _) in frames) / len(frames)
    run_records(name, _records(frames), size)


def run_records(name: str, records: list[RawRecord], size: float) -> None:
    rate, processors = _throughput(records)
    latencies = _latencies(records)
    errors = sum(p.counters.parse_errors for p in processors.values())
    gaps = sum(p.counters.sequence_gaps + p.counters.checksum_failures for p in processors.values())
    verified = sum(p.counters.checksums_verified for p in processors.values())
    p50, p99 = latencies[len(latencies) // 2] / 1000, latencies[int(len(latencies) * 0.99)] / 1000
    print(
        f"{name:<14} {len(records):>8} frames  {rate:>10,.0f} frames/s  "
        f"p50 {p50:7.1f} µs  p99 {p99:7.1f} µs  avg {size:6.0f} B/frame  "
        f"checksums {verified}  errors {errors}  gaps/mismatches {gaps}"
    )
    if errors or gaps:
        raise SystemExit(f"{name}: the generated frames did not normalise cleanly")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=50_000, help="frames per scenario")
    parser.add_argument("--levels", type=int, default=400, help="levels per side in the busy books")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--capture", action="append", default=[], help="time a capture file's records")
    args = parser.parse_args(argv)
    if args.capture:
        run_captures(args.capture)
        return
    seed, frames, levels = args.seed, args.frames, args.levels

    def tagged(exchange: str, found: Iterator[Frame]) -> list[tuple[str, Frame]]:
        return [(exchange, frame) for frame in found]

    scenarios: list[tuple[str, Callable[[], list[tuple[str, Frame]]]]] = [
        ("binance-book", lambda: tagged("binance", binance_book(random.Random(seed), frames, levels))),
        (
            "okx-book",
            lambda: tagged("okx", okx_book(random.Random(seed), frames, levels, with_checksum=False)),
        ),
        ("okx-book-crc", lambda: tagged("okx", okx_book(random.Random(seed), frames, levels))),
        ("bybit-book", lambda: tagged("bybit", bybit_book(random.Random(seed), frames, levels))),
        ("trades", lambda: list(trades(random.Random(seed), frames))),
    ]
    print(f"normalisation benchmark: {args.frames} frames per scenario, {args.levels} levels a side")
    for name, build in scenarios:
        run(name, build())


def run_captures(paths: list[str]) -> None:
    by_exchange: dict[str, list[RawRecord]] = {}
    for path in paths:
        for raw in read_capture(path):
            by_exchange.setdefault(raw.exchange, []).append(raw)
    print(f"normalisation benchmark: {', '.join(paths)}")
    for exchange, records in sorted(by_exchange.items()):
        size = sum(len(raw.payload) for raw in records) / len(records)
        run_records(f"{exchange}-capture", records, size)


if __name__ == "__main__":
    main()
