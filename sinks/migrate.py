"""Versioned, idempotent DDL migrations (``sinks/migrations/NNNN_name.sql``).

``schema_migrations`` records each applied file with its checksum; applying twice is a
no-op, and a file edited after it was applied is refused (add a new migration instead).
Every statement is written to be re-runnable (IF NOT EXISTS), so a run interrupted
half-way completes cleanly the next time.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from marketpipe.logs import log_event

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|\Z)")

_LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
"""


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        without_comments = "\n".join(
            line for line in self.sql.splitlines() if not line.lstrip().startswith("--")
        )
        return [part.strip() for part in _STATEMENT_END.split(without_comments) if part.strip()]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} must be named NNNN_lowercase_name.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}: {versions}")
    return migrations


def applied_migrations(client: Client) -> dict[int, str]:
    """version -> checksum of every migration already applied."""
    client.command(_LEDGER_DDL)
    rows = client.query("SELECT version, checksum FROM schema_migrations FINAL").result_rows
    return {int(version): str(checksum) for version, checksum in rows}


def migrate(client: Client, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration in order; return the names of those applied now."""
    done = applied_migrations(client)
    applied_now = []
    for migration in load_migrations(directory):
        previous = done.get(migration.version)
        if previous is not None:
            if previous != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} changed after it was applied; "
                    f"add a new migration instead of editing an applied one"
                )
            continue
        for statement in migration.statements():
            client.command(statement)
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied_now.append(f"{migration.version:04d}_{migration.name}")
        log_event(
            log, logging.INFO, "applied migration", migration=f"{migration.version:04d}_{migration.name}"
        )
    return applied_now
