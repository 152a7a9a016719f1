"""Throughput of the candle logic and cost of price-bucket snapshots (no Kafka).

    python -m bench.ohlcv_bench [--trades N] [--markets M] [--levels L] [--seed S]

- candles (pure): ``CandleBuilder.add`` with every default interval (1s .. 1d), trades of
  M markets interleaved, ~20 trades per market-second of event time, 1 % of them late;
- candles (agent path): the same trades as Avro ``md.trades`` records through the
  ``ohlcv`` agent's batch code (``OhlcvStage.process``: decode, build, encode outputs)
  plus the per-batch table serialisation, in batches of 5000, without a broker; once with
  the decoding as it was before the compiled readers (fastavro + msgspec.convert), once with
  today's codec;
- buckets: one snapshot of an L-levels-a-side book around 65 000 (default bucket size 5,
  out to 5 %), and the same through the journalled pre-change view.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message

from bench.codec_bench import FastavroDecodeCodec
from marketpipe.codec import AvroCodec
from marketpipe.config import DEFAULT_INTERVALS, StreamSettings
from marketpipe.records import Level, Trade
from marketpipe.topics import Topology
from streams.aggregations import OhlcvStage
from streams.book import OrderBook
from streams.buckets import Bucketer
from streams.consolidate import SymbolMap
from streams.ohlcv import CandleBuilder

T0 = 1_786_000_000_000_000


def make_trades(n: int, markets: int, rng: random.Random) -> list[Trade]:
    trades = []
    clock = [T0] * markets
    for i in range(n):
        m = i % markets
        clock[m] += rng.randint(0, 100_000)  # ~20 trades per second per market
        ts = clock[m] - (rng.randint(3_000_000, 20_000_000) if rng.random() < 0.01 else 0)
        trades.append(
            Trade(
                exchange="binance",
                symbol=f"C{m}-USDT",
                exchange_symbol=f"C{m}USDT",
                trade_id=str(i),
                price=65_000 + rng.uniform(-50, 50),
                size=rng.uniform(0.0001, 2),
                side="buy" if rng.random() < 0.5 else "sell",
                ts=ts,
                recv_ts=ts,
                conn="c",
                seq=i,
            )
        )
    return trades


def timed(label: str, count: int, unit: str, run: Callable[[], Any]) -> None:
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    print(f"{label:<40} {count / elapsed:>12,.0f} {unit}/s   ({elapsed * 1e6 / count:.2f} µs each)")


def bench_pure(trades: list[Trade]) -> None:
    builder = CandleBuilder(list(DEFAULT_INTERVALS), 2.0, 1.0)
    rows = [(t.exchange, t.symbol, t.ts, t.price, t.size, t.side, 0, i) for i, t in enumerate(trades)]

    def run() -> None:
        add = builder.add
        for row in rows:
            add(*row)
        builder.take_published()

    timed("candles, pure (7 intervals)", len(rows), "trades", run)
    print(f"{'':<40} published {len(builder.published)} pending, late {builder.late_trades}")


def bench_agent_path(trades: list[Trade], codec: AvroCodec, label: str) -> None:
    topology = Topology()
    stage = OhlcvStage(topology, codec, StreamSettings(), SymbolMap())
    builder = stage.new_state(topology.trades, 0)
    messages = [
        Message(topic=topology.trades, partition=0, offset=i, value=codec.encode(t))
        for i, t in enumerate(trades)
    ]
    sent = [0]

    def emit(topic: str, key: bytes, value: bytes) -> None:
        sent[0] += 1

    def run() -> None:
        for start in range(0, len(messages), 5000):
            stage.process(builder, messages[start : start + 5000], emit)
            for _ in builder.state_changes():
                pass

    timed(f"candles, agent path ({label})", len(messages), "trades", run)
    print(f"{'':<40} {sent[0]} output messages ({sent[0] / len(messages):.2f} per trade)")


def bench_buckets(levels: int, rng: random.Random) -> None:
    book = OrderBook()
    book.bids.load((65_000 - 0.5 - i * 1.3, rng.uniform(0.01, 3)) for i in range(levels))
    book.asks.load((65_000 + 0.5 + i * 1.3, rng.uniform(0.01, 3)) for i in range(levels))
    bucketer = Bucketer()
    rounds = 2000
    bids, asks = book.bids, book.asks

    def plain() -> None:
        for _ in range(rounds):
            bucketer.snapshot("b", "BTC-USDT", T0, bids.prices, bids.sizes, asks.prices, asks.sizes)

    timed(f"bucket snapshot, {levels} levels/side", rounds, "snapshots", plain)
    bids.start_journal()
    asks.start_journal()
    bids.apply([Level(65_000 - 0.5 - i * 2.6, 1.0) for i in range(20)])

    def journalled() -> None:
        for _ in range(rounds):
            bp, bs = bids.previous()
            ap, as_ = asks.previous()
            bucketer.snapshot("b", "BTC-USDT", T0, bp, bs, ap, as_)

    timed("  same, pre-change view (20 undone)", rounds, "snapshots", journalled)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trades", type=int, default=300_000)
    parser.add_argument("--markets", type=int, default=20)
    parser.add_argument("--levels", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    trades = make_trades(args.trades, args.markets, rng)
    bench_pure(trades)
    bench_agent_path(trades, FastavroDecodeCodec(), "fastavro decode")
    bench_agent_path(trades, AvroCodec(), "compiled decode")
    bench_buckets(args.levels, rng)


if __name__ == "__main__":
    main()
