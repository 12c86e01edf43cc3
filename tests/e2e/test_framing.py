"""Request framing through the whole proxy: what is refused, and what reaches the server.

Every ambiguous or malformed request is answered with an error and the connection is
closed, and not one byte of it reaches the server. Valid requests reach the server with
their framing and body byte for byte, hop-by-hop fields removed.

The pool keeps no idle server connections here, so every request opens its own server
connection and "every server connection has ended" is a point where all the proxy sent
has been read by the server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import (
    ProxyProcess,
    ResponseReader,
    TrackingServer,
    closed_by_peer,
    connect,
    read_until_closed,
    simple_config,
    wait_for,
)

_H = b"Host: example.test\r\n"


@pytest.fixture(scope="module")
def server() -> Iterator[TrackingServer]:
    srv = TrackingServer().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def proxy(server: TrackingServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    config = simple_config(server.port, pool_extra="max_idle_per_server = 0")
    proc = ProxyProcess(config, tmp_path_factory.mktemp("framing"))
    yield proc.port("plain")
    assert proc.stop() == 0


def _settled(server: TrackingServer) -> None:
    """Wait until the server has read everything the proxy sent and closed every connection."""
    wait_for(lambda: server.open_connections == 0, 5.0, "server connections to end")


def _probe(port: int, server: TrackingServer) -> None:
    """A valid request after a refused one: it must be the only thing the server sees."""
    with connect(port) as sock:
        sock.sendall(b"GET /probe HTTP/1.1\r\n" + _H + b"Connection: close\r\n\r\n")
        assert ResponseReader(sock).next().status == 200
    _settled(server)


# (id, raw request, expected status)
REFUSED = [
    # Content-Length and Transfer-Encoding together (RFC 9112 §6.1).
    (
        "cl-te",
        b"POST /r HTTP/1.1\r\n" + _H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + _H + b"\r\n",
        400,
    ),
    (
        "te-cl",
        b"POST /r HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"
        b"\r\n0\r\n\r\n",
        400,
    ),
    (
        "duplicate-cl",
        b"POST /r HTTP/1.1\r\n" + _H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        400,
    ),
    (
        "conflicting-cl",
        b"POST /r HTTP/1.1\r\n" + _H + b"Content-Length: 5\r\nContent-Length: 12\r\n\r\nhello",
        400,
    ),
    ("cl-list", b"POST /r HTTP/1.1\r\n" + _H + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    ("cl-plus", b"POST /r HTTP/1.1\r\n" + _H + b"Content-Length: +5\r\n\r\nhello", 400),
    ("cl-negative", b"POST /r HTTP/1.1\r\n" + _H + b"Content-Length: -1\r\n\r\n", 400),
    ("cl-hex", b"POST /r HTTP/1.1\r\n" + _H + b"Content-Length: 0x5\r\n\r\nhello", 400),
    (
        "chunked-chunked",
        b"POST /r HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunked-twice-in-two-fields",
        b"POST /r HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "identity",
        b"POST /r HTTP/1.1\r\n" + _H + b"Transfer-Encoding: identity\r\n\r\nhello",
        400,
    ),
    (
        "chunked-not-last",
        b"POST /r HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te-unknown-token",
        b"POST /r HTTP/1.1\r\n" + _H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te-gzip-chunked",
        b"POST /r HTTP/1.1\r\n" + _H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    (
        "te-http10",
        b"POST /r HTTP/1.0\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "obs-fold",
        b"GET /r HTTP/1.1\r\n" + _H + b"X-Long: first\r\n second\r\n\r\n",
        400,
    ),
    (
        "obs-fold-te",
        b"POST /r HTTP/1.1\r\n" + _H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("space-before-colon", b"GET /r HTTP/1.1\r\nHost : example.test\r\n\r\n", 400),
    (
        "space-before-colon-cl",
        b"POST /r HTTP/1.1\r\n" + _H + b"Content-Length : 5\r\n\r\nhello",
        400,
    ),
    (
        "space-before-colon-te",
        b"POST /r HTTP/1.1\r\n" + _H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("missing-host", b"GET /r HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    (
        "two-hosts",
        b"GET /r HTTP/1.1\r\nHost: example.test\r\nHost: other.test\r\n\r\n",
        400,
    ),
    ("host-with-slash", b"GET /r HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("host-with-space", b"GET /r HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("host-userinfo", b"GET /r HTTP/1.1\r\nHost: user@example.test\r\n\r\n", 400),
    ("request-line-http09", b"GET /r\r\n" + _H + b"\r\n", 400),
    ("request-line-double-space", b"GET  /r HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("request-line-space-in-target", b"GET /a b HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("request-line-trailing-space", b"GET /r HTTP/1.1 \r\n" + _H + b"\r\n", 400),
    ("request-line-lowercase-version", b"GET /r http/1.1\r\n" + _H + b"\r\n", 400),
    ("request-line-version-1-10", b"GET /r HTTP/1.10\r\n" + _H + b"\r\n", 400),
    ("request-line-nul-in-method", b"G\x00T /r HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("request-line-tab", b"GET\t/r HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("request-line-bare-lf", b"GET /r HTTP/1.1\n" + _H + b"\r\n", 400),
    ("http-2.0", b"GET /r HTTP/2.0\r\n" + _H + b"\r\n", 505),
    ("http-3.0", b"GET /r HTTP/3.0\r\n" + _H + b"\r\n", 505),
    ("header-bare-lf", b"GET /r HTTP/1.1\r\n" + _H + b"X-A: 1\nX-B: 2\r\n\r\n", 400),
    ("header-bare-cr", b"GET /r HTTP/1.1\r\n" + _H + b"X-A: 1\rX-B: 2\r\n\r\n", 400),
    ("header-nul", b"GET /r HTTP/1.1\r\n" + _H + b"X-A: a\x00b\r\n\r\n", 400),
    ("header-no-colon", b"GET /r HTTP/1.1\r\n" + _H + b"X-A\r\n\r\n", 400),
    ("header-empty-name", b"GET /r HTTP/1.1\r\n" + _H + b": v\r\n\r\n", 400),
    ("header-name-with-slash", b"GET /r HTTP/1.1\r\n" + _H + b"X/A: v\r\n\r\n", 400),
    (
        "connect",
        b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
        405,
    ),
    ("connect-origin-form", b"CONNECT / HTTP/1.1\r\n" + _H + b"\r\n", 405),
    ("absolute-form-bad-authority", b"GET http://a b/ HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("absolute-form-slash-host", b"GET http://a\\b/r HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("asterisk-not-options", b"GET * HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("absolute-form-userinfo", b"GET http://u@example.test/ HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("absolute-form-no-authority", b"GET http:///r HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("dot-dot-segment", b"GET /a/../b HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("dot-segment", b"GET /./a HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("dot-dot-at-end", b"GET /a/.. HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("dot-dot-before-query", b"GET /a/..?x=1 HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("backslash-dot-dot", b"GET /a/..\\b HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("pct-backslash-dot-dot", b"GET /a/..%5Cb HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("pct-slash-dot-dot", b"GET /a%2F..%2Fb HTTP/1.1\r\n" + _H + b"\r\n", 400),
    ("unknown-expectation", b"GET /r HTTP/1.1\r\n" + _H + b"Expect: teapot\r\n\r\n", 417),
    # Bad chunk framing: the head was acceptable, the body is not.
    (
        "chunk-size-not-hex",
        b"POST /r HTTP/1.1\r\n"
        + _H
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-size-0x",
        b"POST /r HTTP/1.1\r\n"
        + _H
        + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-size-negative",
        b"POST /r HTTP/1.1\r\n"
        + _H
        + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-size-space",
        b"POST /r HTTP/1.1\r\n"
        + _H
        + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-size-overflow",
        b"POST /r HTTP/1.1\r\n"
        + _H
        + b"Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-size-bare-lf",
        b"POST /r HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-data-too-long",
        b"POST /r HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-empty-extension",
        b"POST /r HTTP/1.1\r\n"
        + _H
        + b"Transfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-last-missing-crlf",
        b"POST /r HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX\r\n\r\n",
        400,
    ),
]


@pytest.mark.parametrize("raw,status", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_request_never_reaches_the_server(
    proxy: int, server: TrackingServer, raw: bytes, status: int
) -> None:
    _settled(server)
    before = server.connections
    with connect(proxy) as sock:
        sock.sendall(raw)
        data, how = read_until_closed(sock)
    assert how != "open", f"connection left open after {data!r}"
    assert data.startswith(b"HTTP/1.1 %d " % status), data
    assert b"\r\nConnection: close\r\n" in data
    # One response and nothing else: whatever followed the bad request was not answered.
    assert data.count(b"HTTP/1.1 ") == 1, data
    _probe(proxy, server)
    seen = server.bytes_since(before)
    assert seen.startswith(b"GET /probe "), f"the server received {seen!r}"
    assert seen.count(b"HTTP/1.1\r\n") == 1, f"the server received {seen!r}"


def test_dot_segments_hidden_by_percent_encoding_are_refused(
    proxy: int, server: TrackingServer
) -> None:
    # "%2e" is "." (RFC 3986 §2.3, §6.2.2.2): a server that decodes before it resolves
    # dot-segments would otherwise be led out of the prefix the request was routed by.
    for target in (b"/a/%2e%2e/b", b"/a/.%2E/b", b"/%2e/a"):
        with connect(proxy) as sock:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\n" + _H + b"Connection: close\r\n\r\n")
            data, _ = read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 400 "), (target, data)


def test_bad_chunk_after_forwarded_start_leaves_no_request_on_the_server(
    proxy: int, server: TrackingServer
) -> None:
    _settled(server)
    before = server.connections
    head = b"POST /late-bad-chunk HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n"
    with connect(proxy) as sock:
        sock.sendall(head + b"5\r\nhello\r\n")
        wait_for(lambda: b"hello\r\n" in server.bytes_since(before), 5.0, "the first chunk")
        sock.sendall(b"zz\r\nGET /smuggled HTTP/1.1\r\n" + _H + b"\r\n")
        data, how = read_until_closed(sock)
    assert how != "open"
    # Either a 400 or a cut connection: the request cannot be completed.
    assert data == b"" or data.startswith(b"HTTP/1.1 400 "), data
    _settled(server)
    seen = server.bytes_since(before)
    assert b"zz" not in seen and b"/smuggled" not in seen, seen
    assert not [r for r in server.requests if b"/late-bad-chunk" in r.request_line]


def test_chunked_body_is_forwarded_byte_for_byte(proxy: int, server: TrackingServer) -> None:
    body = (
        b"5;name=value\r\nhello\r\n"
        b'7;q="a b"\r\n, world\r\n'
        b"1a\r\n" + b"\x00\xff\r\n" + b"x" * 22 + b"\r\n"
        b"0\r\nX-Trailer: yes\r\n\r\n"
    )
    with connect(proxy) as sock:
        sock.sendall(
            b"POST /chunked HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n" + body
        )
        resp = ResponseReader(sock).next()
    assert resp.status == 200
    (req,) = [r for r in server.requests if r.request_line.startswith(b"POST /chunked ")]
    assert req.headers("transfer-encoding") == ["chunked"]
    assert req.header("content-length") is None
    assert req.raw.endswith(b"\r\n\r\n" + body)
    assert req.body == b"hello, world\x00\xff\r\n" + b"x" * 22


def test_chunked_coding_name_is_case_insensitive(proxy: int, server: TrackingServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(
            b"POST /chunked-case HTTP/1.1\r\n"
            + _H
            + b"Transfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        assert ResponseReader(sock).next().status == 200
    (req,) = [r for r in server.requests if b"/chunked-case" in r.request_line]
    assert req.body == b"abc"
    assert req.raw.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")


def test_content_length_body_is_forwarded_byte_for_byte(proxy: int, server: TrackingServer) -> None:
    body = bytes(range(256)) + b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    with connect(proxy) as sock:
        sock.sendall(
            b"PUT /cl HTTP/1.1\r\n" + _H + b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        assert ResponseReader(sock).next().status == 200
    (req,) = [r for r in server.requests if r.request_line.startswith(b"PUT /cl ")]
    assert req.headers("content-length") == [str(len(body))]
    assert req.header("transfer-encoding") is None
    assert req.body == body


def test_get_with_content_length_zero(proxy: int, server: TrackingServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(
            b"GET /cl0 HTTP/1.1\r\n" + _H + b"Content-Length: 0\r\n\r\n"
            b"GET /cl0-next HTTP/1.1\r\n" + _H + b"\r\n"
        )
        reader = ResponseReader(sock)
        first, second = reader.next(), reader.next()
    assert (first.status, first.body) == (200, b"ok GET /cl0 HTTP/1.1")
    assert (second.status, second.body) == (200, b"ok GET /cl0-next HTTP/1.1")
    (req,) = [r for r in server.requests if r.request_line.startswith(b"GET /cl0 ")]
    assert req.body == b""


def test_pipelined_requests_are_answered_in_order(proxy: int, server: TrackingServer) -> None:
    raw = b"".join(b"GET /pipe/%d HTTP/1.1\r\n%s\r\n" % (i, _H) for i in range(3))
    raw += b"POST /pipe/3 HTTP/1.1\r\n" + _H + b"Content-Length: 4\r\n\r\nbody"
    raw += b"POST /pipe/4 HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n"
    raw += b"2\r\nab\r\n0\r\n\r\nGET /pipe/5 HTTP/1.1\r\n" + _H + b"\r\n"
    with connect(proxy) as sock:
        sock.sendall(raw)
        reader = ResponseReader(sock)
        bodies = [reader.next().body for _ in range(6)]
    assert bodies == [
        b"ok GET /pipe/0 HTTP/1.1",
        b"ok GET /pipe/1 HTTP/1.1",
        b"ok GET /pipe/2 HTTP/1.1",
        b"ok POST /pipe/3 HTTP/1.1",
        b"ok POST /pipe/4 HTTP/1.1",
        b"ok GET /pipe/5 HTTP/1.1",
    ]
    pipe = [r for r in server.requests if b" /pipe/" in r.request_line]
    assert [r.body for r in pipe] == [b"", b"", b"", b"body", b"ab", b""]


def test_pipelined_burst_larger_than_the_head_limit(proxy: int) -> None:
    # About 57 kB of requests in one send: more than a head may hold (32 KiB), so the proxy
    # stops reading while it works through them, and must start again.
    pad = b"X-Pad: " + b"p" * 150 + b"\r\n"
    raw = b"".join(b"GET /burst/%d HTTP/1.1\r\n%s%s\r\n" % (i, _H, pad) for i in range(300))
    with connect(proxy) as sock:
        sock.sendall(raw)
        reader = ResponseReader(sock)
        for i in range(300):
            assert reader.next().body == b"ok GET /burst/%d HTTP/1.1" % i


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_request_inside_a_body_is_just_bytes(
    proxy: int, server: TrackingServer, framing: str
) -> None:
    inner = b"GET /smuggled-in-body HTTP/1.1\r\n" + _H + b"\r\n"
    if framing == "chunked":
        head = b"Transfer-Encoding: chunked\r\n"
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    else:
        head = b"Content-Length: %d\r\n" % len(inner)
        body = inner
    _settled(server)
    before = server.connections
    path = b"/carrier-" + framing.encode()
    with connect(proxy) as sock:
        sock.sendall(b"POST " + path + b" HTTP/1.1\r\n" + _H + head + b"\r\n" + body)
        reader = ResponseReader(sock)
        resp = reader.next()
        sock.sendall(b"GET /after HTTP/1.1\r\n" + _H + b"Connection: close\r\n\r\n")
        after = reader.next()
        rest, how = read_until_closed(sock)
    assert resp.body == b"ok POST " + path + b" HTTP/1.1"
    assert after.body == b"ok GET /after HTTP/1.1"
    assert (rest, how) == (b"", "eof")
    _settled(server)
    received = [r for r in server.requests if r.conn_id > before]
    assert [r.request_line for r in received] == [
        b"POST " + path + b" HTTP/1.1",
        b"GET /after HTTP/1.1",
    ]
    assert received[0].body == inner


def test_hop_by_hop_fields_do_not_reach_the_server(proxy: int, server: TrackingServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(
            b"GET /hop HTTP/1.1\r\n" + _H + b"Connection: keep-alive, X-Private-Hop\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"Proxy-Connection: keep-alive\r\n"
            b"TE: trailers\r\n"
            b"Upgrade: websocket\r\n"
            b"X-Private-Hop: secret\r\n"
            b"X-End-To-End: kept\r\n\r\n"
        )
        assert ResponseReader(sock).next().status == 200
    (req,) = [r for r in server.requests if r.request_line.startswith(b"GET /hop ")]
    for name in ("connection", "keep-alive", "proxy-connection", "te", "upgrade", "x-private-hop"):
        assert req.headers(name) == [], (name, req.head)
    assert req.headers("x-end-to-end") == ["kept"]


@pytest.mark.parametrize(
    ("path", "lines", "expected"),
    [
        # RFC 9110 §5.3, §7.8: several Upgrade lines are one list, passed on whole and in order.
        (b"/upgrade-list", (b"websocket", b"foo"), ["websocket, foo"]),
        # h2c in any of them: no upgrade at all, as for a single "Upgrade: h2c".
        (b"/upgrade-h2c-first", (b"h2c", b"websocket"), []),
        (b"/upgrade-h2c-last", (b"websocket", b"h2c"), []),
    ],
    ids=["list", "h2c-first", "h2c-last"],
)
def test_upgrade_lines_reach_the_server_as_one_list(
    proxy: int, server: TrackingServer, path: bytes, lines: tuple[bytes, ...], expected: list[str]
) -> None:
    request_line = b"GET %s HTTP/1.1" % path
    upgrade = b"".join(b"Upgrade: %s\r\n" % line for line in lines)
    with connect(proxy) as sock:
        sock.sendall(request_line + b"\r\n" + _H + b"Connection: Upgrade\r\n" + upgrade + b"\r\n")
        # The server answers 200: no tunnel, the exchange stays an ordinary one.
        assert ResponseReader(sock).next().status == 200
    (req,) = [r for r in server.requests if r.request_line == request_line]
    assert req.headers("upgrade") == expected, req.head
    assert req.headers("connection") == (["upgrade"] if expected else []), req.head


def test_connection_cannot_remove_framing_or_host(proxy: int, server: TrackingServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(
            b"POST /protected HTTP/1.1\r\n"
            + _H
            + b"Connection: Content-Length, Host\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /protected-next HTTP/1.1\r\n" + _H + b"\r\n"
        )
        reader = ResponseReader(sock)
        assert reader.next().body == b"ok POST /protected HTTP/1.1"
        assert reader.next().body == b"ok GET /protected-next HTTP/1.1"
    (req,) = [r for r in server.requests if r.request_line.startswith(b"POST /protected ")]
    assert req.headers("content-length") == ["5"]
    assert req.headers("host") == ["example.test"]
    assert req.body == b"hello"


def test_host_passes_unchanged_byte_for_byte(proxy: int, server: TrackingServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"GET /host HTTP/1.1\r\nhOsT:   Example.TEST:8080\r\n\r\n")
        assert ResponseReader(sock).next().status == 200
    (req,) = [r for r in server.requests if r.request_line.startswith(b"GET /host ")]
    lines = req.head.split(b"\r\n")
    assert b"hOsT:   Example.TEST:8080" in lines
    assert len([line for line in lines if line.lower().startswith(b"host:")]) == 1


def test_forged_forwarding_headers_are_replaced(proxy: int, server: TrackingServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(
            b"GET /xff HTTP/1.1\r\n" + _H + b"X-Forwarded-For: 203.0.113.9\r\n"
            b"X-Forwarded-For: 198.51.100.7, 10.0.0.1\r\n"
            b"X-Forwarded-Proto: https\r\n"
            b"X-Forwarded-Host: admin.internal\r\n\r\n"
        )
        assert ResponseReader(sock).next().status == 200
    (req,) = [r for r in server.requests if r.request_line.startswith(b"GET /xff ")]
    assert req.headers("x-forwarded-for") == ["127.0.0.1"]
    assert req.headers("x-forwarded-proto") == ["http"]
    assert req.headers("x-forwarded-host") == ["example.test"]


def test_connection_closed_after_a_refused_request_even_with_keep_alive(proxy: int) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\n" + _H + b"Content-Length: x\r\n\r\n")
        resp = ResponseReader(sock).next()
        assert resp.status == 400
        assert resp.header("connection") == "close"
        assert closed_by_peer(sock)


def test_absolute_form_target_is_sent_in_origin_form(proxy: int, server: TrackingServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"GET http://Abs.Example.test/abs?q=1 HTTP/1.1\r\nHost: ignored.test\r\n\r\n")
        assert ResponseReader(sock).next().status == 200
    (req,) = [r for r in server.requests if b"/abs?q=1" in r.request_line]
    assert req.request_line == b"GET /abs?q=1 HTTP/1.1"
    assert req.headers("host") == ["Abs.Example.test"]


def test_options_asterisk_is_answered(proxy: int) -> None:
    # "OPTIONS *" asks about the server as a whole (RFC 9110 §9.3.7): it belongs to the
    # service publishing "/" on that host, not to "no service" (404).
    with connect(proxy) as sock:
        sock.sendall(b"OPTIONS * HTTP/1.1\r\n" + _H + b"\r\n")
        assert ResponseReader(sock).next().status == 200
