"""``marketpipe sim``: run the exchange simulator until interrupted (or for --duration seconds)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from simulator.base import EXCHANGES, SimConfig
from simulator.server import Simulator


def _csv(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(part.strip() for part in value.split(",") if part.strip())


@click.command("sim")
@click.option(
    "--exchanges", default=None, help=f"Comma-separated subset of {','.join(EXCHANGES)} (default: settings)."
)
@click.option("--symbols", default=None, help="Comma-separated BASE-QUOTE symbols (default: settings).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True, help="0 picks a free port.")
@click.option(
    "--rate", type=float, default=10.0, show_default=True, help="Book updates per second per symbol."
)
@click.option(
    "--trade-rate", type=float, default=2.0, show_default=True, help="Trades per second per symbol."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same market.")
@click.option("--levels", type=int, default=500, show_default=True, help="Book levels per side.")
@click.option(
    "--okx-checksum",
    type=click.Choice(["crc32", "zero"]),
    default="crc32",
    show_default=True,
    help="OKX books checksum: the real CRC32, or 0 as production sends since June 2026.",
)
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.pass_context
def sim(
    ctx: click.Context,
    exchanges: str | None,
    symbols: str | None,
    host: str,
    port: int,
    rate: float,
    trade_rate: float,
    seed: int,
    levels: int,
    okx_checksum: str,
    duration: float | None,
) -> None:
    """Serve simulated feeds of every supported exchange on one local port.

    binance, coinbase, kraken, bybit, okx, bitfinex, kucoin, gateio, htx and mexc, each on
    its own path with the exchange's websocket protocol and REST endpoints.
    """
    chosen, wanted_symbols = _csv(exchanges), _csv(symbols)
    if wanted_symbols is not None:
        from marketpipe.config import check_symbols

        check_symbols(wanted_symbols, "--symbols")
    if chosen is None or wanted_symbols is None:
        from marketpipe.cli_support import settings_from

        settings = settings_from(ctx)
        chosen = chosen if chosen is not None else tuple(settings.exchanges)
        wanted_symbols = wanted_symbols if wanted_symbols is not None else tuple(settings.symbols)
    unknown = [name for name in chosen if name not in EXCHANGES]
    if unknown or not chosen:
        raise click.BadParameter(
            f"unknown exchange(s) {unknown}; choose from {', '.join(EXCHANGES)}", param_hint="--exchanges"
        )
    if rate <= 0 or trade_rate < 0 or levels < 30:
        raise click.BadParameter("need --rate > 0, --trade-rate >= 0 and --levels >= 30")
    config = SimConfig(
        symbols=wanted_symbols,
        exchanges=chosen,
        seed=seed,
        book_rate=rate,
        trade_rate=trade_rate,
        levels=levels,
        okx_checksum="zero" if okx_checksum == "zero" else "crc32",
    )
    asyncio.run(_serve(config, host, port, duration))


async def _serve(config: SimConfig, host: str, port: int, duration: float | None) -> None:
    simulator = await Simulator(config).start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        click.echo(
            f"simulator on {host}:{simulator.port} (seed {config.seed}, {config.book_rate:g} book "
            f"updates/s and {config.trade_rate:g} trades/s per symbol)"
        )
        for name, (ws_base, rest_base) in simulator.urls().items():
            click.echo(f"  {name:<9} ws {ws_base:<34} rest {rest_base}  {', '.join(config.listed(name))}")
        click.echo(f"  control   POST http://{host}:{simulator.port}/_sim/fault  GET /_sim/stats")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()
    finally:
        await simulator.stop()
