"""Accepting connections that open with a PROXY protocol header (`proxy_protocol = true`).

Behind another load balancer the socket's peer is that balancer; the header it sends first
names the client. The header is read here, before the connection is handed to the event
loop's transport (and before TLS, which follows the header on the wire): the header's bytes
are taken off the socket exactly, so whatever follows reaches the proxy or the TLS layer
untouched. A connection whose header is missing, malformed or late is closed without an
answer (nothing after a bad header can be trusted to be framed), as is one from an address
outside `proxy_protocol_from`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable

from revproxy.http.proxyproto import (
    V2_MAX,
    ProxyHeader,
    ProxyHeaderError,
    needed,
    parse,
    plain_address,
)
from revproxy.proxy.client import ClientConnection
from revproxy.proxy.runtime import Listener

log = logging.getLogger("revproxy.proxy")

ACCEPT_BATCH = 64  # connections accepted per readiness of the listening socket
PEEK_RETRY = 0.005  # seconds between looks at a header that has only partly arrived
_LOG_EVERY = 100


def _set(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ProxyProtocolServer:
    """One listener's accept loop for connections that start with a PROXY header."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        listener: Listener,
        factory: Callable[[], ClientConnection],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._listener = listener
        self._factory = factory
        self._allowed = tuple(
            ipaddress.ip_network(n, strict=False) for n in listener.config.proxy_protocol_from
        )
        self._reading: dict[asyncio.Task[None], socket.socket] = {}  # header not yet read
        self._opening: set[asyncio.Task[None]] = set()  # handed on, TLS handshake running
        self._rejected = 0
        self._closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; connections whose header has not arrived yet are closed."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        for task in list(self._reading):
            task.cancel()

    # ------------------------------------------------------------------ accepting

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of file descriptors or the like: the backlog keeps the connection.
                log.warning("listener %s: accept failed: %s", self._listener.name, exc)
                return
            conn.setblocking(False)
            peer = str(addr[0])
            if len(self._reading) + len(self._opening) >= self._listener.max_connections:
                self._reject(conn, peer, "limit", "over max_connections")
                continue
            if self._allowed and not self._trusted(peer):
                self._reject(conn, peer, "source", "not in proxy_protocol_from")
                continue
            task = self._loop.create_task(self._open(conn, peer))
            self._reading[task] = conn

    def _trusted(self, peer: str) -> bool:
        try:
            address = plain_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._allowed)

    def _reject(self, conn: socket.socket, peer: str, reason: str, why: str) -> None:
        conn.close()
        self._listener.stats.proxy_refused(self._listener.name, reason)
        if self._rejected % _LOG_EVERY == 0:
            log.warning(
                "listener %s: connection from %s closed: %s (%d such so far)",
                self._listener.name,
                peer,
                why,
                self._rejected + 1,
            )
        self._rejected += 1

    async def _open(self, conn: socket.socket, peer: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            async with asyncio.timeout(self._listener.t_header):
                header = await self._read_header(conn)
        except asyncio.CancelledError:
            conn.close()
            raise
        except TimeoutError:
            self._reject(conn, peer, "timeout", "no complete PROXY protocol header in time")
            return
        except ProxyHeaderError as exc:
            self._reject(conn, peer, "header", f"PROXY protocol header: {exc}")
            return
        except OSError as exc:
            conn.close()
            log.debug("listener %s: client %s: %s", self._listener.name, peer, exc)
            return
        finally:
            self._reading.pop(task, None)
        client = header.source[0] if header.source is not None else peer

        def factory() -> ClientConnection:
            proto = self._factory()
            if header.source is not None:
                proto.set_client(header.source, header.destination)
            return proto

        listener = self._listener
        self._opening.add(task)
        try:
            await self._loop.connect_accepted_socket(
                factory,
                conn,
                ssl=listener.ssl_context,
                ssl_handshake_timeout=listener.t_header if listener.ssl_context else None,
            )
        except (TimeoutError, OSError) as exc:
            # A failed TLS handshake: counted by the listener's handshake sweep.
            log.debug("listener %s: client %s: %s", listener.name, client, exc)
        finally:
            self._opening.discard(task)

    async def _read_header(self, conn: socket.socket) -> ProxyHeader:
        seen = -1
        while True:
            await self._readable(conn)
            data = conn.recv(V2_MAX, socket.MSG_PEEK)
            if not data:
                raise ProxyHeaderError("connection closed before the header was complete")
            length = needed(data)
            if length and len(data) >= length:
                # Take exactly the header off the socket: what follows is the client's.
                header = parse(conn.recv(length))
                assert header is not None
                return header
            if len(data) == seen:
                # Only part of the header is here and the socket stays readable: look again
                # a little later rather than spin.
                await asyncio.sleep(PEEK_RETRY)
            seen = len(data)

    async def _readable(self, conn: socket.socket) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        fd = conn.fileno()
        self._loop.add_reader(fd, _set, fut)
        try:
            await fut
        finally:
            self._loop.remove_reader(fd)
