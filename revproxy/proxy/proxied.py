"""Accepting connections that open with a PROXY protocol header (`proxy_protocol = true`).

Behind another load balancer the socket's peer is that balancer; the header it sends first
names the client. The header is read here, before the connection is handed to the event
loop's transport (and before TLS, which follows the header on the wire, through the same
TLS layer as on other listeners): the header's bytes are taken off the socket exactly, so
whatever follows reaches the proxy or the TLS layer untouched. A connection whose header is
missing, malformed or late is closed without an answer (nothing after a bad header can be
trusted to be framed), as is one from an address outside `proxy_protocol_from`. On a
graceful stop the listening socket closes and headers already on their way are still
read: their requests are answered (with Connection: close) within the grace period like
those of connections accepted before.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

from revproxy.http.proxyproto import (
    V2_MAX,
    ProxyHeader,
    ProxyHeaderError,
    needed,
    parse,
)
from revproxy.proxy.client import ClientConnection
from revproxy.proxy.runtime import AddressSet, Listener
from revproxy.proxy.tlslayer import TLSLayer

log = logging.getLogger("revproxy.proxy")

ACCEPT_BATCH = 64  # connections accepted per readiness of the listening socket
ACCEPT_PAUSE = 1.0  # seconds without accepting after running out of descriptors
_LOG_EVERY = 100
# Out of descriptors or memory: accepting again at once would fail again at once.
_ACCEPT_RESOURCE_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


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
        self._allowed = AddressSet(listener.config.proxy_protocol_from)
        self._reading: set[asyncio.Task[None]] = set()  # header not yet read
        self._opening: set[asyncio.Task[None]] = set()  # being handed to the event loop
        self._rejected = 0
        self._accept_failures = 0
        self._closed = False
        self._paused: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    @property
    def pending(self) -> int:
        """Connections accepted whose header is still being read."""
        return len(self._reading)

    def close(self) -> None:
        """Stop accepting and close the listening socket; headers on their way are read."""
        if self._closed:
            return
        self._closed = True
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        else:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def abort(self) -> None:
        """Close the connections whose header has not arrived (the grace period is over)."""
        for task in list(self._reading):
            task.cancel()

    # ------------------------------------------------------------------ accepting

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # gone before it was accepted
            except OSError as exc:
                if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                    # The backlog keeps the connections; look again in a while rather
                    # than be woken at once by the same readable socket.
                    self._pause_accepting(exc)
                    return
                log.warning("listener %s: accept failed: %s", self._listener.name, exc)
                return
            conn.setblocking(False)
            peer = str(addr[0])
            # Those not yet the proxy's: header being read, or (TLS) handshake under way.
            starting = len(self._reading) + len(self._opening) + self._listener.tls_handshaking
            if starting >= self._listener.max_connections:
                self._reject(conn, peer, "limit", "over max_connections")
                continue
            if self._allowed.networks and not self._allowed.holds(peer):
                self._reject(conn, peer, "source", "not in proxy_protocol_from")
                continue
            task = self._loop.create_task(self._open(conn, peer))
            self._reading.add(task)

    def _pause_accepting(self, exc: OSError) -> None:
        if self._accept_failures % _LOG_EVERY == 0:
            log.warning(
                "listener %s: accept failed: %s; accepting again in %.0f s (%d such so far)",
                self._listener.name,
                exc,
                ACCEPT_PAUSE,
                self._accept_failures + 1,
            )
        self._accept_failures += 1
        self._loop.remove_reader(self._sock.fileno())
        self._paused = self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._paused = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

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
            self._reading.discard(task)
        client = header.source[0] if header.source is not None else peer

        listener = self._listener

        def factory() -> asyncio.BaseProtocol:
            proto = self._factory()
            if header.source is not None:
                proto.set_client(header.source, header.destination)
            return proto if listener.ssl_context is None else TLSLayer(listener, proto)

        self._opening.add(task)
        try:
            await self._loop.connect_accepted_socket(factory, conn)
        except OSError as exc:
            log.debug("listener %s: client %s: %s", listener.name, client, exc)
        finally:
            self._opening.discard(task)

    async def _read_header(self, conn: socket.socket) -> ProxyHeader:
        # Bytes are taken off the socket as they come, never past the header's end: a look
        # (MSG_PEEK) shows where the end is once it has arrived; until then every byte
        # there is the header's. Taking them means an end of file is seen when it comes,
        # and the socket is readable again only when more arrives.
        got = b""
        while True:
            await self._readable(conn)
            try:
                data = got + conn.recv(V2_MAX - len(got), socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                continue
            if len(data) == len(got):
                raise ProxyHeaderError("connection closed before the header was complete")
            length = needed(data)
            if length and len(data) >= length:
                got += conn.recv(length - len(got))
                header = parse(got)
                if header is None:
                    raise ProxyHeaderError("header cut short")
                return header
            got += conn.recv(len(data) - len(got))

    async def _readable(self, conn: socket.socket) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        fd = conn.fileno()
        self._loop.add_reader(fd, _set, fut)
        try:
            await fut
        finally:
            self._loop.remove_reader(fd)
