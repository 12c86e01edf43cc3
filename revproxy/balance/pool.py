"""Pools of real servers and the choice of a server for each request.

Pure state and choice: no sockets. The data plane asks `choose()` once per
request (and again, excluding what failed, when it retries), so the common
case of equal weights is a rotating index; unequal weights use smooth
weighted round robin, which spreads a heavier server's turns evenly instead
of in bursts.
"""

from __future__ import annotations

from collections.abc import Collection

from revproxy.config.model import PoolConfig, ServerConfig


class Server:
    """One real server as the balancer sees it."""

    __slots__ = ("config", "name", "weight", "current", "active", "up")

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.name = config.address
        self.weight = config.weight
        self.current = 0  # smooth weighted round robin state
        self.active = 0  # requests in flight
        self.up = True

    def __repr__(self) -> str:
        return f"Server({self.name})"


class Pool:
    __slots__ = ("config", "name", "servers", "_next", "_equal")

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.name = config.name
        self.servers = [Server(s) for s in config.servers]
        self._next = 0
        self._equal = len({s.weight for s in self.servers}) <= 1

    def choose(self, exclude: Collection[Server] = ()) -> Server | None:
        """The next server in turn that is up and not excluded, or None."""
        servers = self.servers
        if self._equal:
            n = len(servers)
            for _ in range(n):
                server = servers[self._next % n]
                self._next += 1
                if server.up and server not in exclude:
                    return server
            return None
        best: Server | None = None
        total = 0
        for server in servers:
            if not server.up or server in exclude:
                continue
            server.current += server.weight
            total += server.weight
            if best is None or server.current > best.current:
                best = server
        if best is not None:
            best.current -= total
        return best
