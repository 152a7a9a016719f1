"""`marketpipe exchanges` (what is supported) and `marketpipe symbols` (what an exchange offers).

Both read the connectors themselves: their websocket and REST endpoints, the channels their
subscribe messages name, and, for `symbols`, the exchange's own instrument list fetched and
read the way a connector does at start.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import click

from marketpipe.cli_support import settings_from
from marketpipe.exchanges import CHANNEL_KINDS, EXCHANGES, REGISTRY
from marketpipe.output import Rows, format_option, write

if TYPE_CHECKING:
    from marketpipe.config import Settings
    from marketpipe.instruments import Instruments
    from producers.base import Connector

CHANNELS: dict[str, tuple[str, str, str, str]] = {row.name: row.channels for row in REGISTRY}
"""exchange -> its book, trades, ticker and candles channels (``CHANNEL_KINDS``), from the registry"""

_NO_PUBLISHER: Any = None  # these commands read a connector's endpoints; they never publish


def connector_for(settings: Settings, exchange: str, rest_url: str | None = None) -> Connector:
    """The exchange's connector as `marketpipe produce` builds it (settings.producers applied)."""
    from marketpipe.config import ConnectorSettings
    from producers.base import Gate, RestClient
    from producers.connectors import connector_class

    base = settings.producers.for_exchange(exchange).model_dump()
    if rest_url is not None:
        base["rest_url"] = rest_url
    connector = connector_class(exchange)(
        list(settings.symbols), _NO_PUBLISHER, ConnectorSettings.model_validate(base), settings.producers
    )
    # a person is waiting: one attempt, not a connector's patient retries
    connector.rest = RestClient(exchange, Gate(0.0), attempts=1, timeout_s=10.0)
    return connector


@click.command()
@format_option
@click.pass_context
def exchanges(ctx: click.Context, fmt: str | None) -> None:
    """List the supported exchanges, their channels and default symbols.

    Default symbols are settings.symbols (MARKETPIPE_SYMBOLS); at start a connector skips
    those its exchange does not list. `marketpipe symbols --exchange X` shows what X lists.
    """
    settings = settings_from(ctx)
    rows = []
    for exchange in EXCHANGES:
        connector = connector_for(settings, exchange)
        rows.append(
            (
                exchange,
                "yes" if exchange in settings.exchanges else "no",
                *(channel or "-" for channel in CHANNELS[exchange]),
                ",".join(settings.symbols),
                connector.ws_url(),
                connector.all_instruments_url(),
            )
        )
    columns = ("exchange", "enabled", *CHANNEL_KINDS, "default symbols", "websocket", "instruments")
    write(Rows(columns, rows), fmt)


@click.command()
@click.option(
    "--exchange", required=True, type=click.Choice(sorted(CHANNELS)), help="Exchange whose symbols to list."
)
@click.option(
    "--source",
    type=click.Choice(["live", "sim"]),
    default="live",
    show_default=True,
    help="live: the exchange's instrument list over the network; sim: the built-in simulator's.",
)
@click.option(
    "--rest-url", default=None, help="REST base URL instead of the exchange's (a proxy, a simulator)."
)
@click.option("--quote", default=None, help="Only symbols with this quote currency (e.g. USDT).")
@format_option
@click.pass_context
def symbols(
    ctx: click.Context, exchange: str, source: str, rest_url: str | None, quote: str | None, fmt: str | None
) -> None:
    """List the symbols an exchange offers for subscription.

    Each row: the normalised BASE-QUOTE name (what --symbols and MARKETPIPE_SYMBOLS take) and
    the exchange's own name for it, read from the exchange's instrument list the way the
    connector reads it at start.
    """
    settings = settings_from(ctx)
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        logging.getLogger("producers").setLevel(logging.ERROR)  # the failure is the one error line
    if source == "sim" and rest_url is not None:
        raise click.UsageError("--rest-url is for --source live")
    try:
        listed = asyncio.run(_listed(settings, exchange, source, rest_url))
    except _Unreachable as exc:
        raise click.ClickException(str(exc)) from None
    if source == "sim":
        click.echo(
            f"{exchange} as the built-in simulator lists it (settings.symbols), not the live exchange",
            err=True,
        )
    wanted = quote.upper() if quote else None
    rows = sorted(
        (name, exchange_symbol)
        for exchange_symbol, name in listed.items()
        if wanted is None or name.rsplit("-", 1)[-1] == wanted
    )
    write(Rows(("symbol", "exchange symbol"), rows), fmt)


class _Unreachable(Exception):
    """The instrument list could not be fetched; the message says where and what to try."""


async def _listed(settings: Settings, exchange: str, source: str, rest_url: str | None) -> Instruments:
    if source == "sim":
        return await _listed_by_simulator(settings, exchange)
    return await _fetch(settings, exchange, rest_url, offline_hint=True)


async def _fetch(
    settings: Settings, exchange: str, rest_url: str | None, *, offline_hint: bool
) -> Instruments:
    from producers.base import RestError

    connector = connector_for(settings, exchange, rest_url)
    try:
        return await connector.list_instruments()
    except RestError as exc:
        hint = (
            f"; without network: marketpipe symbols --exchange {exchange} --source sim"
            if offline_hint
            else ""
        )
        raise _Unreachable(f"cannot read {exchange}'s instrument list: {exc}{hint}") from None
    finally:
        await connector.rest.close()


async def _listed_by_simulator(settings: Settings, exchange: str) -> Instruments:
    """Ask a simulator started here for the moment (so the answer goes through the same path)."""
    from simulator.base import SimConfig
    from simulator.server import Simulator

    config = SimConfig(symbols=tuple(settings.symbols), exchanges=(exchange,), levels=30)
    simulator = await Simulator(config).start("127.0.0.1", 0)
    try:
        _, rest_base = simulator.urls()[exchange]
        return await _fetch(settings, exchange, rest_base, offline_hint=False)
    finally:
        await simulator.stop()
