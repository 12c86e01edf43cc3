"""The floor: a bare byte relay on uvloop, the least any asyncio proxy in Python can do.

Each client connection gets its own connection to the backend, opened when the client
connects, and bytes are copied both ways as they come (with flow control: a side stops
reading while the other side's write buffer is full). No HTTP parsing, no routing, no
headers added, no timeouts, no load balancing. The bench measures it next to nginx and
revproxy so the report shows how much of the gap is Python and uvloop themselves.

Usage: python bench/floor.py PLAIN_PORT TLS_PORT BACKEND_PORT CERT KEY [WORKERS]
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import sys
from typing import cast

import uvloop

_HIGH = 256 * 1024  # bytes buffered towards one side before the other side pauses


class Relay(asyncio.Protocol):
    """One direction's reader; `peer` is the Relay on the other socket."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Relay | None = None
        self.early: list[bytes] = []  # client bytes that came before the backend connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(_HIGH)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
            return
        peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class ClientSide(Relay):
    def __init__(self, backend_port: int) -> None:
        super().__init__()
        self.backend_port = backend_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, backend = await loop.create_connection(Relay, "127.0.0.1", self.backend_port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        backend.peer, self.peer = self, backend
        assert backend.transport is not None
        for data in self.early:
            backend.transport.write(data)
        self.early.clear()
        if self.transport is None or self.transport.is_closing():
            backend.transport.close()


async def serve(
    plain: socket.socket, tls: socket.socket, backend_port: int, ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    servers = [
        await loop.create_server(lambda: ClientSide(backend_port), sock=plain),
        await loop.create_server(lambda: ClientSide(backend_port), sock=tls, ssl=ctx),
    ]
    await stop.wait()
    for server in servers:
        server.close()


def listening(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def main(argv: list[str]) -> int:
    plain_port, tls_port, backend_port = (int(a) for a in argv[:3])
    cert, key = argv[3], argv[4]
    workers = int(argv[5]) if len(argv) > 5 else 2
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            # Each worker its own SO_REUSEPORT sockets, as revproxy's workers have.
            plain, tls = listening(plain_port), listening(tls_port)
            uvloop.run(serve(plain, tls, backend_port, ctx))
            os._exit(0)
        children.append(pid)

    def forward(signum: int, frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
