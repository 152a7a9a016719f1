"""The Prometheus endpoint every marketpipe process serves (settings.metrics_port; 0 = off)."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from marketpipe.logs import log_event

log = logging.getLogger(__name__)


def serve_metrics_endpoint(port: int, registry: CollectorRegistry = REGISTRY) -> bool:
    """Serve `registry` on `port`; a port in use is logged (metrics off), not fatal.

    Losing metrics must not stop market data from flowing, but it must not be silent.
    """
    if not port:
        return False
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        log_event(
            log,
            logging.ERROR,
            "metrics endpoint NOT served: set MARKETPIPE_METRICS_PORT to a free port, "
            "or 0 to turn metrics off",
            port=port,
            error=exc,
        )
        return False
    return True
