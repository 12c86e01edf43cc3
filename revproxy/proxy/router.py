"""Which service answers a request: by Host, then by the longest path prefix.

Host patterns are matched like certificate names (exact, then one-label
wildcard, then "*"), so a service and its certificate cover the same names.
Path prefixes match whole segments: "/meet" takes "/meet" and "/meet/x" but
not "/meetings". Routing is pure: a Router is built once per listener from the
validated configuration and only looked up afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from revproxy.http.head import routing_path
from revproxy.tls.names import NameIndex, normalize_host

S = TypeVar("S")
_CACHE_LIMIT = 4096


def prefix_matches(prefix: bytes, path: bytes) -> bool:
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or prefix.endswith(b"/") or path[len(prefix)] == 0x2F


class Router(Generic[S]):
    """Host and path to service; `route` returns None when nothing matches."""

    __slots__ = ("_index", "_cache")

    def __init__(self, services: Iterable[tuple[tuple[str, ...], tuple[str, ...], S]]) -> None:
        """`services`: (host patterns, path prefixes, service) in configuration order."""
        by_pattern: dict[str, list[tuple[bytes, S]]] = {}
        for hosts, paths, service in services:
            for host in hosts:
                routes = by_pattern.setdefault(host.lower(), [])
                # Prefixes as requests are matched: /%7Ejoe is /~joe, /a//b is /a/b.
                routes.extend((routing_path(p.encode()), service) for p in paths)
        for routes in by_pattern.values():
            # Longest prefix first; equal prefixes keep configuration order (sort is stable).
            routes.sort(key=lambda r: -len(r[0]))
        self._index: NameIndex[list[tuple[bytes, S]]] = NameIndex(
            ([pattern], routes) for pattern, routes in by_pattern.items()
        )
        self._cache: dict[bytes, list[tuple[bytes, S]] | None] = {}

    def routes_for(self, host: bytes) -> list[tuple[bytes, S]] | None:
        cache = self._cache
        try:
            return cache[host]
        except KeyError:
            pass
        try:
            name = normalize_host(host) if host else ""
        except ValueError:
            routes = None
        else:
            routes = self._index.lookup(name) if name else self._index.lookup("")
        if len(cache) < _CACHE_LIMIT:
            cache[host] = routes
        return routes

    def route(self, host: bytes, path: bytes) -> tuple[S | None, bool]:
        """(service, host_known): host_known is False when no service claims the host."""
        routes = self.routes_for(host)
        if routes is None:
            return None, False
        for prefix, service in routes:
            if prefix_matches(prefix, path):
                return service, True
        return None, True
