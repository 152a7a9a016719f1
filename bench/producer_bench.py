"""Producer throughput: the exchange simulator at rising message rates -> one connector
process (`marketpipe produce`) -> Kafka.

    python -m bench.producer_bench [--exchange binance] [--symbols 10] [--seconds 8]
                                   [--rates 200,500,1000,2000,5000,10000,20000]

Kafka: KAFKA_BOOTSTRAP_SERVERS when set, else a temporary local broker. Each round starts a
simulator process (`marketpipe sim`) whose symbols together offer about the target frame rate,
runs the connector process against it for --seconds, then counts what reached Kafka.
"offered" is what the simulator sent; "in kafka" is what the producer published. The
producer falls behind when Kafka holds clearly less than was offered, or when the simulator
drops it as a slow client (its socket stopped taking frames). "frames/cpu-s" (records published
per CPU second of the producer process, startup included) estimates the producer's own ceiling
when the simulator is the limit. "sim overload" counts the connections the simulator closed
because it could not send its own frames in time while the socket took everything (a simulator
using a whole core, "sim cpu"); the verdict then names the simulator, not the producer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.cryptofeed_bench import process_cpu_s
from marketpipe.config import LocalBrokerSettings
from marketpipe.kafka_local import LocalKafka, free_port
from marketpipe.topics import Topology, apply_topology, watermarks

BIN = Path(sys.executable).parent
SYMBOL_BASES = ["BTC", "ETH", "SOL", "XRP", "DOGE", "LTC", "ADA", "DOT", "AVAX", "LINK", "ATOM", "UNI"]
QUOTE = {"binance": "USDT", "bybit": "USDT", "okx": "USDT", "coinbase": "USD", "kraken": "USD"}
FALLING_BEHIND = 0.95


def _sim_stats(port: int, exchange: str) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/stats", timeout=5) as response:
        stats = json.load(response)["exchanges"][exchange]
    return {k: v for k, v in stats.items() if isinstance(v, int)}


def _topic_count(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:6]}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(watermarks(consumer, TopicPartition(topic, p))[1] for p in partitions)
    finally:
        consumer.close()


def _wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/stats", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"simulator did not answer on port {port}")


def run_round(bootstrap: str, exchange: str, rate: int, symbols: int, seconds: float) -> dict[str, float]:
    names = [f"{base}-{QUOTE[exchange]}" for base in SYMBOL_BASES[:symbols]]
    per_symbol = rate / len(names) / 1.2  # about 1.2 frames per book step (depth plus some trades)
    port = free_port()
    topology = Topology(prefix=f"bench{uuid.uuid4().hex[:6]}.", exchanges=(exchange,), partitions=3)
    apply_topology(AdminClient({"bootstrap.servers": bootstrap}), topology.specs())
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MARKETPIPE_KAFKA__TOPIC_PREFIX": topology.prefix,
        "MARKETPIPE_METRICS_PORT": "0",
    }
    sim = subprocess.Popen(
        [
            str(BIN / "marketpipe"),
            "sim",
            "--exchanges",
            exchange,
            "--symbols",
            ",".join(names),
            "--port",
            str(port),
            "--rate",
            f"{per_symbol:.3f}",
            "--trade-rate",
            f"{per_symbol / 5:.3f}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        base = f"127.0.0.1:{port}/{exchange}"
        before = _sim_stats(port, exchange)
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        sim_cpu_before = process_cpu_s(sim.pid) or 0.0
        started = time.monotonic()
        produce = subprocess.run(
            [
                str(BIN / "marketpipe"),
                "produce",
                "--exchange",
                exchange,
                "--symbols",
                ",".join(names),
                "--ws-url",
                f"ws://{base}",
                "--rest-url",
                f"http://{base}",
                "--duration",
                str(seconds),
                "--no-control",
            ],
            env=env,
            capture_output=True,
            timeout=seconds + 120,
        )
        elapsed = time.monotonic() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the producer only: sim still runs
        sim_cpu_s = (process_cpu_s(sim.pid) or 0.0) - sim_cpu_before
        after = _sim_stats(port, exchange)
    finally:
        sim.terminate()
        sim.wait(10)
    if produce.returncode != 0:
        raise RuntimeError(f"producer failed: {produce.stderr.decode()[-2000:]}")

    def counted(counter: str) -> int:
        return after.get(counter, 0) - before.get(counter, 0)

    offered = counted("frames_sent")
    in_kafka = _topic_count(bootstrap, topology.raw(exchange))
    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        "cpu_pct": 100 * cpu_s / elapsed,
        "sim_cpu_pct": 100 * sim_cpu_s / elapsed,
        "max_per_s": in_kafka / cpu_s if cpu_s else 0.0,
        "target": rate,
        "offered_per_s": offered / elapsed,
        "kafka_per_s": in_kafka / elapsed,
        "ratio": in_kafka / offered if offered else 0.0,
        "slow_disconnects": counted("slow_disconnects"),
        "overload_disconnects": counted("overload_disconnects"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exchange", default="binance")
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rates", default="200,500,1000,2000,5000,10000,20000")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker: LocalKafka | None = None
    if not bootstrap:
        settings = LocalBrokerSettings(port=free_port(), controller_port=free_port(), heap="1g")
        broker = LocalKafka(Path(tempfile.mkdtemp(prefix="producer-bench-")), settings)
        broker.start()
        bootstrap = broker.bootstrap
    try:
        print(f"{args.exchange}: {args.symbols} symbols, {args.seconds:g} s per round, Kafka {bootstrap}")
        print(
            f"{'target/s':>9} {'offered/s':>10} {'kafka/s':>9} {'kafka/offered':>14} {'slow drops':>10} "
            f"{'sim overload':>12} {'producer cpu':>12} {'frames/cpu-s':>12} {'sim cpu':>8}"
        )
        behind_at: float | None = None
        sim_bound = False
        for rate in rates:
            row = run_round(bootstrap, args.exchange, rate, args.symbols, args.seconds)
            print(
                f"{row['target']:>9.0f} {row['offered_per_s']:>10.0f} {row['kafka_per_s']:>9.0f} "
                f"{row['ratio']:>14.3f} {row['slow_disconnects']:>10.0f} "
                f"{row['overload_disconnects']:>12.0f} {row['cpu_pct']:>11.0f}% "
                f"{row['max_per_s']:>12.0f} {row['sim_cpu_pct']:>7.0f}%",
                flush=True,
            )
            if behind_at is None and (
                row["ratio"] < FALLING_BEHIND or row["slow_disconnects"] or row["overload_disconnects"]
            ):
                behind_at = row["offered_per_s"]
                sim_bound = bool(row["overload_disconnects"]) and not row["slow_disconnects"]
        if behind_at is None:
            print("the producer kept up at every offered rate (the simulator may be the limit)")
        elif sim_bound:
            print(
                f"the simulator reached its own limit at about {behind_at:.0f} frames/s: it could not "
                "send its frames in time while the producer took everything it sent"
            )
        else:
            print(f"the producer starts to fall behind at about {behind_at:.0f} frames/s")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
