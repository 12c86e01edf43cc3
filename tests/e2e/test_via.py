"""Via through the whole proxy (RFC 9110 §7.6.3): the received-protocol it adds is the
version of the message it received, the client's request on its way to the server and the
server's response on its way back, whatever version the proxy sends them on with."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from harness import (
    ProxyProcess,
    Received,
    ResponseReader,
    TrackingServer,
    by_path,
    connect,
    simple_config,
)


def _http10_answer(req: Received, sock: socket.socket) -> bytes:
    return b"HTTP/1.0 200 OK\r\nVia: 1.0 cache\r\nContent-Length: 2\r\n\r\nok"


def _early_hints(req: Received, sock: socket.socket) -> bytes:
    return (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )


def _switching(req: Received, sock: socket.socket) -> bytes:
    return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


@pytest.fixture(scope="module")
def server() -> Iterator[TrackingServer]:
    routes = {"/http10-server": _http10_answer, "/hints": _early_hints, "/ws": _switching}
    srv = TrackingServer(responder=by_path(routes)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def proxy(server: TrackingServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    headers = '[services.main.headers]\nvia = true\nvia_name = "edge"'
    proc = ProxyProcess(
        simple_config(server.port, service_extra=headers), tmp_path_factory.mktemp("via")
    )
    yield proc.port("plain")
    assert proc.stop() == 0


# (client version, path, Via lines the server receives, Via lines the client receives)
CASES = [
    ("1.1", "/http11-server", ["1.1 front", "1.1 edge"], ["1.1 edge"]),
    ("1.0", "/http11-server", ["1.1 front", "1.0 edge"], ["1.1 edge"]),
    ("1.1", "/http10-server", ["1.1 front", "1.1 edge"], ["1.0 cache", "1.0 edge"]),
    ("1.0", "/http10-server", ["1.1 front", "1.0 edge"], ["1.0 cache", "1.0 edge"]),
]


@pytest.mark.parametrize(
    ("version", "path", "to_server", "to_client"),
    CASES,
    ids=[f"client-{c[0]}-{c[1][1:]}" for c in CASES],
)
def test_via_names_the_version_received(
    proxy: int,
    server: TrackingServer,
    version: str,
    path: str,
    to_server: list[str],
    to_client: list[str],
) -> None:
    target = f"{path}/{version}"
    with connect(proxy) as sock:
        sock.sendall(
            f"GET {target} HTTP/{version}\r\nHost: example.test\r\nVia: 1.1 front\r\n\r\n".encode()
        )
        resp = ResponseReader(sock).next()
    assert resp.status == 200
    assert resp.all("via") == to_client, resp.raw
    (req,) = [r for r in server.requests if r.request_line == f"GET {target} HTTP/1.1".encode()]
    assert req.headers("via") == to_server, req.head


def test_interim_and_switching_responses_carry_via_too(proxy: int) -> None:
    # RFC 9110 §7.6.3: a proxy adds Via to each message it forwards, 1xx included.
    with connect(proxy) as sock:
        sock.sendall(b"GET /hints HTTP/1.1\r\nHost: example.test\r\n\r\n")
        data = b""
        while b"ok" not in data.split(b"\r\n\r\n", 2)[-1]:
            more = sock.recv(65536)
            assert more, data
            data += more
    hints, final = data.split(b"\r\n\r\n", 1)
    assert hints.startswith(b"HTTP/1.1 103 ")
    assert b"\r\nVia: 1.1 edge" in hints
    assert b"\r\nVia: 1.1 edge" in final
    with connect(proxy) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            more = sock.recv(65536)
            assert more, head
            head += more
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"\r\nVia: 1.1 edge\r\n" in head
