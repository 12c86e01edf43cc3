"""Service templates: named sets of settings a service can start from."""

from __future__ import annotations

from typing import Any

from revproxy.config.reader import Context


def expand_templates(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    """The configuration with every `template = "NAME"` expanded; keys a service sets win."""
    return data
