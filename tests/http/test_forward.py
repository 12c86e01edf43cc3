"""Heads as forwarded: hop-by-hop fields (RFC 9110 §7.6.1), forwarding fields, framing.

Each request case is (id, client head, Forwarding, client ip, extend_xff, scheme, expected
head sent to the server); each response case is (id, server head, method, keyword
arguments of response_head, expected head sent to the client). Heads are compared whole.
"""

from __future__ import annotations

from typing import Any

import pytest

from revproxy.http.errors import error_response
from revproxy.http.forward import Forwarding, interim_head, request_head, response_head
from revproxy.http.head import LENGTH, parse_request, parse_response


def head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines)


def sent(*lines: bytes) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


NONE = Forwarding(x_forwarded_for=False, x_forwarded_proto=False, x_forwarded_host=False)
ALL = Forwarding()
VIA = Forwarding(
    x_forwarded_for=False,
    x_forwarded_proto=False,
    x_forwarded_host=False,
    via=b"1.1 rp",
    via_http10=b"1.0 rp",
)
IP = b"192.0.2.7"

RequestCase = tuple[str, bytes, Forwarding, bool, bytes, bytes]

PASS_UNDERSCORED = Forwarding(
    x_forwarded_for=False, x_forwarded_proto=False, x_forwarded_host=False, drop_underscored=False
)

REQUESTS: list[RequestCase] = [
    (
        # CGI-style servers read X_Forwarded_For as X-Forwarded-For: such names are dropped.
        "underscored-names-dropped",
        head(
            b"GET / HTTP/1.1",
            b"Host: a.example",
            b"X_Forwarded_For: 10.9.9.9",
            b"Cookie: a_b=c_d",
            b"transfer_encoding: chunked",
        ),
        NONE,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: a.example", b"Cookie: a_b=c_d"),
    ),
    (
        "underscored-names-passed-when-allowed",
        head(b"GET / HTTP/1.1", b"Host: a.example", b"X_Custom: 1"),
        PASS_UNDERSCORED,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: a.example", b"X_Custom: 1"),
    ),
    (
        "plain",
        head(b"GET /a?b HTTP/1.1", b"Host: a.example", b"Accept: */*"),
        NONE,
        False,
        b"http",
        sent(b"GET /a?b HTTP/1.1", b"Host: a.example", b"Accept: */*"),
    ),
    (
        "host-byte-for-byte",
        head(b"GET / HTTP/1.1", b"hOsT:   A.Example:80  ", b"X-Raw:\tkept as is\t"),
        NONE,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"hOsT:   A.Example:80  ", b"X-Raw:\tkept as is\t"),
    ),
    (
        "http10-sent-as-http11",
        head(b"GET / HTTP/1.0", b"Host: a.example", b"Connection: keep-alive"),
        NONE,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: a.example"),
    ),
    (
        "http10-without-host-gets-empty-host",
        head(b"GET / HTTP/1.0", b"Accept: */*"),
        NONE,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Accept: */*", b"Host: "),
    ),
    (
        "http10-empty-host-kept",
        head(b"GET / HTTP/1.0", b"Host:"),
        NONE,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host:"),
    ),
    (
        "hop-by-hop-removed",
        head(
            b"POST / HTTP/1.1",
            b"Host: a.example",
            b"Connection: keep-alive",
            b"Keep-Alive: timeout=5",
            b"Proxy-Connection: keep-alive",
            b"TE: trailers",
            b"Proxy-Authorization: Basic eDp5",
            b"Proxy-Authenticate: Basic",
            b"Upgrade: websocket",
            b"Content-Length: 3",
        ),
        NONE,
        False,
        b"http",
        sent(b"POST / HTTP/1.1", b"Host: a.example", b"Content-Length: 3"),
    ),
    (
        "transfer-encoding-reissued-as-chunked",
        head(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: , Chunked", b"X-A: 1"),
        NONE,
        False,
        b"http",
        sent(b"POST / HTTP/1.1", b"Host: a", b"X-A: 1", b"Transfer-Encoding: chunked"),
    ),
    (
        "connection-named-fields-removed",
        head(
            b"GET / HTTP/1.1",
            b"Host: a",
            b"Connection: X-Secret, x-other",
            b"X-Secret: 1",
            b"X-Other: 2",
            b"X-Kept: 3",
        ),
        NONE,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: a", b"X-Kept: 3"),
    ),
    (
        "connection-cannot-remove-host-or-length",
        head(
            b"POST / HTTP/1.1",
            b"Host: a",
            b"Connection: Host, Content-Length",
            b"Content-Length: 4",
        ),
        NONE,
        False,
        b"http",
        sent(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 4"),
    ),
    (
        "connection-cannot-remove-chunked",
        head(
            b"POST / HTTP/1.1",
            b"Host: a",
            b"Connection: transfer-encoding",
            b"Transfer-Encoding: chunked",
        ),
        NONE,
        False,
        b"http",
        sent(b"POST / HTTP/1.1", b"Host: a", b"Transfer-Encoding: chunked"),
    ),
    (
        "upgrade-kept-for-upgrade-request",
        head(
            b"GET /ws HTTP/1.1",
            b"Host: a",
            b"Connection: keep-alive, Upgrade",
            b"Upgrade: websocket",
            b"Sec-WebSocket-Key: k",
        ),
        NONE,
        False,
        b"http",
        sent(
            b"GET /ws HTTP/1.1",
            b"Host: a",
            b"Sec-WebSocket-Key: k",
            b"Connection: upgrade",
            b"Upgrade: websocket",
        ),
    ),
    (
        "upgrade-lines-sent-as-one-list",
        head(
            b"GET /ws HTTP/1.1",
            b"Host: a",
            b"Connection: Upgrade",
            b"Upgrade: websocket",
            b"Upgrade: foo",
        ),
        NONE,
        False,
        b"http",
        sent(b"GET /ws HTTP/1.1", b"Host: a", b"Connection: upgrade", b"Upgrade: websocket, foo"),
    ),
    (
        "upgrade-h2c-in-any-line-dropped",
        head(
            b"GET / HTTP/1.1",
            b"Host: a",
            b"Connection: Upgrade",
            b"Upgrade: h2c",
            b"Upgrade: websocket",
        ),
        NONE,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: a"),
    ),
    (
        "upgrade-h2c-dropped",
        head(
            b"GET / HTTP/1.1",
            b"Host: a",
            b"Connection: Upgrade",
            b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ),
        NONE,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: a", b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"),
    ),
    (
        "absolute-form-to-origin-form",
        head(b"GET http://b.example:8080/p?q HTTP/1.1", b"Host: ignored.example", b"X-A: 1"),
        NONE,
        False,
        b"http",
        sent(b"GET /p?q HTTP/1.1", b"X-A: 1", b"Host: b.example:8080"),
    ),
    (
        "absolute-form-no-path",
        head(b"GET http://b.example HTTP/1.1", b"Host: b.example"),
        NONE,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: b.example"),
    ),
    (
        "xff-set",
        head(b"GET / HTTP/1.1", b"Host: a.example"),
        ALL,
        False,
        b"https",
        sent(
            b"GET / HTTP/1.1",
            b"Host: a.example",
            b"X-Forwarded-For: 192.0.2.7",
            b"X-Forwarded-Proto: https",
            b"X-Forwarded-Host: a.example",
        ),
    ),
    (
        "xff-replaced-for-untrusted",
        head(
            b"GET / HTTP/1.1",
            b"Host: a.example",
            b"X-Forwarded-For: 10.0.0.1",
            b"x-forwarded-for: 10.0.0.2",
            b"X-Forwarded-Proto: gopher",
            b"X-Forwarded-Host: evil.example",
            b"X-Forwarded-Port: 1",
        ),
        ALL,
        False,
        b"http",
        sent(
            b"GET / HTTP/1.1",
            b"Host: a.example",
            b"X-Forwarded-Port: 1",
            b"X-Forwarded-For: 192.0.2.7",
            b"X-Forwarded-Proto: http",
            b"X-Forwarded-Host: a.example",
        ),
    ),
    (
        "xff-extended-for-trusted",
        head(
            b"GET / HTTP/1.1",
            b"Host: a.example",
            b"X-Forwarded-For: 10.0.0.1, 10.0.0.2",
            b"X-Forwarded-For: 10.0.0.3",
        ),
        ALL,
        True,
        b"http",
        sent(
            b"GET / HTTP/1.1",
            b"Host: a.example",
            b"X-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7",
            b"X-Forwarded-Proto: http",
            b"X-Forwarded-Host: a.example",
        ),
    ),
    (
        "xff-trusted-without-prior",
        head(b"GET / HTTP/1.1", b"Host: a"),
        Forwarding(x_forwarded_proto=False, x_forwarded_host=False),
        True,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: a", b"X-Forwarded-For: 192.0.2.7"),
    ),
    (
        "xff-trusted-empty-prior",
        head(b"GET / HTTP/1.1", b"Host: a", b"X-Forwarded-For:"),
        Forwarding(x_forwarded_proto=False, x_forwarded_host=False),
        True,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: a", b"X-Forwarded-For: 192.0.2.7"),
    ),
    (
        "xff-disabled-passes-client-value",
        head(b"GET / HTTP/1.1", b"Host: a", b"X-Forwarded-For: 10.0.0.1"),
        NONE,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: a", b"X-Forwarded-For: 10.0.0.1"),
    ),
    (
        "xfh-from-absolute-form",
        head(b"GET http://b.example/ HTTP/1.1", b"Host: a.example"),
        Forwarding(x_forwarded_for=False, x_forwarded_proto=False),
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: b.example", b"X-Forwarded-Host: b.example"),
    ),
    (
        "xfh-not-sent-for-empty-host",
        head(b"GET / HTTP/1.1", b"Host:"),
        Forwarding(x_forwarded_for=False, x_forwarded_proto=False),
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host:"),
    ),
    (
        # RFC 9110 §10.1.1: 100-continue means nothing in HTTP/1.0; forwarded as 1.1 it would.
        "expect-from-http10-not-passed-on",
        head(b"POST / HTTP/1.0", b"Host: a", b"Expect: 100-continue", b"Content-Length: 1"),
        NONE,
        False,
        b"http",
        sent(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 1"),
    ),
    (
        "expect-from-http11-passed-on",
        head(b"POST / HTTP/1.1", b"Host: a", b"Expect: 100-continue", b"Content-Length: 1"),
        NONE,
        False,
        b"http",
        sent(b"POST / HTTP/1.1", b"Host: a", b"Expect: 100-continue", b"Content-Length: 1"),
    ),
    (
        "via",
        head(b"GET / HTTP/1.1", b"Host: a", b"Via: 1.0 upstream"),
        VIA,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: a", b"Via: 1.0 upstream", b"Via: 1.1 rp"),
    ),
    (
        # RFC 9110 §7.6.3: received-protocol is the version of the request received, though
        # it goes on as HTTP/1.1.
        "via-http10",
        head(b"GET / HTTP/1.0", b"Host: a"),
        VIA,
        False,
        b"http",
        sent(b"GET / HTTP/1.1", b"Host: a", b"Via: 1.0 rp"),
    ),
]


@pytest.mark.parametrize(
    ("raw", "fwd", "extend", "scheme", "expected"),
    [c[1:] for c in REQUESTS],
    ids=[c[0] for c in REQUESTS],
)
def test_request_head(
    raw: bytes, fwd: Forwarding, extend: bool, scheme: bytes, expected: bytes
) -> None:
    assert request_head(parse_request(raw), fwd, IP, extend, scheme) == expected


def test_request_head_memo_answers_as_a_fresh_build() -> None:
    # A header block parsed before keeps what the last request built from it; another
    # Forwarding, trust or request id must not get those lines, and a repeat must.
    settings = [NONE, ALL, VIA, PASS_UNDERSCORED, Forwarding(request_id_header=b"X-Request-ID")]
    for _ in range(2):
        for _, raw, *_ in REQUESTS:
            for fwd in settings:
                for extend in (False, True):
                    for rid in (b"", b"r-1"):
                        memo = request_head(parse_request(raw), fwd, IP, extend, b"https", rid)
                        fresh_req = parse_request(raw)
                        fresh_req.block = None
                        fresh = request_head(fresh_req, fwd, IP, extend, b"https", rid)
                        assert memo == fresh, (raw, fwd, extend, rid)


OK = b"HTTP/1.1 200 OK"

ResponseCase = tuple[str, bytes, bytes, dict[str, Any], bytes]

RESPONSES: list[ResponseCase] = [
    (
        "keep-alive-http11-client",
        head(OK, b"Content-Length: 2", b"Connection: keep-alive", b"Keep-Alive: timeout=4"),
        b"GET",
        {"close": False, "http10_client": False},
        sent(OK, b"Content-Length: 2"),
    ),
    (
        "close",
        head(OK, b"Content-Length: 2"),
        b"GET",
        {"close": True, "http10_client": False},
        sent(OK, b"Content-Length: 2", b"Connection: close"),
    ),
    (
        "http10-client-keep-alive",
        head(OK, b"Content-Length: 2"),
        b"GET",
        {"close": False, "http10_client": True},
        sent(OK, b"Content-Length: 2", b"Connection: keep-alive"),
    ),
    (
        "http10-client-close",
        head(OK, b"Content-Length: 2"),
        b"GET",
        {"close": True, "http10_client": True},
        sent(OK, b"Content-Length: 2", b"Connection: close"),
    ),
    (
        "http10-server-sent-as-http11",
        head(b"HTTP/1.0 200 OK", b"Content-Length: 2", b"Connection: keep-alive"),
        b"GET",
        {"close": False, "http10_client": False},
        sent(OK, b"Content-Length: 2"),
    ),
    (
        "chunked",
        head(OK, b"Transfer-Encoding: chunked", b"X-A: 1"),
        b"GET",
        {"close": False, "http10_client": False},
        sent(OK, b"Transfer-Encoding: chunked", b"X-A: 1"),
    ),
    (
        "chunked-codings-kept",
        head(OK, b"Transfer-Encoding: gzip, chunked"),
        b"GET",
        {"close": False, "http10_client": False},
        sent(OK, b"Transfer-Encoding: gzip, chunked"),
    ),
    (
        "until-close-codings-kept",
        head(OK, b"Transfer-Encoding: gzip"),
        b"GET",
        {"close": True, "http10_client": False},
        sent(OK, b"Transfer-Encoding: gzip", b"Connection: close"),
    ),
    (
        "until-close-codings-not-to-http10",
        head(OK, b"Transfer-Encoding: gzip"),
        b"GET",
        {"close": True, "http10_client": True},
        sent(OK, b"Connection: close"),
    ),
    (
        "dechunk",
        head(OK, b"Transfer-Encoding: chunked", b"X-A: 1"),
        b"GET",
        {"close": True, "http10_client": True, "dechunk": True},
        sent(OK, b"X-A: 1", b"Connection: close"),
    ),
    (
        "head-response-drops-te",
        head(OK, b"Transfer-Encoding: chunked"),
        b"HEAD",
        {"close": False, "http10_client": False},
        sent(OK),
    ),
    (
        "connection-named-fields-removed",
        head(OK, b"Connection: X-Hop", b"X-Hop: 1", b"Content-Length: 0", b"X-End: 2"),
        b"GET",
        {"close": False, "http10_client": False},
        sent(OK, b"Content-Length: 0", b"X-End: 2"),
    ),
    (
        "connection-cannot-remove-length",
        head(OK, b"Connection: content-length", b"Content-Length: 3"),
        b"GET",
        {"close": False, "http10_client": False},
        sent(OK, b"Content-Length: 3"),
    ),
    (
        "proxy-authenticate-removed",
        head(b"HTTP/1.1 407 Need Auth", b"Proxy-Authenticate: Basic", b"Content-Length: 0"),
        b"GET",
        {"close": False, "http10_client": False},
        sent(b"HTTP/1.1 407 Need Auth", b"Content-Length: 0"),
    ),
    (
        "upgrade",
        head(b"HTTP/1.1 101 Switching Protocols", b"Connection: Upgrade", b"Upgrade: websocket"),
        b"GET",
        {"close": False, "http10_client": False, "upgrade": b"websocket"},
        sent(b"HTTP/1.1 101 Switching Protocols", b"Connection: upgrade", b"Upgrade: websocket"),
    ),
    (
        "upgrade-wins-over-close",
        head(b"HTTP/1.1 101 Switching", b"Connection: upgrade", b"Upgrade: websocket"),
        b"GET",
        {"close": True, "http10_client": False, "upgrade": b"websocket"},
        sent(b"HTTP/1.1 101 Switching", b"Connection: upgrade", b"Upgrade: websocket"),
    ),
    (
        "reason-default",
        head(b"HTTP/1.1 404", b"Content-Length: 0"),
        b"GET",
        {"close": False, "http10_client": False},
        sent(b"HTTP/1.1 404 Not Found", b"Content-Length: 0"),
    ),
    (
        "reason-default-unknown-status",
        head(b"HTTP/1.1 299 ", b"Content-Length: 0"),
        b"GET",
        {"close": False, "http10_client": False},
        sent(b"HTTP/1.1 299 Unknown", b"Content-Length: 0"),
    ),
    (
        "reason-kept",
        head(b"HTTP/1.1 200 Fine Thanks", b"Content-Length: 0"),
        b"GET",
        {"close": False, "http10_client": False},
        sent(b"HTTP/1.1 200 Fine Thanks", b"Content-Length: 0"),
    ),
    # RFC 9110 §8.6, RFC 9112 §6.1: no Content-Length or Transfer-Encoding in a 1xx or 204
    # response; a 304 and a response to HEAD keep them (they describe the representation).
    (
        "no-content-drops-length",
        head(b"HTTP/1.1 204 No Content", b"Content-Length: 0", b"X-A: 1"),
        b"GET",
        {"close": False, "http10_client": False},
        sent(b"HTTP/1.1 204 No Content", b"X-A: 1"),
    ),
    (
        "no-content-drops-te",
        head(b"HTTP/1.1 204 No Content", b"Transfer-Encoding: chunked"),
        b"GET",
        {"close": False, "http10_client": False},
        sent(b"HTTP/1.1 204 No Content"),
    ),
    (
        "no-content-to-head-drops-length",
        head(b"HTTP/1.1 204 No Content", b"Content-Length: 7"),
        b"HEAD",
        {"close": True, "http10_client": True},
        sent(b"HTTP/1.1 204 No Content", b"Connection: close"),
    ),
    (
        "switching-protocols-drops-length",
        head(
            b"HTTP/1.1 101 Switching Protocols",
            b"Connection: Upgrade",
            b"Upgrade: websocket",
            b"Content-Length: 0",
        ),
        b"GET",
        {"close": False, "http10_client": False, "upgrade": b"websocket"},
        sent(b"HTTP/1.1 101 Switching Protocols", b"Connection: upgrade", b"Upgrade: websocket"),
    ),
    (
        "not-modified-keeps-length",
        head(b"HTTP/1.1 304 Not Modified", b"Content-Length: 120", b'ETag: "e"'),
        b"GET",
        {"close": False, "http10_client": False},
        sent(b"HTTP/1.1 304 Not Modified", b"Content-Length: 120", b'ETag: "e"'),
    ),
    (
        "head-keeps-length",
        head(OK, b"Content-Length: 120"),
        b"HEAD",
        {"close": False, "http10_client": False},
        sent(OK, b"Content-Length: 120"),
    ),
    (
        "via",
        head(OK, b"Content-Length: 0"),
        b"GET",
        {"close": False, "http10_client": False, "via": b"1.1 rp"},
        sent(OK, b"Content-Length: 0", b"Via: 1.1 rp"),
    ),
]


@pytest.mark.parametrize(
    ("raw", "method", "kwargs", "expected"),
    [c[1:] for c in RESPONSES],
    ids=[c[0] for c in RESPONSES],
)
def test_response_head(raw: bytes, method: bytes, kwargs: dict[str, Any], expected: bytes) -> None:
    assert response_head(parse_response(raw, method), **kwargs) == expected


def test_response_head_memo_answers_as_a_fresh_build() -> None:
    variants: list[dict[str, Any]] = [
        {"close": False, "http10_client": False},
        {"close": True, "http10_client": True},
        {"close": False, "http10_client": False, "dechunk": True},
        {"close": False, "http10_client": True, "via": b"1.1 rp"},
    ]
    for _ in range(2):
        for _, raw, method, _, _ in RESPONSES:
            for kwargs in variants:
                memo = response_head(parse_response(raw, method), **kwargs)
                fresh_resp = parse_response(raw, method)
                fresh_resp.block = None
                assert memo == response_head(fresh_resp, **kwargs), (raw, kwargs)


def test_no_content_does_not_take_the_memo_of_a_200() -> None:
    # The same header block on a 200 and a 204: the lines memoized for one are not the other's.
    fields = b"Content-Length: 0\r\nX-Memo: 1"
    for first, second in ((b"200 OK", b"204 No Content"), (b"204 No Content", b"200 OK")):
        for status in (first, second, first, second):
            resp = parse_response(b"HTTP/1.1 " + status + b"\r\n" + fields, b"GET")
            out = response_head(resp, close=False, http10_client=False)
            length = b"" if status == b"204 No Content" else b"Content-Length: 0\r\n"
            assert out == b"HTTP/1.1 " + status + b"\r\n" + length + b"X-Memo: 1\r\n\r\n"


def test_case_ids_unique() -> None:
    for cases in (REQUESTS, RESPONSES):
        ids = [c[0] for c in cases]
        assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (head(b"HTTP/1.1 100 Continue"), sent(b"HTTP/1.1 100 Continue")),
        (
            head(b"HTTP/1.1 103 Early Hints", b"Link: </s.css>", b"Connection: x", b"X: 1"),
            sent(b"HTTP/1.1 103 Early Hints", b"Link: </s.css>"),
        ),
        (head(b"HTTP/1.1 100"), sent(b"HTTP/1.1 100 Continue")),
        # RFC 9110 §8.6: a 1xx response has no Content-Length.
        (
            head(b"HTTP/1.1 103 Early Hints", b"Content-Length: 0", b"Link: </s.css>"),
            sent(b"HTTP/1.1 103 Early Hints", b"Link: </s.css>"),
        ),
    ],
    ids=["continue", "early-hints", "no-reason", "content-length-dropped"],
)
def test_interim_head(raw: bytes, expected: bytes) -> None:
    assert interim_head(parse_response(raw, b"GET")) == expected


@pytest.mark.parametrize(
    ("status", "close", "extra", "expected"),
    [
        (
            400,
            True,
            b"",
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 16\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
            b"400 Bad Request\n",
        ),
        (
            503,
            False,
            b"Retry-After: 5\r\n",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 24\r\nCache-Control: no-store\r\nRetry-After: 5\r\n\r\n"
            b"503 Service Unavailable\n",
        ),
    ],
    ids=["close", "keep-alive-extra"],
)
def test_error_response(status: int, close: bool, extra: bytes, expected: bytes) -> None:
    out = error_response(status, close=close, extra=extra)
    assert out == expected
    head_part, _, body = out.partition(b"\r\n\r\n")
    resp = parse_response(head_part, b"GET")
    assert resp.status == status and resp.body == LENGTH and resp.content_length == len(body)
