"""ClickHouse client factory: one DSN for the embedded engine (chDB) or a server.

* ``chdb:///abs/path``: ClickHouse embedded in this process (clickhouse-connect's chDB
  backend). Only one process may open a database directory; when another marketpipe
  process owns it, that process serves it on loopback (see ``sinks.server``) and this
  factory returns an HTTP client to it instead of failing on the lock.
* ``http(s)://user:pass@host:8123/db``: a ClickHouse server over HTTP.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError, ProgrammingError

from marketpipe.logs import log_event
from sinks.server import Endpoint, read_endpoint

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "default"


class DsnError(ValueError):
    """The ClickHouse DSN cannot be used; the message says what is wrong and what is expected."""


class ClickHouseUnavailable(RuntimeError):
    """ClickHouse cannot be reached right now (server down, engine directory busy)."""


@dataclass(frozen=True)
class Target:
    """A parsed DSN: an embedded database directory or an HTTP server."""

    kind: Literal["chdb", "http"]
    dsn: str
    path: Path | None = None
    database: str | None = None

    @property
    def display(self) -> str:
        """The DSN without its password, for messages and logs."""
        if self.kind == "chdb":
            return f"chdb://{self.path}"
        parts = urlsplit(self.dsn)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        return f"{parts.scheme}://{netloc}{parts.path}"


_EXPECTED = "expected chdb:///absolute/path or http(s)://user:password@host:8123/database"


def parse_dsn(dsn: str) -> Target:
    if not dsn or not isinstance(dsn, str):
        raise DsnError(f"empty ClickHouse DSN; {_EXPECTED}")
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        raise DsnError(f"malformed ClickHouse DSN {dsn!r}: {exc}; {_EXPECTED}") from None
    if parts.scheme == "chdb":
        return _parse_chdb(dsn, parts.netloc, parts.path)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise DsnError(f"ClickHouse DSN {dsn!r} has no host; {_EXPECTED}")
        if port is not None and not 0 < port < 65536:
            raise DsnError(f"ClickHouse DSN {dsn!r} has an invalid port; {_EXPECTED}")
        database = unquote(parts.path.strip("/")) or None
        if database and "/" in database:
            raise DsnError(f"ClickHouse DSN {dsn!r}: the path must be a single database name; {_EXPECTED}")
        return Target("http", dsn, database=database)
    raise DsnError(f"unsupported ClickHouse DSN scheme {parts.scheme or '(none)'!r} in {dsn!r}; {_EXPECTED}")


def _parse_chdb(dsn: str, netloc: str, path: str) -> Target:
    if netloc:
        raise DsnError(
            f"ClickHouse DSN {dsn!r} names a host or 'memory'; marketpipe needs a database "
            f"directory: chdb:///absolute/path"
        )
    if not path.strip("/"):
        raise DsnError(f"ClickHouse DSN {dsn!r} has no directory; {_EXPECTED}")
    # chdb:///abs and chdb:////abs both mean /abs; chDB compares paths literally.
    return Target("chdb", dsn, path=Path(os.path.realpath("/" + unquote(path).lstrip("/"))))


def connect(dsn: str, *, wait_s: float = 10.0, create_database: bool = False, **kwargs: Any) -> Client:
    """A clickhouse-connect client for ``dsn``.

    Raises DsnError for a bad DSN and ClickHouseUnavailable when the server cannot be
    reached or the embedded directory stays busy for ``wait_s`` seconds.
    """
    target = parse_dsn(dsn)
    if target.kind == "http":
        return _http_client(target, create_database, **kwargs)
    return _embedded_client(target, wait_s)


def _http_client(target: Target, create_database: bool, **kwargs: Any) -> Client:
    options: dict[str, Any] = {"connect_timeout": 5, "send_receive_timeout": 120, **kwargs}
    try:
        if create_database and target.database:
            client = clickhouse_connect.get_client(dsn=target.dsn, database=DEFAULT_DATABASE, **options)
            client.command(f"CREATE DATABASE IF NOT EXISTS `{target.database}`")
            client.database = target.database
            return client
        return clickhouse_connect.get_client(dsn=target.dsn, **options)
    except OperationalError as exc:
        raise ClickHouseUnavailable(f"ClickHouse at {target.display} is unreachable: {exc}") from exc


def endpoint_client(endpoint: Endpoint) -> Client:
    """HTTP client to the loopback endpoint of the process that owns an embedded database."""
    try:
        return clickhouse_connect.get_client(
            host=endpoint.host,
            port=endpoint.port,
            username=endpoint.user,
            password=endpoint.password,
            compress=False,
            connect_timeout=5,
            send_receive_timeout=300,
        )
    except OperationalError as exc:
        raise ClickHouseUnavailable(f"the owner (pid {endpoint.pid}) of the database stopped: {exc}") from exc


def _embedded_client(target: Target, wait_s: float) -> Client:
    assert target.path is not None
    target.path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        endpoint = read_endpoint(target.path)
        if endpoint is not None:
            log_event(
                log,
                logging.INFO,
                "embedded ClickHouse owned by another process, using its endpoint",
                path=target.path,
                pid=endpoint.pid,
            )
            return endpoint_client(endpoint)
        try:
            return clickhouse_connect.get_client(dsn=f"chdb://{target.path}")
        except (ProgrammingError, ClickHouseError) as exc:
            # Another process holds the directory (it may be about to publish its endpoint).
            if time.monotonic() >= deadline:
                raise ClickHouseUnavailable(
                    f"embedded ClickHouse at {target.path} is in use by another process that does not "
                    f"serve queries (stop it, or run `marketpipe sink`, which serves the database): {exc}"
                ) from exc
            time.sleep(0.25)


def is_embedded(client: Client) -> bool:
    """True when the client runs the engine in this process (not over HTTP)."""
    return type(client).__name__ == "ChdbClient"
