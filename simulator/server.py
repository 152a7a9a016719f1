"""One aiohttp application serving every simulated exchange under /<exchange>/..., plus the
control endpoints ``POST /_sim/fault`` and ``GET /_sim/stats``."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import time
from typing import Any

import orjson
from aiohttp import web

from marketpipe import exchanges as registry
from simulator.base import FaultError, SimConfig, Venue, dumps

HOST = "127.0.0.1"


def urls(port: int, host: str = HOST) -> dict[str, tuple[str, str]]:
    """(websocket base, REST base) per exchange; connectors append the real exchange paths."""
    names = (row.name for row in registry.REGISTRY)
    return {name: (f"ws://{host}:{port}/{name}", f"http://{host}:{port}/{name}") for name in names}


class Simulator:
    """The exchange simulator: build with a config (or keyword overrides), then ``await start()``."""

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        self.config = dataclasses.replace(config or SimConfig(), **overrides)
        modules = {row.name: f"simulator.{row.module}" for row in registry.REGISTRY}
        unknown = [name for name in self.config.exchanges if name not in modules]
        if unknown:
            raise ValueError(f"unknown exchange(s) {unknown}; choose from {', '.join(modules)}")
        self.venues: dict[str, Venue] = {
            name: importlib.import_module(modules[name]).create(self.config) for name in self.config.exchanges
        }
        self.app = self._build_app()
        self.host = HOST
        self.port = 0
        self.started_at = time.time()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, host: str = HOST, port: int = 0) -> Simulator:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.host, self.port = host, int(self._runner.addresses[0][1])
        for venue in self.venues.values():
            for feed in venue.feeds.values():
                self._tasks.append(asyncio.create_task(feed.run(), name=f"sim-feed-{venue.name}"))
            for dialect in venue.dialects:
                self._tasks.append(
                    asyncio.create_task(dialect.timer_loop(), name=f"sim-timer-{dialect.name}")
                )
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for venue in self.venues.values():
            for dialect in venue.dialects:
                for session in list(dialect.sessions):
                    session.abort(1001, "simulator shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def urls(self) -> dict[str, tuple[str, str]]:
        return {k: v for k, v in urls(self.port, self.host).items() if k in self.venues}

    # -- control -------------------------------------------------------------------------

    def fault(
        self, exchange: str, fault: str, symbol: str | None = None, seconds: float = 10.0, code: int = 1001
    ) -> int:
        """Inject ``fault`` into the exchange's open connections (those subscribed to ``symbol``
        when given); returns how many connections it reached. Raises FaultError when invalid."""
        venue = self.venues.get(exchange)
        if venue is None:
            raise FaultError(f"exchange {exchange!r} is not simulated here ({', '.join(self.venues)})")
        return venue.apply_fault(fault, symbol, seconds, code)

    def stats(self) -> dict[str, Any]:
        exchanges: dict[str, Any] = {}
        for name, venue in self.venues.items():
            dialects = {d.name: d.stats_view() for d in venue.dialects}
            totals: dict[str, int] = {}
            for view in dialects.values():
                for key, value in view.items():
                    if isinstance(value, int):
                        totals[key] = totals.get(key, 0) + value
            steps = {f"{f.category}:{s}": m.steps for f in venue.feeds.values() for s, m in f.markets.items()}
            exchanges[name] = {**totals, "dialects": dialects, "market_steps": steps}
        # time: every frame counted here was stamped (Binance "E") before it, none after
        now = time.time()
        return {"time": now, "uptime_s": round(now - self.started_at, 3), "exchanges": exchanges}

    # -- HTTP wiring ---------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application()
        for name, venue in self.venues.items():
            for dialect in venue.dialects:
                app.router.add_get(f"/{name}{dialect.path}", dialect.handle)
            for path, handler in venue.rest:
                app.router.add_get(f"/{name}{path}", handler)
            for path, handler in venue.rest_post:
                app.router.add_post(f"/{name}{path}", handler)
        app.router.add_post("/_sim/fault", self._fault_endpoint)
        app.router.add_get("/_sim/stats", self._stats_endpoint)
        return app

    async def _fault_endpoint(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            affected = self.fault(
                str(body["exchange"]),
                str(body["fault"]),
                body.get("symbol"),
                float(body.get("seconds", 10.0)),
                int(body.get("code", 1001)),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            message = str(exc) if isinstance(exc, FaultError) else f"bad fault request: {exc!r}"
            return web.json_response({"error": message}, status=400, dumps=dumps)
        return web.json_response({**body, "connections": affected}, dumps=dumps)

    async def _stats_endpoint(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats(), dumps=dumps)


async def start_simulator(port: int = 0, host: str = HOST, **overrides: Any) -> Simulator:
    """Build and start a simulator (keyword overrides go to SimConfig)."""
    return await Simulator(**overrides).start(host, port)
