"""Connector registry: one module per exchange."""

from __future__ import annotations

import importlib

from producers.base import Connector

_MODULES = {
    "binance": ("producers.connectors.binance", "BinanceConnector"),
    "binance-futures": ("producers.connectors.binance_futures", "BinanceFuturesConnector"),
    "coinbase": ("producers.connectors.coinbase", "CoinbaseConnector"),
    "kraken": ("producers.connectors.kraken", "KrakenConnector"),
    "bybit": ("producers.connectors.bybit", "BybitConnector"),
    "okx": ("producers.connectors.okx", "OkxConnector"),
    "bitfinex": ("producers.connectors.bitfinex", "BitfinexConnector"),
    "kucoin": ("producers.connectors.kucoin", "KucoinConnector"),
    "gateio": ("producers.connectors.gateio", "GateioConnector"),
    "htx": ("producers.connectors.htx", "HtxConnector"),
    "mexc": ("producers.connectors.mexc", "MexcConnector"),
    "deribit": ("producers.connectors.deribit", "DeribitConnector"),
}

EXCHANGES = tuple(_MODULES)


def connector_class(exchange: str) -> type[Connector]:
    try:
        module, name = _MODULES[exchange]
    except KeyError:
        raise ValueError(f"no connector for exchange {exchange!r}; known: {', '.join(EXCHANGES)}") from None
    found: type[Connector] = getattr(importlib.import_module(module), name)
    return found
