"""HTTP/1.1 message heads: parsing and framing decisions, with no I/O.

A head is the bytes before the first empty line. Parsing is strict, because a
proxy that is lenient where its servers are strict (or the other way round) is
how request smuggling happens: anything ambiguous is rejected, requests with
4xx (the client connection is then closed) and responses with 502.

Each header is kept as (lower-case name, value, raw line), so the forwarding
code can copy the lines it keeps without serializing them again.

Peers repeat themselves: a keep-alive client sends the same fields with every
request, a server the same status line and much the same fields. Start lines and
header blocks that passed every check are kept in small caches keyed by their
exact bytes, so a repeated head is not parsed again; anything else is parsed
(and rejected) exactly as if the caches were empty.
"""

from __future__ import annotations

import re
from typing import Final

from revproxy.http.errors import HttpError, ProtocolError, reason

# Body framing of a message.
NO_BODY: Final = 0
LENGTH: Final = 1  # Content-Length bytes follow
CHUNKED: Final = 2  # chunked transfer coding
UNTIL_CLOSE: Final = 3  # response only: body ends when the server closes

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
# RFC 9112 §3.2 with RFC 3986 §3.2.2: Host = uri-host [ ":" port ]
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::([0-9]{0,5}))?")
# Host values already found valid (clients send few different ones), bounded.
_VALID_HOSTS: set[bytes] = set()
# RFC 3986 §2.3: "%2E" is the same as "." once a server normalizes the path. Servers that
# decode "%2F" before normalizing, and Windows servers (IIS), which also take "\" and "%5C"
# for "/", see a dot-segment between any of those separators.
_SEPARATOR = rb"(?:/|\\|%2[Ff]|%5[Cc])"
# Java servers (Tomcat, Jetty) drop ";parameters" from a segment first: "/..;x/" is "/../".
DOT_SEGMENT = re.compile(
    _SEPARATOR + rb"(?:\.|%2[Ee]){1,2}(?:(?:;|%3[Bb])[^/\\]*)?(?:" + _SEPARATOR + rb"|$)"
)
_DOT, _PERCENT, _BACKSLASH = ord("."), ord("%"), ord("\\")  # byte values: faster lookups
_HASH = ord("#")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SLASHES = re.compile(rb"//+")


def _unescape_unreserved(m: re.Match[bytes]) -> bytes:
    byte = int(m.group(1), 16)
    return bytes((byte,)) if byte in _UNRESERVED else m.group(0)


def routing_path(path: bytes) -> bytes:
    """The path as services and rules are chosen by: escaped unreserved characters decoded
    and runs of slashes taken as one, as servers read them (/%61dmin and //admin are /admin,
    and must not pass by the service or rule that /admin has)."""
    if _PERCENT in path:
        path = _ESCAPE.sub(_unescape_unreserved, path)
    if b"//" in path:
        path = _SLASHES.sub(b"/", path)
    return path


Header = tuple[bytes, bytes, bytes]  # (lower-case name, value, raw line)

_NO_TOKENS: frozenset[bytes] = frozenset()
# Fields whose values decide routing and framing; the others are only collected.
_REQUEST_FIELDS = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"}
)
# Marks, among the fields found, a block with a field name containing "_". A space is never
# part of a field name, so this key never collides with one.
UNDERSCORED = b" underscored"

_RESPONSE_FIELDS = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"www-authenticate"}
)


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
        "underscored",
        "block",
    )

    def __init__(
        self,
        method: bytes = b"",
        target: bytes = b"",
        http11: bool = True,
        headers: list[Header] | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.path = b""  # target up to '?', used for routing
        self.http11 = http11
        self.headers: list[Header] = headers if headers is not None else []
        self.host = b""  # Host value as sent (or the authority of an absolute-form target)
        self.body = NO_BODY
        self.content_length = 0
        self.keep_alive = True
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.connection_tokens = _NO_TOKENS
        self.absolute_authority: bytes | None = None
        # A field name contains "_": CGI-style servers read X_Forwarded_For as X-Forwarded-For.
        self.underscored = False
        # The cached header block `headers` came from; None once they are changed.
        self.block: FieldBlock | None = None

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
        "block",
        "status_line",
    )

    def __init__(
        self,
        status: int = 0,
        reason: bytes = b"",
        http11: bool = True,
        headers: list[Header] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.http11 = http11
        self.headers: list[Header] = headers if headers is not None else []
        self.body = NO_BODY
        self.content_length = 0
        self.keep_alive = True
        self.connection_tokens = _NO_TOKENS
        self.auth_challenge = False  # 401 with an NTLM or Negotiate challenge
        # The cached header block `headers` came from; None once they are changed.
        self.block: FieldBlock | None = None
        # The status line as forwarded ("HTTP/1.1 200 OK\r\n"), when the parser made it.
        self.status_line = b""

    def header(self, name: bytes) -> bytes | None:
        for lname, value, _ in self.headers:
            if lname == name:
                return value
        return None


# Header blocks already parsed, by their bytes: a keep-alive client sends the same fields
# request after request, and a server the same fields for a resource. Only blocks that
# passed every check are kept; a full cache is emptied rather than searched for the oldest.
class FieldBlock:
    """A header block that passed every check, as the caches keep it.

    The other attributes memoize what the forwarding code makes of the block, each field
    line ending in CRLF. For a response head: its lines as passed on (hop-by-hop fields
    removed), with Transfer-Encoding kept (`forwarded_te`) or not (`forwarded`); they depend
    on nothing but the block. For a request head: the lines copied as they are, and the
    X-Forwarded-For values to extend (`copied`, `prior_xff`), for the forwarding settings
    `copied_for` with the options `copied_options` (see forward.request_head). And how a
    message with these fields is framed: a response for the status, version and method
    that `framing_key` encodes, a request for the version in `request_framing_key` (see
    parse_response and parse_request).
    """

    __slots__ = (
        "headers",
        "found",
        "forwarded",
        "forwarded_te",
        "copied",
        "prior_xff",
        "copied_for",
        "copied_options",
        "framing",
        "framing_key",
        "request_framing",
        "request_framing_key",
    )

    def __init__(self, headers: tuple[Header, ...], found: dict[bytes, list[bytes]]) -> None:
        self.headers = headers
        self.found = found
        self.forwarded: bytes | None = None
        self.forwarded_te: bytes | None = None
        self.copied = b""
        self.prior_xff: list[bytes] = []
        self.copied_for: object = None
        self.copied_options = -1
        self.framing: _Framing | None = None
        self.framing_key = -1
        self.request_framing: _RequestFraming | None = None
        self.request_framing_key = -1


_REQUEST_BLOCKS: dict[bytes, FieldBlock] = {}
_RESPONSE_BLOCKS: dict[bytes, FieldBlock] = {}
_CACHED_BLOCKS = 128
_CACHED_BLOCK_SIZE = 4096
_NO_FIELDS = FieldBlock((), {})


def _parse_fields(
    block: bytes,
    max_count: int,
    error: type[Exception],
    wanted: frozenset[bytes],
    cache: dict[bytes, FieldBlock],
) -> tuple[list[Header], dict[bytes, list[bytes]], FieldBlock | None]:
    """Fields of a header block (the lines after the start line, CRLF-separated).

    Also returns the values of the `wanted` fields by name, in order, so that the caller
    looks at each line once (a dict the caller must not change), and the cached block
    (None for a block too large to keep).
    """
    if not block:
        return [], _NO_FIELDS.found, _NO_FIELDS
    cacheable = len(block) <= _CACHED_BLOCK_SIZE
    if cacheable:
        parsed = cache.get(block)
        if parsed is not None:
            if len(parsed.headers) > max_count:
                raise _error(error, 431, "too many header fields")
            return list(parsed.headers), parsed.found, parsed
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
    found: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        name = name.lower()
        value = value.strip(b" \t")
        append((name, value, line))
        if name in wanted:
            values = found.get(name)
            if values is None:
                found[name] = [value]
            else:
                values.append(value)
    if b"_" in block and any(b"_" in header[0] for header in headers):
        found[UNDERSCORED] = []
    if not cacheable:
        return headers, found, None
    if len(cache) >= _CACHED_BLOCKS:
        cache.clear()
    kept = cache[block] = FieldBlock(tuple(headers), found)
    return headers, found, kept


def _digits(value: bytes) -> bool:
    """1 to 18 ASCII digits (bytes.isdigit knows only ASCII, and is False for b"")."""
    return value.isdigit() and len(value) <= 18


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


# Connection values as servers and clients send them ("keep-alive", "close"), each
# tokenized once per worker; the size bounds keep what a peer sends from growing it.
_CONNECTION_TOKENS: dict[bytes, frozenset[bytes]] = {}


def _connection_tokens(values: list[bytes]) -> frozenset[bytes]:
    if len(values) > 1:
        return frozenset(_tokens(values))
    value = values[0]
    tokens = _CONNECTION_TOKENS.get(value)
    if tokens is None:
        tokens = frozenset(_tokens(values))
        if len(value) <= 64 and len(_CONNECTION_TOKENS) < 256:
            _CONNECTION_TOKENS[value] = tokens
    return tokens


# Request lines already checked, by their bytes: clients ask for the same targets again and
# again. (method, target as forwarded, HTTP/1.1 or later, path, absolute-form authority);
# only lines that passed every check are kept, and a full cache is emptied.
_RequestLine = tuple[bytes, bytes, bool, bytes, bytes | None]
_REQUEST_LINES: dict[bytes, _RequestLine] = {}
_CACHED_LINES = 256
_CACHED_LINE_SIZE = 1024


def parse_request(head: bytes, max_count: int = 100) -> Request:
    """Parse a request head (without the terminating empty line); raise HttpError."""
    start_line, _, block = head.partition(b"\r\n")
    line = _REQUEST_LINES.get(start_line)
    if line is not None:
        headers, found, fields = _parse_fields(
            block, max_count, HttpError, _REQUEST_FIELDS, _REQUEST_BLOCKS
        )
    else:
        m = _REQUEST_LINE.fullmatch(start_line)
        if m is None:
            raise HttpError(400, "invalid request line")
        method, target, major, minor = m.groups()
        if major != b"1":
            raise HttpError(505, "unsupported HTTP version")
        headers, found, fields = _parse_fields(
            block, max_count, HttpError, _REQUEST_FIELDS, _REQUEST_BLOCKS
        )
        line = _request_target(method, target, minor != b"0")
        if len(start_line) <= _CACHED_LINE_SIZE:
            if len(_REQUEST_LINES) >= _CACHED_LINES:
                _REQUEST_LINES.clear()
            _REQUEST_LINES[start_line] = line
    method, target, http11, path, authority = line
    req = Request(method, target, http11, headers)
    req.block = fields
    req.path = path
    req.absolute_authority = authority
    key = 1 if http11 else 0  # what framing depends on besides the fields
    framing = (
        fields.request_framing if fields is not None and fields.request_framing_key == key else None
    )
    if framing is not None:
        framing.apply(req)
        return req
    req.underscored = UNDERSCORED in found
    get = found.get

    # RFC 9112 §3.2: exactly one Host in HTTP/1.1, and it must be valid.
    hosts = get(b"host")
    if hosts is not None:
        if len(hosts) > 1:
            raise HttpError(400, "repeated Host header")
        host = hosts[0]
        if host not in _VALID_HOSTS:
            if _HOST.fullmatch(host) is None:
                raise HttpError(400, "invalid Host header")
            if len(host) <= 255 and len(_VALID_HOSTS) < 1024:
                _VALID_HOSTS.add(host)
    elif http11:
        raise HttpError(400, "missing Host header")
    else:
        host = b""
    # RFC 9112 §3.2.2: an absolute-form target's authority replaces Host.
    req.host = authority if authority is not None else host

    # Framing, RFC 9112 §6.1-§6.3.
    te = get(b"transfer-encoding")
    cl = get(b"content-length")
    if te is not None:
        if not http11:
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if cl is not None:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        codings = _tokens(te)
        if not codings or codings[-1] != b"chunked":
            raise HttpError(400, "chunked is not the final transfer coding")
        if codings.count(b"chunked") > 1:
            raise HttpError(400, "chunked applied more than once")
        if len(codings) > 1:
            raise HttpError(501, "unsupported transfer coding")
        req.body = CHUNKED
    elif cl is not None:
        if len(cl) > 1:
            raise HttpError(400, "repeated Content-Length")
        if not _digits(cl[0]):
            raise HttpError(400, "invalid Content-Length")
        n = int(cl[0])
        if n:
            req.body = LENGTH
            req.content_length = n

    conn = get(b"connection")
    if conn is not None:
        req.connection_tokens = tokens = _connection_tokens(conn)
        # RFC 9112 §9.3: "close" ends the connection whatever the version.
        req.keep_alive = b"close" not in tokens and (http11 or b"keep-alive" in tokens)
        upgrade = get(b"upgrade")
        if upgrade is not None and http11 and b"upgrade" in tokens:
            # h2c is not passed on: a server that switched to HTTP/2 behind the proxy would
            # take any request the client sends next, past the proxy's routing (RFC 9113 §3.1
            # drops it). Upgrade is a list (RFC 9110 §7.8): several lines are one list, in
            # order (§5.3), and h2c anywhere in it drops the upgrade.
            if b"h2c" not in _tokens(upgrade):
                req.upgrade = upgrade[0] if len(upgrade) == 1 else b", ".join(upgrade)
    else:
        req.keep_alive = http11
    expects = get(b"expect")
    if expects is not None:
        for expect in expects:
            if expect.lower() != b"100-continue":
                raise HttpError(417, "unsupported expectation")
        # RFC 9110 §10.1.1: an HTTP/1.0 client's 100-continue is ignored.
        req.expect_continue = http11
    if fields is not None:
        fields.request_framing = _RequestFraming(req, host)
        fields.request_framing_key = key
    return req


class _RequestFraming:
    """What a request's fields say beyond themselves, for one HTTP version: the Host
    value, body framing, persistence, upgrade and expectation."""

    __slots__ = (
        "host",
        "underscored",
        "body",
        "content_length",
        "keep_alive",
        "connection_tokens",
        "upgrade",
        "expect_continue",
    )

    def __init__(self, req: Request, host: bytes) -> None:
        self.host = host
        self.underscored = req.underscored
        self.body = req.body
        self.content_length = req.content_length
        self.keep_alive = req.keep_alive
        self.connection_tokens = req.connection_tokens
        self.upgrade = req.upgrade
        self.expect_continue = req.expect_continue

    def apply(self, req: Request) -> None:
        """Give `req` (with the same fields and version) what the fields said the first time."""
        # RFC 9112 §3.2.2: an absolute-form target's authority replaces Host.
        authority = req.absolute_authority
        req.host = authority if authority is not None else self.host
        req.underscored = self.underscored
        req.body = self.body
        req.content_length = self.content_length
        req.keep_alive = self.keep_alive
        req.connection_tokens = self.connection_tokens
        req.upgrade = self.upgrade
        req.expect_continue = self.expect_continue


def _request_target(method: bytes, target: bytes, http11: bool) -> _RequestLine:
    """Target form, path and authority of a request line; raise HttpError.

    Called after the header fields are parsed, so that a bad field is reported first.
    """
    # Request target forms, RFC 9112 §3.2. CONNECT is refused whatever its target says.
    if method == b"CONNECT":
        raise HttpError(405, "CONNECT is not supported")
    authority = None
    if target[:1] == b"/":
        path = target.split(b"?", 1)[0]
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        rest = target.split(b"://", 1)[1]
        cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        authority, origin = rest[:cut], rest[cut:]
        # The authority becomes the Host the request is routed by and forwarded with.
        if not authority or _HOST.fullmatch(authority) is None:
            raise HttpError(400, "invalid absolute-form target")
        if origin[:1] != b"/":
            origin = b"/" + origin
        target = origin
        path = origin.split(b"?", 1)[0]
    elif target == b"*" and method == b"OPTIONS":
        path = b"*"
    else:
        raise HttpError(400, "invalid request target")
    if _HASH in target:
        # RFC 9112 §3.2: a request target has no fragment; servers would cut it off, and the
        # path the proxy routed by would not be the one they serve.
        raise HttpError(400, "fragment in request target")
    if _BACKSLASH in path:
        # Not a URI character (RFC 3986 §2); IIS reads it as "/", so "/a/..\b" would climb
        # out of the prefix "/a" on the server while the proxy routed it by "/a".
        raise HttpError(400, "backslash in path")
    if (_DOT in path or _PERCENT in path) and DOT_SEGMENT.search(path):
        # Dot-segments would let a path escape the prefix it was routed by.
        raise HttpError(400, "dot-segment in path")
    return method, target, http11, path, authority


def parse_response(head: bytes, method: bytes, max_count: int = 200) -> Response:
    """Parse a response head to a request with `method`; raise ProtocolError."""
    start_line, _, block = head.partition(b"\r\n")
    parsed = _STATUS_LINES.get(start_line)
    if parsed is None:
        parsed = _status_line(start_line)
    http11, status, text, forwarded = parsed
    headers, found, fields = _parse_fields(
        block, max_count, ProtocolError, _RESPONSE_FIELDS, _RESPONSE_BLOCKS
    )
    resp = Response(status, text, http11, headers)
    resp.block = fields
    resp.status_line = forwarded
    # What framing depends on besides the fields, as one number for the block's memo.
    key = status * 4 + (2 if http11 else 0) + (1 if method == b"HEAD" else 0)
    framing = fields.framing if fields is not None and fields.framing_key == key else None
    if framing is not None:
        framing.apply(resp)
        return resp
    if not found:
        te = cl = None
        resp.keep_alive = http11
    else:
        get = found.get
        if status == 401:
            challenges = get(b"www-authenticate")
            if challenges is not None:
                resp.auth_challenge = _auth_challenge(challenges)
        conn = get(b"connection")
        if conn is not None:
            resp.connection_tokens = tokens = _connection_tokens(conn)
            resp.keep_alive = b"close" not in tokens and (http11 or b"keep-alive" in tokens)
        else:
            resp.keep_alive = http11
        te = get(b"transfer-encoding")
        cl = get(b"content-length")
        # Ambiguous framing is refused even where the body would be ignored.
        if cl is not None:
            if te is not None:
                raise ProtocolError("both Content-Length and Transfer-Encoding")
            if len(cl) > 1:
                raise ProtocolError("repeated Content-Length")
            if not _digits(cl[0]):
                raise ProtocolError("invalid Content-Length")

    # RFC 9112 §6.3, in its order.
    if method == b"HEAD" or status < 200 or status == 204 or status == 304:
        resp.body = NO_BODY
    elif te is not None:
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
    elif cl is not None:
        n = int(cl[0])
        if n:
            resp.body = LENGTH
            resp.content_length = n
    else:
        resp.body = UNTIL_CLOSE
        resp.keep_alive = False
    if fields is not None:
        fields.framing = _Framing(resp)
        fields.framing_key = key
    return resp


class _Framing:
    """How a response with a given header block, status, version and method is framed."""

    __slots__ = ("body", "content_length", "keep_alive", "connection_tokens", "auth_challenge")

    def __init__(self, resp: Response) -> None:
        self.body = resp.body
        self.content_length = resp.content_length
        self.keep_alive = resp.keep_alive
        self.connection_tokens = resp.connection_tokens
        self.auth_challenge = resp.auth_challenge

    def apply(self, resp: Response) -> None:
        """Give `resp` (same fields, status, version and method) the framing found before."""
        resp.body = self.body
        resp.content_length = self.content_length
        resp.keep_alive = self.keep_alive
        resp.connection_tokens = self.connection_tokens
        resp.auth_challenge = self.auth_challenge


def forwarded_status_line(status: int, text: bytes) -> bytes:
    """A status line as the proxy sends it on: HTTP/1.1, and a reason phrase."""
    return b"HTTP/1.1 %d %s\r\n" % (status, text or reason(status))


# Status lines seen (a server sends few different ones), parsed once per worker.
_STATUS_LINES: dict[bytes, tuple[bool, int, bytes, bytes]] = {}


def _status_line(line: bytes) -> tuple[bool, int, bytes, bytes]:
    """(HTTP/1.1 or later, status, reason, the line as forwarded) of a status line; raise
    ProtocolError. Forwarded, the line says HTTP/1.1 and has a reason phrase."""
    m = _STATUS_LINE.fullmatch(line)
    if m is None:
        raise ProtocolError("invalid status line")
    major, minor, code, text = m.groups()
    if major != b"1":
        raise ProtocolError("unsupported HTTP version from server")
    status = int(code)
    if status < 100:
        raise ProtocolError("invalid status code")
    text = text or b""  # the group is None when there is no reason phrase
    parsed = (minor != b"0", status, text, forwarded_status_line(status, text))
    if len(line) <= 64 and len(_STATUS_LINES) < 256:
        _STATUS_LINES[line] = parsed
    return parsed


def _auth_challenge(values: list[bytes]) -> bool:
    """An NTLM or Negotiate challenge among WWW-Authenticate values."""
    for value in values:
        # RFC 9110 §11.6.1: one field may hold several challenges ("Negotiate, NTLM").
        for item in value.split(b","):
            if item.strip(b" \t").split(b" ", 1)[0].lower() in (b"ntlm", b"negotiate"):
                return True
    return False
