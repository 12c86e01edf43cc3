"""Helpers for the TLS tests: a trustme PKI written to disk, a uvloop TLS server on
loopback in a thread, and a blocking ssl client."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import trustme
import uvloop

from revproxy.config.model import CertificateConfig
from revproxy.tls.context import sni_of

DEADLINE = 5.0


@dataclass(frozen=True)
class IssuedCert:
    config: CertificateConfig
    leaf_der: bytes
    chain_ders: tuple[bytes, ...]


def pem_to_der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))


def write_leaf(
    directory: Path, stem: str, issuer: trustme.CA, *names: str, **kwargs: object
) -> IssuedCert:
    """Issue a leaf, write cert.pem (leaf only), chain.pem (intermediates) and key.pem."""
    leaf = issuer.issue_cert(*names, **kwargs)  # type: ignore[arg-type]
    pems = [blob.bytes() for blob in leaf.cert_chain_pems]
    cert_path = directory / f"{stem}.pem"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(pems[0])
    leaf.private_key_pem.write_to_path(str(key_path))
    chain: tuple[Path, ...] = ()
    if len(pems) > 1:
        chain_path = directory / f"{stem}-chain.pem"
        chain_path.write_bytes(b"".join(pems[1:]))
        chain = (chain_path,)
    return IssuedCert(
        CertificateConfig(cert=cert_path, key=key_path, chain=chain),
        pem_to_der(pems[0]),
        tuple(pem_to_der(p) for p in pems[1:]),
    )


class _HelloProtocol(asyncio.Protocol):
    """Tells the client what the server saw (SNI, ALPN), then closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        transport.write(f"sni={sni_of(ssl_object)} alpn={alpn}\n".encode())
        transport.close()


class LoopThread:
    """A uvloop event loop running in a thread, so blocking ssl clients can drive tests."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        # Handshakes that tests make fail on purpose are expected: kept, not printed.
        self.errors: list[dict[str, object]] = []
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: list[asyncio.AbstractServer] = []

    def serve(self, context: ssl.SSLContext) -> int:
        """Serve `context` on a free loopback port; returns the port."""
        sock = socket.create_server(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])

        async def start() -> asyncio.AbstractServer:
            return await self.loop.create_server(_HelloProtocol, sock=sock, ssl=context)

        server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(DEADLINE)
        self._servers.append(server)
        return port

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
                await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(DEADLINE)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(DEADLINE)
        self.loop.close()


@dataclass
class Hello:
    peer_der: bytes
    server_line: str
    version: str | None
    cipher: str | None


def tls_hello(port: int, context: ssl.SSLContext, server_hostname: str | None) -> Hello:
    """Handshake with the test server and read its one line; raises ssl.SSLError on failure."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            peer = tls.getpeercert(binary_form=True)
            assert peer is not None
            data = b""
            deadline = time.monotonic() + DEADLINE
            while not data.endswith(b"\n") and time.monotonic() < deadline:
                chunk = tls.recv(1024)
                if not chunk:
                    break
                data += chunk
            cipher = tls.cipher()
            return Hello(peer, data.decode().strip(), tls.version(), cipher[0] if cipher else None)


class BlockingServer:
    """One-connection blocking TLS server in a thread: unlike asyncio's SSL transports, a
    blocking SSL socket flushes the alert of a failed handshake to the client."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(DEADLINE)
        self.port = int(self._listener.getsockname()[1])
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, args=(context,), daemon=True)
        self._thread.start()

    def _serve(self, context: ssl.SSLContext) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError as exc:
            self.error = exc
            return
        with conn:
            conn.settimeout(DEADLINE)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(f"sni={sni_of(tls)}\n".encode())
            except (ssl.SSLError, OSError) as exc:
                self.error = exc

    def close(self) -> None:
        self._thread.join(DEADLINE)
        self._listener.close()
