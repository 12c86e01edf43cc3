"""HTTP/1.1 message heads: parsing and framing decisions, with no I/O.

A head is the bytes before the first empty line. Parsing is strict, because a
proxy that is lenient where its servers are strict (or the other way round) is
how request smuggling happens: anything ambiguous is rejected, requests with
4xx (the client connection is then closed) and responses with 502.

Each header is kept as (lower-case name, value, raw line), so the forwarding
code can copy the lines it keeps without serializing them again.
"""

from __future__ import annotations

import re

from revproxy.http.errors import HttpError, ProtocolError

# Body framing of a message.
NO_BODY = 0
LENGTH = 1  # Content-Length bytes follow
CHUNKED = 2  # chunked transfer coding
UNTIL_CLOSE = 3  # response only: body ends when the server closes

# RFC 9110 §5.6.2: token = 1*tchar
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# RFC 9112 §5.1: no whitespace between name and colon; RFC 9110 §5.5: field values carry
# no CR, LF or NUL (nor other controls but HTAB); leading and trailing OWS is not part of it.
# field-value = field-vchar *( 1*( SP / HTAB ) field-vchar ), written so that no two parts can
# match the same whitespace: an ambiguous pattern backtracks quadratically on a long line of
# spaces (seconds of CPU for one 32 KiB head). The value group is None for an empty value.
_FIELD = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*(?:([^\x00-\x20\x7f]+(?:[ \t]+[^\x00-\x20\x7f]+)*)[ \t]*)?"
)
_FIELD_BLOCK = re.compile(rb"(?:" + _TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# RFC 9112 §3.2 with RFC 3986 §3.2.2: Host = uri-host [ ":" port ]
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::([0-9]{0,5}))?")
# RFC 3986 §2.3: "%2E" is the same as "." once a server normalizes the path.
DOT_SEGMENT = re.compile(rb"/(?:\.|%2[Ee]){1,2}(?:/|$)")

Header = tuple[bytes, bytes, bytes]  # (lower-case name, value, raw line)


class Request:
    """A parsed request head."""

    __slots__ = (
        "method",
        "target",
        "path",
        "http11",
        "headers",
        "host",
        "body",
        "content_length",
        "keep_alive",
        "upgrade",
        "expect_continue",
        "connection_tokens",
        "absolute_authority",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.path = b""  # target up to '?', used for routing
        self.http11 = True
        self.headers: list[Header] = []
        self.host = b""  # Host value as sent (or the authority of an absolute-form target)
        self.body = NO_BODY
        self.content_length = 0
        self.keep_alive = True
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.connection_tokens: frozenset[bytes] = frozenset()
        self.absolute_authority: bytes | None = None

    def header(self, name: bytes) -> bytes | None:
        for lname, value, _ in self.headers:
            if lname == name:
                return value
        return None


class Response:
    """A parsed response head."""

    __slots__ = (
        "status",
        "reason",
        "http11",
        "headers",
        "body",
        "content_length",
        "keep_alive",
        "connection_tokens",
        "auth_challenge",
    )

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.http11 = True
        self.headers: list[Header] = []
        self.body = NO_BODY
        self.content_length = 0
        self.keep_alive = True
        self.connection_tokens: frozenset[bytes] = frozenset()
        self.auth_challenge = False  # 401 with an NTLM or Negotiate challenge

    def header(self, name: bytes) -> bytes | None:
        for lname, value, _ in self.headers:
            if lname == name:
                return value
        return None


def _parse_fields(block: bytes, max_count: int, error: type[Exception]) -> list[Header]:
    """Fields of a header block (the lines after the start line, CRLF-separated)."""
    if not block:
        return []
    # One regex pass over the whole block validates every line at C speed; the
    # per-line diagnosis below only runs for messages that are rejected anyway.
    if _FIELD_BLOCK.fullmatch(block + b"\r\n") is None:
        for line in block.split(b"\r\n"):
            if _FIELD.fullmatch(line) is None:
                if line[:1] in (b" ", b"\t"):
                    # RFC 9112 §5.2: obs-fold is rejected rather than unfolded.
                    raise _error(error, 400, "obsolete line folding")
                break
        raise _error(error, 400, "invalid header field")
    lines = block.split(b"\r\n")
    if len(lines) > max_count:
        raise _error(error, 431, "too many header fields")
    headers: list[Header] = []
    append = headers.append
    for line in lines:
        name, _, value = line.partition(b":")
        append((name.lower(), value.strip(b" \t"), line))
    return headers


def _error(kind: type[Exception], status: int, detail: str) -> Exception:
    if kind is HttpError:
        return HttpError(status, detail)
    return ProtocolError(detail)


def _tokens(values: list[bytes]) -> list[bytes]:
    """Comma-separated list elements, lower-cased; empty elements dropped (RFC 9110 §5.6.1)."""
    out = []
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t").lower()
            if item:
                out.append(item)
    return out


def parse_request(head: bytes, max_count: int = 100) -> Request:
    """Parse a request head (without the terminating empty line); raise HttpError."""
    start_line, _, block = head.partition(b"\r\n")
    m = _REQUEST_LINE.fullmatch(start_line)
    if m is None:
        raise HttpError(400, "invalid request line")
    major, minor = m.group(3), m.group(4)
    if major != b"1":
        raise HttpError(505, "unsupported HTTP version")
    req = Request()
    req.method = method = m.group(1)
    req.target = target = m.group(2)
    req.http11 = http11 = minor != b"0"
    req.headers = headers = _parse_fields(block, max_count, HttpError)

    hosts: list[bytes] = []
    cl: list[bytes] = []
    te: list[bytes] = []
    conn: list[bytes] = []
    upgrade = None
    expects: list[bytes] = []
    for lname, value, _ in headers:
        if lname == b"host":
            hosts.append(value)
        elif lname == b"content-length":
            cl.append(value)
        elif lname == b"transfer-encoding":
            te.append(value)
        elif lname == b"connection":
            conn.append(value)
        elif lname == b"upgrade":
            upgrade = value
        elif lname == b"expect":
            expects.append(value)

    # Request target forms, RFC 9112 §3.2. CONNECT is refused whatever its target says.
    if method == b"CONNECT":
        raise HttpError(405, "CONNECT is not supported")
    if target[:1] == b"/":
        path = target.split(b"?", 1)[0]
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        rest = target.split(b"://", 1)[1]
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        authority, origin = rest[:cut], rest[cut:]
        # The authority becomes the Host the request is routed by and forwarded with.
        if not authority or _HOST.fullmatch(authority) is None:
            raise HttpError(400, "invalid absolute-form target")
        req.absolute_authority = authority
        if origin[:1] != b"/":
            origin = b"/" + origin
        req.target = origin
        path = origin.split(b"?", 1)[0]
    elif target == b"*" and method == b"OPTIONS":
        path = b"*"
    else:
        raise HttpError(400, "invalid request target")
    if (b"." in path or b"%" in path) and DOT_SEGMENT.search(path):
        # Dot-segments would let a path escape the prefix it was routed by.
        raise HttpError(400, "dot-segment in path")
    req.path = path

    # RFC 9112 §3.2: exactly one Host in HTTP/1.1, and it must be valid.
    if len(hosts) > 1:
        raise HttpError(400, "repeated Host header")
    if hosts:
        host = hosts[0]
        if _HOST.fullmatch(host) is None:
            raise HttpError(400, "invalid Host header")
    elif http11:
        raise HttpError(400, "missing Host header")
    else:
        host = b""
    # RFC 9112 §3.2.2: an absolute-form target's authority replaces Host.
    req.host = req.absolute_authority if req.absolute_authority is not None else host

    # Framing, RFC 9112 §6.1-§6.3.
    if te:
        if not http11:
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if cl:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        codings = _tokens(te)
        if not codings or codings[-1] != b"chunked":
            raise HttpError(400, "chunked is not the final transfer coding")
        if codings.count(b"chunked") > 1:
            raise HttpError(400, "chunked applied more than once")
        if len(codings) > 1:
            raise HttpError(501, "unsupported transfer coding")
        req.body = CHUNKED
    elif cl:
        if len(cl) > 1:
            raise HttpError(400, "repeated Content-Length")
        if _DIGITS.fullmatch(cl[0]) is None:
            raise HttpError(400, "invalid Content-Length")
        n = int(cl[0])
        if n:
            req.body = LENGTH
            req.content_length = n

    tokens = frozenset(_tokens(conn)) if conn else frozenset()
    req.connection_tokens = tokens
    # RFC 9112 §9.3: "close" ends the connection whatever the version.
    req.keep_alive = b"close" not in tokens and (http11 or b"keep-alive" in tokens)
    if upgrade is not None and http11 and b"upgrade" in tokens:
        # h2c is not passed on: a server that switched to HTTP/2 behind the proxy would take
        # any request the client sends next, past the proxy's routing (RFC 9113 §3.1 drops it).
        if b"h2c" not in _tokens([upgrade]):
            req.upgrade = upgrade
    if expects:
        for expect in expects:
            if expect.lower() != b"100-continue":
                raise HttpError(417, "unsupported expectation")
        # RFC 9110 §10.1.1: an HTTP/1.0 client's 100-continue is ignored.
        req.expect_continue = http11
    return req


def parse_response(head: bytes, method: bytes, max_count: int = 200) -> Response:
    """Parse a response head to a request with `method`; raise ProtocolError."""
    start_line, _, block = head.partition(b"\r\n")
    m = _STATUS_LINE.fullmatch(start_line)
    if m is None:
        raise ProtocolError("invalid status line")
    if m.group(1) != b"1":
        raise ProtocolError("unsupported HTTP version from server")
    resp = Response()
    resp.http11 = http11 = m.group(2) != b"0"
    resp.status = status = int(m.group(3))
    if status < 100:
        raise ProtocolError("invalid status code")
    resp.reason = m.group(4) or b""
    resp.headers = headers = _parse_fields(block, max_count, ProtocolError)

    cl: list[bytes] = []
    te: list[bytes] = []
    conn: list[bytes] = []
    challenge = False
    for lname, value, _ in headers:
        if lname == b"content-length":
            cl.append(value)
        elif lname == b"transfer-encoding":
            te.append(value)
        elif lname == b"connection":
            conn.append(value)
        elif lname == b"www-authenticate" and status == 401:
            # RFC 9110 §11.6.1: one field may hold several challenges ("Negotiate, NTLM").
            for item in value.split(b","):
                if item.strip(b" \t").split(b" ", 1)[0].lower() in (b"ntlm", b"negotiate"):
                    challenge = True
    resp.auth_challenge = challenge
    tokens = frozenset(_tokens(conn)) if conn else frozenset()
    resp.connection_tokens = tokens
    resp.keep_alive = b"close" not in tokens and (http11 or b"keep-alive" in tokens)

    # Ambiguous framing is refused even where the body would be ignored.
    if te and cl:
        raise ProtocolError("both Content-Length and Transfer-Encoding")
    if len(cl) > 1:
        raise ProtocolError("repeated Content-Length")
    if cl and _DIGITS.fullmatch(cl[0]) is None:
        raise ProtocolError("invalid Content-Length")

    # RFC 9112 §6.3, in its order.
    if method == b"HEAD" or status < 200 or status in (204, 304):
        resp.body = NO_BODY
    elif te:
        if not http11:
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 response")
        codings = _tokens(te)
        if codings.count(b"chunked") > 1 or (b"chunked" in codings[:-1]):
            raise ProtocolError("invalid transfer coding")
        if codings and codings[-1] == b"chunked":
            resp.body = CHUNKED
        else:
            resp.body = UNTIL_CLOSE
            resp.keep_alive = False
    elif cl:
        resp.body = LENGTH
        resp.content_length = int(cl[0])
        if resp.content_length == 0:
            resp.body = NO_BODY
    else:
        resp.body = UNTIL_CLOSE
        resp.keep_alive = False
    return resp
