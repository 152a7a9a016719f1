"""Pacing shared by a connector's connections: request spacing, reconnect backoff, breaker.

* a :class:`Gate` spaces callers (connects, REST requests, client messages) and holds them all
  for a ``Retry-After``;
* :class:`Backoff` is capped exponential backoff with jitter;
* a :class:`CircuitBreaker` holds every shard of an exchange after consecutive failed connects.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from marketpipe.logs import log_event

log = logging.getLogger("producers")


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
