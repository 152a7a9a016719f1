"""One websocket connection and its raw records.

A :class:`Connection` publishes ``open``, the instrument metadata as ``rest``, its ``sent``
subscribe frames, every ``recv`` frame and a final ``close``, numbered per connection from 0
(see marketpipe/raw.py). Its tasks read frames (answering the exchange's application pings),
keep it alive (pings, silence and age limits) and run the connector's post-subscribe hook; a
server notice or the age limit marks it ``planned`` so its shard can hand over to a successor.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import orjson
from aiohttp import WSMsgType
from aiohttp.http_websocket import WSMessageNoDecodeText

from marketpipe.logs import log_event
from marketpipe.raw import Kind, RawRecord
from producers.pacing import Gate

if TYPE_CHECKING:
    from producers.base import Connector, Shard

log = logging.getLogger("producers")

MAX_FRAME_BYTES = 64 * 1024 * 1024  # Coinbase level2 snapshots reach ~5 MB; leave ample room
OPEN_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0
_DATA = (WSMsgType.TEXT, WSMsgType.BINARY)

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
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse[Literal[False]] | None = None
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
        # aiohttp, not websockets: less CPU per frame received (measured in docs/producers.md)
        self._session = aiohttp.ClientSession(trust_env=False)
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            ws = await self._session.ws_connect(
                url,
                max_msg_size=MAX_FRAME_BYTES,
                heartbeat=self.connector.protocol_ping_interval_s,
                compress=15 if self.connector.producer.ws_compression else 0,
                decode_text=False,  # text frames as the bytes that came: published byte-exact
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S),
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
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            await self._prepare()
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
        await ws.send_str(message)

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
        watch = self.connector.answer_frame
        first_frame = self.first_frame
        while True:
            message = await ws.receive()
            if message.type not in _DATA:
                self._closed_by_peer(ws, message)
                return
            data = message.data
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

    def _closed_by_peer(
        self, ws: aiohttp.ClientWebSocketResponse[Literal[False]], message: WSMessageNoDecodeText
    ) -> None:
        if message.type is WSMsgType.CLOSE:  # the server's close frame: its code and reason
            self._end(message.data or 1005, message.extra or "")
        elif message.type is WSMsgType.ERROR:
            self._end(ws.close_code or 1006, f"{type(message.data).__name__}: {message.data}")
        else:
            self._end(ws.close_code or 1006, "connection lost")

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
                await self._ws.close(
                    code=code if 1000 <= code < 5000 else 1000, message=reason[:120].encode()
                )
        if self._session is not None:
            await self._session.close()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(BaseException):
                    await task

    @property
    def compressed(self) -> bool:
        """Whether the server took the permessage-deflate offer (``producers.ws_compression``)."""
        return bool(self._ws is not None and self._ws.compress)

    @property
    def age_s(self) -> float:
        return time.monotonic() - self._opened_at if self._opened_at else 0.0
