"""Servers that misbehave: refused connections, broken framing, early closes, 1xx, timeouts.

A broken response head is answered with 502 (504 when the server is too slow); a body that
stops short is never passed off as complete: the client connection is cut instead.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
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
    dead_port,
    read_until_closed,
    wait_for,
)

_RELEASE = threading.Event()  # set at teardown: lets responders that hold a request go


def _close_without_answer(req: Received, sock: socket.socket) -> None:
    sock.close()


def _send_and_close(data: bytes):  # type: ignore[no-untyped-def]
    def respond(req: Received, sock: socket.socket) -> None:
        sock.sendall(data)
        sock.close()

    return respond


def _fixed(data: bytes):  # type: ignore[no-untyped-def]
    return lambda req, sock: data


def _never_answer(req: Received, sock: socket.socket) -> None:
    _RELEASE.wait(10)


def _stall_mid_body(req: Received, sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    _RELEASE.wait(10)


TRICKLED = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: trickled\r\n\r\n"
    b"5;e=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
)


def _reset_mid_body(req: Received, sock: socket.socket) -> None:
    """A body delimited by closing, cut by a reset instead of a close."""
    sock.sendall(b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\npartial body")
    time.sleep(0.1)  # pacing: the first bytes travel on their own before the reset
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _stall_until_close_body(req: Received, sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\n\r\npartial body")
    _RELEASE.wait(10)


def _in_pieces(first: bytes, rest: bytes):  # type: ignore[no-untyped-def]
    def respond(req: Received, sock: socket.socket) -> bytes:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(first)
        time.sleep(0.05)  # pacing: the first piece arrives on its own
        return rest

    return respond


def _trickle(req: Received, sock: socket.socket) -> bytes:
    """Send the response a byte at a time, each in its own segment."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(TRICKLED) - 1):
        sock.sendall(TRICKLED[i : i + 1])
        time.sleep(0.001)  # pacing: a slow server, not a wait for anything
    return TRICKLED[-1:]


HUGE_HEAD = b"HTTP/1.1 200 OK\r\nX-Fill: " + b"f" * 70000 + b"\r\nContent-Length: 0\r\n\r\n"


def _huge_head(req: Received, sock: socket.socket) -> bytes:
    """A 70 kB response head: 65,000 bytes, a pause, then the rest with its end."""
    sock.sendall(HUGE_HEAD[:65000])
    time.sleep(0.05)  # pacing: the first part arrives on its own
    return HUGE_HEAD[65000:]


ROUTES = {
    "/close-silently": _close_without_answer,
    "/bad-status": _send_and_close(b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n"),
    "/garbage": _send_and_close(b"hello there\r\n\r\n"),
    "/resp-cl-te": _fixed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "/resp-dup-cl": _fixed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "/resp-bad-cl": _fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello"),
    "/short-cl": _send_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"),
    "/truncated-chunked": _send_and_close(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    ),
    "/bad-chunk-in-response": _send_and_close(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
    ),
    "/extra-bytes": _fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"),
    "/head-with-body": _fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    "/204": _fixed(b"HTTP/1.1 204 No Content\r\nX-Kind: empty\r\n\r\n"),
    "/204-with-body": _fixed(b"HTTP/1.1 204 No Content\r\n\r\njunk"),
    # RFC 9110 §8.6 forbids these Content-Length fields; the messages still have no body.
    "/204-with-length": _fixed(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kind: empty\r\n\r\n"
    ),
    "/304": _fixed(b'HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nETag: "v1"\r\n\r\n'),
    "/100": _fixed(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
    ),
    "/103": _fixed(
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
    ),
    "/103-with-length": _fixed(
        b"HTTP/1.1 103 Early Hints\r\nContent-Length: 0\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
    ),
    "/until-close": _send_and_close(b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\nall of it, then EOF"),
    "/until-close-coded": _send_and_close(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n(gzip bytes)"
    ),
    "/until-close-reset": _reset_mid_body,
    "/until-close-stall": _stall_until_close_body,
    "/slow": _never_answer,
    "/stall-mid-body": _stall_mid_body,
    "/trickle": _trickle,
    "/101": _fixed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
    "/huge-head": _huge_head,
    "/http10-chunked": _send_and_close(
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
    "/status-99": _send_and_close(b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n"),
    "/status-http2": _send_and_close(b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n"),
    "/bare-lf": _fixed(b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello"),
    "/bare-lf-in-pieces": _in_pieces(b"HTTP/1.1 200 OK\nContent-Length: 5\n", b"\nhello"),
    "/resp-obs-fold": _fixed(b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
}


@dataclass
class Setup:
    port: int
    server: TrackingServer
    proxy: ProxyProcess


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    server = TrackingServer(responder=by_path(ROUTES)).start()
    live = f'"127.0.0.1:{server.port}"'
    dead = [f'"127.0.0.1:{dead_port()}"' for _ in range(3)]
    config = f"""
[global]
workers = 1
shutdown_grace = 1

[listeners.plain]
bind = "127.0.0.1:0"

[services.main]
hosts = ["*"]
pool = "live"

[services.slow]
hosts = ["slow.test"]
pool = "live"
  [services.slow.timeouts]
  server_response_header = 0.5

[services.slow-body]
hosts = ["slow-body.test"]
pool = "live"
  [services.slow-body.timeouts]
  server_body_idle = 0.5

[services.refused]
hosts = ["refused.test"]
pool = "dead"

[services.all-refused]
hosts = ["all-refused.test"]
pool = "all-dead"

[services.retry]
hosts = ["retry.test"]
pool = "dead-then-live"

[pools.live]
servers = [{live}]

[pools.dead]
servers = [{dead[0]}]

[pools.all-dead]
servers = [{dead[1]}, {dead[2]}]

[pools.dead-then-live]
servers = [{dead[0]}, {live}]
"""
    proxy = ProxyProcess(config, tmp_path_factory.mktemp("backend-errors"))
    try:
        yield Setup(proxy.port("plain"), server, proxy)
    finally:
        _RELEASE.set()
        proxy.stop()
        server.stop()


def _get(path: str, host: str = "example.test", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def _one(setup: Setup, raw: bytes, method: str = "GET") -> tuple[int, bytes, str]:
    """Send `raw` on a new connection: (status, the response's raw bytes, how it ended)."""
    with connect(setup.port) as sock:
        sock.sendall(raw)
        resp = ResponseReader(sock).next(method)
        rest, how = read_until_closed(sock, 3.0)
    return resp.status, resp.raw + rest, how


def test_connection_refused_is_502_quickly(setup: Setup) -> None:
    start = time.monotonic()
    status, raw, how = _one(setup, _get("/", "refused.test"))
    assert status == 502, setup.proxy.log()
    assert time.monotonic() - start < 2.0
    assert how != "open"


def test_all_servers_refused_is_502(setup: Setup) -> None:
    status, raw, how = _one(setup, _get("/", "all-refused.test"))
    assert status == 502
    assert b"\r\nConnection: close\r\n" in raw


def test_refused_server_is_skipped_for_a_live_one(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        for i in range(4):
            sock.sendall(_get(f"/retry/{i}", "retry.test"))
            resp = reader.next()
            assert (resp.status, resp.body) == (200, b"ok GET /retry/%d HTTP/1.1" % i), i
    # The dead server was tried, and its failure was hidden by the retry.
    assert "(pool dead-then-live): connect failed" in setup.proxy.log()


@pytest.mark.parametrize(
    "path",
    [
        "/close-silently",
        "/bad-status",
        "/garbage",
        "/resp-cl-te",
        "/resp-dup-cl",
        "/resp-bad-cl",
        "/101",
        "/http10-chunked",
        "/status-99",
        "/status-http2",
        "/resp-obs-fold",
        "/bare-lf",
        "/bare-lf-in-pieces",
    ],
)
def test_broken_response_head_is_502(setup: Setup, path: str) -> None:
    status, raw, how = _one(setup, _get(path))
    assert status == 502, raw
    assert b"\r\nConnection: close\r\n" in raw
    assert how != "open"
    # Nothing of the server's broken answer reaches the client.
    assert b"hello" not in raw and b"Transfer-Encoding" not in raw


def test_response_head_over_64k_is_502(setup: Setup) -> None:
    # The proxy keeps at most 64 KiB of response head; a larger one is refused whatever
    # the reads it arrives in.
    with connect(setup.port) as sock:
        sock.sendall(_get("/huge-head"))
        resp = ResponseReader(sock).next()
    assert resp.status == 502, resp.raw[:100]


def test_body_shorter_than_content_length_cuts_the_client(setup: Setup) -> None:
    with connect(setup.port) as sock:
        sock.sendall(_get("/short-cl"))
        data, how = read_until_closed(sock)
    assert how in ("eof", "reset")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 100" in head, data
    assert len(body) < 100
    assert body == b"0123456789"[: len(body)]


@pytest.mark.parametrize("path", ["/truncated-chunked", "/bad-chunk-in-response"])
def test_broken_chunked_response_cuts_the_client(setup: Setup, path: str) -> None:
    with connect(setup.port) as sock:
        sock.sendall(_get(path))
        data, how = read_until_closed(sock)
    assert how in ("eof", "reset")
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert not data.endswith(b"0\r\n\r\n"), data
    assert b"zz" not in data


def test_bytes_after_a_response_retire_the_server_connection(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(_get("/extra-bytes"))
        first = reader.next()
        sock.sendall(_get("/after-extra"))
        second = reader.next()
    assert (first.status, first.body) == (200, b"ok")
    assert (second.status, second.body) == (200, b"ok GET /after-extra HTTP/1.1")
    assert b"EXTRA" not in first.raw + second.raw
    reqs = setup.server.requests
    extra = [r for r in reqs if r.request_line.startswith(b"GET /extra-bytes ")][-1]
    after = [r for r in reqs if r.request_line.startswith(b"GET /after-extra ")][-1]
    assert after.conn_id != extra.conn_id
    wait_for(lambda: extra.conn_id in setup.server.ended, 5.0, "the spoiled connection to close")


def test_body_on_head_response_is_ignored(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"HEAD /head-with-body HTTP/1.1\r\nHost: example.test\r\n\r\n")
        head = reader.next("HEAD")
        sock.sendall(_get("/after-head"))
        nxt = reader.next()
    assert head.status == 200
    assert head.header("content-length") == "5"
    assert (nxt.status, nxt.body) == (200, b"ok GET /after-head HTTP/1.1")
    assert b"hello" not in nxt.raw


@pytest.mark.parametrize(
    "path,status",
    [("/204", 204), ("/304", 304), ("/204-with-body", 204), ("/204-with-length", 204)],
)
def test_no_body_statuses(setup: Setup, path: str, status: int) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock, timeout=3.0)
        sock.sendall(_get(path) + _get("/after-empty"))
        first = reader.next()
        second = reader.next()
    assert first.status == status
    assert first.raw.endswith(b"\r\n\r\n")
    assert first.header("transfer-encoding") is None
    if status == 304:
        # It describes the representation (RFC 9110 §8.6): kept.
        assert first.header("content-length") == "100"
        assert first.header("etag") == '"v1"'
    else:
        # A 204 has no Content-Length (RFC 9110 §8.6), even where the server sent one.
        assert first.header("content-length") is None
    assert (second.status, second.body) == (200, b"ok GET /after-empty HTTP/1.1")
    assert b"junk" not in second.raw


@pytest.mark.parametrize("path,interim", [("/100", 100), ("/103", 103), ("/103-with-length", 103)])
def test_interim_response_then_final(setup: Setup, path: str, interim: int) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        extra = "Expect: 100-continue\r\n" if interim == 100 else ""
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: example.test\r\n{extra}Content-Length: 4\r\n\r\n"
            "data".encode()
        )
        first = reader.next("POST")
        final = reader.next("POST")
    assert first.status == interim
    # RFC 9110 §8.6: no Content-Length in a 1xx response.
    assert first.header("content-length") is None
    if interim == 103:
        assert first.header("link") == "</s.css>; rel=preload"
    assert (final.status, final.body) == (200, b"final")


def test_interim_response_is_not_sent_to_an_http10_client(setup: Setup) -> None:
    with connect(setup.port) as sock:
        sock.sendall(b"POST /103 HTTP/1.0\r\nHost: example.test\r\nContent-Length: 4\r\n\r\ndata")
        data, how = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert data.endswith(b"\r\n\r\nfinal")
    assert how == "eof"


def test_close_delimited_response_goes_chunked_to_http11_and_the_connection_stays(
    setup: Setup,
) -> None:
    # The server's close ends its body; the client gets it chunked, with the last chunk
    # written only on that clean close, and may go on with its next request.
    with connect(setup.port) as sock:
        sock.sendall(_get("/until-close"))
        reader = ResponseReader(sock)
        resp = reader.next()
        assert resp.status == 200 and resp.header("x-kind") == "eof"
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.header("connection") is None and resp.header("content-length") is None
        assert resp.body == b"all of it, then EOF"
        assert resp.raw.endswith(b"\r\n0\r\n\r\n")
        sock.sendall(_get("/204"))
        assert reader.next().status == 204


def test_close_delimited_response_to_http10_is_passed_through_then_closed(setup: Setup) -> None:
    with connect(setup.port) as sock:
        sock.sendall(b"GET /until-close HTTP/1.0\r\nHost: example.test\r\n\r\n")
        data, how = read_until_closed(sock)
    assert how == "eof"
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close" in head
    assert b"\r\nX-Kind: eof" in head and b"Transfer-Encoding" not in head
    assert body == b"all of it, then EOF"


def test_close_delimited_body_keeps_its_codings_before_chunked(setup: Setup) -> None:
    with connect(setup.port) as sock:
        sock.sendall(_get("/until-close-coded"))
        data, how = read_until_closed(sock, 3.0)
    head, _, body = data.partition(b"\r\n\r\n")
    fields = [line.lower() for line in head.split(b"\r\n")[1:]]
    codings = [f.split(b":", 1)[1].strip() for f in fields if f.startswith(b"transfer-encoding:")]
    assert codings == [b"gzip", b"chunked"], head
    assert body == b"c\r\n(gzip bytes)\r\n0\r\n\r\n"
    assert how == "open"


@pytest.mark.parametrize("version", ["1.1", "1.0"])
@pytest.mark.parametrize(
    ("path", "host"),
    [("/until-close-reset", "example.test"), ("/until-close-stall", "slow-body.test")],
)
def test_close_delimited_body_cut_short_shows_as_cut(
    setup: Setup, path: str, host: str, version: str
) -> None:
    # A reset, or the server body idle timeout, is not the close that ends such a body: an
    # HTTP/1.1 client gets no last chunk, and both get a reset (HTTP/1.0's only sign).
    with connect(setup.port) as sock:
        sock.sendall(f"GET {path} HTTP/{version}\r\nHost: {host}\r\n\r\n".encode())
        data, how = read_until_closed(sock)
    assert how == "reset", data
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data
    if version == "1.1":
        assert b"Transfer-Encoding: chunked" in head and body == b"c\r\npartial body\r\n"
    else:
        assert b"Transfer-Encoding" not in head and body == b"partial body"


def test_slow_response_head_is_504(setup: Setup) -> None:
    start = time.monotonic()
    status, raw, how = _one(setup, _get("/slow", "slow.test"))
    elapsed = time.monotonic() - start
    assert status == 504, raw
    assert 0.4 < elapsed < 3.0, elapsed
    assert how != "open"


def test_slow_response_body_cuts_the_client(setup: Setup) -> None:
    start = time.monotonic()
    with connect(setup.port) as sock:
        sock.sendall(_get("/stall-mid-body", "slow-body.test"))
        data, how = read_until_closed(sock)
    elapsed = time.monotonic() - start
    assert how in ("eof", "reset")
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\n0123456789"), data
    assert 0.4 < elapsed < 3.0, elapsed


def test_response_trickled_byte_by_byte(setup: Setup) -> None:
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        sock.sendall(
            b"POST /trickle HTTP/1.1\r\nHost: example.test\r\nExpect: 100-continue\r\n"
            b"Content-Length: 2\r\n\r\nhi"
        )
        interim = reader.next("POST")
        final = reader.next("POST")
        sock.sendall(_get("/after-trickle"))
        nxt = reader.next()
    assert interim.raw == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.status == 200 and final.header("x-kind") == "trickled"
    assert final.raw.endswith(b"\r\n\r\n5;e=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert (nxt.status, nxt.body) == (200, b"ok GET /after-trickle HTTP/1.1")


def test_refused_connection_is_retried_for_post(setup: Setup) -> None:
    # Nothing was sent on a refused connection, so even a POST may go to another server.
    with connect(setup.port) as sock:
        reader = ResponseReader(sock)
        for i in range(4):
            sock.sendall(
                b"POST /retry-post/%d HTTP/1.1\r\nHost: retry.test\r\n"
                b"Content-Length: 5\r\n\r\nhello" % i
            )
            assert reader.next("POST").status == 200, i
    posts = [r for r in setup.server.requests if b"/retry-post/" in r.request_line]
    assert [r.body for r in posts] == [b"hello"] * 4
