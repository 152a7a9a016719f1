"""Connector lookup: the class a registry row names in ``producers.connectors.<row.module>``."""

from __future__ import annotations

import importlib

from marketpipe.exchanges import EXCHANGES, exchange
from producers.base import Connector

__all__ = ["EXCHANGES", "connector_class"]


def connector_class(name: str) -> type[Connector]:
    """The connector class of exchange ``name``; a ValueError naming the known ones if none."""
    row = exchange(name)
    found: type[Connector] = getattr(importlib.import_module(f"{__name__}.{row.module}"), row.connector)
    return found
