"""Keep-alive on both sides: reuse, HTTP/1.0, Connection: close, stale server connections,
NTLM connection pinning and per-request balancing.

Each behaviour has its own host name, service, pool and scripted server, so that the idle
server connections one test leaves behind are not taken by another.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from harness import (
    ProxyProcess,
    Received,
    ResponseReader,
    TrackingServer,
    by_path,
    connect,
    http_response,
    read_until_closed,
    wait_for,
)


class PerConnection:
    """A responder that knows how many requests each server connection has carried."""

    def __init__(self, first, later) -> None:  # type: ignore[no-untyped-def]
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()
        self._first = first
        self._later = later

    def __call__(self, req: Received, sock: socket.socket) -> bytes | None:
        with self._lock:
            n = self._counts[req.conn_id] = self._counts.get(req.conn_id, 0) + 1
        return (self._first if n == 1 else self._later)(req, sock)


def _answer(req: Received, sock: socket.socket) -> bytes:
    body = b"conn %d: %s" % (req.conn_id, req.request_line)
    return http_response(200, body)


def _hang_up(req: Received, sock: socket.socket) -> None:
    sock.close()


def _ntlm_challenge(req: Received, sock: socket.socket) -> bytes:
    return http_response(401, b"", ("WWW-Authenticate: NTLM", "WWW-Authenticate: Negotiate"))


def _named(name: bytes):  # type: ignore[no-untyped-def]
    return lambda req, sock: http_response(200, name)


DEFAULT_ROUTES = {
    "/chunked": lambda req, sock: (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    ),
    "/http10-server": lambda req, sock: b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold",
    "/server-closes": lambda req, sock: (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    ),
}


@dataclass
class Setup:
    port: int
    proxy: ProxyProcess
    servers: dict[str, TrackingServer]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    servers = {
        "default": TrackingServer(responder=by_path(DEFAULT_ROUTES, _answer)),
        "reuse": TrackingServer(responder=_answer),
        "stale": TrackingServer(responder=PerConnection(_answer, _hang_up)),
        "stale-post": TrackingServer(responder=PerConnection(_answer, _hang_up)),
        "stale-put": TrackingServer(responder=PerConnection(_answer, _hang_up)),
        "ntlm": TrackingServer(responder=PerConnection(_ntlm_challenge, _answer)),
        "rr-a": TrackingServer(responder=_named(b"a")),
        "rr-b": TrackingServer(responder=_named(b"b")),
    }
    for server in servers.values():
        server.start()

    def addr(name: str) -> str:
        return f'"127.0.0.1:{servers[name].port}"'

    config = """
[global]
workers = 1
shutdown_grace = 1

[listeners.plain]
bind = "127.0.0.1:0"

[services.default]
hosts = ["*"]
pool = "default"
"""
    pools = {
        "default": ["default"],
        "reuse": ["reuse"],
        "stale": ["stale"],
        "stale-post": ["stale-post"],
        "stale-put": ["stale-put"],
        "ntlm": ["ntlm"],
        "rr": ["rr-a", "rr-b"],
    }
    for name, members in pools.items():
        if name != "default":
            config += f'\n[services.{name}]\nhosts = ["{name}.test"]\npool = "{name}"\n'
        config += f"\n[pools.{name}]\nservers = [{', '.join(addr(m) for m in members)}]\n"
    proxy = ProxyProcess(config, tmp_path_factory.mktemp("keepalive"))
    try:
        yield Setup(proxy.port("plain"), proxy, servers)
    finally:
        proxy.stop()
        for server in servers.values():
            server.stop()


def _req(path: str, host: str = "example.test", version: str = "1.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: {host}\r\n{extra}\r\n".encode()


def test_requests_on_one_client_connection_share_one_server_connection(setup: Setup) -> None:
    server = setup.servers["reuse"]
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        for i in range(5):
            sock.sendall(_req(f"/r{i}", "reuse.test"))
            resp = reader.next()
            assert resp.status == 200
            assert resp.header("connection") is None
    assert server.connections == 1
    assert {r.conn_id for r in server.requests} == {1}
    assert len(server.requests) == 5
    # A later client connection gets the same idle server connection.
    with connect(setup.port) as sock:
        sock.sendall(_req("/again", "reuse.test"))
        assert ResponseReader(sock).next().body == b"conn 1: GET /again HTTP/1.1"
    assert server.connections == 1


def test_http10_without_keep_alive_is_closed_after_the_response(setup: Setup) -> None:
    with connect(setup.port) as sock:
        sock.sendall(_req("/old", version="1.0"))
        data, how = read_until_closed(sock)
    assert how == "eof"
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"keep-alive" not in head.lower()
    assert body.endswith(b"GET /old HTTP/1.1")


def test_http10_with_keep_alive_stays_open(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        for path in ("/old-ka-1", "/old-ka-2"):
            sock.sendall(_req(path, version="1.0", extra="Connection: keep-alive\r\n"))
            resp = reader.next()
            assert resp.status == 200
            assert resp.header("connection") == "keep-alive"
            assert resp.body.endswith(f"GET {path} HTTP/1.1".encode())
        # Without keep-alive this time: the last response, then the close.
        sock.sendall(_req("/old-ka-3", version="1.0"))
        last = reader.next()
        assert last.body.endswith(b"GET /old-ka-3 HTTP/1.1")
        assert read_until_closed(sock) == (b"", "eof")


def test_connection_close_from_the_client(setup: Setup) -> None:
    with connect(setup.port) as sock:
        sock.sendall(_req("/bye", extra="Connection: close\r\n"))
        reader = ResponseReader(sock)
        resp = reader.next()
        assert resp.status == 200
        assert resp.header("connection") == "close"
        assert read_until_closed(sock) == (b"", "eof")


def test_server_connection_close_is_not_passed_to_the_client(setup: Setup) -> None:
    server = setup.servers["default"]
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_req("/server-closes"))
        first = reader.next()
        sock.sendall(_req("/after-server-close"))
        second = reader.next()
    assert (first.status, first.body) == (200, b"ok")
    assert first.header("connection") is None  # the client connection goes on
    assert second.status == 200
    closing = [r for r in server.requests if b"/server-closes" in r.request_line][-1]
    after = [r for r in server.requests if b"/after-server-close" in r.request_line][-1]
    assert after.conn_id != closing.conn_id


def test_stale_server_connection_is_retried_for_get(setup: Setup) -> None:
    server = setup.servers["stale"]
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_req("/s1", "stale.test"))
        assert reader.next().body == b"conn 1: GET /s1 HTTP/1.1"
        # The server hangs up on the reused connection without answering the request.
        sock.sendall(_req("/s2", "stale.test"))
        resp = reader.next()
    assert (resp.status, resp.body) == (200, b"conn 2: GET /s2 HTTP/1.1")
    assert [(r.conn_id, r.request_line) for r in server.requests] == [
        (1, b"GET /s1 HTTP/1.1"),
        (1, b"GET /s2 HTTP/1.1"),
        (2, b"GET /s2 HTTP/1.1"),
    ]


def test_stale_server_connection_is_not_retried_for_post(setup: Setup) -> None:
    server = setup.servers["stale-post"]
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_req("/p1", "stale-post.test"))
        assert reader.next().status == 200
        sock.sendall(b"POST /p2 HTTP/1.1\r\nHost: stale-post.test\r\nContent-Length: 3\r\n\r\nabc")
        resp = reader.next("POST")
        assert resp.status == 502
        assert read_until_closed(sock)[1] in ("eof", "reset")
    wait_for(lambda: server.open_connections == 0, 5.0, "server connections to end")
    assert [(r.conn_id, r.request_line) for r in server.requests] == [
        (1, b"GET /p1 HTTP/1.1"),
        (1, b"POST /p2 HTTP/1.1"),
    ]
    assert server.connections == 1


@pytest.mark.parametrize("extra", ["", "Connection: keep-alive\r\n"])
def test_chunked_response_to_http10_client_is_dechunked_and_closed(
    setup: Setup, extra: str
) -> None:
    with connect(setup.port) as sock:
        sock.sendall(_req("/chunked", version="1.0", extra=extra))
        data, how = read_until_closed(sock)
    assert how == "eof"
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert b"keep-alive" not in head.lower()
    assert body == b"hello world"


def test_ntlm_challenge_pins_the_server_connection(setup: Setup) -> None:
    server = setup.servers["ntlm"]
    with connect(setup.port) as a:
        ra = ResponseReader(a)
        a.sendall(_req("/a1", "ntlm.test"))
        challenge = ra.next()
        assert challenge.status == 401
        assert challenge.all("www-authenticate") == ["NTLM", "Negotiate"]
        a.sendall(_req("/a2", "ntlm.test", extra="Authorization: NTLM TlRMTVNTUAAB\r\n"))
        assert ra.next().body == b"conn 1: GET /a2 HTTP/1.1"

        # Another client never gets the connection that client A authenticated.
        with connect(setup.port) as b:
            b.sendall(_req("/b1", "ntlm.test"))
            assert ResponseReader(b).next().status == 401
        b_conn = [r for r in server.requests if b"/b1" in r.request_line][0].conn_id
        assert b_conn != 1

        a.sendall(_req("/a3", "ntlm.test"))
        assert ra.next().body == b"conn 1: GET /a3 HTTP/1.1"
    # The pinned connection dies with its client connection.
    wait_for(lambda: 1 in server.ended, 5.0, "the pinned server connection to close")
    # Nor is it handed out after that.
    with connect(setup.port) as c:
        c.sendall(_req("/c1", "ntlm.test"))
        assert ResponseReader(c).next().status == 401
    c_conn = [r for r in server.requests if b"/c1" in r.request_line][0].conn_id
    assert c_conn not in (1, b_conn)


def test_requests_on_one_connection_are_balanced_per_request(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        names = []
        for i in range(4):
            sock.sendall(_req(f"/rr{i}", "rr.test"))
            names.append(reader.next().body)
    assert names in ([b"a", b"b", b"a", b"b"], [b"b", b"a", b"b", b"a"]), names
    assert len(setup.servers["rr-a"].requests) == 2
    assert len(setup.servers["rr-b"].requests) == 2


def test_requests_after_connection_close_are_not_served(setup: Setup) -> None:
    server = setup.servers["default"]
    with connect(setup.port) as sock:
        sock.sendall(_req("/last", extra="Connection: close\r\n") + _req("/never-served"))
        reader = ResponseReader(sock)
        resp = reader.next()
        assert resp.header("connection") == "close"
        assert read_until_closed(sock) == (b"", "eof")
    assert resp.body.endswith(b"GET /last HTTP/1.1")
    assert not [r for r in server.requests if b"/never-served" in r.request_line]


def test_half_closed_client_still_gets_its_response(setup: Setup) -> None:
    with connect(setup.port) as sock:
        sock.sendall(_req("/half-closed"))
        sock.shutdown(socket.SHUT_WR)
        data, how = read_until_closed(sock)
    assert how == "eof"
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"GET /half-closed HTTP/1.1")


def test_pipelined_requests_before_a_half_close_are_all_answered(setup: Setup) -> None:
    # The client said it has nothing more to send, not that it wants no more answers.
    with connect(setup.port) as sock:
        sock.sendall(_req("/hc-1") + _req("/hc-2"))
        sock.shutdown(socket.SHUT_WR)
        reader = ResponseReader(sock, timeout=5.0)
        first = reader.next()
        second = reader.next()
        assert read_until_closed(sock) == (b"", "eof")
    assert first.body.endswith(b"GET /hc-1 HTTP/1.1")
    assert second.body.endswith(b"GET /hc-2 HTTP/1.1")
    # The last answer says close when the proxy saw the half-close before writing it (the
    # FIN may come in a later read than the requests); either way the connection then ends.
    assert second.header("connection") in ("close", None)
    assert first.header("connection") is None


def test_stale_server_connection_is_retried_for_put_with_body(setup: Setup) -> None:
    server = setup.servers["stale-put"]
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_req("/u1", "stale-put.test"))
        assert reader.next().status == 200
        sock.sendall(
            b"PUT /u2 HTTP/1.1\r\nHost: stale-put.test\r\nContent-Length: 7\r\n\r\npayload"
        )
        resp = reader.next("PUT")
    assert (resp.status, resp.body) == (200, b"conn 2: PUT /u2 HTTP/1.1")
    assert [(r.conn_id, r.request_line, r.body) for r in server.requests] == [
        (1, b"GET /u1 HTTP/1.1", b""),
        (1, b"PUT /u2 HTTP/1.1", b"payload"),
        (2, b"PUT /u2 HTTP/1.1", b"payload"),
    ]


def test_http10_server_response_ends_that_server_connection_only(setup: Setup) -> None:
    server = setup.servers["default"]
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_req("/http10-server"))
        first = reader.next()
        sock.sendall(_req("/after-http10-server"))
        second = reader.next()
    assert first.raw.startswith(b"HTTP/1.1 200 ")
    assert (first.body, first.header("connection")) == (b"old", None)
    assert second.status == 200
    old = [r for r in server.requests if b"/http10-server" in r.request_line][-1]
    after = [r for r in server.requests if b"/after-http10-server" in r.request_line][-1]
    assert after.conn_id != old.conn_id
