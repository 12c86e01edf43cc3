"""Request heads, RFC 9112 §2-§7 and RFC 9110: a table of raw heads and what they parse to.

Each case is (id, head without the empty line, expected): an int is the status of the
HttpError the head must raise; a dict lists the Request fields it must parse to.
"""

from __future__ import annotations

from typing import Any

import pytest

from revproxy.http import head as head_module
from revproxy.http.errors import HttpError
from revproxy.http.head import CHUNKED, LENGTH, NO_BODY, parse_request, routing_path

H = b"Host: example.com"


def head(*lines: bytes) -> bytes:
    return b"\r\n".join(lines)


Case = tuple[str, bytes, "int | dict[str, Any]"]

VALID: list[Case] = [
    # Request line forms, RFC 9112 §3.
    (
        "get",
        head(b"GET /index.html?q=1 HTTP/1.1", H),
        {
            "method": b"GET",
            "target": b"/index.html?q=1",
            "path": b"/index.html",
            "host": b"example.com",
            "body": NO_BODY,
            "content_length": 0,
            "keep_alive": True,
            "upgrade": None,
            "expect_continue": False,
            "http11": True,
            "absolute_authority": None,
        },
    ),
    (
        "post-length",
        head(b"POST /form HTTP/1.1", H, b"Content-Length: 5"),
        {"method": b"POST", "body": LENGTH, "content_length": 5},
    ),
    ("options-star", head(b"OPTIONS * HTTP/1.1", H), {"target": b"*", "path": b"*"}),
    ("options-path", head(b"OPTIONS /x HTTP/1.1", H), {"path": b"/x"}),
    ("rpc-in-data", head(b"RPC_IN_DATA /rpc/rpcproxy.dll HTTP/1.1", H), {"method": b"RPC_IN_DATA"}),
    ("rpc-out-data", head(b"RPC_OUT_DATA /rpc HTTP/1.1", H), {"method": b"RPC_OUT_DATA"}),
    ("method-tchars", head(b"M-SEARCH.x~ / HTTP/1.1", H), {"method": b"M-SEARCH.x~"}),
    ("lowercase-method", head(b"get / HTTP/1.1", H), {"method": b"get"}),
    ("http-1.2-is-1.1", head(b"GET / HTTP/1.2", H), {"http11": True}),
    ("query-only-path", head(b"GET /?a=/../b HTTP/1.1", H), {"path": b"/"}),
    (
        "absolute-form",
        head(b"GET http://origin.example:8080/a?b HTTP/1.1", H),
        {
            "target": b"/a?b",
            "path": b"/a",
            "host": b"origin.example:8080",
            "absolute_authority": b"origin.example:8080",
        },
    ),
    (
        "absolute-form-https-upper",
        head(b"GET HTTPS://Origin.Example HTTP/1.1", H),
        {"target": b"/", "path": b"/", "host": b"Origin.Example"},
    ),
    (
        "absolute-form-query-only",
        head(b"GET http://a.example?x=1 HTTP/1.1", H),
        {"target": b"/?x=1", "path": b"/", "host": b"a.example"},
    ),
    (
        "absolute-form-ipv6",
        head(b"GET http://[::1]:81/ HTTP/1.1", H),
        {"host": b"[::1]:81"},
    ),
    (
        "absolute-form-http10-no-host",
        head(b"GET http://a.example/ HTTP/1.0"),
        {"host": b"a.example", "http11": False},
    ),
    # Paths: dot-segments are refused, dots elsewhere are fine.
    ("dots-inside-segment", head(b"GET /a..b HTTP/1.1", H), {"path": b"/a..b"}),
    ("well-known", head(b"GET /.well-known/acme HTTP/1.1", H), {"path": b"/.well-known/acme"}),
    ("three-dots", head(b"GET /a/.../b HTTP/1.1", H), {"path": b"/a/.../b"}),
    ("dot-file", head(b"GET /.htaccess HTTP/1.1", H), {"path": b"/.htaccess"}),
    ("percent-not-dot", head(b"GET /a/%2f/b%20c HTTP/1.1", H), {"path": b"/a/%2f/b%20c"}),
    ("underscored-field", head(b"GET / HTTP/1.1", H, b"X_Real_IP: 1"), {"underscored": True}),
    ("no-underscored-field", head(b"GET / HTTP/1.1", H, b"X-Real-IP: 1"), {"underscored": False}),
    ("encoded-separators-no-dots", head(b"GET /a%5Cb%2Fc HTTP/1.1", H), {"path": b"/a%5Cb%2Fc"}),
    ("backslash-in-query", head(b"GET /a?x=..\\y HTTP/1.1", H), {"path": b"/a"}),
    ("parameters-not-dots", head(b"GET /a/b;x/..c HTTP/1.1", H), {"path": b"/a/b;x/..c"}),
    ("dots-after-encoded-separator", head(b"GET /a%2F...b HTTP/1.1", H), {"path": b"/a%2F...b"}),
    # Versions and persistence, RFC 9112 §9.3.
    ("http10-default-close", head(b"GET / HTTP/1.0"), {"keep_alive": False, "http11": False}),
    ("http10-no-host-ok", head(b"GET / HTTP/1.0"), {"host": b""}),
    (
        "http10-keep-alive",
        head(b"GET / HTTP/1.0", b"Connection: Keep-Alive"),
        {"keep_alive": True},
    ),
    (
        "http10-keep-alive-and-close",
        head(b"GET / HTTP/1.0", b"Connection: keep-alive, close"),
        {"keep_alive": False},
    ),
    ("http11-close", head(b"GET / HTTP/1.1", H, b"Connection: close"), {"keep_alive": False}),
    (
        "http11-close-in-list",
        head(b"GET / HTTP/1.1", H, b"Connection: x-foo,  CLOSE ,"),
        {"keep_alive": False, "connection_tokens": frozenset({b"x-foo", b"close"})},
    ),
    (
        "http11-close-second-line",
        head(b"GET / HTTP/1.1", H, b"Connection: x-foo", b"Connection: close"),
        {"keep_alive": False},
    ),
    (
        "http11-keep-alive-token",
        head(b"GET / HTTP/1.1", H, b"Connection: keep-alive"),
        {"keep_alive": True},
    ),
    # Host, RFC 9112 §3.2.
    (
        "host-port",
        head(b"GET / HTTP/1.1", b"Host: example.com:8443"),
        {"host": b"example.com:8443"},
    ),
    ("host-ipv4", head(b"GET / HTTP/1.1", b"Host: 192.0.2.1"), {"host": b"192.0.2.1"}),
    (
        "host-ipv6",
        head(b"GET / HTTP/1.1", b"Host: [2001:db8::1]:80"),
        {"host": b"[2001:db8::1]:80"},
    ),
    ("host-empty", head(b"GET / HTTP/1.1", b"Host:"), {"host": b""}),
    ("host-ows", head(b"GET / HTTP/1.1", b"Host: \t a.example \t"), {"host": b"a.example"}),
    ("host-lowercase-name", head(b"GET / HTTP/1.1", b"host: a.example"), {"host": b"a.example"}),
    # Content-Length, RFC 9112 §6.3 and RFC 9110 §8.6.
    ("cl-zero", head(b"POST / HTTP/1.1", H, b"Content-Length: 0"), {"body": NO_BODY}),
    ("cl-ows-before", head(b"POST / HTTP/1.1", H, b"Content-Length:  5"), {"content_length": 5}),
    ("cl-ows-after", head(b"POST / HTTP/1.1", H, b"Content-Length: 5 "), {"content_length": 5}),
    (
        "cl-leading-zeros",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 007"),
        {"content_length": 7},
    ),
    (
        "cl-18-digits",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 999999999999999999"),
        {"content_length": 999999999999999999},
    ),
    ("cl-http10", head(b"POST / HTTP/1.0", b"Content-Length: 3"), {"body": LENGTH}),
    # Transfer-Encoding, RFC 9112 §6.1.
    ("te-chunked", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked"), {"body": CHUNKED}),
    (
        "te-chunked-case",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: Chunked"),
        {"body": CHUNKED},
    ),
    (
        "te-chunked-empty-elements",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: , chunked ,"),
        {"body": CHUNKED},
    ),
    # Expect, RFC 9110 §10.1.1.
    (
        "expect-continue",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 1", b"Expect: 100-continue"),
        {"expect_continue": True},
    ),
    (
        "expect-continue-case",
        head(b"POST / HTTP/1.1", H, b"Expect: 100-Continue"),
        {"expect_continue": True},
    ),
    (
        "expect-continue-http10-ignored",
        head(b"POST / HTTP/1.0", b"Content-Length: 1", b"Expect: 100-continue"),
        {"expect_continue": False},
    ),
    # Upgrade needs the Connection option, RFC 9110 §7.8.
    (
        "upgrade",
        head(b"GET /ws HTTP/1.1", H, b"Connection: Upgrade", b"Upgrade: websocket"),
        {"upgrade": b"websocket", "keep_alive": True},
    ),
    (
        "upgrade-in-list",
        head(b"GET /ws HTTP/1.1", H, b"Connection: keep-alive, upgrade", b"Upgrade: websocket"),
        {"upgrade": b"websocket"},
    ),
    (
        "upgrade-without-connection",
        head(b"GET /ws HTTP/1.1", H, b"Upgrade: websocket"),
        {"upgrade": None},
    ),
    (
        "upgrade-connection-without-upgrade-header",
        head(b"GET /ws HTTP/1.1", H, b"Connection: upgrade"),
        {"upgrade": None},
    ),
    (
        "upgrade-http10-ignored",
        head(b"GET /ws HTTP/1.0", b"Connection: upgrade", b"Upgrade: websocket"),
        {"upgrade": None},
    ),
    (
        "upgrade-h2c-not-passed-on",
        head(
            b"GET / HTTP/1.1",
            H,
            b"Connection: Upgrade, HTTP2-Settings",
            b"Upgrade: h2c",
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ),
        {"upgrade": None},
    ),
    # RFC 9110 §5.3: several Upgrade lines are one comma-separated list, in order.
    (
        "upgrade-lines-joined",
        head(
            b"GET /ws HTTP/1.1",
            H,
            b"Connection: Upgrade",
            b"Upgrade: websocket",
            b"Upgrade: foo/2, bar",
        ),
        {"upgrade": b"websocket, foo/2, bar"},
    ),
    (
        "upgrade-h2c-in-first-line-not-passed-on",
        head(b"GET / HTTP/1.1", H, b"Connection: Upgrade", b"Upgrade: h2c", b"Upgrade: websocket"),
        {"upgrade": None},
    ),
    (
        "upgrade-h2c-in-a-list-not-passed-on",
        head(b"GET / HTTP/1.1", H, b"Connection: Upgrade", b"Upgrade: websocket, H2C"),
        {"upgrade": None},
    ),
    # Field syntax that is fine.
    ("field-empty-value", head(b"GET / HTTP/1.1", H, b"X-Empty:"), {"header:x-empty": b""}),
    (
        "field-inner-whitespace-kept",
        head(b"GET / HTTP/1.1", H, b"X-A: a \t b"),
        {"header:x-a": b"a \t b"},
    ),
    (
        "field-obs-text",
        head(b"GET / HTTP/1.1", H, b"X-A: caf\xc3\xa9"),
        {"header:x-a": b"caf\xc3\xa9"},
    ),
    ("field-name-case", head(b"GET / HTTP/1.1", H, b"X-MiXeD: v"), {"header:x-mixed": b"v"}),
]

INVALID: list[Case] = [
    # Request line, RFC 9112 §3.
    ("empty", b"", 400),
    ("no-version", b"GET /", 400),
    ("http09", head(b"GET /index.html"), 400),
    ("two-spaces-after-method", head(b"GET  / HTTP/1.1", H), 400),
    ("two-spaces-before-version", head(b"GET /  HTTP/1.1", H), 400),
    ("leading-space", head(b" GET / HTTP/1.1", H), 400),
    ("trailing-space", head(b"GET / HTTP/1.1 ", H), 400),
    ("tab-separator", head(b"GET\t/ HTTP/1.1", H), 400),
    ("tab-in-target", head(b"GET /a\tb HTTP/1.1", H), 400),
    ("space-in-target", head(b"GET /a b HTTP/1.1", H), 400),
    ("lowercase-version", head(b"GET / http/1.1", H), 400),
    ("version-no-minor", head(b"GET / HTTP/1", H), 400),
    ("version-two-digit-minor", head(b"GET / HTTP/1.10", H), 400),
    ("version-http2", head(b"GET / HTTP/2.0", H), 505),
    ("version-http3", head(b"GET / HTTP/3.0", H), 505),
    ("version-http0.9", head(b"GET / HTTP/0.9", H), 505),
    ("control-in-target", head(b"GET /a\x01b HTTP/1.1", H), 400),
    ("del-in-target", head(b"GET /a\x7fb HTTP/1.1", H), 400),
    ("non-ascii-target", head(b"GET /caf\xc3\xa9 HTTP/1.1", H), 400),
    ("nul-in-method", head(b"G\x00T / HTTP/1.1", H), 400),
    ("separator-in-method", head(b"GE(T / HTTP/1.1", H), 400),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: a", 400),
    ("bare-cr-request-line", b"GET / HTTP/1.1\rHost: a", 400),
    # Targets, RFC 9112 §3.2.
    ("star-not-options", head(b"GET * HTTP/1.1", H), 400),
    ("relative-target", head(b"GET index.html HTTP/1.1", H), 400),
    ("authority-form-get", head(b"GET example.com:443 HTTP/1.1", H), 400),
    ("connect", head(b"CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443"), 405),
    ("connect-origin-form", head(b"CONNECT / HTTP/1.1", H), 405),
    ("connect-absolute-form", head(b"CONNECT http://a.example/ HTTP/1.1", H), 405),
    ("absolute-form-userinfo", head(b"GET http://user@a.example/ HTTP/1.1", H), 400),
    ("absolute-form-no-authority", head(b"GET http:///x HTTP/1.1", H), 400),
    ("absolute-form-bad-authority", head(b"GET http://a{b/ HTTP/1.1", H), 400),
    ("absolute-form-quote-authority", head(b'GET http://a"b/ HTTP/1.1', H), 400),
    ("other-scheme", head(b"GET ftp://a.example/ HTTP/1.1", H), 400),
    # Dot-segments: the path must not climb out of the prefix it was routed by.
    ("dot-dot-middle", head(b"GET /a/../b HTTP/1.1", H), 400),
    ("dot-middle", head(b"GET /a/./b HTTP/1.1", H), 400),
    ("dot-dot-root", head(b"GET /.. HTTP/1.1", H), 400),
    ("dot-dot-end", head(b"GET /a/.. HTTP/1.1", H), 400),
    ("dot-end", head(b"GET /a/. HTTP/1.1", H), 400),
    ("dot-dot-before-query", head(b"GET /a/..?x HTTP/1.1", H), 400),
    ("dot-dot-absolute-form", head(b"GET http://a.example/../b HTTP/1.1", H), 400),
    ("pct-dot-dot", head(b"GET /a/%2e%2e/b HTTP/1.1", H), 400),
    ("pct-dot-dot-upper", head(b"GET /a/%2E%2E HTTP/1.1", H), 400),
    ("pct-dot-mixed", head(b"GET /a/.%2e/b HTTP/1.1", H), 400),
    ("pct-dot", head(b"GET /a/%2e/b HTTP/1.1", H), 400),
    # IIS takes "\" (and "%5C") for "/"; servers that decode "%2F" first see a separator too.
    ("backslash", head(b"GET /a\\b HTTP/1.1", H), 400),
    # Tomcat and Jetty drop ";parameters" before resolving "..": "/pub/..;/admin" is "/admin".
    ("dot-dot-parameter", head(b"GET /pub/..;/admin HTTP/1.1", H), 400),
    ("dot-dot-parameter-value", head(b"GET /pub/..;jsessionid=1/admin HTTP/1.1", H), 400),
    ("dot-dot-parameter-escaped", head(b"GET /pub/..%3Bx/admin HTTP/1.1", H), 400),
    ("dot-parameter-end", head(b"GET /pub/.;x HTTP/1.1", H), 400),
    # RFC 9112 §3.2: no fragment in a request target; /admin#x would be routed by "/admin#x".
    ("fragment", head(b"GET /admin#x HTTP/1.1", H), 400),
    ("fragment-in-query", head(b"GET /a?b#c HTTP/1.1", H), 400),
    ("fragment-absolute-form", head(b"GET http://a.example/a#b HTTP/1.1", H), 400),
    ("backslash-dot-dot", head(b"GET /a/..\\b HTTP/1.1", H), 400),
    ("backslash-absolute-form", head(b"GET http://a.example/a\\b HTTP/1.1", H), 400),
    ("pct-slash-dot-dot", head(b"GET /a%2F..%2Fb HTTP/1.1", H), 400),
    ("pct-slash-dot-dot-lower", head(b"GET /a/%2f..%2fb HTTP/1.1", H), 400),
    ("pct-backslash-dot-dot", head(b"GET /a/..%5Cb HTTP/1.1", H), 400),
    ("pct-backslash-dot-dot-end", head(b"GET /a%5c.. HTTP/1.1", H), 400),
    ("pct-backslash-pct-dot", head(b"GET /a%5C%2E%5Cb HTTP/1.1", H), 400),
    # Host, RFC 9112 §3.2.
    ("host-missing-http11", head(b"GET / HTTP/1.1"), 400),
    ("host-missing-other-fields", head(b"GET / HTTP/1.1", b"Accept: */*"), 400),
    ("host-repeated", head(b"GET / HTTP/1.1", H, H), 400),
    ("host-repeated-different", head(b"GET / HTTP/1.1", H, b"Host: evil.example"), 400),
    ("host-repeated-http10", head(b"GET / HTTP/1.0", H, H), 400),
    ("host-space-inside", head(b"GET / HTTP/1.1", b"Host: a b"), 400),
    ("host-userinfo", head(b"GET / HTTP/1.1", b"Host: u@a.example"), 400),
    ("host-slash", head(b"GET / HTTP/1.1", b"Host: a.example/x"), 400),
    ("host-port-letters", head(b"GET / HTTP/1.1", b"Host: a.example:8o"), 400),
    ("host-port-too-long", head(b"GET / HTTP/1.1", b"Host: a.example:123456"), 400),
    ("host-two-ports", head(b"GET / HTTP/1.1", b"Host: a.example:80:80"), 400),
    ("host-obs-text", head(b"GET / HTTP/1.1", b"Host: a\xffb"), 400),
    ("host-bad-ipv6", head(b"GET / HTTP/1.1", b"Host: [::1"), 400),
    ("host-invalid-with-absolute-form", head(b"GET http://a.example/ HTTP/1.1", b"Host: a b"), 400),
    ("host-missing-with-absolute-form", head(b"GET http://a.example/ HTTP/1.1"), 400),
    # Field lines, RFC 9112 §5.
    ("space-before-colon", head(b"GET / HTTP/1.1", H, b"X-A : b"), 400),
    ("tab-before-colon", head(b"GET / HTTP/1.1", H, b"X-A\t: b"), 400),
    ("space-before-colon-cl", head(b"POST / HTTP/1.1", H, b"Content-Length : 5"), 400),
    ("space-before-colon-te", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding : chunked"), 400),
    ("obs-fold", head(b"GET / HTTP/1.1", H, b"X-A: b", b" c"), 400),
    ("obs-fold-tab", head(b"GET / HTTP/1.1", H, b"X-A: b", b"\tc"), 400),
    ("obs-fold-te", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding:", b" chunked"), 400),
    ("fold-first-line", head(b"GET / HTTP/1.1", b" Host: a"), 400),
    ("no-colon", head(b"GET / HTTP/1.1", H, b"X-A b"), 400),
    ("empty-name", head(b"GET / HTTP/1.1", H, b": b"), 400),
    ("separator-in-name", head(b"GET / HTTP/1.1", H, b"X(A): b"), 400),
    ("non-ascii-name", head(b"GET / HTTP/1.1", H, b"X-\xc3\xa9: b"), 400),
    ("bare-cr-in-value", head(b"GET / HTTP/1.1", H, b"X-A: b\rc"), 400),
    ("bare-lf-in-value", head(b"GET / HTTP/1.1", H, b"X-A: b\nc"), 400),
    ("bare-lf-line-end", head(b"GET / HTTP/1.1", b"Host: a\nX-A: b"), 400),
    ("bare-cr-line-end", head(b"GET / HTTP/1.1", b"Host: a\rX-A: b"), 400),
    ("lf-hides-te", head(b"POST / HTTP/1.1", H, b"X: a\nTransfer-Encoding: chunked"), 400),
    ("nul-in-value", head(b"GET / HTTP/1.1", H, b"X-A: b\x00c"), 400),
    ("control-in-value", head(b"GET / HTTP/1.1", H, b"X-A: b\x1bc"), 400),
    ("del-in-value", head(b"GET / HTTP/1.1", H, b"X-A: b\x7f"), 400),
    ("empty-line-inside", head(b"GET / HTTP/1.1", H, b"", b"X-A: b"), 400),
    ("trailing-crlf", head(b"GET / HTTP/1.1", H, b""), 400),
    # Content-Length, RFC 9110 §8.6 and RFC 9112 §6.3: anything ambiguous is refused.
    ("cl-plus", head(b"POST / HTTP/1.1", H, b"Content-Length: +5"), 400),
    ("cl-minus", head(b"POST / HTTP/1.1", H, b"Content-Length: -1"), 400),
    ("cl-hex", head(b"POST / HTTP/1.1", H, b"Content-Length: 0x10"), 400),
    ("cl-list-same", head(b"POST / HTTP/1.1", H, b"Content-Length: 1,1"), 400),
    ("cl-list-spaced", head(b"POST / HTTP/1.1", H, b"Content-Length: 5, 5"), 400),
    ("cl-inner-space", head(b"POST / HTTP/1.1", H, b"Content-Length: 1 0"), 400),
    ("cl-empty", head(b"POST / HTTP/1.1", H, b"Content-Length:"), 400),
    ("cl-decimal", head(b"POST / HTTP/1.1", H, b"Content-Length: 5.0"), 400),
    ("cl-unicode-digit", head(b"POST / HTTP/1.1", H, b"Content-Length: \xd9\xa5"), 400),
    ("cl-underscore", head(b"POST / HTTP/1.1", H, b"Content-Length: 1_0"), 400),
    ("cl-19-digits", head(b"POST / HTTP/1.1", H, b"Content-Length: 1000000000000000000"), 400),
    ("cl-huge", head(b"POST / HTTP/1.1", H, b"Content-Length: " + b"9" * 40), 400),
    (
        "cl-repeated-same",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 5", b"Content-Length: 5"),
        400,
    ),
    (
        "cl-repeated-different",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 5", b"Content-Length: 6"),
        400,
    ),
    (
        "cl-repeated-name-case",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 5", b"content-length: 0"),
        400,
    ),
    # Transfer-Encoding, RFC 9112 §6.1 and §6.3.
    ("te-gzip-chunked", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip, chunked"), 501),
    ("te-chunked-twice", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked, chunked"), 400),
    ("te-identity", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: identity"), 400),
    ("te-chunked-gzip", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked, gzip"), 400),
    ("te-gzip", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip"), 400),
    ("te-empty", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding:"), 400),
    ("te-comma-only", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: ,"), 400),
    ("te-chunked-param", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked;q=1"), 400),
    ("te-chunked-typo", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunkedx"), 400),
    ("te-chunked-quoted", head(b"POST / HTTP/1.1", H, b'Transfer-Encoding: "chunked"'), 400),
    ("te-chunked-tab-inside", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chun\tked"), 400),
    ("te-vertical-tab", head(b"POST / HTTP/1.1", H, b"Transfer-Encoding:\x0bchunked"), 400),
    (
        "te-with-cl",
        head(b"POST / HTTP/1.1", H, b"Content-Length: 5", b"Transfer-Encoding: chunked"),
        400,
    ),
    (
        "cl-with-te",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked", b"Content-Length: 0"),
        400,
    ),
    ("te-http10", head(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked"), 400),
    (
        "te-http10-with-cl",
        head(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked", b"Content-Length: 5"),
        400,
    ),
    (
        "te-split-gzip-then-chunked",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"),
        501,
    ),
    (
        "te-split-chunked-twice",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
        400,
    ),
    (
        "te-split-chunked-then-identity",
        head(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"),
        400,
    ),
    # Expect, RFC 9110 §10.1.1.
    ("expect-other", head(b"POST / HTTP/1.1", H, b"Expect: 200-ok"), 417),
    ("expect-empty", head(b"POST / HTTP/1.1", H, b"Expect:"), 417),
    ("expect-with-param", head(b"POST / HTTP/1.1", H, b"Expect: 100-continue; a=b"), 417),
    (
        "expect-other-then-continue",
        head(b"POST / HTTP/1.1", H, b"Expect: foo", b"Expect: 100-continue"),
        417,
    ),
    (
        "expect-continue-then-other",
        head(b"POST / HTTP/1.1", H, b"Expect: 100-continue", b"Expect: foo"),
        417,
    ),
]


def check(raw: bytes, expected: int | dict[str, Any], max_count: int = 100) -> None:
    if isinstance(expected, int):
        with pytest.raises(HttpError) as info:
            parse_request(raw, max_count)
        assert info.value.status == expected, info.value.detail
        return
    req = parse_request(raw, max_count)
    for name, want in expected.items():
        if name.startswith("header:"):
            got = req.header(name[7:].encode())
        else:
            got = getattr(req, name)
        assert got == want, name


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid(raw: bytes, expected: dict[str, Any]) -> None:
    check(raw, expected)


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid(raw: bytes, expected: int) -> None:
    check(raw, expected)


_FRAMING = (
    "host",
    "underscored",
    "body",
    "content_length",
    "keep_alive",
    "connection_tokens",
    "upgrade",
    "expect_continue",
)


def _framing(raw: bytes) -> tuple[object, ...] | int:
    try:
        req = parse_request(raw)
    except HttpError as exc:
        return exc.status
    return tuple(getattr(req, name) for name in _FRAMING)


def test_repeated_heads_are_framed_as_the_first_time() -> None:
    # A header block seen before keeps what it said for the last HTTP version: each case's
    # fields, sent with another version, with another target, then again (memo hits and
    # misses), must come out as when parsed fresh.
    for _, raw, _ in VALID + INVALID:
        line, sep, block = raw.partition(b"\r\n")
        if b" HTTP/1." not in line:
            continue
        other = (
            line.replace(b" HTTP/1.1", b" HTTP/1.0")
            if b" HTTP/1.1" in line
            else (line.replace(b" HTTP/1.0", b" HTTP/1.1"))
        )
        variants = [raw, other + sep + block, b"OPTIONS * HTTP/1.1" + sep + block]
        fresh = {}
        for variant in variants:
            head_module._REQUEST_BLOCKS.clear()
            fresh[variant] = _framing(variant)
        for variant in variants + variants[::-1] + variants:
            assert _framing(variant) == fresh[variant], variant


def test_case_ids_unique() -> None:
    ids = [c[0] for c in VALID + INVALID]
    assert len(ids) == len(set(ids))


def test_headers_kept_in_order_with_raw_lines() -> None:
    raw = head(b"GET / HTTP/1.1", b"Host:  a.example ", b"X-One: 1", b"x-one: 2", b"Cookie: c=d")
    req = parse_request(raw)
    assert req.headers == [
        (b"host", b"a.example", b"Host:  a.example "),
        (b"x-one", b"1", b"X-One: 1"),
        (b"x-one", b"2", b"x-one: 2"),
        (b"cookie", b"c=d", b"Cookie: c=d"),
    ]
    assert req.header(b"x-one") == b"1"
    assert req.header(b"absent") is None


@pytest.mark.parametrize(
    ("count", "max_count", "status"),
    [(100, 100, None), (101, 100, 431), (10, 10, None), (11, 10, 431), (1000, 100, 431)],
)
def test_header_count_limit(count: int, max_count: int, status: int | None) -> None:
    # The Host line counts as one of the fields.
    lines = [b"GET / HTTP/1.1", H] + [b"X-%d: v" % i for i in range(count - 1)]
    raw = head(*lines)
    if status is None:
        assert len(parse_request(raw, max_count).headers) == count
    else:
        check(raw, status, max_count)


@pytest.mark.parametrize(
    "line",
    [
        b"X: a" + b" " * 30000 + b"\x01",
        b"X: " + b" \t" * 15000 + b"\x01",
        b"X: a" + b" a" * 15000 + b"\x01",
        b"X:" + b"\x80 " * 15000 + b"\r",
    ],
    ids=["spaces", "ows-run", "words", "obs-text"],
)
def test_long_invalid_line_is_rejected_in_linear_time(line: bytes) -> None:
    # A field pattern that can split a run of whitespace two ways backtracks quadratically:
    # one 32 KiB head used to cost seconds of CPU.
    import time

    start = time.perf_counter()
    check(head(b"GET / HTTP/1.1", H, line), 400)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    ("path", "routed"),
    [
        (b"/admin/x", b"/admin/x"),
        (b"/%61dmin/%7Ex%2dy", b"/admin/~x-y"),
        (b"/a%2Fb%25%20c", b"/a%2Fb%25%20c"),  # reserved, "%" and space stay escaped
        (b"//admin///x/", b"/admin/x/"),
        (b"/%2F/a", b"/%2F/a"),
        (b"/", b"/"),
    ],
)
def test_routing_path(path: bytes, routed: bytes) -> None:
    assert routing_path(path) == routed
