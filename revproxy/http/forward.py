"""Heads as the proxy sends them on: hop-by-hop rules and forwarding headers.

RFC 9110 §7.6.1: Connection and the fields it names belong to one hop and are
removed, as are the classic hop-by-hop fields. Framing fields and Host are never
removed on a Connection header's say-so: dropping Content-Length that way would
let a client split one request into two on the server's side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from revproxy.http.head import (
    CHUNKED,
    UNTIL_CLOSE,
    Header,
    Request,
    Response,
    forwarded_status_line,
)

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Never dropped because a Connection header names them.
_PROTECTED = frozenset({b"host", b"content-length", b"transfer-encoding"})
# RFC 9110 §8.6, RFC 9112 §6.1: a 1xx or 204 response has neither (a 304, or a response to
# HEAD, keeps them: there they describe the representation).
_BODY_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What a service adds to requests it forwards."""

    x_forwarded_for: bool = True
    x_forwarded_proto: bool = True
    x_forwarded_host: bool = True
    # Via values, or empty for none. RFC 9110 §7.6.3: received-protocol is the version of
    # the message received, so a message received as HTTP/1.1 gets `via` ("1.1 revproxy")
    # and one received as HTTP/1.0 `via_http10` ("1.0 revproxy").
    via: bytes = b""
    via_http10: bytes = b""
    # Header carrying the proxy's request id to the server ("" = none); one the client sent
    # under that name is replaced.
    request_id_header: bytes = b""
    # Request fields whose names contain "_" are dropped (nginx's default): servers that map
    # field names to variables with "-" turned into "_" cannot tell them from the real ones.
    drop_underscored: bool = True

    def via_for(self, http11: bool) -> bytes:
        """The Via value for a message received as HTTP/1.1 (or later) or as HTTP/1.0."""
        return self.via if http11 else self.via_http10


# Drop sets for the Connection tokens seen (few different ones), bounded like a cache.
_DROP_SETS: dict[frozenset[bytes], frozenset[bytes]] = {}


def _drop_set(tokens: frozenset[bytes]) -> frozenset[bytes]:
    if tokens <= HOP_BY_HOP:
        # No Connection header, or one naming only classic hop-by-hop fields.
        return HOP_BY_HOP
    drop = _DROP_SETS.get(tokens)
    if drop is None:
        drop = HOP_BY_HOP | (tokens - _PROTECTED)
        if len(_DROP_SETS) < 256:
            _DROP_SETS[tokens] = drop
    return drop


# Request fields that are not simply copied: hop-by-hop ones and the forwarding fields the
# proxy sets itself (and Host, when the target is in absolute form).
_REQUEST_SPECIAL = HOP_BY_HOP | {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"expect",
}


def request_head(
    req: Request,
    fwd: Forwarding,
    client_ip: bytes,
    extend_xff: bool,
    scheme: bytes,
    request_id: bytes = b"",
) -> bytes:
    """The request head sent to a real server (always HTTP/1.1).

    `extend_xff`: the client is a trusted proxy, so its X-Forwarded-For is kept and
    extended; from anyone else the header is replaced, since it could be forged.
    """
    absolute = req.absolute_authority
    options = (
        (_EXTEND_XFF if extend_xff else 0)
        | (_ABSOLUTE if absolute is not None else 0)
        | (_REQUEST_ID if request_id else 0)
        | (0 if req.http11 else _HTTP10)
    )
    block = req.block
    if block is not None and block.copied_for is fwd and block.copied_options == options:
        copied, prior_xff = block.copied, block.prior_xff
    else:
        copied, prior_xff = _copied_fields(req, fwd, options)
        if block is not None:
            block.copied, block.prior_xff = copied, prior_xff
            block.copied_for, block.copied_options = fwd, options
    out = [req.method, b" ", req.target, b" HTTP/1.1\r\n", copied]
    append = out.append
    if absolute is not None:
        append(b"Host: %s\r\n" % absolute)
    elif not req.http11 and not req.host and req.header(b"host") is None:
        # RFC 9112 §3.2: an HTTP/1.1 request always has Host, empty when there is no authority.
        append(b"Host: \r\n")
    if req.body == CHUNKED:
        append(b"Transfer-Encoding: chunked\r\n")
    if req.upgrade is not None:
        append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % req.upgrade)
    if fwd.x_forwarded_for:
        if prior_xff:
            append(b"X-Forwarded-For: " + b", ".join(prior_xff) + b", " + client_ip + b"\r\n")
        else:
            append(b"X-Forwarded-For: " + client_ip + b"\r\n")
    if fwd.x_forwarded_proto:
        append(b"X-Forwarded-Proto: " + scheme + b"\r\n")
    if fwd.x_forwarded_host and req.host:
        append(b"X-Forwarded-Host: " + req.host + b"\r\n")
    via = fwd.via_for(req.http11)
    if via:
        append(b"Via: " + via + b"\r\n")
    if request_id:
        append(fwd.request_id_header + b": " + request_id + b"\r\n")
    append(b"\r\n")
    return b"".join(out)


# What the lines a request head copies depend on besides its header block and Forwarding.
_EXTEND_XFF: Final = 1
_ABSOLUTE: Final = 2  # absolute-form target: its authority replaces Host
_REQUEST_ID: Final = 4  # a request id is sent (under fwd.request_id_header)
_HTTP10: Final = 8  # an HTTP/1.0 request, forwarded as 1.1: its Expect is not passed on


def _copied_fields(req: Request, fwd: Forwarding, options: int) -> tuple[bytes, list[bytes]]:
    """The field lines copied as they are (each ending in CRLF), and the X-Forwarded-For
    values to extend (when options has _EXTEND_XFF)."""
    drop = _drop_set(req.connection_tokens)
    rid_name = fwd.request_id_header.lower() if options & _REQUEST_ID else b""
    absolute = options & _ABSOLUTE
    special = _REQUEST_SPECIAL
    if drop is not HOP_BY_HOP or absolute:
        special = special | drop | {b"host"}
    out: list[bytes] = []
    append = out.append
    prior_xff: list[bytes] = []
    underscored = req.underscored and fwd.drop_underscored
    for lname, value, line in req.headers:
        if underscored and b"_" in lname:
            continue
        if lname not in special and lname != rid_name:
            append(line)
            continue
        if lname in drop or lname == rid_name:
            continue
        if lname[:12] == b"x-forwarded-":
            if lname == b"x-forwarded-for" and fwd.x_forwarded_for:
                if options & _EXTEND_XFF and value:
                    prior_xff.append(value)
                continue
            if lname == b"x-forwarded-proto" and fwd.x_forwarded_proto:
                continue
            if lname == b"x-forwarded-host" and fwd.x_forwarded_host:
                continue
        elif lname == b"host" and absolute:
            continue
        elif lname == b"expect" and options & _HTTP10:
            # RFC 9110 §10.1.1: a server ignores 100-continue in an HTTP/1.0 request; sent
            # on as HTTP/1.1 it would be acted on, for a client that takes no 100.
            continue
        append(line)
    if out:
        append(b"")  # so that the last field line ends in CRLF too
    return b"\r\n".join(out), prior_xff


_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def _status_line(status: int, text: bytes) -> bytes:
    key = (status, text)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = forwarded_status_line(status, text)
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[key] = line
    return line


def response_head(
    resp: Response,
    *,
    close: bool,
    http10_client: bool,
    dechunk: bool = False,
    upgrade: bytes | None = None,
    via: bytes = b"",
    extra: bytes = b"",
) -> bytes:
    """The response head sent to the client.

    `close`: this is the last response on the client connection. `dechunk`: the
    body is not sent with the server's transfer codings (it goes decoded, or re-framed by
    the caller). `upgrade`: the Upgrade value of a 101 that turns into a tunnel. `via`: the
    Via value to add, for the version of `resp` (see Forwarding). `extra`: serialized field
    lines to add, each ending in CRLF.
    """
    drop = _drop_set(resp.connection_tokens)
    # The body goes out with the server's transfer codings (e.g. "gzip, chunked"), so they
    # are passed on as sent; a body read until close goes to an HTTP/1.0 client without them
    # (RFC 9112 §6.1), and a dechunked one has none left.
    body = resp.body
    keep_te = not dechunk and (body == CHUNKED or (body == UNTIL_CLOSE and not http10_client))
    block = resp.block
    status = resp.status
    if status < 200 or status == 204:
        # No body framing fields; the block's memo is for statuses that keep them.
        drop = drop | _BODY_FRAMING
        block = None
    memo = None if block is None else block.forwarded_te if keep_te else block.forwarded
    if memo is not None:
        fields = memo
    else:
        fields = _forwarded_fields(resp.headers, drop, keep_te)
        if block is not None:
            if keep_te:
                block.forwarded_te = fields
            else:
                block.forwarded = fields
    if upgrade is not None:
        connection = b"Connection: upgrade\r\nUpgrade: %s\r\n" % upgrade
    elif close:
        connection = b"Connection: close\r\n"
    elif http10_client:
        connection = b"Connection: keep-alive\r\n"
    else:
        connection = b""
    return b"".join(
        (
            resp.status_line or _status_line(resp.status, resp.reason),
            fields,
            connection,
            b"Via: %s\r\n" % via if via else b"",
            extra,
            b"\r\n",
        )
    )


def _forwarded_fields(headers: list[Header], drop: frozenset[bytes], keep_te: bool) -> bytes:
    """The field lines passed on (those not in `drop`), each ending in CRLF."""
    if keep_te:
        lines = [
            line for lname, _, line in headers if lname not in drop or lname == b"transfer-encoding"
        ]
    else:
        lines = [line for lname, _, line in headers if lname not in drop]
    lines.append(b"")  # so that the last field line ends in CRLF too
    return b"\r\n".join(lines)


def interim_head(resp: Response, via: bytes = b"") -> bytes:
    """A 1xx response passed on to the client as it came, minus hop-by-hop fields and
    Content-Length (RFC 9110 §8.6); `via` as for response_head."""
    drop = _drop_set(resp.connection_tokens) | _BODY_FRAMING
    out = [resp.status_line or _status_line(resp.status, resp.reason)]
    for lname, _, line in resp.headers:
        if lname not in drop:
            out.append(line)
            out.append(b"\r\n")
    if via:
        out.append(b"Via: %s\r\n" % via)
    out.append(b"\r\n")
    return b"".join(out)
