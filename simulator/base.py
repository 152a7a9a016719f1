"""Shared protocol machinery: configuration, feeds (market pacing), websocket sessions with bounded
send queues, subscriptions and fault injection. Exchange modules subclass :class:`Dialect` and
declare only what differs: paths, frame shapes, subscribe grammar, heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import orjson
from aiohttp import WSMsgType, web

from marketpipe.exchanges import EXCHANGES
from marketpipe.exchanges import exchange as registry_row
from marketpipe.logs import log_event
from simulator.klines import MarketStats
from simulator.market import MarketParams, Step, SymbolMarket, SymbolSpec

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = (
    *("BTC-USDT", "ETH-USDT", "BTC-USD", "ETH-USD"),
    *("BTC-USDT-PERP", "ETH-USDT-PERP", "BTC-USD-PERP-INV", "ETH-USD-PERP-INV"),
)
FAULTS = ("gap", "checksum", "disconnect", "silent", "malformed", "snapshot")
_FIAT_QUOTES = frozenset({"USD", "EUR", "GBP", "CAD", "JPY"})

RestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SubKey = tuple[str, str, int]  # (channel, symbol, depth or 0)


class FaultError(ValueError):
    """A fault request that cannot be applied (unknown exchange/fault, or not supported)."""


@dataclass(slots=True)
class SimConfig:
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    exchanges: tuple[str, ...] = EXCHANGES
    listings: dict[str, tuple[str, ...]] = field(default_factory=dict)  # explicit exchange -> symbols
    seed: int = 0
    book_rate: float = 10.0  # book steps per second per symbol
    trade_rate: float = 2.0  # trades per second per symbol
    levels: int = 500  # levels per book side
    queue_size: int = 10_000  # frames buffered per connection before it counts as slow
    heartbeat_interval_s: float = 1.0  # coinbase / kraken heartbeats
    binance_ping_interval_s: float = 20.0
    binance_pong_timeout_s: float = 60.0
    bybit_ping_timeout_s: float = 600.0
    okx_idle_timeout_s: float = 30.0  # closed when nothing is subscribed for this long
    okx_checksum: Literal["crc32", "zero"] = "crc32"  # "zero" = production since June 2026
    okx_keepalive_s: float = 10.0  # no-change books update after this long (0 = never)

    def market_params(self) -> MarketParams:
        return MarketParams(book_rate=self.book_rate, trade_rate=self.trade_rate, levels=self.levels)

    def listed(self, exchange: str) -> tuple[str, ...]:
        """The symbols an exchange lists, by its registry row: spot pairs with USD-style quotes
        where it quotes fiat, the other pairs elsewhere; derivative names where it lists
        derivatives (each dialect picks the contracts it simulates from them)."""
        if exchange in self.listings:
            return self.listings[exchange]
        row = registry_row(exchange)
        spot = tuple(
            s
            for s in self.symbols
            if s.count("-") == 1 and (s.split("-")[1] in _FIAT_QUOTES) == row.fiat_quotes
        )
        derivatives = tuple(s for s in self.symbols if s.count("-") > 1)
        if row.markets == "derivatives":
            return derivatives
        return spot + derivatives if row.markets == "spot+derivatives" else spot


# -- wire formatting helpers ---------------------------------------------------------


class Decimals(dict[int, str]):
    """Integer units (scaled by 10**scale) -> decimal text with ``places`` decimals, cached.

    ``trim`` drops trailing zeros and a bare point ("65140.50" -> "65140.5", "65140.0" -> "65140").
    Call it, or index it on hot paths: a dict lookup of a cached text runs no Python code.
    """

    __slots__ = ("_pad", "_pow", "places", "scale", "trim")

    def __init__(self, scale: int, places: int, trim: bool = False) -> None:
        super().__init__()
        if places < scale:
            raise ValueError(f"cannot show {scale} decimals with {places} places")
        self.scale, self.places, self.trim = scale, places, trim
        self._pow = 10**scale
        self._pad = "0" * (places - scale)

    def __missing__(self, units: int) -> str:
        if len(self) > 200_000:
            self.clear()
        text = self[units] = self._render(units)
        return text

    __call__ = dict.__getitem__

    def _render(self, units: int) -> str:
        whole, frac = divmod(units, self._pow)
        if self.scale:
            text = f"{whole}.{frac:0{self.scale}d}{self._pad}"
        else:
            text = f"{whole}.{self._pad}" if self.places else str(whole)
        if self.trim and "." in text:
            text = text.rstrip("0").rstrip(".")
        return text


def trimmed_texts(feed: Feed) -> tuple[dict[str, Decimals], dict[str, Decimals]]:
    """Price and size texts per market at its own precision, trailing zeros trimmed (the shape
    most exchanges send)."""
    price = {s: Decimals(m.spec.price_decimals, m.spec.price_decimals, True) for s, m in feed.markets.items()}
    size = {s: Decimals(m.spec.qty_decimals, m.spec.qty_decimals, True) for s, m in feed.markets.items()}
    return price, size


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def iso_us(ns: int) -> str:
    """2025-05-06T09:17:26.208075Z"""
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{ns // 1000 % 1_000_000:06d}Z"
    )


def iso_trimmed(ns: int, digits: int) -> str:
    """RFC 3339 with up to ``digits`` fractional digits, trailing zeros dropped (Go style)."""
    whole = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{ns % 1_000_000_000:09d}"[:digits].rstrip("0")
    return f"{whole}.{frac}Z" if frac else f"{whole}Z"


def crc32(text: str) -> int:
    return zlib.crc32(text.encode())


def interleaved_crc32(bids: list[tuple[str, str]], asks: list[tuple[str, str]], depth: int = 25) -> int:
    """``bid1px:bid1sz:ask1px:ask1sz:...`` over the top ``depth`` as a signed int32 CRC32 (the
    OKX and Bitfinex book checksums; each exchange formats its own level texts)."""
    bids, asks = bids[:depth], asks[:depth]
    parts: list[str] = []
    for i in range(max(len(bids), len(asks))):
        if i < len(bids):
            parts.extend(bids[i])
        if i < len(asks):
            parts.extend(asks[i])
    value = zlib.crc32(":".join(parts).encode())
    return value - (1 << 32) if value >= 1 << 31 else value


# -- frames and sessions ---------------------------------------------------------------


class Frame:
    """One outgoing websocket frame plus what fault injection needs to know about it.

    ``text`` is the frame as text, or bytes for a binary frame (MEXC protobuf). Text frames go
    through the dialect's ``encode`` on the way out (HTX gzips them). ``head`` marks a text frame
    numbered per connection (Coinbase ``sequence_num``, Bitfinex SEQ_ALL): the session renders
    ``head + str(its next number) + text``.
    """

    __slots__ = ("checksum_token", "gap_ok", "head", "kind", "symbol", "text")

    def __init__(
        self,
        text: str | bytes,
        kind: str = "control",
        symbol: str | None = None,
        head: str | None = None,
        checksum_token: str | None = None,
        gap_ok: bool = True,
    ) -> None:
        self.text = text
        self.kind = kind  # control | heartbeat | book | snapshot | trade
        self.symbol = symbol
        self.head = head
        self.checksum_token = checksum_token  # exact text of the checksum field, for corruption
        self.gap_ok = gap_ok  # False: dropping this update would not be detectable


def corrupt_token(token: str) -> str:
    """The same checksum field (``"checksum":123`` or ``"c":"123"``) with a wrong value."""
    prefix, value = token.rsplit(":", 1)
    bad = int(value.strip('"')) ^ 1
    return f'{prefix}:"{bad}"' if value.startswith('"') else f"{prefix}:{bad}"


_CLOSE = object()


class _Ping(bytes):
    """A websocket protocol ping payload in the send queue (plain bytes are binary frames)."""


_BACKGROUND: set[asyncio.Task[bool]] = set()  # strong references to fire-and-forget closes


class SocketCork:
    """``with cork(on):`` holds a TCP socket's partial segments back (TCP_CORK) within the block
    when ``on``; a no-op where the option or the socket is not there."""

    def __init__(self, transport: asyncio.BaseTransport | None) -> None:
        sock = transport.get_extra_info("socket") if transport is not None else None
        self.sock = sock if sock is not None and hasattr(socket, "TCP_CORK") else None

    @contextlib.contextmanager
    def __call__(self, on: bool) -> Iterator[None]:
        sock = self.sock if on else None
        if sock is None:
            yield
            return
        self._set(sock, 1)
        try:
            yield
        finally:
            self._set(sock, 0)

    @staticmethod
    def _set(sock: socket.socket, value: int) -> None:
        with contextlib.suppress(OSError):  # the connection went away meanwhile
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, value)


class Session:
    """One websocket connection: bounded send queue, subscriptions, pending faults."""

    def __init__(
        self,
        dialect: Dialect,
        ws: web.WebSocketResponse,
        number: int,
        transport: asyncio.BaseTransport | None,
    ) -> None:
        self.dialect = dialect
        self.ws = ws
        self.transport = transport
        self.number = number
        self.conn_id = f"sim{number:05d}-{zlib.crc32(f'{dialect.name}{number}'.encode()):08x}"
        self.queue: asyncio.Queue[object] = asyncio.Queue(dialect.config.queue_size)
        self.subs: set[SubKey] = set()
        self.next_seq = 0
        now = time.monotonic()
        self.opened_at = now
        self.last_client_ping = now
        self.ping_sent_at: float | None = None
        self.last_server_ping = now
        self.last_heartbeat = now
        self.heartbeat_counter = 0
        self.silent_until = 0.0
        self.armed: dict[str, set[str | None]] = {}  # fault -> symbols (None = any)
        self.last_frame: str | bytes = ""
        self.closed = False
        self.extra: dict[str, Any] = {}

    # -- sending --------------------------------------------------------------------

    def offer(self, frame: Frame) -> None:
        if self.closed:
            return
        stats = self.dialect.stats
        if self.silent_until:
            if time.monotonic() < self.silent_until:
                stats["frames_dropped"] += 1
                return
            self.silent_until = 0.0
        text = frame.text
        if frame.head is not None and isinstance(text, str):
            text = f"{frame.head}{self.next_seq}{text}"
            self.next_seq += 1
        if self.armed and frame.symbol is not None:
            if frame.kind == "book" and frame.gap_ok and self.take_fault("gap", frame.symbol):
                stats["frames_dropped"] += 1
                return
            if frame.checksum_token and isinstance(text, str) and self.take_fault("checksum", frame.symbol):
                text = text.replace(frame.checksum_token, corrupt_token(frame.checksum_token), 1)
        self.send_text(text)
        if not self.closed:
            # what the client was offered, by kind: frames_sent only counts what it read
            stats[f"queued_{frame.kind}"] += 1

    def send(self, obj: Any) -> None:
        """A control frame (ack, pong, error) built from a JSON-able object."""
        self.offer(Frame(dumps(obj)))

    def send_text(self, text: str | bytes) -> None:
        """Queue a frame: text is encoded by the dialect (HTX gzips it); bytes go out as binary."""
        wire = self.dialect.encode(text) if isinstance(text, str) else text
        try:
            self.queue.put_nowait(wire)
        except asyncio.QueueFull:
            self.drop_when_full()
            return
        self.last_frame = text

    def send_ping(self, payload: bytes) -> None:
        """A websocket protocol ping, ordered with the data frames."""
        try:
            self.queue.put_nowait(_Ping(payload))
        except asyncio.QueueFull:
            self.drop_when_full()

    def drop_when_full(self) -> None:
        """Close a connection whose send queue is full, saying whose fault it is.

        Bytes waiting in the socket's user-space buffer mean the kernel's send buffer is full:
        the client does not read fast enough. An empty buffer means the socket takes everything
        the write loop gives it: the simulator itself could not generate and send its frames in
        time (its one core spent), and the client is not to blame.
        """
        if isinstance(self.transport, asyncio.WriteTransport) and self.transport.get_write_buffer_size() == 0:
            self.dialect.stats["overload_disconnects"] += 1
            self.abort(1013, "simulator overloaded: send queue full while the client kept up")
        else:
            self.dialect.stats["slow_disconnects"] += 1
            self.abort(1008, "slow client: send queue full")

    def send_malformed(self) -> None:
        sample = self.last_frame or '{"event":"malformed"}'
        self.send_text(sample[: max(1, len(sample) // 2)])

    def take_fault(self, fault: str, symbol: str) -> bool:
        """Consume a fault armed for ``symbol`` (or for any symbol) on this session."""
        symbols = self.armed.get(fault)
        if not symbols:
            return False
        for key in (symbol, None):
            if key in symbols:
                symbols.discard(key)
                if not symbols:
                    del self.armed[fault]
                return True
        return False

    def arm(self, fault: str, symbol: str | None) -> None:
        self.armed.setdefault(fault, set()).add(symbol)

    def abort(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` (runs in the background; never blocks)."""
        if self.closed:
            return
        self.closed = True
        self.dialect.stats["closes"] += 1
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_CLOSE)
        task = asyncio.get_running_loop().create_task(self.ws.close(code=code, message=reason.encode()))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def write_loop(self) -> None:
        """Send what is queued, a burst at a time (a frame and those queued behind it when it is
        taken): the socket corked while a burst is written, so the kernel sends it in full
        segments instead of one small segment per frame, and uncorked after it."""
        queue = self.queue
        cork = SocketCork(self.transport)
        while True:
            first = await queue.get()
            burst = queue.qsize()
            with cork(burst > 0):
                if not await self._write(first):
                    return
                for _ in range(burst):
                    if queue.empty():  # aborted meanwhile: the close comes next
                        break
                    if not await self._write(queue.get_nowait()):
                        return

    async def _write(self, item: object) -> bool:
        """Send one queued item; False when the connection is done (closed or failed)."""
        ws, stats = self.ws, self.dialect.stats
        try:
            if isinstance(item, str):
                await ws.send_str(item)
            elif isinstance(item, _Ping):
                await ws.ping(item)
                return True
            elif isinstance(item, bytes):
                await ws.send_bytes(item)
            else:  # _CLOSE
                return False
        except (ConnectionError, RuntimeError):
            return False
        stats["frames_sent"] += 1
        stats["bytes_sent"] += len(item)
        return True

    def subscribed_to(self, symbol: str) -> bool:
        return any(key[1] == symbol for key in self.subs)


# -- feeds and dialects -------------------------------------------------------------------


class Feed:
    """The books of one exchange category (e.g. bybit linear), stepped at the configured rate."""

    def __init__(self, exchange: str, category: str, symbols: Iterable[str], config: SimConfig) -> None:
        self.exchange = exchange
        self.category = category
        self.config = config
        params = config.market_params()
        venue = exchange if category == "spot" else f"{exchange}:{category}"
        self.markets = {
            s: SymbolMarket(SymbolSpec.for_symbol(s), params, config.seed, venue) for s in symbols
        }
        self.stats = {symbol: MarketStats(market.spec) for symbol, market in self.markets.items()}
        """klines and 24 h tickers of the trades sent, for the dialects' ticker and kline channels"""
        self.dialects: list[Dialect] = []
        self.depth_refs: Counter[tuple[str, int]] = Counter()

    def depths(self, symbol: str) -> set[int]:
        return {depth for (sym, depth), n in self.depth_refs.items() if sym == symbol and n > 0}

    def step_all(self) -> None:
        ts_ns = time.time_ns()
        for symbol, market in self.markets.items():
            step = market.step(self.depths(symbol))
            stats = self.stats[symbol]
            for trade in step.trades:
                trade.ts_ns = ts_ns
                stats.add(trade)
            for dialect in self.dialects:
                if dialect.sessions:
                    dialect.publish(market, step, ts_ns)

    async def run(self) -> None:
        """Step every market ``book_rate`` times a second; catch up in batches, never drift."""
        rate = self.config.book_rate
        loop = asyncio.get_running_loop()
        start, done = loop.time(), 0
        while True:
            due = int((loop.time() - start) * rate) - done
            if due > rate:  # fell more than a second behind: skip ahead instead of bursting
                start += (due - 1) / rate
                due = 1
            for _ in range(due):
                self.step_all()
                done += 1
            await asyncio.sleep(max(0.0, start + (done + 1) / rate - loop.time()))


class Dialect:
    """One websocket protocol on one path. Subclasses declare what differs."""

    exchange: ClassVar[str]
    name: ClassVar[str]
    path: ClassVar[str]  # appended to /<exchange>
    faults: ClassVar[frozenset[str]] = frozenset({"gap", "disconnect", "silent", "malformed"})
    timer_period_s: ClassVar[float] = 0.25

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.config = feed.config
        self.sessions: set[Session] = set()
        self.subscribers: dict[SubKey, set[Session]] = {}
        self.stats: Counter[str] = Counter()
        feed.dialects.append(self)

    # -- hooks for subclasses ---------------------------------------------------------------

    def on_open(self, session: Session) -> None:
        """Frames sent on connect (status frames)."""

    def on_text(self, session: Session, text: str) -> None:
        raise NotImplementedError

    def encode(self, text: str) -> str | bytes:
        """A text frame as it goes on the wire (HTX sends gzip-compressed binary frames)."""
        return text

    def on_timer(self, session: Session, now: float) -> None:
        """Heartbeats, pings, idle timeouts; called every ``timer_period_s``."""

    def publish(self, market: SymbolMarket, step: Step, ts_ns: int) -> None:
        raise NotImplementedError

    def resend_snapshots(self, session: Session, symbol: str | None) -> None:
        raise FaultError(f"{self.exchange} has no mid-stream snapshot")

    # -- subscriptions ----------------------------------------------------------------------

    def market(self, symbol: str) -> SymbolMarket | None:
        return self.feed.markets.get(symbol)

    def subscribe(self, session: Session, key: SubKey) -> bool:
        """Register a subscription; False when it already existed."""
        if key in session.subs:
            return False
        session.subs.add(key)
        self.subscribers.setdefault(key, set()).add(session)
        if key[2]:
            self.feed.depth_refs[(key[1], key[2])] += 1
        return True

    def unsubscribe(self, session: Session, key: SubKey) -> bool:
        if key not in session.subs:
            return False
        session.subs.discard(key)
        members = self.subscribers.get(key)
        if members is not None:
            members.discard(session)
            if not members:
                del self.subscribers[key]
        if key[2]:
            self.feed.depth_refs[(key[1], key[2])] -= 1
        return True

    def fan_out(self, key: SubKey, frame: Frame) -> None:
        for session in self.subscribers.get(key, ()):
            session.offer(frame)

    def keys_for(self, channel: str, symbol: str) -> list[SubKey]:
        return [k for k in self.subscribers if k[0] == channel and k[1] == symbol]

    # -- connection lifecycle -----------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False, timeout=5.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        self.stats["connections_total"] += 1
        session = Session(self, ws, self.stats["connections_total"], request.transport)
        self.sessions.add(session)
        writer = asyncio.create_task(session.write_loop())
        try:
            self.on_open(session)
            self.accept_query(session, request)
            async for msg in ws:
                if session.closed:
                    break
                if msg.type == WSMsgType.TEXT:
                    self.stats["frames_received"] += 1
                    self._dispatch(session, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.stats["frames_received"] += 1
                    self._dispatch(session, msg.data.decode(errors="replace"))
                elif msg.type == WSMsgType.PING:
                    if not (session.silent_until and time.monotonic() < session.silent_until):
                        await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    session.ping_sent_at = None
        finally:
            self._forget(session)
            session.closed = True
            writer.cancel()
        return ws

    def _dispatch(self, session: Session, text: str) -> None:
        try:
            self.on_text(session, text)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            log_event(
                log,
                logging.WARNING,
                "bad request",
                venue=self.name,
                request=repr(text[:200]),
                error=repr(exc),
            )
            session.send({"error": f"bad request: {exc}", "request": text[:200]})

    def accept_query(self, session: Session, request: web.Request) -> None:
        """Subscriptions given in the URL (Binance ``?streams=``)."""

    def _forget(self, session: Session) -> None:
        for key in list(session.subs):
            self.unsubscribe(session, key)
        self.sessions.discard(session)

    async def timer_loop(self) -> None:
        while True:
            await asyncio.sleep(self.timer_period_s)
            now = time.monotonic()
            for session in list(self.sessions):
                if session.closed or (session.silent_until and now < session.silent_until):
                    continue
                self.on_timer(session, now)

    def stats_view(self) -> dict[str, Any]:
        subs: Counter[str] = Counter()
        for key, members in self.subscribers.items():
            subs[key[0]] += len(members)
        return {
            "connections": len(self.sessions),
            **{k: v for k, v in self.stats.items()},
            "subscriptions": sum(subs.values()),
            "subscriptions_by_channel": dict(subs),
        }


@dataclass
class Venue:
    """Everything one exchange serves: its feeds, websocket dialects and REST routes."""

    name: str
    feeds: dict[str, Feed]
    dialects: list[Dialect]
    rest: list[tuple[str, RestHandler]]  # GET routes
    rest_post: list[tuple[str, RestHandler]] = field(default_factory=list)  # KuCoin's token handshake

    def apply_fault(self, fault: str, symbol: str | None, seconds: float, code: int) -> int:
        if fault not in FAULTS:
            raise FaultError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
        if symbol is not None and not any(symbol in feed.markets for feed in self.feeds.values()):
            raise FaultError(f"{self.name} does not list {symbol}")
        supporting = [d for d in self.dialects if fault in d.faults]
        if not supporting:
            raise FaultError(f"{self.name} does not support fault {fault!r}")
        affected = 0
        for dialect in supporting:
            for session in list(dialect.sessions):
                if session.closed or (symbol is not None and not session.subscribed_to(symbol)):
                    continue
                affected += 1
                _apply(dialect, session, fault, symbol, seconds, code)
        return affected


def _apply(
    dialect: Dialect, session: Session, fault: str, symbol: str | None, seconds: float, code: int
) -> None:
    if fault == "disconnect":
        session.abort(code, "simulated disconnect")
    elif fault == "silent":
        session.silent_until = time.monotonic() + seconds
    elif fault == "malformed":
        session.send_malformed()
    elif fault == "snapshot":
        dialect.resend_snapshots(session, symbol)
    else:
        session.arm(fault, symbol)
