"""Points in time given on the command line: ISO 8601 (UTC unless it says otherwise) or epoch ms."""

from __future__ import annotations

from datetime import UTC, datetime

import click


def parse_time(text: str, option: str) -> datetime:
    """``2024-05-01``, ``2024-05-01T12:00:00Z``, ``2024-05-01 12:00+02:00`` or ``1714564800000``."""
    value = text.strip()
    if value.isdigit():
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither ISO 8601 (e.g. 2024-05-01T12:00:00Z) nor epoch milliseconds",
            param_hint=option,
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
