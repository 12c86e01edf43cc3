"""Service templates: named sets of settings a service can start from.

An appliance's templates exist because almost every field problem was a missing or wrong
parameter; ours do the same in one line, `template = "NAME"` in a service. A template is a
TOML file in template_data/ with a `[service]` part (any service key) and an optional
`[pool]` part (any pool key: TLS, health checks, persistence, balancing) for the pool the
service names.

Expansion works on the raw TOML data, before validation, so that a wrong value still gets
an error naming the file and key. Tables merge key by key at every depth, and a key the
service (or the pool) sets itself always wins; arrays are values, so an array a service
sets replaces the template's. When several templated services share a pool, their pool
parts must agree on every key the pool does not set itself.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from revproxy.config.model import Config
from revproxy.config.reader import Context, show

# A string value in a template's pool part that is replaced by the service's first host
# name: AD FS needs its federation service name sent as SNI.
HOST_PLACEHOLDER = "{host}"
_TEMPLATE_KEYS = frozenset({"description", "service", "pool"})


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    description: str
    service: dict[str, Any]
    pool: dict[str, Any]
    text: str  # the file as shipped, comments included


@cache
def templates() -> dict[str, Template]:
    """Every shipped template by name, in name order."""
    found: dict[str, Template] = {}
    folder = resources.files("revproxy.config").joinpath("template_data")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name.removesuffix(".toml")):
        if not entry.name.endswith(".toml"):
            continue
        name = entry.name[: -len(".toml")]
        text = entry.read_text(encoding="utf-8")
        data = tomllib.loads(text)
        unknown = set(data) - _TEMPLATE_KEYS
        if unknown or not isinstance(data.get("service"), dict):
            raise RuntimeError(f"template {name}: needs [service]; unknown keys {sorted(unknown)}")
        found[name] = Template(
            name=name,
            description=str(data.get("description", "")),
            service=data["service"],
            pool=data.get("pool", {}),
            text=text,
        )
    return found


def expand_templates(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    """The configuration with every `template = "NAME"` expanded; keys a service sets win."""
    services = data.get("services")
    if not isinstance(services, dict) or not any(
        isinstance(s, dict) and "template" in s for s in services.values()
    ):
        return data
    known = templates()
    pools = data.get("pools") if isinstance(data.get("pools"), dict) else {}
    assert isinstance(pools, dict)
    new_services: dict[str, Any] = {}
    # Per pool: the flattened template keys it receives, and which service brought each.
    pool_parts: dict[str, dict[tuple[str, ...], tuple[Any, str, str]]] = {}
    for name, service in services.items():
        if not isinstance(service, dict) or "template" not in service:
            new_services[name] = service
            continue
        key = f"services.{name}.template"
        template_name = service["template"]
        if not isinstance(template_name, str):
            new_services[name] = service  # the loader reports the wrong type
            continue
        template = known.get(template_name)
        if template is None:
            ctx.error(key, _unknown_template(template_name, known))
            new_services[name] = service
            continue
        merged = merge(template.service, service)
        new_services[name] = merged
        pool_name = merged.get("pool")
        pool = pools.get(pool_name) if isinstance(pool_name, str) else None
        if not template.pool or not isinstance(pool, dict):
            continue  # no pool part, or the loader reports the missing pool
        assert isinstance(pool_name, str)
        received = pool_parts.setdefault(pool_name, {})
        for path, value in _flatten(template.pool):
            if _is_set(pool, path):
                continue  # the pool's own setting wins
            if value == HOST_PLACEHOLDER:
                value = _first_host(ctx, name, merged, template_name, pool_name, path)
                if value is None:
                    continue
            earlier = received.get(path)
            if earlier is not None and earlier[0] != value:
                dotted = ".".join(path)
                ctx.error(
                    key,
                    f'template "{template_name}" gives pools.{pool_name}.{dotted} = '
                    f'{show(value)}, but service "{earlier[1]}" (template "{earlier[2]}") '
                    f"gives {show(earlier[0])}; set it in [pools.{pool_name}]",
                )
                continue
            received[path] = (value, name, template_name)
    result = dict(data)
    result["services"] = new_services
    if pool_parts:
        new_pools = dict(pools)
        for pool_name, received in pool_parts.items():
            part: dict[str, Any] = {}
            for path, (value, _, _) in received.items():
                _put(part, path, value)
            new_pools[pool_name] = merge(part, pools[pool_name])
        result["pools"] = new_pools
    return result


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` laid on top: tables merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _flatten(
    table: dict[str, Any], prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Any]]:
    items: list[tuple[tuple[str, ...], Any]] = []
    for key, value in table.items():
        if isinstance(value, dict):
            items.extend(_flatten(value, (*prefix, key)))
        else:
            items.append(((*prefix, key), value))
    return items


def _is_set(table: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = table
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _put(table: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        table = table.setdefault(key, {})
    table[path[-1]] = value


def _first_host(
    ctx: Context,
    service: str,
    merged: dict[str, Any],
    template: str,
    pool: str,
    path: tuple[str, ...],
) -> str | None:
    hosts = merged.get("hosts")
    first = hosts[0] if isinstance(hosts, list) and hosts else None
    if isinstance(first, str) and first and "*" not in first:
        return first.strip().lower()
    ctx.error(
        f"services.{service}.hosts",
        f'template "{template}" sets pools.{pool}.{".".join(path)} to the first host name, '
        f"which must be an exact name, got {show(first)}; list it first, or set "
        f"{path[-1]} in [pools.{pool}]",
    )
    return None


def _unknown_template(name: str, known: dict[str, Template]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f'there is no template named "{name}"; {hint}known templates: {", ".join(known)}'


# --- the effective configuration, as text --------------------------------------------------


def render_expanded(config: Config) -> str:
    """The effective settings of every service and pool (templates expanded, defaults filled
    in), as TOML-like text for `revproxy check --expand`."""
    lines = [f"# {config.source}: effective settings, templates expanded, defaults filled in"]
    for service in config.services:
        lines.append("")
        _render_table(lines, f"services.{service.name}", service)
    for pool in config.pools:
        lines.append("")
        _render_table(lines, f"pools.{pool.name}", pool)
    return "\n".join(lines) + "\n"


def _render_table(lines: list[str], key: str, obj: Any, array: bool = False) -> None:
    lines.append(f"[[{key}]]" if array else f"[{key}]")
    nested: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        if f.name == "name" and not array:
            continue  # it is in the table's key
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) or (
            isinstance(value, tuple) and value and _has_nested(value)
        ):
            nested.append((f.name, value))
        elif value is None:
            if not array:  # rules leave most actions unset
                lines.append(f"# {f.name}: not set")
        else:
            lines.append(f"{f.name} = {_value(value)}")
    for name, value in nested:
        if isinstance(value, tuple):
            for item in value:
                _render_table(lines, f"{key}.{name}", item, array=True)
        else:
            _render_table(lines, f"{key}.{name}", value)


def _has_nested(items: tuple[Any, ...]) -> bool:
    return any(
        dataclasses.is_dataclass(item)
        and any(dataclasses.is_dataclass(getattr(item, f.name)) for f in dataclasses.fields(item))
        for item in items
    )


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if dataclasses.is_dataclass(value):
        fields = (f"{f.name} = {_value(getattr(value, f.name))}" for f in dataclasses.fields(value))
        return "{ " + ", ".join(fields) + " }"
    return json.dumps(str(value))
