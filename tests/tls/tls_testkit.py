"""Helpers for the TLS tests: a trustme PKI written to disk, a uvloop TLS server on
loopback in a thread, and a blocking ssl client."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import trustme
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

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


# ---------------------------------------------------------------- certificates made to order


@dataclass(frozen=True)
class Made:
    cert: x509.Certificate
    key: PrivateKeyTypes

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def make_cert(
    name: str,
    issuer: Made | None = None,
    *,
    ca: bool = False,
    dns: tuple[str, ...] = (),
    key: PrivateKeyTypes | None = None,
    digest: hashes.HashAlgorithm | None = None,
    days: float = 90,
    starts_in_days: float = -1,
    ca_issuers_url: str = "",
) -> Made:
    """A certificate signed by `issuer` (self-signed without one), with cryptography."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = now + datetime.timedelta(days=starts_in_days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), critical=False
        )
    if ca_issuers_url:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(ca_issuers_url),
                    )
                ]
            ),
            critical=False,
        )
    signer = issuer.key if issuer else key
    cert = builder.sign(signer, digest or hashes.SHA256())  # type: ignore[arg-type]
    return Made(cert, key)


@dataclass(frozen=True)
class Pki:
    root: Made
    inter: Made  # issued by root
    inter2: Made  # issued by inter
    leaf: Made  # issued by inter2, for site.test and *.site.test


def make_pki(**leaf_options: object) -> Pki:
    root = make_cert("Test Root", ca=True, days=3650)
    inter = make_cert("Test Intermediate 1", root, ca=True, days=1800)
    inter2 = make_cert("Test Intermediate 2", inter, ca=True, days=1800)
    options: dict[str, object] = {"dns": ("site.test", "*.site.test")}
    options.update(leaf_options)
    leaf = make_cert("site.test", inter2, **options)  # type: ignore[arg-type]
    return Pki(root, inter, inter2, leaf)


def write_bytes(path: Path, *blobs: bytes) -> Path:
    path.write_bytes(b"".join(blobs))
    return path


def openssl_sha1_cert(
    workdir: Path, name: str, issuer: Made, *, ca: bool = False, dns: tuple[str, ...] = ()
) -> Made:
    """A certificate signed with SHA-1, which cryptography no longer produces: by openssl.

    Raises FileNotFoundError when there is no openssl command (callers skip).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    made = Made(issuer.cert, key)
    issuer_pem = write_bytes(workdir / "sha1-issuer.pem", issuer.pem())
    issuer_key = write_bytes(workdir / "sha1-issuer.key", issuer.key_pem())
    key_path = write_bytes(workdir / "sha1.key", made.key_pem())
    lines = [f"basicConstraints=critical,CA:{'TRUE' if ca else 'FALSE'}"]
    if dns:
        lines.append("subjectAltName=" + ",".join(f"DNS:{n}" for n in dns))
    ext = write_bytes(workdir / "sha1.ext", "\n".join(lines).encode() + b"\n")
    csr, out = workdir / "sha1.csr", workdir / "sha1.pem"
    commands = [
        ["openssl", "req", "-new", "-key", key_path, "-subj", f"/CN={name}", "-out", csr],
        ["openssl", "x509", "-req", "-in", csr, "-CA", issuer_pem, "-CAkey", issuer_key]
        + ["-sha1", "-days", "90", "-set_serial", "7", "-extfile", ext, "-out", out],
    ]
    for command in commands:
        subprocess.run([str(c) for c in command], check=True, capture_output=True, timeout=DEADLINE)
    return Made(x509.load_pem_x509_certificate(out.read_bytes()), key)
