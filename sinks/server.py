"""Loopback HTTP endpoint for an embedded (chDB) database owned by this process.

chDB lets one process open a database directory. The process that owns it (the sink)
serves it here so that ``marketpipe sql``, other sink processes and any ClickHouse
HTTP client can reach the data while the pipeline runs. The endpoint speaks the
subset of the ClickHouse HTTP interface that clickhouse-connect and curl use: the
query in the ``query`` parameter and/or the body, settings and ``param_*`` bind values
as URL parameters, INSERT data after ``FORMAT <fmt>``, compressed request bodies,
errors as HTTP 500 with ``X-ClickHouse-Exception-Code``, and ``GET /ping``.

Where it listens is recorded in ``<database dir>/marketpipe-endpoint.json`` (mode 0600,
with a random password for HTTP basic auth), removed again on shutdown.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import re
import secrets
import socket
import threading
import zlib
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb

from marketpipe.kafka_local import process_alive
from marketpipe.logs import log_event

log = logging.getLogger(__name__)

ENDPOINT_FILE = "marketpipe-endpoint.json"
ENDPOINT_USER = "marketpipe"

# URL parameters that steer the HTTP transport rather than the query.
_TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "enable_http_compression",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "user",
        "password",
        "quota_key",
        "role",
    }
)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INSERT_HEAD = re.compile(
    rb"\A\s*(INSERT\s+INTO\s+.*?)\s+FORMAT\s+([A-Za-z0-9_]+)[ \t]*(?:\r?\n|\Z)", re.IGNORECASE | re.DOTALL
)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*\Z", re.IGNORECASE)
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")


@dataclass(frozen=True)
class Endpoint:
    pid: int
    host: str
    port: int
    user: str
    password: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def answers(self, timeout: float = 2.0) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
                reply = b""
                while b"Ok." not in reply and len(reply) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
                return b"Ok." in reply
        except OSError:
            return False


def endpoint_path(db_path: Path) -> Path:
    return db_path / ENDPOINT_FILE


def read_endpoint(db_path: Path) -> Endpoint | None:
    """The live endpoint of the process that owns ``db_path``, or None (no owner or a stale file)."""
    path = endpoint_path(db_path)
    try:
        endpoint = Endpoint(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if endpoint.pid == os.getpid() or not process_alive(endpoint.pid) or not endpoint.answers():
        return None
    return endpoint


class QueryServer:
    """Serves the embedded database at ``db_path`` (opened in this process) on loopback."""

    def __init__(
        self, db_path: Path, host: str = "127.0.0.1", port: int = 0, password: str | None = None
    ) -> None:
        self.db_path = Path(os.path.realpath(db_path))
        self._engine = _Engine(str(self.db_path))
        self._password = password or secrets.token_urlsafe(18)
        self._httpd = _Server((host, port), _Handler)
        self._httpd.engine = self._engine
        self._httpd.auth = "Basic " + base64.b64encode(f"{ENDPOINT_USER}:{self._password}".encode()).decode()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="chdb-endpoint", daemon=True)
        self.endpoint = Endpoint(
            pid=os.getpid(),
            host=host,
            port=self._httpd.server_address[1],
            user=ENDPOINT_USER,
            password=self._password,
        )

    def start(self) -> Endpoint:
        self._thread.start()
        _write_private(endpoint_path(self.db_path), json.dumps(asdict(self.endpoint)))
        log_event(log, logging.INFO, "serving embedded ClickHouse", path=self.db_path, url=self.endpoint.url)
        return self.endpoint

    def stop(self) -> None:
        path = endpoint_path(self.db_path)
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.drop_connections()
        self._engine.close()

    def __enter__(self) -> QueryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


@dataclass
class Reply:
    body: bytes
    fmt: str | None = None
    summary: dict[str, str] | None = None


class QueryFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        match = _ERROR_CODE.search(message)
        self.code = match.group(1) if match else "1002"


class _Engine:
    """Runs one request on a fresh chDB session handle (settings and USE stay per request)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._connect_lock = threading.Lock()
        # Keeps the engine open for as long as we serve it, whoever else closes their clients.
        self._keeper = self._connect()

    def _connect(self) -> Any:
        with self._connect_lock:
            return chdb.connect(self._path)

    def close(self) -> None:
        self._keeper.close()

    def execute(self, params: dict[str, str], body: bytes) -> Reply:
        query = params.get("query", "").encode()
        text = query + b"\n" + body if query and body else query or body
        if not text.strip():
            raise QueryFailed("Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
        conn = self._connect()
        try:
            self._prepare(conn, params)
            insert = _INSERT_HEAD.match(text[:65536])
            if insert is not None and len(text) > insert.end():
                return self._insert(conn, insert, text[insert.end() :])
            return self._query(conn, text.decode(), params)
        except (RuntimeError, ValueError, chdb.ChdbError) as exc:
            raise QueryFailed(str(exc)) from exc
        finally:
            conn.close()

    @staticmethod
    def _prepare(conn: Any, params: dict[str, str]) -> None:
        database = params.get("database")
        if database:
            conn.query(f"USE `{database.replace('`', '``')}`")
        for name, value in params.items():
            if name in _TRANSPORT_PARAMS or name.startswith("param_"):
                continue
            if not _SETTING_NAME.match(name):
                raise QueryFailed(f"Code: 115. DB::Exception: Unknown setting {name!r}. (UNKNOWN_SETTING)")
            conn.query(f"SET {name} = {_quote(value)}")

    @staticmethod
    def _insert(conn: Any, head: re.Match[bytes], data: bytes) -> Reply:
        inserter = conn.send_insert(head.group(1).decode(), head.group(2).decode())
        inserter.append(data)
        result = inserter.finish()
        return Reply(b"", summary={"written_rows": str(result.rows_written)})

    @staticmethod
    def _query(conn: Any, sql: str, params: dict[str, str]) -> Reply:
        fmt_match = _TRAILING_FORMAT.search(sql)
        fmt = fmt_match.group(1) if fmt_match else params.get("default_format", "TabSeparated")
        binds = {name[6:]: value for name, value in params.items() if name.startswith("param_")}
        result = conn.query(sql, fmt, params=binds or None)
        data = result.bytes() if result is not None else b""
        return Reply(data or b"", fmt=fmt, summary={"read_rows": str(_safe(result, "rows_read"))})


def _safe(result: Any, attr: str) -> int:
    try:
        return int(getattr(result, attr)())
    except Exception:
        return 0


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    engine: _Engine
    auth: str

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Close kept-alive client connections too, so a stopped endpoint is really gone."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        if urlsplit(self.path).path in ("/ping", "/ping/"):
            self._send(200, b"Ok.\n", {})
        else:
            self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):  # the request line is formatted only when it is shown
            log_event(log, logging.DEBUG, "endpoint request", line=format % args)

    def _handle(self) -> None:
        try:
            body = _decompress(self._read_body(), self.headers.get("Content-Encoding", ""))
        except (OSError, ValueError) as exc:
            self._send(400, f"Code: 432. DB::Exception: cannot read the request body: {exc}\n".encode(), {})
            return
        params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        if not self._authorised(params):
            self._send(
                401,
                b"Code: 516. DB::Exception: marketpipe endpoint: wrong user or password\n",
                {"X-ClickHouse-Exception-Code": "516"},
            )
            return
        try:
            reply = self.server.engine.execute(params, body)
        except QueryFailed as exc:
            self._send(500, (str(exc).strip() + "\n").encode(), {"X-ClickHouse-Exception-Code": exc.code})
            return
        headers = {"X-ClickHouse-Summary": json.dumps(reply.summary or {})}
        if reply.fmt:
            headers["X-ClickHouse-Format"] = reply.fmt
        self._send(200, reply.body, headers)

    def _authorised(self, params: dict[str, str]) -> bool:
        if secrets.compare_digest(self.headers.get("Authorization", ""), self.server.auth):
            return True
        user = self.headers.get("X-ClickHouse-User") or params.get("user", "")
        key = self.headers.get("X-ClickHouse-Key") or params.get("password", "")
        given = "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()
        return secrets.compare_digest(given, self.server.auth)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity" or not body:
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(body))
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")
