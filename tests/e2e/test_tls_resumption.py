"""TLS session resumption across worker processes.

With several workers on one listening port the kernel spreads new connections over them,
so a client that comes back may reach a different worker than the one that gave it its
session ticket. Every worker must accept every worker's tickets: a resumed handshake skips
the certificate signature, the costliest part of a new TLS connection.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trustme
from harness import ProxyProcess, ScriptedServer, read_response

RECONNECTS = 16  # all landing on one of 2 workers by chance: 2 in 65,536


@dataclass
class Setup:
    proxy: ProxyProcess
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("resumption")
    ca = trustme.CA()
    cert = ca.issue_cert("a.test")
    (tmp / "a.pem").write_bytes(cert.cert_chain_pems[0].bytes())
    (tmp / "a.key").write_bytes(cert.private_key_pem.bytes())
    backend = ScriptedServer().start()
    config = f"""
[global]
workers = 2
shutdown_grace = 2

[listeners.https]
bind = "127.0.0.1:0"
tls = true
  [[listeners.https.certificates]]
  cert = "a.pem"
  key = "a.key"

[services.main]
hosts = ["*"]
pool = "p"

[pools.p]
servers = ["127.0.0.1:{backend.port}"]
"""
    proxy = ProxyProcess(config, tmp)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        yield Setup(proxy, client)
    finally:
        proxy.stop()
        backend.stop()


def _get(
    setup: Setup, version: ssl.TLSVersion, session: ssl.SSLSession | None
) -> tuple[ssl.SSLSession | None, bool]:
    """One request on a new connection; returns the session to resume and whether this one was."""
    context = setup.client
    raw = socket.create_connection(("127.0.0.1", setup.proxy.port("https")), timeout=10)
    with context.wrap_socket(raw, server_hostname="a.test", session=session) as tls:
        assert (
            tls.version()
            == {
                ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                ssl.TLSVersion.TLSv1_3: "TLSv1.3",
            }[version]
        )
        tls.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        # TLS 1.3 tickets come after the handshake: reading the response takes them in.
        status, _, _ = read_response(tls)
        assert status == 200
        return tls.session, tls.session_reused


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["TLSv1.3", "TLSv1.2"]
)
def test_every_worker_resumes_every_workers_sessions(setup: Setup, version: ssl.TLSVersion) -> None:
    setup.client.minimum_version = setup.client.maximum_version = version
    session, reused = _get(setup, version, None)
    assert session is not None and not reused
    resumed = []
    for _ in range(RECONNECTS):
        _, reused = _get(setup, version, session)
        resumed.append(reused)
    assert all(resumed), f"{resumed.count(False)} of {RECONNECTS} reconnects were not resumed"
