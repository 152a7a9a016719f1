"""Throughput of the candle logic and cost of price-bucket snapshots (no Kafka).

    python -m bench.ohlcv_bench [--trades N] [--markets M] [--levels L] [--seed S]

- candles (pure): ``CandleBuilder.add`` with every default interval (1s .. 1d), trades of
  M markets interleaved, ~20 trades per market-second of event time, 1 % of them late;
- candles (agent path): the same trades as Avro ``md.trades`` records through the
  ``ohlcv`` agent's batch code (``OhlcvStage.process``: decode, build, encode outputs)
  plus the per-batch table serialisation, in batches of 5000, without a broker;
- buckets: one snapshot of an L-levels-a-side book around 65 000 (default bucket size 5,
  out to 5 %), and the same through the journalled pre-change view.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from marketpipe.codec import AvroCodec
from marketpipe.config import DEFAULT_INTERVALS
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
    print(f"{label:<34} {count / elapsed:>12,.0f} {unit}/s   ({elapsed * 1e6 / count:.2f} µs each)")


def bench_pure(trades: list[Trade]) -> None:
    builder = CandleBuilder(list(DEFAULT_INTERVALS), 2.0, 1.0)
    rows = [(t.exchange, t.symbol, t.ts, t.price, t.size, t.side, 0, i) for i, t in enumerate(trades)]

    def run() -> None:
        add = builder.add
        for row in rows:
            add(*row)
        builder.take_published()

    timed("candles, pure (7 intervals)", len(rows), "trades", run)
    print(f"{'':<34} published {len(builder.published)} pending, late {builder.late_trades}")


def bench_agent_path(trades: list[Trade]) -> None:
    codec = AvroCodec()
    topology = Topology()
    stage = OhlcvStage(
        CandleBuilder(list(DEFAULT_INTERVALS), 2.0, 1.0), topology, codec, SymbolMap(), "consolidate"
    )
    events = [
        SimpleNamespace(message=SimpleNamespace(value=codec.encode(t), partition=0, offset=i))
        for i, t in enumerate(trades)
    ]
    sent = [0]

    def emit(topic: str, key: bytes, value: bytes) -> None:
        sent[0] += 1

    def run() -> None:
        for start in range(0, len(events), 5000):
            stage.process(events[start : start + 5000], emit)  # type: ignore[arg-type]
            for _ in stage.builder.state_changes():
                pass

    timed("candles, agent batch path", len(events), "trades", run)
    print(f"{'':<34} {sent[0]} output messages ({sent[0] / len(events):.2f} per trade)")


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
    bench_agent_path(trades)
    bench_buckets(args.levels, rng)


if __name__ == "__main__":
    main()
