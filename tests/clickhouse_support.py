"""Records straight into migrated ClickHouse tables (chDB) through the sink's own decode and
insert path, for tests of tables and views."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.client import Client

from marketpipe.codec import AvroCodec
from marketpipe.records import Record
from sinks.clickhouse import connect
from sinks.migrate import migrate
from sinks.tables import BatchDecoder, sink_tables
from sinks.worker import ClickHouseLink


def migrated_link(dsn: str) -> ClickHouseLink:
    """A sink link to a freshly migrated database (close its ``client`` when done)."""
    client = connect(dsn)
    migrate(client)
    link = ClickHouseLink("unused")
    link.client = client
    return link


def insert(link: ClickHouseLink, table_name: str, records: list[Record], token: str) -> None:
    """Insert as the sink does: Avro-encoded, batch-decoded, one insert under ``token``."""
    codec = AvroCodec()
    table = sink_tables(codec)[table_name]
    decoded = BatchDecoder(codec, table.record_type).decode([codec.encode(r) for r in records])
    assert not decoded.failures
    link.insert(table, table.to_columns(decoded.rows), token)


def rows(client: Client, sql: str) -> list[tuple[object, ...]]:
    return [tuple(row) for row in client.query(sql).result_rows]


@pytest.fixture
def link(chdb_dsn: str) -> Iterator[ClickHouseLink]:
    """A migrated embedded database behind the sink's link (a plugin of tests/conftest.py)."""
    link = migrated_link(chdb_dsn)
    yield link
    assert link.client is not None
    link.client.close()
