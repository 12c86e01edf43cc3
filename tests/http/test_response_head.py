"""Response heads: status lines and body framing, RFC 9112 §4 and §6.3.

Each case is (id, request method, head without the empty line, expected): None means the
head must raise ProtocolError; a dict lists the Response fields it must parse to.
"""

from __future__ import annotations

from typing import Any

import pytest

from revproxy.http import head as head_module
from revproxy.http.errors import ProtocolError
from revproxy.http.head import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, parse_response


def head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines)


OK = b"HTTP/1.1 200 OK"
CL5 = b"Content-Length: 5"
TE = b"Transfer-Encoding: chunked"

Case = tuple[str, bytes, bytes, "dict[str, Any] | None"]

CASES: list[Case] = [
    # Status line, RFC 9112 §4.
    (
        "ok",
        b"GET",
        head(OK, CL5),
        {
            "status": 200,
            "reason": b"OK",
            "http11": True,
            "body": LENGTH,
            "content_length": 5,
            "keep_alive": True,
            "auth_challenge": False,
        },
    ),
    ("no-reason-with-space", b"GET", head(b"HTTP/1.1 204 "), {"status": 204, "reason": b""}),
    ("no-reason-no-space", b"GET", head(b"HTTP/1.1 204"), {"status": 204, "reason": b""}),
    (
        "reason-with-spaces",
        b"GET",
        head(b"HTTP/1.1 404 Not  Found Here", CL5),
        {"reason": b"Not  Found Here"},
    ),
    ("reason-obs-text", b"GET", head(b"HTTP/1.1 200 D\xe9j\xe0", CL5), {"reason": b"D\xe9j\xe0"}),
    ("reason-tab", b"GET", head(b"HTTP/1.1 200 a\tb", CL5), {"reason": b"a\tb"}),
    ("unknown-status", b"GET", head(b"HTTP/1.1 599 Odd", CL5), {"status": 599}),
    ("status-999", b"GET", head(b"HTTP/1.1 999 Odd", CL5), {"status": 999}),
    ("http-1.0", b"GET", head(b"HTTP/1.0 200 OK", CL5), {"http11": False, "keep_alive": False}),
    ("http-1.2", b"GET", head(b"HTTP/1.2 200 OK", CL5), {"http11": True}),
    ("lowercase-http", b"GET", head(b"http/1.1 200 OK", CL5), None),
    ("version-2", b"GET", head(b"HTTP/2.0 200 OK", CL5), None),
    ("version-0.9", b"GET", head(b"HTTP/0.9 200 OK", CL5), None),
    ("status-two-digits", b"GET", head(b"HTTP/1.1 20 OK", CL5), None),
    ("status-four-digits", b"GET", head(b"HTTP/1.1 2000 OK", CL5), None),
    ("status-below-100", b"GET", head(b"HTTP/1.1 099 Low", CL5), None),
    ("status-letters", b"GET", head(b"HTTP/1.1 2oo OK", CL5), None),
    ("two-spaces", b"GET", head(b"HTTP/1.1  200 OK", CL5), None),
    ("leading-space", b"GET", head(b" HTTP/1.1 200 OK", CL5), None),
    ("tab-separator", b"GET", head(b"HTTP/1.1\t200 OK", CL5), None),
    ("control-in-reason", b"GET", head(b"HTTP/1.1 200 O\x01K", CL5), None),
    ("bare-lf-status-line", b"GET", b"HTTP/1.1 200 OK\nContent-Length: 5", None),
    ("empty", b"GET", b"", None),
    ("garbage", b"GET", b"<html>", None),
    # Fields, RFC 9112 §5.
    ("obs-fold", b"GET", head(OK, CL5, b"X-A: b", b" c"), None),
    ("space-before-colon", b"GET", head(OK, b"Content-Length : 5"), None),
    ("bare-cr-in-value", b"GET", head(OK, CL5, b"X-A: b\rc"), None),
    ("nul-in-value", b"GET", head(OK, CL5, b"X-A: b\x00"), None),
    # No body whatever the fields say, RFC 9112 §6.3 rules 1 and 2.
    ("head-with-cl", b"HEAD", head(OK, b"Content-Length: 1000"), {"body": NO_BODY}),
    ("head-with-te", b"HEAD", head(OK, TE), {"body": NO_BODY}),
    ("head-no-framing", b"HEAD", head(OK), {"body": NO_BODY, "keep_alive": True}),
    ("100-continue", b"POST", head(b"HTTP/1.1 100 Continue"), {"body": NO_BODY, "status": 100}),
    (
        "103-early-hints",
        b"GET",
        head(b"HTTP/1.1 103 Early Hints", b"Link: </a>"),
        {"body": NO_BODY},
    ),
    ("1xx-with-cl", b"GET", head(b"HTTP/1.1 102 Processing", CL5), {"body": NO_BODY}),
    ("204-with-cl", b"GET", head(b"HTTP/1.1 204 No Content", CL5), {"body": NO_BODY}),
    ("204-no-framing", b"GET", head(b"HTTP/1.1 204 No Content"), {"keep_alive": True}),
    ("304-with-cl", b"GET", head(b"HTTP/1.1 304 Not Modified", CL5), {"body": NO_BODY}),
    ("304-with-te", b"GET", head(b"HTTP/1.1 304 Not Modified", TE), {"body": NO_BODY}),
    ("205-with-cl", b"GET", head(b"HTTP/1.1 205 Reset", b"Content-Length: 0"), {"body": NO_BODY}),
    # Ambiguous framing is refused even where the body would be ignored.
    ("cl-and-te", b"GET", head(OK, CL5, TE), None),
    ("te-and-cl", b"GET", head(OK, TE, CL5), None),
    ("cl-and-te-on-head", b"HEAD", head(OK, CL5, TE), None),
    ("cl-and-te-on-304", b"GET", head(b"HTTP/1.1 304 Not Modified", CL5, TE), None),
    ("cl-repeated-same", b"GET", head(OK, CL5, CL5), None),
    ("cl-repeated-different", b"GET", head(OK, CL5, b"Content-Length: 6"), None),
    ("cl-list", b"GET", head(OK, b"Content-Length: 5, 5"), None),
    ("cl-plus", b"GET", head(OK, b"Content-Length: +5"), None),
    ("cl-negative", b"GET", head(OK, b"Content-Length: -1"), None),
    ("cl-hex", b"GET", head(OK, b"Content-Length: 0x5"), None),
    ("cl-empty", b"GET", head(OK, b"Content-Length:"), None),
    ("cl-19-digits", b"GET", head(OK, b"Content-Length: 1000000000000000000"), None),
    ("cl-invalid-on-head", b"HEAD", head(OK, b"Content-Length: x"), None),
    # Content-Length, RFC 9112 §6.3 rule 6.
    ("cl", b"GET", head(OK, b"Content-Length: 12"), {"body": LENGTH, "content_length": 12}),
    ("cl-zero", b"GET", head(OK, b"Content-Length: 0"), {"body": NO_BODY, "keep_alive": True}),
    ("cl-ows", b"GET", head(OK, b"Content-Length:  7 "), {"content_length": 7}),
    ("cl-leading-zeros", b"GET", head(OK, b"Content-Length: 0010"), {"content_length": 10}),
    # Transfer-Encoding, RFC 9112 §6.3 rule 4.
    ("chunked", b"GET", head(OK, TE), {"body": CHUNKED, "keep_alive": True}),
    ("chunked-case", b"GET", head(OK, b"Transfer-Encoding: CHUNKED"), {"body": CHUNKED}),
    ("gzip-chunked", b"GET", head(OK, b"Transfer-Encoding: gzip, chunked"), {"body": CHUNKED}),
    (
        "gzip-then-chunked-lines",
        b"GET",
        head(OK, b"Transfer-Encoding: gzip", TE),
        {"body": CHUNKED},
    ),
    (
        "te-gzip-until-close",
        b"GET",
        head(OK, b"Transfer-Encoding: gzip"),
        {"body": UNTIL_CLOSE, "keep_alive": False},
    ),
    (
        "te-identity-until-close",
        b"GET",
        head(OK, b"Transfer-Encoding: identity"),
        {"body": UNTIL_CLOSE, "keep_alive": False},
    ),
    ("te-empty-until-close", b"GET", head(OK, b"Transfer-Encoding:"), {"body": UNTIL_CLOSE}),
    ("chunked-twice", b"GET", head(OK, b"Transfer-Encoding: chunked, chunked"), None),
    ("chunked-lines-twice", b"GET", head(OK, TE, TE), None),
    ("chunked-not-last", b"GET", head(OK, b"Transfer-Encoding: chunked, gzip"), None),
    ("te-http10", b"GET", head(b"HTTP/1.0 200 OK", TE), None),
    ("te-http10-head", b"HEAD", head(b"HTTP/1.0 200 OK", TE), {"body": NO_BODY}),
    # Neither, RFC 9112 §6.3 rule 8.
    (
        "until-close",
        b"GET",
        head(OK, b"Content-Type: text/plain"),
        {"body": UNTIL_CLOSE, "keep_alive": False},
    ),
    ("until-close-post", b"POST", head(OK), {"body": UNTIL_CLOSE, "keep_alive": False}),
    # Persistence, RFC 9112 §9.3.
    ("close", b"GET", head(OK, CL5, b"Connection: close"), {"keep_alive": False}),
    (
        "close-in-list",
        b"GET",
        head(OK, CL5, b"Connection: foo, Close"),
        {"keep_alive": False, "connection_tokens": frozenset({b"foo", b"close"})},
    ),
    (
        "http10-keep-alive",
        b"GET",
        head(b"HTTP/1.0 200 OK", CL5, b"Connection: keep-alive"),
        {"keep_alive": True, "http11": False},
    ),
    (
        "http10-keep-alive-close",
        b"GET",
        head(b"HTTP/1.0 200 OK", CL5, b"Connection: keep-alive, close"),
        {"keep_alive": False},
    ),
    (
        "http10-keep-alive-until-close",
        b"GET",
        head(b"HTTP/1.0 200 OK", b"Connection: keep-alive"),
        {"keep_alive": False, "body": UNTIL_CLOSE},
    ),
    # Connection-based authentication, for pinning the server connection to the client.
    (
        "ntlm-challenge",
        b"GET",
        head(b"HTTP/1.1 401 Unauthorized", b"WWW-Authenticate: NTLM", b"Content-Length: 0"),
        {"auth_challenge": True},
    ),
    (
        "ntlm-token",
        b"GET",
        head(b"HTTP/1.1 401 Unauthorized", b"WWW-Authenticate: NTLM TlRMTVNTUAACAAAA", CL5),
        {"auth_challenge": True},
    ),
    (
        "negotiate-lowercase",
        b"GET",
        head(b"HTTP/1.1 401 Unauthorized", b"www-authenticate: negotiate", CL5),
        {"auth_challenge": True},
    ),
    (
        "negotiate-after-basic",
        b"GET",
        head(
            b"HTTP/1.1 401 Unauthorized",
            b'WWW-Authenticate: Basic realm="x"',
            b"WWW-Authenticate: Negotiate",
            CL5,
        ),
        {"auth_challenge": True},
    ),
    (
        "negotiate-ntlm-one-field",
        b"GET",
        head(b"HTTP/1.1 401 Unauthorized", b"WWW-Authenticate: Negotiate, NTLM", CL5),
        {"auth_challenge": True},
    ),
    (
        "basic-then-ntlm-one-field",
        b"GET",
        head(b"HTTP/1.1 401 Unauthorized", b'WWW-Authenticate: Basic realm="a", NTLM', CL5),
        {"auth_challenge": True},
    ),
    (
        "basic",
        b"GET",
        head(b"HTTP/1.1 401 Unauthorized", b'WWW-Authenticate: Basic realm="ntlm"', CL5),
        {"auth_challenge": False},
    ),
    (
        "bearer",
        b"GET",
        head(b"HTTP/1.1 401 Unauthorized", b"WWW-Authenticate: Bearer", CL5),
        {"auth_challenge": False},
    ),
    (
        "ntlm-lookalike",
        b"GET",
        head(b"HTTP/1.1 401 Unauthorized", b"WWW-Authenticate: NTLMv3", CL5),
        {"auth_challenge": False},
    ),
    (
        "ntlm-on-200",
        b"GET",
        head(OK, b"WWW-Authenticate: NTLM abc", CL5),
        {"auth_challenge": False},
    ),
    (
        "ntlm-on-407",
        b"GET",
        head(b"HTTP/1.1 407 Proxy Auth", b"Proxy-Authenticate: NTLM", CL5),
        {"auth_challenge": False},
    ),
]


@pytest.mark.parametrize(
    ("method", "raw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_response_head(method: bytes, raw: bytes, expected: dict[str, Any] | None) -> None:
    if expected is None:
        with pytest.raises(ProtocolError):
            parse_response(raw, method)
        return
    resp = parse_response(raw, method)
    for name, want in expected.items():
        assert getattr(resp, name) == want, name


def _framing(raw: bytes, method: bytes) -> tuple[object, ...] | None:
    try:
        resp = parse_response(raw, method)
    except ProtocolError:
        return None
    return (
        resp.body,
        resp.content_length,
        resp.keep_alive,
        resp.connection_tokens,
        resp.auth_challenge,
    )


def test_repeated_heads_are_framed_as_the_first_time() -> None:
    # A header block seen before keeps the framing of its last status, version and method:
    # each case's head, parsed for one method after another (memo hits and misses), must
    # come out framed as when parsed fresh for that method.
    for _, method, raw, _ in CASES:
        methods = (method, b"HEAD", b"GET", b"POST")
        fresh = {}
        for m in methods:
            head_module._RESPONSE_BLOCKS.clear()
            fresh[m] = _framing(raw, m)
        for m in (method, b"HEAD", b"HEAD", b"GET", b"GET", b"HEAD", method, b"POST", method):
            assert _framing(raw, m) == fresh[m], (raw, m)


def test_case_ids_unique() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_headers_kept_with_raw_lines() -> None:
    resp = parse_response(head(OK, b"Set-Cookie:  a=b ", b"set-cookie: c=d", CL5), b"GET")
    assert resp.headers[:2] == [
        (b"set-cookie", b"a=b", b"Set-Cookie:  a=b "),
        (b"set-cookie", b"c=d", b"set-cookie: c=d"),
    ]
    assert resp.header(b"content-length") == b"5"
    assert resp.header(b"absent") is None


def test_too_many_fields() -> None:
    raw = head(OK, *[b"X-%d: v" % i for i in range(201)])
    with pytest.raises(ProtocolError):
        parse_response(raw, b"GET")
    assert len(parse_response(raw, b"GET", max_count=201).headers) == 201
