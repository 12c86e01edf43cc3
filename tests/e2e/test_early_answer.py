"""A server that answers before the request body has all come.

A server may answer as soon as it has read the request head: a 401 for a client that has
not authenticated yet, a 413, a redirect. If its response keeps the connection open, the
server still reads the rest of the body (RFC 9110 §10.1.1: it says whether it will close
or read on), and the client sends it: NTLM clients (.NET, which also sends
Expect: 100-continue) send a POST body after a 401 so that the connection, which NTLM
authenticates, stays open for the next step. The proxy then keeps both connections too and
passes the rest of the body on; the exchange ends with the body. A server that says it
closes gets the old treatment: the client is told Connection: close.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from harness import (
    ProxyProcess,
    ResponseReader,
    closed_by_peer,
    connect,
    read_until_closed,
    wait_for,
)


@dataclass
class EarlyServer:
    """Answers each request as soon as its head is read, then reads the declared body.

    `/close` answers with Connection: close and closes without reading the body; `/gone`
    answers keep-alive but closes after the first body bytes; `/plain` answers a 413
    without an authentication challenge. Others with a body get an NTLM challenge.
    Records, per connection, the request lines and the body bytes read.
    """

    seen: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)
    _sock: socket.socket | None = None

    def start(self) -> EarlyServer:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def requests(self) -> list[tuple[int, bytes, bytes]]:
        with self._lock:
            return [(cid, line, body) for cid, reqs in self.seen.items() for line, body in reqs]

    def _accept(self) -> None:
        assert self._sock is not None
        n = 0
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            n += 1
            threading.Thread(target=self._serve, args=(conn, n), daemon=True).start()

    def _serve(self, conn: socket.socket, cid: int) -> None:
        conn.settimeout(10)
        buf = b""
        with conn:
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    line = head.split(b"\r\n", 1)[0]
                    length = 0
                    for field_line in head.split(b"\r\n")[1:]:
                        name, _, value = field_line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    path = line.split(b" ")[1]
                    if path == b"/close":
                        conn.sendall(
                            b"HTTP/1.1 413 Too Large\r\nConnection: close\r\n"
                            b"Content-Length: 0\r\n\r\n"
                        )
                        self._record(cid, line, b"")
                        return
                    if length and path == b"/plain":
                        conn.sendall(b"HTTP/1.1 413 Too Large\r\nContent-Length: 4\r\n\r\nbig!")
                    elif length:
                        conn.sendall(
                            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: NTLM\r\n"
                            b"Content-Length: 4\r\n\r\nauth"
                        )
                    while len(buf) < length:
                        if path == b"/gone" and buf:
                            self._record(cid, line, buf)
                            return
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                    body, buf = buf[:length], buf[length:]
                    self._record(cid, line, body)
                    if not length:
                        answer = b"welcome " + line
                        conn.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                            % (len(answer), answer)
                        )
            except OSError:
                return

    def _record(self, cid: int, line: bytes, body: bytes) -> None:
        with self._lock:
            self.seen.setdefault(cid, []).append((line, body))


@dataclass
class Setup:
    port: int
    server: EarlyServer


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    server = EarlyServer().start()
    config = f"""
[global]
workers = 1
shutdown_grace = 1

[listeners.plain]
bind = "127.0.0.1:0"

[services.main]
hosts = ["*"]
pool = "p"
  [services.main.timeouts]
  client_body_idle = 2

[services.slow]
hosts = ["slow.test"]
pool = "p"
  [services.slow.timeouts]
  client_body_idle = 30
  client_body_min_rate = 1000

[pools.p]
servers = ["127.0.0.1:{server.port}"]
"""
    proxy = ProxyProcess(config, tmp_path_factory.mktemp("early"))
    try:
        yield Setup(proxy.port("plain"), server)
    finally:
        assert proxy.stop() == 0
        server.stop()


BODY = b"0123456789" * 1000


def test_body_after_an_early_401_keeps_both_connections(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(
            b"POST /ews/exchange.asmx HTTP/1.1\r\nHost: mail.test\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BODY)
        )
        first = reader.next()
        assert first.status == 401
        assert first.body == b"auth"
        # The server keeps reading: so does the proxy, and the client is not told to go.
        assert first.header("connection") is None
        sock.sendall(BODY + b"GET /next HTTP/1.1\r\nHost: mail.test\r\n\r\n")
        second = reader.next()
        assert second.status == 200
        assert second.body == b"welcome GET /next HTTP/1.1"
    requests = setup.server.requests()
    mine = [r for r in requests if r[1].startswith((b"POST /ews", b"GET /next"))]
    assert [(line, body) for _, line, body in mine] == [
        (b"POST /ews/exchange.asmx HTTP/1.1", BODY),
        (b"GET /next HTTP/1.1", b""),
    ]
    # One server connection carried both: an NTLM challenge stays with its connection.
    assert mine[0][0] == mine[1][0]


def test_early_answer_of_a_closing_server_closes_the_client(setup: Setup) -> None:
    with connect(setup.port) as sock:
        sock.sendall(
            b"POST /close HTTP/1.1\r\nHost: mail.test\r\nContent-Length: %d\r\n\r\n" % len(BODY)
            + BODY[:100]
        )
        response = ResponseReader(sock).next()
        assert response.status == 413
        assert response.header("connection") == "close"
        assert read_until_closed(sock)[1] == "eof"


def test_server_closing_after_a_whole_early_answer(setup: Setup) -> None:
    # The response was whole: the client gets all of it, then the connection ends (the
    # rest of its body has nowhere to go).
    with connect(setup.port) as sock:
        sock.sendall(
            b"POST /gone HTTP/1.1\r\nHost: mail.test\r\nContent-Length: %d\r\n\r\n" % len(BODY)
        )
        response = ResponseReader(sock).next()
        assert response.status == 401 and response.body == b"auth"
        sock.sendall(BODY[:10])
        data, how = read_until_closed(sock)
        assert data == b""
        assert how in ("eof", "reset")
    wait_for(
        lambda: any(line.startswith(b"POST /gone") for _, line, _ in setup.server.requests()),
        5,
        "the server to have read the first body bytes",
    )


def test_client_stalling_after_an_early_answer_is_cut_at_the_body_idle_limit(
    setup: Setup,
) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(
            b"POST /stall HTTP/1.1\r\nHost: mail.test\r\nContent-Length: %d\r\n\r\n" % len(BODY)
            + BODY[:10]
        )
        assert reader.next().status == 401
        # Nothing more comes: client_body_idle (2 s) ends the connection, without a
        # second response after the first, and with a close, not a reset (which could
        # destroy the response before the client read it).
        data, how = read_until_closed(sock, 10.0)
        assert data == b""
        assert how == "eof"


def test_early_answer_does_not_lift_the_minimum_body_rate(setup: Setup) -> None:
    started = time.monotonic()
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(
            b"POST /trickle HTTP/1.1\r\nHost: slow.test\r\nContent-Length: %d\r\n\r\n" % len(BODY)
        )
        assert reader.next().status == 401
        # One byte a second is far below client_body_min_rate (1,000 B/s over 10 s
        # windows), though well within client_body_idle (30 s).
        closed = False
        for i in range(25):
            try:
                sock.sendall(BODY[i : i + 1])
            except OSError:
                closed = True
                break
            if closed_by_peer(sock, 1.0):
                closed = True
                break
        assert closed
    assert time.monotonic() - started < 20


def test_server_connection_answered_early_is_not_pooled_for_others(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(
            b"POST /plain HTTP/1.1\r\nHost: mail.test\r\nContent-Length: %d\r\n\r\n" % len(BODY)
        )
        first = reader.next()
        assert first.status == 413 and first.header("connection") is None
        sock.sendall(BODY + b"GET /after-plain HTTP/1.1\r\nHost: mail.test\r\n\r\n")
        assert reader.next().status == 200
    requests = setup.server.requests()
    (post,) = [r for r in requests if r[1].startswith(b"POST /plain")]
    (get,) = [r for r in requests if r[1].startswith(b"GET /after-plain")]
    assert post[2] == BODY
    # Had the server not read that body, the next request on its connection would have
    # been read as part of it: the proxy does not reuse such a connection.
    assert get[0] != post[0]
