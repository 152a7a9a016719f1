"""librdkafka's own log lines, through Python logging and rate-limited.

Without a ``logger`` in its configuration librdkafka writes to stderr itself: an unreachable
broker gives a ``FAIL`` line per reconnect attempt, hundreds a minute. Every client built from
``Settings.kafka_client_config()`` gets ``librdkafka_logger()`` instead: the lines go through
logging (levels, handlers, ``-v``), and one that repeats (the same text up to the numbers in it)
shows once per ``REPEAT_INTERVAL_S`` with a count of the ones held back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

LOGGER_NAME = "marketpipe.librdkafka"
REPEAT_INTERVAL_S = 60.0
_NUMBERS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Lets a message through once per interval; the next one says how many were held back."""

    def __init__(
        self, interval_s: float = REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = _NUMBERS.sub("#", _text_without_client_name(record))
        now = self.clock()
        with self._lock:
            last, held = self._seen.get(key, (float("-inf"), 0))
            if now - last < self.interval_s:
                self._seen[key] = (last, held + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:  # messages with ever-new text must not grow this forever
                self._seen = {key: (now, 0)}
        if held:
            record.msg = f"{record.msg} (%d more like it in the last %.0f s not shown)"
            record.args = (*(record.args or ()), held, now - last)
        return True


def _text_without_client_name(record: logging.LogRecord) -> str:
    # confluent-kafka logs ("%s [%s] %s", facility, client name, message); the client name
    # (rdkafka#producer-7) differs between clients that report the same broker problem
    args = record.args
    if isinstance(args, tuple) and len(args) == 3:
        return f"{args[0]} {args[2]}"
    return record.getMessage()


def librdkafka_logger() -> logging.Logger:
    """The logger every librdkafka client logs through (``"logger"`` in its configuration)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(existing, RepeatFilter) for existing in logger.filters):
        logger.addFilter(RepeatFilter())
    return logger
