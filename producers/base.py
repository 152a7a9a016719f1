"""The exchange connector base: symbol resolution, shards, heartbeats, reconnects, resync.

An exchange module subclasses :class:`Connector` and declares only what differs
(URLs and paths, subscribe messages, limits, heartbeat policy, resync action and
planned-reconnect signals). Everything else lives in this package, once:

* producers/connection.py: a :class:`Connection` is one websocket and its raw records;
* a :class:`Shard` (here) keeps one group of symbols connected forever: capped exponential
  backoff with jitter, a per-exchange circuit breaker and connect-rate gate, and
  planned reconnects that open the successor before closing the old connection; its
  stable key (``shard_key``) is the Kafka key of all its connections' records;
* producers/pacing.py: the gates, backoff and circuit breaker;
* producers/rest.py: a :class:`RestClient` spaces requests and honours 429/418 ``Retry-After``.

The names other modules import from here (``Connection``, ``RestClient``, ``RestError``,
``Gate``, ``RUN_ID``) are re-exported from their modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import unquote, urlsplit

from marketpipe.config import ConnectorSettings, ProducerSettings
from marketpipe.exchanges import exchange
from marketpipe.logs import log_event
from producers.connection import RUN_ID, Connection
from producers.pacing import Backoff, CircuitBreaker, Gate
from producers.publisher import RawPublisher
from producers.rest import RestClient, RestError

if TYPE_CHECKING:
    from marketpipe.instruments import Instruments

__all__ = [
    "RUN_ID",
    "Connection",
    "Connector",
    "Gate",
    "RestClient",
    "RestError",
    "RestSnapshotConnector",
    "Shard",
    "ShardStats",
    "SymbolError",
    "log",
    "shard_key",
]

log = logging.getLogger("producers")

HANDOVER_TIMEOUT_S = 10.0
STABLE_CONNECTION_S = 30.0


def shard_key(exchange: str, symbols: Sequence[str]) -> str:
    """``<exchange>:<hash of the sorted symbols>``: the same for every connection of one symbol
    set, in this process and the next, so they all share one raw partition (marketpipe/raw.py)."""
    digest = hashlib.blake2b(",".join(sorted(symbols)).encode(), digest_size=6).hexdigest()
    return f"{exchange}:{digest}"


class SymbolError(ValueError):
    """A requested symbol is not listed by the exchange."""


# -- a group of symbols kept connected ----------------------------------------------------


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
            async with asyncio.timeout(HANDOVER_TIMEOUT_S):
                await successor.first_frame.wait()
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

    def answer_frame(self, data: bytes) -> str | None:
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
        """The exchange wire module's reading of an instrument list, the one its parser uses too
        (entries it cannot read are skipped and listed in ``skipped``, never fatal for the rest)."""
        name = f"marketpipe.exchanges.{exchange(self.exchange).module}"
        module = importlib.import_module(name)
        parse: Callable[..., Instruments] | None = getattr(module, "parse_instruments", None)
        if parse is None:
            raise RuntimeError(f"{name} has no parse_instruments(body)")
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
            async with asyncio.timeout(self.snapshot_wait_s):
                await conn.first_frame.wait()

    async def on_subscribed(self, conn: Connection) -> None:
        await self.updates_flowing(conn)
        for symbol in conn.symbols:
            if not await conn.fetch_rest(self.depth_url(symbol)):
                return

    async def resync(self, conn: Connection, symbol: str) -> None:
        await conn.fetch_rest(self.depth_url(symbol))
