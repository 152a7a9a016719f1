"""End of input for a streams worker: SIGHUP publishes the open candles' pending trades.

Open candles are republished in *event time* (every ``ohlcv_update_interval_s`` of trade
time), so the last trades of a finite input (a capture replay) would otherwise never reach
``md.ohlcv`` until more trades came. `marketpipe run --exit-on-drain` sends SIGHUP once
every input is consumed; the worker publishes each open candle with unpublished trades as
one more ``closed=False`` version, persists the new state (so a later run continues the
version numbers), and counts the flush in ``marketpipe_stream_flushes_total``.
Live runs never flush this way, so their outputs stay a pure function of the trade log.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from streams.aggregations import _write_table
from streams.metrics import StreamCollector

log = logging.getLogger(__name__)


async def flush_open_candles(app: Any) -> int:
    """Publish every open candle that has unpublished trades; returns how many."""
    stage = app.marketpipe_ohlcv
    table = app.tables["ohlcv-state"]
    builder = stage.builder
    if stage.needs_restore:  # no batch since the last assignment: load state like the agent does
        builder.restore(list(table.data.items()))
        builder.republish()
        stage.needs_restore = False
    builder.flush_open()
    candles = builder.take_published()
    output = app.marketpipe_output
    for candle in candles:
        value = stage.codec.encode(candle, stage.topology.ohlcv)
        output.emit(stage.topology.ohlcv, candle.key().encode(), value)
        output.emit(stage.consolidate_topic, stage.symbols(candle.symbol).encode(), value)
    for partition, key, value in builder.state_changes():
        _write_table(table, partition, key, value)
    await output.flush_or_die()
    await app.producer.flush()  # the table changelog
    return len(candles)


def install_flush_on_hangup(app: Any, collector: StreamCollector) -> None:
    """SIGHUP -> flush_open_candles; counted in the collector once the records are sent."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop's handler is installed

    async def flush() -> None:
        try:
            count = await flush_open_candles(app)
        except Exception:
            log.exception("flushing open candles failed")
            return
        collector.flushes += 1
        log.warning("flushed %d open candle(s) at end of input", count)

    @app.task
    async def _install_hangup_handler() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(flush()))
