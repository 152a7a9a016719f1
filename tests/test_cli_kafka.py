"""`topics list` and `tail` against a real broker: full values when piped, kcat-style positions."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from confluent_kafka import Producer

from marketpipe.cli import main
from marketpipe.codec import AvroCodec
from marketpipe.records import Trade
from marketpipe.topics import Topology

T0_MS = 1_714_560_000_000  # 2024-05-01T10:40:00Z
PER_PARTITION = {0: 5, 1: 3, 2: 0}


def _env(bootstrap: str, topics: Topology) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MARKETPIPE_KAFKA__TOPIC_PREFIX": topics.prefix,
        "MARKETPIPE_EXCHANGES": ",".join(topics.exchanges),
    }


def _run(tmp_path: Path, env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(tmp_path), *args], env=env)


def _trade(partition: int, i: int) -> Trade:
    ts = (T0_MS + i * 1000) * 1000
    return Trade(
        exchange="binance",
        symbol="BTC-USDT",
        exchange_symbol="BTCUSDT",
        trade_id=f"{partition}-{i}",
        price=60_000.0 + i,
        size=0.01,
        side="buy",
        ts=ts,
        recv_ts=ts + 500,
        conn="binance.0",
        seq=i,
    )


@pytest.fixture
def trades_topic(kafka_bootstrap: str, topics: Topology) -> str:
    """md.trades with 5 records in partition 0, 3 in 1, none in 2; record i at T0 + i s."""
    codec = AvroCodec(None)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition, count in PER_PARTITION.items():
        for i in range(count):
            producer.produce(
                topics.trades,
                codec.encode(_trade(partition, i)),
                key=b"binance:BTC-USDT",
                partition=partition,
                timestamp=T0_MS + i * 1000,
            )
    assert producer.flush(30) == 0
    return topics.trades


def _records(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _positions(result: Result) -> list[tuple[object, object]]:
    return sorted((r["partition"], r["offset"]) for r in _records(result))


def test_topics_list_piped_shows_whole_names_and_takes_every_format(
    kafka_bootstrap: str, topics: Topology, tmp_path: Path
) -> None:
    env = _env(kafka_bootstrap, topics)
    piped = _run(tmp_path, env, "topics", "list")
    assert piped.exit_code == 0, piped.output
    header, *lines = piped.stdout.splitlines()
    assert header.split("\t") == ["topic", "partitions", "cleanup", "retention.ms", "key", "value", "state"]
    names = {line.split("\t")[0] for line in lines}
    assert topics.raw("binance") in names and topics.trades in names
    assert "…" not in piped.stdout
    rows = [
        json.loads(line)
        for line in _run(tmp_path, env, "topics", "list", "--format", "json").stdout.splitlines()
    ]
    trades = next(row for row in rows if row["topic"] == topics.trades)
    assert trades["partitions"] == 3 and trades["state"] in ("ok", "drift")
    as_csv = list(csv.reader(io.StringIO(_run(tmp_path, env, "topics", "list", "--format", "csv").stdout)))
    assert {row[0] for row in as_csv[1:]} == names


def test_tail_starts_where_asked_in_the_partitions_asked(
    kafka_bootstrap: str, topics: Topology, trades_topic: str, tmp_path: Path
) -> None:
    env = _env(kafka_bootstrap, topics)

    def tail(*args: str) -> Result:
        return _run(tmp_path, env, "tail", trades_topic, "-e", *args)

    assert _positions(tail("-p", "0", "-o", "beginning")) == [(0, i) for i in range(5)]
    assert _positions(tail("--offset", "-2")) == [(0, 3), (0, 4), (1, 1), (1, 2)]
    assert _positions(tail("-p", "0", "-o", "3")) == [(0, 3), (0, 4)]
    assert _positions(tail("--from-time", "2024-05-01T10:40:02Z")) == [(0, 2), (0, 3), (0, 4), (1, 2)]
    assert _positions(tail("-p", "1", "--from-time", str(T0_MS + 1000))) == [(1, 1), (1, 2)]
    assert _positions(tail()) == []  # default: only new records
    first = _records(tail("-p", "1", "--from-beginning", "--count", "1"))
    assert len(first) == 1 and first[0]["timestamp"] == T0_MS and first[0]["key"] == "binance:BTC-USDT"
    assert first[0]["value"]["trade_id"] == "1-0"


def test_tail_prints_tsv_csv_and_table_and_refuses_bad_positions(
    kafka_bootstrap: str, topics: Topology, trades_topic: str, tmp_path: Path
) -> None:
    env = _env(kafka_bootstrap, topics)
    base = ("tail", trades_topic, "-e", "-p", "0", "-o", "beginning")
    tsv = _run(tmp_path, env, *base, "--format", "tsv", "-n", "2")
    assert tsv.exit_code == 0, tsv.output
    header, *lines = tsv.stdout.splitlines()
    assert header == "topic\tpartition\toffset\ttimestamp\tkey\tvalue" and len(lines) == 2
    topic, partition, offset, timestamp, key, value = lines[1].split("\t")
    assert (topic, partition, offset, timestamp, key) == (
        trades_topic,
        "0",
        "1",
        str(T0_MS + 1000),
        "binance:BTC-USDT",
    )
    assert json.loads(value)["trade_id"] == "0-1"
    as_csv = list(csv.reader(io.StringIO(_run(tmp_path, env, *base, "--format", "csv").stdout)))
    assert len(as_csv) == 1 + 5 and json.loads(as_csv[5][5])["trade_id"] == "0-4"
    table = _run(tmp_path, env, *base, "--format", "table")
    assert table.exit_code == 0 and "partition" in table.stdout and "…" not in table.stdout
    following_table = _run(tmp_path, env, "tail", trades_topic, "--format", "table")
    assert following_table.exit_code == 2 and "-n/--count or -e" in following_table.output
    bad_offset = _run(tmp_path, env, "tail", trades_topic, "-o", "middle")
    assert bad_offset.exit_code == 2 and "beginning, end, N" in bad_offset.output
    bad_partition = _run(tmp_path, env, "tail", trades_topic, "-p", "7", "-e")
    assert bad_partition.exit_code == 2 and "not [7]" in bad_partition.output
    both = _run(tmp_path, env, "tail", trades_topic, "-o", "end", "--from-time", "2024-05-01")
    assert both.exit_code == 2
