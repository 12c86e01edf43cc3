"""Pools of real servers and the choice of a server for each request.

Pure state and choice: no sockets. The data plane asks `choose()` once per
request (and again, excluding what failed, when it retries). Four methods,
chosen per pool by `PoolConfig.balance`:

- round_robin: equal weights rotate an index; unequal weights use smooth
  weighted round robin, which spreads a heavier server's turns evenly instead
  of in bursts (weights 5,1,1 give a a b a c a a).
- least_conn: fewest requests in flight; ties go to the heavier server, then
  rotate so equal servers share the work.
- random_two: two distinct servers drawn at random (weighted), the less busy
  one wins. Works without shared state between workers, where a global
  "least" is unknowable.
- source_hash: rendezvous (highest random weight) hashing of the client IP, so
  removing a server moves only that server's clients, and every worker and
  replica agrees because the hash is blake2b, never Python's seeded hash().

A server is eligible for new work when it is up (health), its administrative
state is "enabled" and the caller did not exclude it. A draining server gets
no new clients but still honours existing persistence (HAProxy's "drain",
F5's "disabled" member): that is what lets sessions finish before the server
is taken away. A disabled server gets nothing.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Collection, Mapping
from typing import Final

from revproxy.balance.persistence import SourceIPTable, cookie_value
from revproxy.config.model import PoolConfig, ServerConfig

ENABLED: Final = "enabled"
DISABLED: Final = "disabled"
DRAINING: Final = "draining"
ADMIN_STATES = (ENABLED, DISABLED, DRAINING)

_HASH_SCALE = float(1 << 53)

# Balancing methods (an int each, so that choosing one is a direct call).
_ROUND_ROBIN: Final = 0
_LEAST_CONN: Final = 1
_RANDOM_TWO: Final = 2
_SOURCE_HASH: Final = 3
_METHODS = {
    "round_robin": _ROUND_ROBIN,
    "least_conn": _LEAST_CONN,
    "random_two": _RANDOM_TWO,
    "source_hash": _SOURCE_HASH,
}


class Server:
    """One real server as the balancer sees it."""

    __slots__ = ("config", "name", "weight", "current", "active", "up", "admin", "cookie")

    def __init__(self, config: ServerConfig, pool_name: str = "", up: bool = True) -> None:
        self.config = config
        self.name = config.address
        self.weight = config.weight
        self.current = 0  # smooth weighted round robin state
        self.active = 0  # requests in flight
        self.up = up  # health, as the checks last said
        self.admin = config.state if config.state in ADMIN_STATES else ENABLED
        self.cookie = cookie_value(pool_name, self.name)  # persistence cookie value

    @property
    def eligible(self) -> bool:
        """May take a new client (not counting exclusions)."""
        return self.up and self.admin == ENABLED

    @property
    def accepts_persistent(self) -> bool:
        """May take a client already persisted to it: up, and enabled or draining."""
        return self.up and self.admin != DISABLED

    @property
    def state_name(self) -> str:
        """For display: "disabled" or "draining" (set by hand, they win), else "up"/"down"."""
        if self.admin != ENABLED:
            return self.admin
        return "up" if self.up else "down"

    def __repr__(self) -> str:
        return f"Server({self.name})"


class Pool:
    __slots__ = (
        "config",
        "name",
        "servers",
        "sticky",
        "_next",
        "_equal",
        "_by_name",
        "_by_cookie",
        "_rng",
        "_method",
    )

    def __init__(
        self,
        config: PoolConfig,
        health: Mapping[str, bool] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`health` gives the initial up state by server address (missing = up)."""
        self.config = config
        self.name = config.name
        health = health or {}
        self.servers = [Server(s, config.name, health.get(s.address, True)) for s in config.servers]
        self._by_name = {s.name: s for s in self.servers}
        self._by_cookie = {s.cookie: s for s in self.servers}
        self._next = 0
        self._equal = len({s.weight for s in self.servers}) <= 1
        self._rng = rng or random.Random()
        persistence = config.persistence
        self.sticky = (
            SourceIPTable(persistence.timeout) if persistence.type == "source_ip" else None
        )
        self._method = _METHODS.get(config.balance, _ROUND_ROBIN)

    # ------------------------------------------------------------------ lookups and state

    def server(self, address: str) -> Server | None:
        return self._by_name.get(address)

    def server_for_cookie(self, value: str) -> Server | None:
        return self._by_cookie.get(value)

    def set_up(self, address: str, up: bool) -> bool:
        """Apply a health verdict; False when the pool has no such server."""
        server = self._by_name.get(address)
        if server is None:
            return False
        server.up = up
        return True

    def set_admin(self, address: str, state: str) -> bool:
        """Enable, disable or drain a server; False when the pool has no such server."""
        if state not in ADMIN_STATES:
            raise ValueError(f"administrative state must be one of {ADMIN_STATES}, got {state!r}")
        server = self._by_name.get(address)
        if server is None:
            return False
        server.admin = state
        return True

    # ------------------------------------------------------------------------- choosing

    def choose(
        self,
        exclude: Collection[Server] = (),
        client_ip: str = "",
        affinity: Server | None = None,
    ) -> Server | None:
        """The server for the next request, or None when no server may take it.

        `affinity` is a server the client is persisted to: it is kept when it is up and
        not disabled (a draining server still honours it) and not excluded; otherwise the
        pool's balancing method chooses among eligible servers.
        """
        if affinity is not None and affinity.accepts_persistent and affinity not in exclude:
            return affinity
        method = self._method
        if method == _ROUND_ROBIN:
            return self._round_robin(exclude, client_ip)
        if method == _LEAST_CONN:
            return self._least_conn(exclude, client_ip)
        if method == _RANDOM_TWO:
            return self._random_two(exclude, client_ip)
        return self._source_hash(exclude, client_ip)

    def _round_robin(self, exclude: Collection[Server], client_ip: str) -> Server | None:
        servers = self.servers
        if self._equal:
            # The index moves past every server looked at, as one step per server would.
            n = len(servers)
            i = self._next
            end = i + n
            while i < end:
                server = servers[i % n]
                i += 1
                if server.up and server.admin == ENABLED and server not in exclude:
                    self._next = i
                    return server
            self._next = i
            return None
        best: Server | None = None
        total = 0
        for server in servers:
            if not (server.up and server.admin == ENABLED) or server in exclude:
                continue
            server.current += server.weight
            total += server.weight
            if best is None or server.current > best.current:
                best = server
        if best is not None:
            best.current -= total
        return best

    def _least_conn(self, exclude: Collection[Server], client_ip: str) -> Server | None:
        servers = self.servers
        n = len(servers)
        if n == 0:
            return None
        start = self._next % n
        self._next += 1
        best: Server | None = None
        for i in range(n):
            server = servers[(start + i) % n]
            if not (server.up and server.admin == ENABLED) or server in exclude:
                continue
            if (
                best is None
                or server.active < best.active
                or (server.active == best.active and server.weight > best.weight)
            ):
                best = server
        return best

    def _random_two(self, exclude: Collection[Server], client_ip: str) -> Server | None:
        candidates = [s for s in self.servers if s.up and s.admin == ENABLED and s not in exclude]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        rng = self._rng
        if self._equal:
            a, b = rng.sample(candidates, 2)
        else:
            a = rng.choices(candidates, weights=[s.weight for s in candidates])[0]
            candidates.remove(a)
            b = rng.choices(candidates, weights=[s.weight for s in candidates])[0]
        if b.active < a.active or (b.active == a.active and b.weight > a.weight):
            return b
        return a

    def _source_hash(self, exclude: Collection[Server], client_ip: str) -> Server | None:
        if not client_ip:
            return self._round_robin(exclude, client_ip)
        key = client_ip.encode()
        best: Server | None = None
        best_score = -1.0
        for server in self.servers:
            if not (server.up and server.admin == ENABLED) or server in exclude:
                continue
            score = hrw_score(key, server.name, server.weight)
            if score > best_score:
                best, best_score = server, score
        return best


def hrw_score(key: bytes, server_name: str, weight: int) -> float:
    """Weighted rendezvous score of `key` on a server: the highest score wins.

    With u uniform in (0, 1) from a stable hash, -weight / ln(u) gives each server a
    share proportional to its weight, and a server's score never depends on the others.
    """
    h = hashlib.blake2b(server_name.encode(), digest_size=8, person=b"revproxy-hrw")
    h.update(b"\0")
    h.update(key)
    # 53 bits fit a float exactly, so u stays strictly inside (0, 1).
    u = ((int.from_bytes(h.digest(), "big") >> 11) + 0.5) / _HASH_SCALE
    return -weight / math.log(u)
