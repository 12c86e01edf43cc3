"""TLS towards the real servers (re-encryption), through the proxy's own TLS layer.

Large bodies stream both ways over a re-encrypted connection, which is kept and reused;
a body the server ends by closing (close_notify, then FIN) arrives whole; a server that
closes during the handshake or never answers it costs no request that a live server can
take, and the connection to a silent one is dropped at the connect timeout.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from harness import (
    ProxyProcess,
    Received,
    ResponseReader,
    ScriptedServer,
    connect,
    exchange,
    http_response,
    simple_config,
    wait_for,
)

BIG = 8 * 1024 * 1024


def _answer(req: Received, sock: socket.socket) -> bytes | None:
    """/big: BIG bytes; /until-close: a body ended by closing; others: the body's length."""
    path = req.request_line.split()[1]
    if path == b"/big":
        return http_response(200, bytes(range(256)) * (BIG // 256))
    if path == b"/until-close":
        sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"z" * 200_000)
        assert isinstance(sock, ssl.SSLSocket)
        sock.unwrap().close()  # close_notify (answered by the proxy's), then the FIN
        return None
    return http_response(200, b"%d" % len(req.body))


class _TLSServer:
    """A scripted real server speaking TLS with a certificate from `ca` for 127.0.0.1."""

    def __init__(self, ca: trustme.CA) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        self.server = ScriptedServer(_answer, tls=ctx).start()


class _HandshakeRefuser:
    """Accepts TCP connections; reads what comes, then closes (or, silent, keeps them)."""

    def __init__(self, silent: bool) -> None:
        self.silent = silent
        self.accepted = 0
        self.closed_by_proxy = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn:
            try:
                conn.recv(65536)  # the ClientHello
                if not self.silent:
                    return  # closed during the handshake
                while conn.recv(65536):  # never answered: wait for the proxy to give up
                    pass
            except OSError:
                pass  # reset by the proxy
            self.closed_by_proxy += 1

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)


@pytest.fixture
def ca(tmp_path: Path) -> trustme.CA:
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "internal.pem"))
    return authority


def _tls_proxy(tmp_path: Path, ports: list[int], service_extra: str = "") -> ProxyProcess:
    extra = "[services.main.limits]\nmax_body_bytes = 20000000\n" + service_extra
    pool = 'tls = true\nca = "internal.pem"\n'
    config = simple_config(ports[0], servers=ports, pool_extra=pool, service_extra=extra)
    return ProxyProcess(config, tmp_path)


@pytest.fixture
def reencrypting(tmp_path: Path, ca: trustme.CA) -> Iterator[tuple[ProxyProcess, ScriptedServer]]:
    backend = _TLSServer(ca).server
    proxy = _tls_proxy(tmp_path, [backend.port])
    try:
        yield proxy, backend
    finally:
        proxy.stop()
        backend.stop()


def test_large_bodies_stream_both_ways_on_one_kept_connection(
    reencrypting: tuple[ProxyProcess, ScriptedServer],
) -> None:
    proxy, backend = reencrypting
    upload = b"u" * BIG
    with connect(proxy.port("plain"), timeout=30) as sock:
        reader = ResponseReader(sock, timeout=30)
        for _ in range(2):
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            got = reader.next()
            assert got.status == 200
            assert got.body == bytes(range(256)) * (BIG // 256)
            head = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(upload)
            sock.sendall(head + upload)
            got = reader.next("POST")
            assert (got.status, got.body) == (200, b"%d" % BIG)
    assert [len(r.body) for r in backend.requests] == [0, BIG, 0, BIG]
    # One re-encrypted connection carried all four requests.
    assert {r.conn_id for r in backend.requests} == {1}
    assert backend.connections == 1


def test_a_body_ended_by_the_server_closing_arrives_whole(
    reencrypting: tuple[ProxyProcess, ScriptedServer],
) -> None:
    proxy, _ = reencrypting
    status, _, body = exchange(proxy.port("plain"), b"GET /until-close HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (status, body) == (200, b"z" * 200_000)


@pytest.mark.parametrize("silent", [False, True], ids=["closes", "silent"])
def test_a_server_failing_the_handshake_costs_no_request(
    tmp_path: Path, ca: trustme.CA, silent: bool
) -> None:
    refuser = _HandshakeRefuser(silent)
    live = _TLSServer(ca).server
    timeouts = "[services.main.timeouts]\nserver_connect = 1\n"
    proxy = _tls_proxy(tmp_path, [refuser.port, live.port], timeouts)
    try:
        for i in range(4):
            started = time.monotonic()
            status, _, body = exchange(
                proxy.port("plain"), b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            )
            assert (status, body) == (200, b"3"), i
            assert time.monotonic() - started < 5
        assert len(live.requests) == 4
        assert refuser.accepted >= 1
        kind = "timeout" if silent else "closed during the TLS handshake"
        wait_for(lambda: f"connect failed: {kind}" in proxy.log(), what="the failure logged")
        if silent:
            # The proxy drops what it gave up on: none of its connections stays open.
            wait_for(lambda: refuser.closed_by_proxy == refuser.accepted, what="all closed")
    finally:
        proxy.stop()
        live.stop()
        refuser.close()
