"""The connectors' REST client: spaced GETs, 429/418 ``Retry-After`` and retries."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp
import yarl

from marketpipe.logs import log_event
from producers.pacing import Backoff, Gate

log = logging.getLogger("producers")


class RestError(RuntimeError):
    """A REST request failed for good (after retries)."""


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
