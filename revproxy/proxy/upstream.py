"""Connections to real servers, and the idle connections kept for reuse.

A ServerConnection is a thin pipe: bytes from the server go to whoever owns it
(the client connection whose request it carries); all HTTP logic stays in the
client connection, which knows the request the response answers. An Endpoint
is one server's set of idle keep-alive connections: taken most recent first
(warm, least likely to have been closed by the server), expired oldest first.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Final, cast

from revproxy.balance.pool import Server
from revproxy.config.model import PoolConfig
from revproxy.proxy.tlslayer import ServerTLS
from revproxy.tls.context import server_hostname

if TYPE_CHECKING:
    from collections.abc import Callable

    from revproxy.proxy.serverside import ServerSide

WRITE_HIGH: Final = 256 * 1024
WRITE_LOW: Final = 64 * 1024


class ServerConnection(asyncio.Protocol):
    __slots__ = ("endpoint", "transport", "owner", "closed", "idle_since", "requests")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        # The client connection whose request this connection carries (None while idle).
        self.owner: ServerSide | None = None
        self.closed = False
        self.idle_since = 0.0
        self.requests = 0  # requests carried, >0 means a reused connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            # An idle connection has nothing to say; bytes now mean it is unusable.
            self.close()
            return
        owner.server_data(self, data)

    def eof_received(self) -> bool:
        # Half-closed by the server: the connection ends (connection_lost follows).
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        owner = self.owner
        if owner is None:
            self.endpoint.forget(self)
        else:
            self.owner = None
            owner.server_lost(self, exc)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.server_write_paused(True)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.server_write_paused(False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner = None
            self.endpoint.forget(self)
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner = None
            self.endpoint.forget(self)
            if self.transport is not None:
                self.transport.abort()


class Endpoint:
    """How to reach one server, and its idle connections."""

    __slots__ = (
        "server",
        "pool_config",
        "ssl_context",
        "server_hostname",
        "idle",
        "max_idle",
        "idle_timeout",
        "proxy_protocol",
        "_loop",
    )

    def __init__(
        self,
        server: Server,
        pool_config: PoolConfig,
        ssl_context: ssl.SSLContext | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.server = server
        self.pool_config = pool_config
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname(pool_config, server.config)
        self.idle: list[ServerConnection] = []
        self.max_idle = pool_config.max_idle_per_server
        self.idle_timeout = pool_config.idle_timeout
        # "v1"/"v2": each connection opens with a PROXY header naming its one client, so
        # it is never kept for anyone else; "" = off.
        self.proxy_protocol = (
            "" if pool_config.proxy_protocol == "off" else pool_config.proxy_protocol
        )
        self._loop = loop

    def take_idle(self) -> ServerConnection | None:
        """The most recently used idle connection, or None.

        Those idle for longer than the pool's idle timeout are closed first, not used (the
        sweep that closes them runs once a second): the server may be closing them now.
        """
        idle = self.idle
        if idle:
            self.expire_idle(self._loop.time())
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put_idle(self, conn: ServerConnection, now: float | None = None) -> None:
        """Keep `conn` for reuse; `now` is the loop time, when the caller has it."""
        conn.owner = None
        if conn.closed:
            return
        conn.idle_since = self._loop.time() if now is None else now
        self.idle.append(conn)
        if len(self.idle) > self.max_idle:
            self.idle[0].close()

    def forget(self, conn: ServerConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def expire_idle(self, now: float) -> None:
        """Close idle connections older than the pool's idle timeout (oldest first)."""
        limit = now - self.idle_timeout
        idle = self.idle
        while idle and idle[0].idle_since < limit:
            idle[0].close()

    def close_idle(self) -> None:
        while self.idle:
            self.idle[0].close()

    async def connect(self, timeout: float, header: bytes = b"") -> ServerConnection:
        """A new connection (TCP, and TLS when the pool re-encrypts); raises OSError/timeout.

        `header`: bytes sent first, before TLS (a PROXY protocol header).
        """
        factory: Callable[[], ServerConnection] = lambda: ServerConnection(self)  # noqa: E731
        cfg = self.server.config
        if self.ssl_context is None:
            coro = self._loop.create_connection(factory, cfg.host, cfg.port)
            transport, conn = await asyncio.wait_for(coro, timeout)
            if header:
                transport.write(header)
            return conn
        conn = factory()
        tls = ServerTLS(self.ssl_context, self.server_hostname, conn, header)
        try:
            # One deadline for TCP and the handshake, as for a plain connection.
            await asyncio.wait_for(self._handshaken(tls), timeout)
        except BaseException:
            tls.give_up()
            raise
        return conn

    async def _handshaken(self, tls: ServerTLS) -> None:
        cfg = self.server.config
        await self._loop.create_connection(lambda: tls, cfg.host, cfg.port)
        await tls.ready
