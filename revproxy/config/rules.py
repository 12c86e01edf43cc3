"""Content rules of a service: reading `[[services.NAME.rules]]` into RuleConfig."""

from __future__ import annotations

from revproxy.config.model import RuleConfig
from revproxy.config.reader import Context, Table


def read_rules(ctx: Context, service: Table) -> tuple[RuleConfig, ...]:
    """The service's rules, in order; problems are reported through the table."""
    if service.raw("rules") is not None:
        service.error("rules", "content rules are not supported yet")
    return ()
