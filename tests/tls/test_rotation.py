"""Certificate rotation without restart: new files, SIGHUP, new certificate for new
connections, no failed request, and a request in flight on an old connection finishes."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from harness import ProxyProcess, Received, ScriptedServer, wait_for

DEADLINE = 10.0


def _install(directory: Path, leaf: trustme.LeafCert) -> None:
    """Replace cert.pem and key.pem the way an administrator's tooling should: atomically."""
    for name, blob in (("key.pem", leaf.private_key_pem), ("cert.pem", leaf.cert_chain_pems[0])):
        temporary = directory / f".{name}.new"
        blob.write_to_path(str(temporary))
        os.replace(temporary, directory / name)


def _leaf_der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def _client(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def _read_response(tls: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = tls.recv(4096)
        if not chunk:
            break
        body += chunk
    return head.split(b"\r\n")[0] + b" " + body


@dataclass
class ClientLoop:
    """New TLS connection per request, one request each, until stopped (or 2000 requests)."""

    port: int
    context: ssl.SSLContext
    certificates: list[bytes] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.certificates) < 2000:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE) as raw:
                    with self.context.wrap_socket(raw, server_hostname="site.test") as tls:
                        peer = tls.getpeercert(binary_form=True)
                        tls.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
                        answer = _read_response(tls)
                if not answer.startswith(b"HTTP/1.1 200"):
                    self.failures.append(answer.decode(errors="replace"))
                elif peer is not None:
                    self.certificates.append(peer)
            except (OSError, StopIteration) as exc:
                self.failures.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)


def test_rotation_on_sighup(tmp_path: Path) -> None:
    ca = trustme.CA()
    first, second = ca.issue_cert("site.test"), ca.issue_cert("site.test")
    _install(tmp_path, first)
    release = threading.Event()

    def respond(req: Received, sock: socket.socket) -> bytes:
        if req.request_line.startswith(b"GET /slow"):
            release.wait(DEADLINE * 2)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    backend = ScriptedServer(respond).start()
    config = f"""
[global]
workers = 1
shutdown_grace = 5

[listeners.https]
bind = "127.0.0.1:0"
tls = true
  [[listeners.https.certificates]]
  cert = "cert.pem"
  key = "key.pem"

[services.site]
hosts = ["site.test"]
pool = "p"

[pools.p]
servers = ["127.0.0.1:{backend.port}"]
"""
    proxy = ProxyProcess(config, tmp_path)
    loop: ClientLoop | None = None
    try:
        port = proxy.port("https")
        client = _client(ca)
        # A request in flight on a connection opened with the first certificate.
        raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE * 2)
        before = client.wrap_socket(raw, server_hostname="site.test")
        assert before.getpeercert(binary_form=True) == _leaf_der(first)
        before.sendall(b"GET /slow HTTP/1.1\r\nHost: site.test\r\n\r\n")
        wait_for(lambda: backend.requests, DEADLINE, "the slow request to reach the server")

        loop = ClientLoop(port, client)
        wait_for(lambda: len(loop.certificates) >= 10, DEADLINE, "requests before rotation")
        _install(tmp_path, second)
        proxy.signal(signal.SIGHUP)
        new = _leaf_der(second)
        wait_for(lambda: new in loop.certificates, DEADLINE, "the new certificate")
        mark = loop.certificates.index(new)
        wait_for(lambda: len(loop.certificates) >= mark + 30, DEADLINE, "requests after")

        release.set()
        assert _read_response(before) == b"HTTP/1.1 200 OK ok"
        before.close()

        loop.stop()
        assert loop.failures == []
        assert set(loop.certificates[:10]) == {_leaf_der(first)}
        assert set(loop.certificates[-10:]) == {new}

        # A bad rotation: the reason is logged and the running certificate keeps serving.
        (tmp_path / "cert.pem").write_bytes(b"this is not a certificate\n")
        proxy.signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in proxy.log(), DEADLINE, "the refused reload")
        log = proxy.log()
        assert f"{tmp_path / 'cert.pem'}: no certificate found in certificate file" in log
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw2:
            with client.wrap_socket(raw2, server_hostname="site.test") as tls:
                assert tls.getpeercert(binary_form=True) == new
                tls.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
                assert _read_response(tls) == b"HTTP/1.1 200 OK ok"
    finally:
        release.set()
        if loop is not None:
            loop.stop()
        proxy.stop()
        backend.stop()
