"""Shared connector machinery: connections, shards, heartbeats, reconnects, REST, resync.

An exchange module subclasses :class:`Connector` and declares only what differs
(URLs and paths, subscribe messages, limits, heartbeat policy, resync action and
planned-reconnect signals). Everything else lives here, once:

* a :class:`Connection` is one websocket: it publishes ``open``, the instrument
  metadata as ``rest``, its ``sent`` subscribe frames, every ``recv`` frame and a
  final ``close``, numbered per connection from 0 (see marketpipe/raw.py);
* a :class:`Shard` keeps one group of symbols connected forever: capped exponential
  backoff with jitter, a per-exchange circuit breaker and connect-rate gate, and
  planned reconnects that open the successor before closing the old connection; its
  stable key (``shard_key``) is the Kafka key of all its connections' records;
* a :class:`RestClient` spaces requests and honours 429/418 ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

import aiohttp
import orjson
import yarl
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from marketpipe.config import ConnectorSettings, ProducerSettings
from marketpipe.raw import Kind, RawRecord
from producers.logs import log_event
from producers.publisher import RawPublisher

if TYPE_CHECKING:
    from streams.instruments import Instruments

log = logging.getLogger("producers")

MAX_FRAME_BYTES = 64 * 1024 * 1024  # Coinbase level2 snapshots reach ~5 MB; leave ample room
OPEN_TIMEOUT_S = 30.0
HANDOVER_TIMEOUT_S = 10.0
STABLE_CONNECTION_S = 30.0

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(number: int) -> str:
    digits = []
    while True:
        number, digit = divmod(number, 36)
        digits.append(_BASE36[digit])
        if not number:
            return "".join(reversed(digits))


RUN_ID = base36(time.time_ns() // 1_000_000)
_connection_numbers = itertools.count()


def next_conn_id(exchange: str, run_id: str = RUN_ID) -> str:
    return f"{exchange}.{run_id}.{next(_connection_numbers)}"


def shard_key(exchange: str, symbols: Sequence[str]) -> str:
    """``<exchange>:<hash of the sorted symbols>``: the same for every connection of one symbol
    set, in this process and the next, so they all share one raw partition (marketpipe/raw.py)."""
    digest = hashlib.blake2b(",".join(sorted(symbols)).encode(), digest_size=6).hexdigest()
    return f"{exchange}:{digest}"


class SymbolError(ValueError):
    """A requested symbol is not listed by the exchange."""


class RestError(RuntimeError):
    """A REST request failed for good (after retries)."""


# -- pacing ---------------------------------------------------------------------------


class Gate:
    """Spaces callers at least ``interval_s`` apart; ``pause`` holds everyone (Retry-After)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            delay = self._next - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next = time.monotonic() + self.interval_s

    def pause(self, seconds: float) -> None:
        self._next = max(self._next, time.monotonic() + seconds)


class Backoff:
    """Capped exponential backoff with jitter (each delay is 50-100% of the nominal one)."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0

    def next_delay(self) -> float:
        nominal = min(self.max_s, self.initial_s * 2**self.attempt)
        self.attempt += 1
        return nominal * random.uniform(0.5, 1.0)

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self.attempt = 0


class CircuitBreaker:
    """Per exchange: after N consecutive failed connects, hold all its shards for a cool-down."""

    def __init__(
        self, exchange: str, failures: int, cooldown_s: float, max_cooldown_s: float = 600.0
    ) -> None:
        self.exchange = exchange
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._consecutive = 0
        self._trips = 0
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        return time.monotonic() < self._open_until

    async def allow(self) -> None:
        delay = self._open_until - time.monotonic()
        if delay > 0:  # re-opened meanwhile? the next failure will tell
            await asyncio.sleep(delay)

    def success(self) -> None:
        self._consecutive = 0
        self._trips = 0

    def failure(self) -> None:
        self._consecutive += 1
        if self._consecutive < self.failures:
            return
        cooldown = min(self.max_cooldown_s, self.cooldown_s * 2**self._trips)
        self._open_until = time.monotonic() + cooldown
        self._trips += 1
        self._consecutive = 0
        log_event(log, logging.ERROR, "circuit breaker open", exchange=self.exchange, cooldown_s=cooldown)


# -- REST -----------------------------------------------------------------------------


def retry_after_s(headers: Mapping[str, str], default: float) -> float:
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


class RestClient:
    """GETs with spacing, 429/418 Retry-After (pausing the whole exchange) and retries."""

    def __init__(self, exchange: str, gate: Gate, attempts: int = 5, timeout_s: float = 30.0) -> None:
        self.exchange = exchange
        self.gate = gate
        self.attempts = attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0
        self.failures = 0  # consecutive failed attempts (the view shows them as `failing`)
        self.last_problem = ""

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        return self._session

    async def get(self, url: str) -> bytes:
        return await self.request("GET", url)

    async def post(self, url: str) -> bytes:
        """A POST without a body (KuCoin's websocket token handshake)."""
        return await self.request("POST", url)

    async def request(self, method: str, url: str) -> bytes:
        backoff = Backoff(0.5, 10.0)
        problem = "no attempt made"
        for _ in range(self.attempts):
            await self.gate.wait()
            self.calls += 1
            try:
                async with self._client().request(method, yarl.URL(url, encoded=True)) as response:
                    body = await response.read()
                    status = response.status
                    if status in (418, 429):
                        delay = min(retry_after_s(response.headers, 60.0), 3600.0)
                        self.gate.pause(delay)
                        log_event(
                            log,
                            logging.WARNING,
                            "rest rate limited",
                            exchange=self.exchange,
                            status=status,
                            retry_after_s=delay,
                            url=url,
                        )
                        problem = f"HTTP {status}"
                        continue
                    if status < 400:
                        self.failures = 0
                        return body
                    problem = f"HTTP {status}: {body[:200]!r}"
                    if status < 500:
                        raise RestError(f"{method} {url} failed: {problem}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self.failures += 1
            self.last_problem = f"{method} {url}: {problem}"
            log_event(log, logging.WARNING, "rest retry", exchange=self.exchange, url=url, problem=problem)
            await backoff.sleep()
        raise RestError(f"{method} {url} failed after {self.attempts} attempts: {problem}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


# -- one websocket ----------------------------------------------------------------------


@dataclass
class ShardStats:
    """Counters of one shard (the stable slot a connection lives in), read by metrics."""

    exchange: str
    shard: int
    frames: int = 0
    bytes: int = 0
    sent: int = 0
    rest: int = 0
    connections: int = 0
    reconnects: int = 0
    last_frame_ns: int = 0
    conn: str = ""
    failures: int = 0  # consecutive failed connects (reset by the next one that opens)
    last_error: str = ""


Outcome = Literal["planned", "ended"]


class Connection:
    """One websocket connection and its raw records."""

    def __init__(self, connector: Connector, shard: Shard) -> None:
        self.connector = connector
        self.shard = shard
        self.exchange = connector.exchange
        self.symbols = shard.symbols
        self.id = next_conn_id(connector.exchange, connector.run_id)
        self.shard_key = shard.key
        self.url = connector.ws_url()  # open() sets what the open record shows (after any handshake)
        self.ping_s = connector.ping_s  # a handshake may set it (KuCoin's pingInterval)
        self._publisher = connector.publisher
        self._stats = shard.stats
        self._seq = 0
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._send_gate = (
            connector.send_gate if connector.send_gate_shared else Gate(connector.send_interval_s)
        )
        self._opened_at = 0.0
        self._last_recv = 0.0
        self._last_ping = 0.0
        self.first_frame = asyncio.Event()
        self.planned = asyncio.Event()
        self.planned_reason = ""
        self.ended = asyncio.Event()
        self.end_reason = ""
        self._closed_recorded = False
        self._open_recorded = False

    # -- records --------------------------------------------------------------------

    def record(self, kind: Kind, data: bytes, url: str | None = None) -> bool:
        if self._closed_recorded:
            return False
        seq = self._seq
        self._seq = seq + 1
        record = RawRecord(self.exchange, self.id, seq, kind, time.time_ns(), data, url, self.shard_key)
        ok = self._publisher.publish(record)
        if not ok:
            self._end(4900, "records dropped by the publisher")
        return ok

    def _record_close(self, code: int, reason: str) -> None:
        if self._open_recorded and not self._closed_recorded:
            self.record("close", orjson.dumps({"code": code, "reason": reason}))
            self._closed_recorded = True
            self._publisher.forget(self.id)

    # -- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, publish open + metadata, subscribe, start reading. Raises on failure."""
        url = await self.connector.connect_url(self)
        self.url = self.connector.recorded_url(url)
        ws = await connect(
            url,
            max_size=MAX_FRAME_BYTES,
            max_queue=1024,
            open_timeout=OPEN_TIMEOUT_S,
            close_timeout=5,
            ping_interval=self.connector.protocol_ping_interval_s,
            ping_timeout=self.connector.protocol_ping_interval_s,
            proxy=None,
        )
        self._ws = ws
        self._opened_at = self._last_recv = time.monotonic()
        self.record("open", orjson.dumps({"symbols": list(self.symbols)}), self.url)
        self._open_recorded = True
        self._stats.conn = self.id
        self._stats.connections += 1
        log_event(
            log,
            logging.INFO,
            "connected",
            exchange=self.exchange,
            conn=self.id,
            url=self.url,
            symbols=len(self.symbols),
        )
        await asyncio.wait_for(self._prepare(), OPEN_TIMEOUT_S)
        self._spawn(self._read(), "read")
        self._spawn(self._keepalive(), "keepalive")
        self._spawn(self.connector.on_subscribed(self), "subscribed")

    async def _prepare(self) -> None:
        for url in self.connector.instrument_urls(self.symbols):
            await self.fetch_rest(url)
        for message in self.connector.connection_subscribe_messages(self):
            await self.send(message)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"{self.id}:{name}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._end(4001, f"{task.get_name()} failed: {type(exc).__name__}: {exc}")

    async def send(self, message: str) -> None:
        ws = self._ws
        if ws is None or self.ended.is_set():
            return
        await self._send_gate.wait()
        data = message.encode()
        self.record("sent", data)
        self._stats.sent += 1
        await ws.send(message)

    async def fetch_rest(self, url: str) -> bool:
        """GET a REST resource and publish it as a ``rest`` record on this connection."""
        body = await self.connector.rest.get(url)
        if self.ended.is_set():
            return False
        self._stats.rest += 1
        return self.record("rest", body, url)

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        publish = self._publisher.publish
        exchange, conn, stats, key = self.exchange, self.id, self._stats, self.shard_key
        inspect = self.connector.planned_reconnect_reason
        watch = self.connector.on_frame
        first_frame = self.first_frame
        try:
            while True:
                data = await ws.recv(decode=False)
                now = time.time_ns()
                seq = self._seq
                self._seq = seq + 1
                if not publish(RawRecord(exchange, conn, seq, "recv", now, data, None, key)):
                    self._end(4900, "records dropped by the publisher")
                    return
                stats.frames += 1
                stats.bytes += len(data)
                stats.last_frame_ns = now
                self._last_recv = time.monotonic()
                if not first_frame.is_set():
                    first_frame.set()
                reason = inspect(data)
                if reason is not None:
                    self._plan(reason)
                reply = watch(data)
                if reply is not None:
                    await self.send(reply)
        except ConnectionClosed as exc:
            close = exc.rcvd
            self._end(close.code if close else 1006, close.reason if close else "connection lost")

    async def _keepalive(self) -> None:
        connector = self.connector
        silence, ping_every, max_age = connector.silence_s, self.ping_s, connector.max_age_s
        tick = min(1.0, *(value / 4 for value in (silence, ping_every) if value))
        while not self.ended.is_set():
            await asyncio.sleep(tick)
            now = time.monotonic()
            idle = now - self._last_recv
            if silence and idle > silence:
                self._end(4000, f"silent for {idle:.1f}s (limit {silence}s)")
                return
            if self._ping_due(now, idle):
                message = connector.ping_message()
                if message is not None:
                    self._last_ping = now
                    await self.send(message)
            if max_age and now - self._opened_at > max_age and not self.planned.is_set():
                self._plan(f"connection age limit {max_age:.0f}s")

    def _ping_due(self, now: float, idle: float) -> bool:
        every = self.ping_s
        if not every or now - self._last_ping < every:
            return False
        return not self.connector.ping_only_when_idle or idle >= every

    def _plan(self, reason: str) -> None:
        if not self.planned.is_set():
            self.planned_reason = reason
            self.planned.set()
            log_event(
                log, logging.INFO, "planned reconnect", exchange=self.exchange, conn=self.id, reason=reason
            )

    def _end(self, code: int, reason: str) -> None:
        """Mark the connection over (idempotent); ``close`` finishes the job."""
        if self.ended.is_set():
            return
        self.end_reason = reason
        self.ended.set()
        self._record_close(code, reason)
        log_event(
            log,
            logging.WARNING if code not in (1000, 1001) else logging.INFO,
            "connection ended",
            exchange=self.exchange,
            conn=self.id,
            code=code,
            reason=reason,
        )

    async def wait_outcome(self) -> Outcome:
        waits = [asyncio.ensure_future(self.ended.wait()), asyncio.ensure_future(self.planned.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        return "ended" if self.ended.is_set() else "planned"

    async def close(self, code: int = 1000, reason: str = "closed by producer") -> None:
        self._end(code, reason)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close(code=code if 1000 <= code < 5000 else 1000, reason=reason[:120])
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(BaseException):
                    await task

    @property
    def age_s(self) -> float:
        return time.monotonic() - self._opened_at if self._opened_at else 0.0


# -- a group of symbols kept connected ----------------------------------------------------


class Shard:
    """Keeps one group of symbols connected forever."""

    def __init__(self, connector: Connector, index: int, symbols: Sequence[str]) -> None:
        self.connector = connector
        self.index = index
        self.symbols = tuple(symbols)
        self.key = shard_key(connector.exchange, self.symbols)
        self.stats = ShardStats(connector.exchange, index)
        self.current: Connection | None = None
        self._backoff = Backoff(connector.producer.backoff_initial_s, connector.producer.backoff_max_s)

    async def run(self) -> None:
        conn = await self._connect()
        while True:
            outcome = await conn.wait_outcome()
            if outcome == "planned":
                conn = await self._hand_over(conn)
                continue
            await conn.close(1000, conn.end_reason)
            if conn.age_s >= STABLE_CONNECTION_S:
                self._backoff.reset()
            self.current = None
            self.stats.reconnects += 1
            await self._backoff.sleep()
            conn = await self._connect()

    async def _hand_over(self, old: Connection) -> Connection:
        """Planned reconnect: the successor is up and streaming before the old one closes."""
        successor = await self._connect()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(successor.first_frame.wait(), HANDOVER_TIMEOUT_S)
        await old.close(1000, f"planned reconnect: {old.planned_reason}")
        self.stats.reconnects += 1
        return successor

    async def _connect(self) -> Connection:
        connector = self.connector
        while True:
            await connector.breaker.allow()
            await connector.wait_publisher_writable()
            await connector.connect_gate.wait()
            conn = Connection(connector, self)
            try:
                await conn.open()
            except asyncio.CancelledError:
                await conn.close(1001, "producer stopping")
                raise
            except Exception as exc:
                connector.breaker.failure()
                self.stats.failures += 1
                self.stats.last_error = f"{conn.url}: {type(exc).__name__}: {exc}"
                log_event(
                    log,
                    logging.WARNING,
                    "connect failed",
                    exchange=connector.exchange,
                    conn=conn.id,
                    url=conn.url,
                    error=f"{type(exc).__name__}: {exc}",
                )
                await conn.close(4002, f"open failed: {type(exc).__name__}: {exc}")
                await self._backoff.sleep()
                continue
            connector.breaker.success()
            self.stats.failures = 0
            self.current = conn
            return conn

    async def resync(self, symbol: str, conn_id: str | None) -> bool:
        conn = self.current
        if conn is None or conn.ended.is_set():
            log_event(
                log,
                logging.INFO,
                "resync skipped: reconnecting (fresh snapshot follows)",
                exchange=self.connector.exchange,
                symbol=symbol,
            )
            return False
        if conn_id and conn_id != conn.id:
            log_event(
                log,
                logging.INFO,
                "resync skipped: request for an older connection",
                exchange=self.connector.exchange,
                symbol=symbol,
                requested=conn_id,
                current=conn.id,
            )
            return False
        await self.connector.resync(conn, symbol)
        return True


# -- the exchange connector ---------------------------------------------------------------


class Connector:
    """Base of every exchange connector. Subclasses declare the class attributes and hooks."""

    exchange: ClassVar[str]
    default_ws_base: ClassVar[str]
    default_rest_base: ClassVar[str]
    # Per-connection limits: symbols per connection, spacing of client messages.
    max_symbols_per_connection: ClassVar[int]
    send_interval_s: ClassVar[float]
    send_gate_shared: ClassVar[bool] = False  # True when the message limit is per IP, not per connection
    # Per-exchange pacing (per IP) of connection attempts and REST requests.
    connect_interval_s: ClassVar[float] = 1.0
    rest_min_interval_s: ClassVar[float] = 0.2
    # Heartbeats: reconnect after this long without any frame; send ping_message()
    # every ping_interval_s (or only after that much silence); protocol-level pings.
    silence_timeout_s: ClassVar[float] = 30.0
    ping_interval_s: ClassVar[float | None] = None
    ping_only_when_idle: ClassVar[bool] = False
    protocol_ping_interval_s: ClassVar[float | None] = None
    max_connection_age_s: ClassVar[float | None] = None

    def __init__(
        self,
        symbols: Sequence[str],
        publisher: RawPublisher,
        settings: ConnectorSettings | None = None,
        producer: ProducerSettings | None = None,
        *,
        strict_symbols: bool = True,
        run_id: str = RUN_ID,
    ) -> None:
        self.settings = settings or ConnectorSettings()
        self.producer = producer or ProducerSettings()
        self.publisher = publisher
        self.requested = list(dict.fromkeys(symbols))
        self.strict_symbols = strict_symbols
        self.run_id = run_id
        self.ws_base = (self.settings.ws_url or self.default_ws_base).rstrip("/")
        self.rest_base = (self.settings.rest_url or self.default_rest_base).rstrip("/")
        self.symbols_per_connection = (
            self.settings.max_symbols_per_connection or self.max_symbols_per_connection
        )
        self.silence_s = self.settings.silence_timeout_s or self.silence_timeout_s
        self.ping_s = self.settings.ping_interval_s or self.ping_interval_s
        self.max_age_s = self.settings.max_connection_age_s or self.max_connection_age_s
        connect_s = self.settings.connect_interval_s
        rest_s = self.settings.rest_min_interval_s
        self.send_gate = Gate(self.send_interval_s)
        self.connect_gate = Gate(self.connect_interval_s if connect_s is None else connect_s)
        self.rest = RestClient(self.exchange, Gate(self.rest_min_interval_s if rest_s is None else rest_s))
        self.breaker = CircuitBreaker(
            self.exchange, self.producer.breaker_failures, self.producer.breaker_cooldown_s
        )
        self.symbol_map: dict[str, str] = {}  # exchange symbol -> normalised
        self.exchange_symbols: dict[str, str] = {}  # normalised -> exchange symbol
        self.shards: list[Shard] = []

    # -- declarations every exchange provides ---------------------------------------------

    def ws_url(self) -> str:
        raise NotImplementedError

    async def connect_url(self, conn: Connection) -> str:
        """The URL to connect to; a handshake (KuCoin's token request) may build it per connection."""
        return self.ws_url()

    def recorded_url(self, url: str) -> str:
        """The connect URL as the ``open`` record shows it (credentials redacted)."""
        return url

    def all_instruments_url(self) -> str:
        """Instrument metadata of every instrument (resolves the requested symbols at start)."""
        raise NotImplementedError

    def instrument_urls(self, exchange_symbols: Sequence[str]) -> list[str]:
        """Instrument metadata of one connection's symbols (one request when the API allows)."""
        raise NotImplementedError

    def choose_exchange_symbol(self, symbol: str, candidates: list[str]) -> str:
        """The exchange name to use when several listed names map to one symbol."""
        return candidates[0]

    def subscribe_messages(self, symbols: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def connection_subscribe_messages(self, conn: Connection) -> list[str]:
        """The subscribe frames of one connection: its symbols' (a connector with a second kind
        of connection, OKX's candles on /business, tells them apart by ``conn.shard``)."""
        return self.subscribe_messages(conn.symbols)

    def resubscribe_book_messages(self, symbol: str) -> list[str]:
        """Unsubscribe + subscribe the book channel of one symbol (forces a fresh snapshot)."""
        raise NotImplementedError

    def ping_message(self) -> str | None:
        return None

    def planned_reconnect_reason(self, data: bytes) -> str | None:
        """Cheap per-frame check for a server notice that asks us to reconnect."""
        return None

    def on_frame(self, data: bytes) -> str | None:
        """A cheap look at every received frame: returns a frame to send in answer (HTX's
        ``{"ping":n}``), else None. Connectors may also note what they need from it (KuCoin's
        subscribe acks, Bitfinex's book chanIds); it must never block or raise."""
        return None

    async def on_subscribed(self, conn: Connection) -> None:
        """Runs once the subscribe frames are sent, concurrently with reading."""

    async def resync(self, conn: Connection, symbol: str) -> None:
        for message in self.resubscribe_book_messages(symbol):
            await conn.send(message)

    def parse_instruments(self, body: bytes, url: str | None = None) -> Instruments:
        """The exchange parser's own reading of an instrument list (entries it cannot read are
        skipped and listed in ``skipped``, never fatal for the rest)."""
        module = importlib.import_module(f"streams.parsers.{self.exchange}")
        parse: Callable[..., Instruments] | None = getattr(module, "parse_instruments", None)
        if parse is None:
            raise RuntimeError(f"streams.parsers.{self.exchange} has no parse_instruments(body)")
        return parse(body) if url is None else parse(body, unquote(urlsplit(url).path))

    # -- symbols and shards --------------------------------------------------------------

    async def resolve_symbols(self) -> list[str]:
        """Map the requested BASE-QUOTE symbols to exchange symbols via instrument metadata."""
        url = self.all_instruments_url()
        listed = await self.list_instruments()
        if listed.skipped:
            log_event(
                log,
                logging.WARNING,
                "instrument entries skipped",
                exchange=self.exchange,
                skipped=len(listed.skipped),
                examples="; ".join(list(listed.skipped.values())[:3]),
            )
        candidates: dict[str, list[str]] = {}
        for exchange_symbol, symbol in listed.items():
            candidates.setdefault(symbol, []).append(exchange_symbol)
        by_symbol = {
            symbol: self.choose_exchange_symbol(symbol, names) for symbol, names in candidates.items()
        }
        missing = [symbol for symbol in self.requested if symbol not in by_symbol]
        if missing and (self.strict_symbols or len(missing) == len(self.requested)):
            raise SymbolError(
                f"{self.exchange} does not list {', '.join(missing)} ({len(listed)} instruments at {url})"
            )
        if missing:
            log_event(
                log,
                logging.WARNING,
                "symbols not listed, skipped",
                exchange=self.exchange,
                symbols=",".join(missing),
            )
        self.exchange_symbols = {s: by_symbol[s] for s in self.requested if s in by_symbol}
        self.symbol_map = {v: k for k, v in self.exchange_symbols.items()}
        return list(self.exchange_symbols.values())

    async def list_instruments(self) -> Instruments:
        """Every listed instrument (OKX asks once per instrument type)."""
        url = self.all_instruments_url()
        return self.parse_instruments(await self.rest.get(url), url)

    def build_shards(self, exchange_symbols: Sequence[str]) -> list[Shard]:
        size = self.symbols_per_connection
        self.shards = [
            Shard(self, index, exchange_symbols[start : start + size])
            for index, start in enumerate(range(0, len(exchange_symbols), size))
        ]
        return self.shards

    # -- running -------------------------------------------------------------------------

    async def start(self) -> list[Shard]:
        """Resolve symbols and build shards (raises SymbolError / RestError)."""
        return self.build_shards(await self.resolve_symbols())

    async def run(self) -> None:
        if not self.shards:
            await self.start()
        try:
            async with asyncio.TaskGroup() as group:
                for shard in self.shards:
                    group.create_task(shard.run(), name=f"{self.exchange}.shard{shard.index}")
        finally:
            await self.stop()

    async def stop(self) -> None:
        for shard in self.shards:
            if shard.current is not None:
                await shard.current.close(1000, "producer stopping")
        await self.rest.close()

    async def wait_publisher_writable(self) -> None:
        logged = False
        while not self.publisher.writable():
            if not logged:
                log_event(
                    log,
                    logging.WARNING,
                    "waiting for the publisher to drain",
                    exchange=self.exchange,
                    queue_depth=self.publisher.queue_depth(),
                )
                logged = True
            await asyncio.sleep(0.2)

    def shard_of(self, symbol: str) -> tuple[Shard, str] | None:
        """The shard carrying a symbol given in either form, and its exchange name."""
        exchange_symbol = self.exchange_symbols.get(symbol, symbol)
        for shard in self.shards:
            if exchange_symbol in shard.symbols:
                return shard, exchange_symbol
        return None

    async def request_resync(self, symbol: str, conn_id: str | None = None) -> bool:
        found = self.shard_of(symbol)
        if found is None:
            log_event(
                log,
                logging.WARNING,
                "resync for a symbol this producer does not carry",
                exchange=self.exchange,
                symbol=symbol,
            )
            return False
        shard, exchange_symbol = found
        log_event(log, logging.INFO, "resync", exchange=self.exchange, symbol=exchange_symbol, conn=conn_id)
        return await shard.resync(exchange_symbol, conn_id)


class RestSnapshotConnector(Connector):
    """A connector whose books sync from REST depth snapshots (the parser bridges the buffered
    updates to them, streams/bridge.py): one per symbol once the subscribed updates flow, and a
    fresh one on each resync."""

    snapshot_wait_s: ClassVar[float] = 5.0

    def depth_url(self, exchange_symbol: str) -> str:
        raise NotImplementedError

    async def updates_flowing(self, conn: Connection) -> None:
        """Wait until the book updates flow, so a snapshot taken now is bridged by a buffered one."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.first_frame.wait(), self.snapshot_wait_s)

    async def on_subscribed(self, conn: Connection) -> None:
        await self.updates_flowing(conn)
        for symbol in conn.symbols:
            if not await conn.fetch_rest(self.depth_url(symbol)):
                return

    async def resync(self, conn: Connection, symbol: str) -> None:
        await conn.fetch_rest(self.depth_url(symbol))
