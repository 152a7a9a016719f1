"""Benchmarks, run as ``python -m bench NAME`` (docs/benchmarks.md)."""

import os


def caller_settings() -> dict[str, str]:
    """The caller's ``MARKETPIPE_*`` variables, for the marketpipe processes a bench starts (under
    what the bench sets itself): ``MARKETPIPE_STREAMS__COMMIT_INTERVAL_MS=50 python -m bench
    stream`` benches that setting."""
    return {k: v for k, v in os.environ.items() if k.startswith("MARKETPIPE_")}
