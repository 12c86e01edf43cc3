"""The listeners' TLS layer, through the real proxy with real TLS clients.

Pipelined requests whose responses outrun the client pass the layer's read pause and come
back whole and in order; a large upload streams through it; a client's close_notify is
answered with the proxy's and the connection ends; requests sent before a client's FIN or
close_notify are still answered, then the connection ends; an early answer (413 while the body still
comes) ends with close_notify and a FIN, the rest of the body read and dropped, not with a
reset; a client that never starts its handshake is cut at the header timeout and counted
as a failed handshake.
"""

from __future__ import annotations

import socket
import ssl
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
    admin_url,
    closed_by_peer,
    http_call,
    http_response,
    issue_cert,
    simple_config,
    wait_for,
    with_tls,
)

BIG = 300_000  # bytes per response: 20 of them are far more than the write buffers hold


def _sized(req: Received, sock: socket.socket) -> bytes:
    """/big/N answers BIG bytes of the letter for N; other paths echo the body's length."""
    path = req.request_line.split()[1].decode()
    if path.startswith("/big/"):
        letter = chr(ord("a") + int(path.rsplit("/", 1)[1]) % 26).encode()
        return http_response(200, letter * BIG)
    return http_response(200, f"{path} {len(req.body)}".encode())


@pytest.fixture
def tls_proxy(tmp_path: Path) -> Iterator[tuple[ProxyProcess, ssl.SSLContext]]:
    ca = trustme.CA()
    server = ScriptedServer(_sized).start()
    extra = (
        "[services.main.timeouts]\nclient_header = 1\n"
        "[services.main.limits]\nmax_body_bytes = 10000000\n"
        '\n[admin]\nbind = "127.0.0.1:0"\n'
    )
    config = with_tls(
        simple_config(server.port, service_extra=extra), [issue_cert(ca, "a.test", tmp_path)]
    )
    proxy = ProxyProcess(config, tmp_path)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    try:
        yield proxy, client
    finally:
        assert proxy.stop() == 0
        server.stop()


def _tls(proxy: ProxyProcess, client: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", proxy.port("plain")), timeout=10)
    return client.wrap_socket(raw, server_hostname="a.test")


def _ask_for_big(sock: ssl.SSLSocket, count: int = 20) -> None:
    """`count` requests for /big/0, /big/1, ... in one write."""
    sock.sendall(
        b"".join(b"GET /big/%d HTTP/1.1\r\nHost: a.test\r\n\r\n" % i for i in range(count))
    )


def _read_big(proxy: ProxyProcess, reader: ResponseReader, count: int = 20) -> None:
    """The answers to _ask_for_big, each whole and in order."""
    for i in range(count):
        try:
            resp = reader.next()
        except EOFError:
            raise AssertionError(f"closed before response {i}: {proxy.log()}") from None
        assert (resp.status, resp.body) == (200, chr(ord("a") + i).encode() * BIG), i


def test_pipelined_requests_outrunning_the_client_come_back_whole_and_in_order(
    tls_proxy: tuple[ProxyProcess, ssl.SSLContext],
) -> None:
    proxy, client = tls_proxy
    with _tls(proxy, client) as sock:
        # 20 requests in one write; the client reads nothing until all are sent, so the
        # proxy pauses reading (records wait in the layer) and resumes as it drains.
        _ask_for_big(sock)
        reader = ResponseReader(sock)
        _read_big(proxy, reader)
        sock.sendall(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert reader.next().body == b"/after 0"


def test_large_upload_streams_through(tls_proxy: tuple[ProxyProcess, ssl.SSLContext]) -> None:
    proxy, client = tls_proxy
    size = 8 * 1024 * 1024
    with _tls(proxy, client) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"u" * 65536
        for _ in range(size // len(chunk)):
            sock.sendall(chunk)
        resp = ResponseReader(sock).next()
        assert (resp.status, resp.body) == (200, b"/up %d" % size)


def test_client_close_notify_is_answered_and_the_connection_ends(
    tls_proxy: tuple[ProxyProcess, ssl.SSLContext],
) -> None:
    proxy, client = tls_proxy
    sock = _tls(proxy, client)
    try:
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert ResponseReader(sock).next().body == b"/one 0"
        # The client ends TLS on a kept-alive connection: unwrap returns once the proxy's
        # own close_notify arrives, and the TCP connection then closes.
        plain = sock.unwrap()
        assert closed_by_peer(plain, 5.0)
        plain.close()
    finally:
        sock.close()


def test_pipelined_requests_before_a_fin_are_all_answered(
    tls_proxy: tuple[ProxyProcess, ssl.SSLContext],
) -> None:
    proxy, client = tls_proxy
    with _tls(proxy, client) as sock:
        # 20 large answers, then the client's FIN (no close_notify): the proxy is still
        # paused on the first answers when the FIN comes, with the later requests' records
        # waiting in the layer. The client has nothing more to send, but wants its answers.
        _ask_for_big(sock)
        socket.socket.shutdown(sock, socket.SHUT_WR)  # the TCP FIN under the TLS socket
        _read_big(proxy, ResponseReader(sock))
        assert closed_by_peer(sock, 5.0)


def _pump(out: ssl.MemoryBIO, sock: socket.socket) -> None:
    data = out.read()
    if data:
        sock.sendall(data)


def test_close_notify_after_a_request_still_gets_its_answer(
    tls_proxy: tuple[ProxyProcess, ssl.SSLContext],
) -> None:
    proxy, client = tls_proxy
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client.wrap_bio(incoming, outgoing, server_hostname="a.test")
    with socket.create_connection(("127.0.0.1", proxy.port("plain")), timeout=10) as sock:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                _pump(outgoing, sock)
                incoming.write(sock.recv(65536))
        _pump(outgoing, sock)
        # The request and the client's close_notify in one write, no FIN: TLS 1.3 lets
        # the client end its sending while it still reads.
        obj.write(b"GET /big/3 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        with pytest.raises(ssl.SSLWantReadError):
            obj.unwrap()  # writes close_notify, then waits for the proxy's
        _pump(outgoing, sock)
        plaintext = b""
        ended = False
        deadline = time.monotonic() + 10
        while not ended and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
            while True:
                try:
                    piece = obj.read(65536)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    ended = True  # the proxy's close_notify
                    break
                if not piece:
                    ended = True
                    break
                plaintext += piece
    head, _, body = plaintext.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), plaintext[:200]
    assert body == b"d" * BIG
    assert ended, "no close_notify from the proxy after the answer"


def test_client_that_never_starts_its_handshake_is_cut_and_counted(
    tls_proxy: tuple[ProxyProcess, ssl.SSLContext],
) -> None:
    proxy, _ = tls_proxy
    admin = admin_url(proxy)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port("plain")), timeout=10) as sock:
        # No ClientHello: the header timeout (1 s) ends the handshake.
        assert closed_by_peer(sock, 6.0)
    assert 0.9 <= time.monotonic() - started < 5.0

    def counted() -> bool:
        text = http_call(admin + "/metrics")[1].decode()
        return 'revproxy_tls_handshake_failures_total{listener="plain"} 1.0' in text

    wait_for(counted, 10, "the failed handshake in the metrics")


def test_early_answer_ends_with_close_notify_and_fin_not_a_reset(
    tls_proxy: tuple[ProxyProcess, ssl.SSLContext],
) -> None:
    proxy, client = tls_proxy
    with _tls(proxy, client) as sock:
        # Over max_body_bytes: answered 413 at once, while the body keeps coming.
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 50000000\r\n\r\n")
        sock.sendall(b"x" * 262144)
        resp = ResponseReader(sock).next()
        assert resp.status == 413
        # More body after the answer is read and dropped by the proxy; the connection then
        # ends cleanly: the proxy's close_notify (recv returns b"") rather than a reset.
        sock.sendall(b"x" * 65536)
        sock.settimeout(10)
        assert sock.recv(65536) == b""
