"""What every layer's commands share with the ``marketpipe`` group, without importing it (the
group in ``marketpipe.cli`` loads the layers' command modules; they never import it back)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # marketpipe.config (pydantic) costs 0.3 s: imported only when a command runs
    from marketpipe.config import Settings


def settings_from(ctx: click.Context) -> Settings:
    """The validated settings for this invocation (loaded once, on first use); a bad setting is
    a ``ConfigError``: one message, exit code 2."""
    from marketpipe.config import load_settings

    root = ctx.find_root()
    root.ensure_object(dict)
    if "settings" not in root.obj:
        root.obj["settings"] = load_settings(**root.obj.get("overrides", {}))
    settings: Settings = root.obj["settings"]
    return settings
